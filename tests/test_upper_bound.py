"""Codec upper bound: decode(encode(GT)) finds everyone in the real samples at input 512 (no network), and the script
says who is lost why."""

from __future__ import annotations

import json
import runpy
import sys
from pathlib import Path

import pytest

from bapose.codecs import BAPoseCodec
from bapose.evaluation.upper_bound import LOSS_CAUSES, codec_upper_bound, upper_bound
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
    result = upper_bound(gt, meta, mode, input_size=512)
    assert result.stats["AP"] >= 0.999 and result.stats["AR"] >= 0.999
    assert result.lost == dict.fromkeys(LOSS_CAUSES, 0) and result.people > 0


def test_upper_bound_drops_people_below_min_area(coco_sample: Path) -> None:
    """The small-person rule costs recall: with a huge threshold nobody gets a center and AP collapses."""
    gt = json.loads((coco_sample / "test_coco.json").read_text())
    with pytest.warns(UserWarning, match="no predictions"):
        stats = codec_upper_bound(gt, DatasetMeta.coco(), "coco", 512, BAPoseCodec(min_center_area=1e9))
    assert stats["AP"] == 0.0


def test_script_prints_losses_by_cause_and_ap_last(coco_sample: Path, monkeypatch: pytest.MonkeyPatch,
                                                  capsys: pytest.CaptureFixture) -> None:
    def script(*args: str) -> list[str]:  # run in this process (a subprocess pays the torch import again)
        monkeypatch.setattr(sys, "argv", ["codec_upper_bound.py", "--ann", str(coco_sample / "test_coco.json"),
                                          "--input-size", "512", *args])
        runpy.run_path(str(REPO / "scripts" / "codec_upper_bound.py"), run_name="__main__")
        return capsys.readouterr().out.strip().splitlines()

    out = script()
    assert out[-1].startswith("AP=") and float(out[-1][3:]) >= 0.999
    assert out[-3].startswith("lost 0 of 12 people (no_center 0, center_collision 0,")
    assert "offset_owner=nearest_center center_collision=nearest_free pose_nms=oks" in out[1]
    with pytest.warns(UserWarning, match="no predictions"):  # DEKR's rules, nobody big enough for a center
        out = script("--codec", "dekr", "--set", "min_center_area=1e9")
    assert "offset_owner=smaller center_collision=ignore pose_nms=dekr" in out[1]
    assert out[-3].startswith("lost 12 of 12 people (no_center 12,") and out[-1] == "AP=0.0000"
    monkeypatch.setenv("HYDRA_FULL_ERROR", "0")
    with pytest.raises(SystemExit, match=r"--codec 'nope': no file"):
        script("--codec", "nope")
