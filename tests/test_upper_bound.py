"""Codec upper bound: decode(encode(GT)) scores AP >= 0.99 on the real samples at input 512 (no network)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from bapose.codecs import BAPoseCodec
from bapose.codecs.upper_bound import codec_upper_bound
from bapose.data.metadata import DatasetMeta

REPO = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize(("sample", "file", "mode"), [
    ("coco_sample", "test_coco.json", "coco"),
    ("ochuman_sample", "test_ochuman.json", "coco"),
    ("crowdpose_sample", "test_crowdpose.json", "crowdpose"),
])
def test_codec_upper_bound_is_near_perfect(shared_data: Path, sample: str, file: str, mode: str) -> None:
    gt = json.loads((shared_data / sample / file).read_text())
    meta = DatasetMeta.from_coco_category(gt["categories"][0])
    stats = codec_upper_bound(gt, meta, mode, input_size=512)
    assert stats["AP"] >= 0.99 and stats["AR"] >= 0.99


def test_upper_bound_drops_people_below_min_area(coco_sample: Path) -> None:
    """The small-person rule costs recall: with a huge threshold nobody gets a center and AP collapses."""
    gt = json.loads((coco_sample / "test_coco.json").read_text())
    with pytest.warns(UserWarning, match="no predictions"):
        stats = codec_upper_bound(gt, DatasetMeta.coco(), "coco", 512, BAPoseCodec(min_center_area=1e9))
    assert stats["AP"] == 0.0


def test_script_prints_ap_last(coco_sample: Path) -> None:
    out = subprocess.run([sys.executable, str(REPO / "scripts" / "codec_upper_bound.py"), "--ann",
                          str(coco_sample / "test_coco.json"), "--input-size", "512"],
                         capture_output=True, text=True, check=True).stdout.strip().splitlines()
    assert out[-1].startswith("AP=") and float(out[-1][3:]) >= 0.99
