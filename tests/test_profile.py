"""bapose-profile: the paper's Table 2 (params, GFLOPs), FLOP counting of deformable convs, the CLI."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from hydra import compose, initialize_config_dir
from torch import nn

from bapose.cli.profile import profile
from bapose.errors import ConfigError
from bapose.models import AdaptiveBlock
from bapose.paths import config_dir
from bapose.utils.flops import count_macs, count_params

# paper Table 2: model config, input size, params (M), GFLOPs (multiply-adds)
TABLE2 = {
    "dekr_w32": (512, 29.6, 45.4),
    "bapose_w32": (512, 30.3, 56.8),
    "dekr_w48": (640, 65.7, 141.5),
    "bapose_w48": (640, 67.4, 183.2),
}


def _cfg(*overrides: str):
    with initialize_config_dir(str(config_dir()), version_base="1.3"):
        return compose("profile", overrides=list(overrides))


@pytest.fixture(scope="module")
def table2() -> dict[str, dict]:
    """The four rows as bapose-profile computes them (meta device: about a second per row)."""
    return {name: profile(_cfg(f"model={name}", f"data.input_size={size}", "repeats=0"))
            for name, (size, _, _) in TABLE2.items()}


@pytest.mark.parametrize("name", list(TABLE2))
def test_table2_row(table2: dict[str, dict], name: str) -> None:
    size, params_m, gflops = TABLE2[name]
    row = table2[name]
    assert row["input_size"] == [size, size] and row["latency_ms"] is None
    assert row["params_m"] == pytest.approx(params_m, rel=0.02)
    assert row["gflops"] == pytest.approx(gflops, rel=0.03)


@pytest.mark.parametrize("width", ["w32", "w48"])
def test_table2_bapose_minus_dekr(table2: dict[str, dict], width: str) -> None:
    bapose, dekr = table2[f"bapose_{width}"], table2[f"dekr_{width}"]
    paper = {"w32": (0.7, 11.4), "w48": (1.7, 41.7)}[width]
    assert bapose["params_m"] - dekr["params_m"] == pytest.approx(paper[0], rel=0.10)
    assert bapose["gflops"] - dekr["gflops"] == pytest.approx(paper[1], rel=0.10)


@pytest.mark.parametrize("impl", ["torchvision", "torch"])
def test_deformable_conv_counts_as_the_conv_it_is(impl: str) -> None:
    c, g, h, w = 5, 3, 8, 6
    block = AdaptiveBlock(channels=c, groups=g, impl=impl)
    hand = (6 * c * 9 + c * c * 9) * g * h * w  # offset-predicting 3×3 conv + the deformable 3×3 conv
    assert count_macs(block, (1, c * g, h, w)) == hand
    assert count_macs(block, (2, c * g, h, w)) == 2 * hand


def test_counter_matches_a_hand_count_of_plain_layers() -> None:
    net = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(), nn.Conv2d(8, 4, 1, groups=2),
                        nn.Flatten(), nn.Linear(4 * 16 * 16, 10))
    hand = 3 * 8 * 9 * 256 + 4 * 4 * 256 + 4 * 256 * 10
    assert count_macs(net, (1, 3, 16, 16)) == hand
    assert net.training, "counting must leave the train/eval mode as it was"


def test_profile_writes_json_and_measures_latency(tmp_path: Path) -> None:
    row = profile(_cfg("model=bapose_w18s", "data=crowdpose", "data.input_size=[64,96]", "repeats=1"),
                  output_dir=tmp_path, model_name="bapose_w18s")
    saved = json.loads((tmp_path / "profile.json").read_text())
    assert saved == row
    assert row["model"] == "bapose_w18s" and row["input_size"] == [64, 96]
    assert row["latency_ms"] > 0
    torch.manual_seed(0)
    from bapose.models import BAPoseNet

    real = BAPoseNet("hrnet_w18_small", num_keypoints=14, decoder={})
    assert row["params_m"] == count_params(real) / 1e6
    assert row["gflops"] == count_macs(real, (1, 3, 64, 96)) / 1e9


def test_profile_rejects_an_input_size_not_multiple_of_32() -> None:
    with pytest.raises(ConfigError, match=r"\(500, 500\).*multiple of 32"):
        profile(_cfg("model=bapose_w18s", "data.input_size=500", "repeats=0"))


def test_cli(tmp_path: Path) -> None:
    script = Path(sys.executable).with_name("bapose-profile")
    cmd = [str(script), "model=dekr_w18s", "data.input_size=64", "repeats=1", f"hydra.run.dir={tmp_path}"]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=300, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert done.returncode == 0, done.stderr[-2000:]
    row = json.loads((tmp_path / "profile.json").read_text())
    assert row["model"] == "dekr_w18s" and row["input_size"] == [64, 64] and row["threads"] == 1
    assert "| dekr_w18s | 64x64 |" in done.stdout
