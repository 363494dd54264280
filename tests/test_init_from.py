"""``model.init_from``: a run starts from a converted DEKR checkpoint, a raw DEKR file or one of our own checkpoints."""

from __future__ import annotations

import logging

import pytest
import torch

import bapose
from _dekr import reference_cases, write_state_dict
from bapose.build import build_module, build_net, compose_config
from bapose.training.fit import train
from bapose.codecs import BAPoseCodec
from bapose.checkpoints.convert import convert_dekr
from bapose.data.metadata import DatasetMeta
from bapose.errors import CheckpointError
from bapose.checkpoints.init_from import summary_by_part
from bapose.models import BAPoseNet
from bapose.checkpoints.io import AtomicCheckpointIO

TINY = [
    "data.input_size=64", "data.synthetic.num_train=4", "data.synthetic.num_val=2", "data.synthetic.image_size=64",
    "data.batch_size=2", "data.val_batch_size=2", "data.num_workers=0", "data.persistent_workers=false",
    "data.pin_memory=false", "logger=[csv]", "draw_images=0",
]

SMALL_DEKR = {"_target_": "bapose.models.BAPoseNet", "backbone": "hrnet_w18_small", "num_keypoints": 17, "decoder": None}


def _same(a: dict, b: dict, prefix: str) -> bool:
    keys = [k for k in a if k.startswith(prefix)]
    return bool(keys) and all(torch.equal(a[k], b[k]) for k in keys)


@pytest.fixture(scope="module")
def dekr_w18(tmp_path_factory):
    """The W18 reference case as a DEKR .pth and as its converted checkpoint."""
    root = tmp_path_factory.mktemp("w18")
    keys_json = next(p for p in reference_cases() if "_w18_" in p.name)
    src = write_state_dict(keys_json, root / "dekr_w18.pth")
    dst = root / "dekr_w18.ckpt"
    convert_dekr(src, dst)
    return src, dst


def test_bapose_from_converted_dekr_loads_backbone_and_heads_keeps_dwasp_fresh(dekr_w18, caplog):
    torch.set_num_threads(2)
    src, dst = dekr_w18
    args = dict(backbone="hrnet_w18", num_keypoints=17, decoder={}, adaptive_basis="stored")
    torch.manual_seed(0)
    fresh = BAPoseNet(**args).state_dict()
    torch.manual_seed(0)
    with caplog.at_level(logging.INFO, logger="bapose"):
        net = build_net({"_target_": "bapose.models.BAPoseNet", **args}, init_from=str(dst))
    got = net.state_dict()
    source = {k[len("net."):]: v for k, v in torch.load(dst, weights_only=True)["state_dict"].items()}

    assert _same(got, source, "backbone.")                       # HRNet as DEKR trained it
    for part in ("heatmap_head.blocks.", "heatmap_head.final.", "offset_head.blocks.", "offset_head.final."):
        assert _same(got, source, part)                          # head layers whose shapes fit
    assert _same(got, fresh, "decoder.")                         # D-WASP at its fresh init
    # the head transitions read D-WASP's P = C/4 channels here, DEKR's C-channel concat there: not loaded
    for part in ("heatmap_head.transition.", "offset_head.transition."):
        assert _same(got, fresh, part) and not _same(got, source, part.replace("transition.", "transition.1."))
    report = net.init_report
    c = 18 + 36 + 72 + 144  # W18's concat: 270 channels; D-WASP's P = 270 // 4 = 67
    assert report.skipped == [
        ("heatmap_head.transition.0", f"weight (32, {c}, 1, 1) in the source, (32, 67, 1, 1) here"),
        ("heatmap_head.transition.1", "BN after heatmap_head.transition.0, which was not loaded"),
        ("offset_head.transition.0", f"weight (255, {c}, 1, 1) in the source, (255, 67, 1, 1) here"),
        ("offset_head.transition.1", "BN after offset_head.transition.0, which was not loaded")]
    assert summary_by_part(report) == {"backbone": "loaded", "decoder": "fresh", "heatmap_head": "mixed",
                                       "offset_head": "mixed"}
    line = next(r.getMessage() for r in caplog.records if r.getMessage().startswith("model.init_from"))
    assert f"'{dst}' (bapose checkpoint)" in line
    assert "loaded 1864 tensors: backbone, heatmap_head.blocks, heatmap_head.final, offset_head.blocks, " \
           "offset_head.final | not loaded: heatmap_head.transition.0 (weight (32, 270, 1, 1) in the source" in line
    assert "| fresh (not in the source): decoder |" in line and line.endswith("without a place here: none")

    # the raw DEKR release file is converted on the fly: the same weights
    torch.manual_seed(0)
    raw = build_net({"_target_": "bapose.models.BAPoseNet", **args}, init_from=str(src)).state_dict()
    assert all(torch.equal(raw[k], got[k]) for k in got)


def _own_checkpoint(path, model: str) -> str:
    """A bapose checkpoint written by the real module code (our own DEKR baseline run, say)."""
    torch.manual_seed(1)
    cfg = compose_config([f"model={model}", "data.input_size=64"])
    module = build_module(cfg, codec=BAPoseCodec(input_size=64))
    module.meta = DatasetMeta.coco()
    ckpt = {"state_dict": module.state_dict(), "epoch": 3, "global_step": 30}
    module.on_save_checkpoint(ckpt)
    AtomicCheckpointIO().save_checkpoint(ckpt, path)
    return str(path)


def test_tiny_bapose_run_from_own_dekr_checkpoint(tmp_path, caplog):
    torch.set_num_threads(1)
    own = _own_checkpoint(tmp_path / "dekr_w18s.ckpt", "dekr_w18s")
    source = {k[len("net."):]: v for k, v in torch.load(own, weights_only=True)["state_dict"].items()
              if k.startswith("net.")}
    cfg = compose_config(["model=bapose_w18s", f"model.init_from={own}", "debug=fast_dev_run", *TINY],
                         output_dir=tmp_path / "run")
    torch.manual_seed(5)
    fresh = build_module(compose_config(["model=bapose_w18s", *TINY]), codec=BAPoseCodec(input_size=64)).net
    torch.manual_seed(5)
    with caplog.at_level(logging.INFO, logger="bapose"):
        module = build_module(cfg, codec=BAPoseCodec(input_size=64))
    net = module.net.state_dict()
    assert _same(net, source, "backbone.")
    assert _same(net, fresh.state_dict(), "decoder.")
    line = next(r.getMessage() for r in caplog.records if r.getMessage().startswith("model.init_from"))
    assert f"'{own}' (bapose checkpoint)" in line and "not loaded: heatmap_head.transition.0 (weight (32, " in line
    assert "fresh (not in the source): decoder" in line

    # the run itself: init_from is part of the model config, fit + validation go through
    metrics = train(cfg)
    assert metrics["global_step"] == 1 and 0.0 <= metrics["val/AP"] <= 1.0
    assert module.model_config["init_from"] == own

    # a checkpoint of that run loads without the source file (its own weights replace the starting ones)
    module.meta = DatasetMeta.coco()
    ckpt = {"state_dict": module.state_dict(), "epoch": 0, "global_step": 1}
    module.on_save_checkpoint(ckpt)
    AtomicCheckpointIO().save_checkpoint(ckpt, tmp_path / "run.ckpt")
    (tmp_path / "dekr_w18s.ckpt").unlink()
    loaded = bapose.load_model(tmp_path / "run.ckpt")
    assert loaded.net.init_report is None
    assert all(torch.equal(v, net[k]) for k, v in loaded.net.state_dict().items())


def test_init_from_a_file_that_fits_nothing_or_is_missing(tmp_path):
    bad = tmp_path / "other.pth"
    torch.save({"fc.weight": torch.zeros(3, 3)}, bad)
    with pytest.raises(CheckpointError, match=r"model.init_from: file '.*other.pth' is neither a bapose checkpoint"):
        build_net(SMALL_DEKR, init_from=str(bad))
    with pytest.raises(CheckpointError, match="does not exist"):
        build_net(SMALL_DEKR, init_from=str(tmp_path / "missing.ckpt"))
