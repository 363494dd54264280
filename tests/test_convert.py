"""``bapose-convert dekr``: DEKR's released checkpoints as bapose checkpoints, checked against DEKR's own outputs.

The oracle is ``../shared/data/dekr_reference``: DEKR's key names/shapes, a rule filling them with values, and the
heatmaps/offsets DEKR's model code (HRNet/DEKR 7a30313) computed from those values on an image. Its regular_matrix
buffers are random too, so the per-joint tap basis of the adaptive blocks is exercised, not only the regular grid.
"""

from __future__ import annotations

import json

import pytest
import torch

import bapose
from _dekr import (bapose_to_dekr, layout_for_k, official_layouts, outputs_of, reference_cases, reference_dir,
                   write_state_dict, zeros_state_dict)
from bapose.cli.convert import main as convert_main
from bapose.checkpoints.convert import convert_dekr
from bapose.models.dekr import dekr_layout, dekr_to_bapose
from bapose.errors import CheckpointError, ConfigError
from bapose.models import AdaptiveBlock, BAPoseNet
from bapose.checkpoints.io import check_state_dict_compatible

CASES = reference_cases()


def _case_id(path):
    return path.name.removesuffix(".keys.json")


# W48 cases move ~1 GB of weights through rule, conversion and loading: a few seconds quiet, marked slow
PARAMS = [pytest.param(p, id=_case_id(p), marks=[pytest.mark.slow] if "_w48_" in p.name else []) for p in CASES]


@pytest.fixture(scope="module")
def converted(tmp_path_factory):
    """Every reference case written as a DEKR .pth and converted through the CLI (cached per case)."""
    root = tmp_path_factory.mktemp("dekr")
    done = {}

    def get(keys_json):
        if keys_json not in done:
            src = write_state_dict(keys_json, root / f"{_case_id(keys_json)}.pth")
            dst = root / f"{_case_id(keys_json)}.ckpt"
            assert convert_main(["dekr", str(src), str(dst)]) == 0
            done[keys_json] = (src, dst)
        return done[keys_json]

    return get


@pytest.fixture(scope="module")
def tiny_dekr(tmp_path_factory):
    """A DEKR-format file of a small net (DEKR's heads on HRNet-W18-small, random per-joint tap bases, O(1) outputs)
    and its conversion: the fast stand-in for eval / predict / export, whose full-size runs would take minutes."""
    root = tmp_path_factory.mktemp("tiny")
    torch.manual_seed(0)
    net = BAPoseNet("hrnet_w18_small", num_keypoints=17, decoder=None, adaptive_basis="stored").eval()
    with torch.no_grad():
        # He-scaled inner head convs (DEKR's own init is Normal(0, 0.001), whose untrained features are ~0 in eval
        # mode): spatially varied O(1) outputs, so the decoded people are distinct
        for head in (net.heatmap_head, net.offset_head):
            for m in head.modules():
                if isinstance(m, torch.nn.Conv2d):
                    torch.nn.init.kaiming_normal_(m.weight, mode="fan_in", nonlinearity="relu")
        for block in net.offset_head.blocks:
            block.transform.weight.normal_(0, 0.02)
            block.transform.bias.normal_(0, 0.3)
            block.basis.add_(0.1 * torch.randn_like(block.basis))
        for final in (net.heatmap_head.final, net.offset_head.final):
            final.weight.normal_(0, 0.002)
            final.bias.normal_(0, 0.3)
        net.heatmap_head.final.bias[-1].abs_()  # a center map above the decode threshold: people to compare
    src = root / "pose_dekr_tiny.pth"
    torch.save(bapose_to_dekr(net), src)
    dst = root / "dekr_tiny.ckpt"
    assert convert_main(["dekr", str(src), str(dst), "--input-size", "128"]) == 0
    return net, src, dst


def test_any_timm_hrnet_layout_converts_and_round_trips(tiny_dekr):
    net, src, dst = tiny_dekr
    model = bapose.load_model(dst)
    # the stage layout picked the timm model (its branches are 16 wide: no width-named candidate exists)
    assert model.info.model["backbone"] == "hrnet_w18_small" and model.info.converted_from["width"] == 16
    assert model.net.backbone.name == "hrnet_w18_small" and model.input_size == 128
    x = torch.rand(1, 3, 64, 96, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        want, got = net(x), model.net(x)
    assert want[0].abs().max() > 0.3 and want[1].abs().max() > 0.3  # outputs of a realistic size
    assert torch.equal(want[0], got[0])  # offsets: A -> M = A + I -> A rounds in the last bit
    assert torch.allclose(want[1], got[1], atol=1e-5)
    # a layout no timm HRNet has is named, with the closest candidate
    state = torch.load(src, weights_only=True)
    state["stage4.0.branches.0.9.conv1.weight"] = torch.zeros(16, 16, 3, 3)  # one more block than timm's
    torch.save(state, src.with_name("odd.pth"))
    with pytest.raises(CheckpointError, match="layout matches no timm HRNet; the closest, hrnet_w18_small, differs in "
                                              "1 tensors \\(stage4.0.branches.0.9.conv1.weight\\)"):
        convert_dekr(src.with_name("odd.pth"), src.with_name("odd.ckpt"))


@pytest.mark.parametrize("keys_json", PARAMS)
def test_converted_checkpoint_reproduces_dekr_outputs(keys_json, converted):
    torch.set_num_threads(2)
    src, dst = converted(keys_json)
    spec = json.loads(keys_json.read_text())
    ref = outputs_of(keys_json)
    model = bapose.load_model(dst)
    assert model.meta.num_keypoints == spec["num_joints"]
    assert model.meta.name == {17: "coco", 14: "crowdpose"}[spec["num_joints"]]
    assert model.net.backbone.name == f"hrnet_{spec['width']}" and model.net.decoder is None
    with torch.no_grad():
        heatmaps, offsets = model.net(ref["image01"])
    assert heatmaps.shape == ref["heatmaps"].shape and offsets.shape == ref["offsets"].shape
    assert (heatmaps - ref["heatmaps"]).abs().max() < 1e-4
    # DEKR decodes p - offset, bapose p + offset: the converted net returns DEKR's offsets negated
    assert (offsets + ref["offsets"]).abs().max() < 1e-4
    if keys_json == CASES[0]:  # both deformable-conv kernels agree with DEKR (torchvision's is what DEKR runs)
        model.net.set_adaptive_impl("torchvision")
        with torch.no_grad():
            _, offsets_tv = model.net(ref["image01"])
        assert (offsets_tv + ref["offsets"]).abs().max() < 1e-4
    # the checkpoint says how to decode: DEKR's grid convention, pose NMS, eval resize, no heatmap refinement
    info = model.info
    assert info.codec["grid_align"] == "dekr" and info.codec["pose_nms"] == "dekr"
    assert info.eval_resize == "dekr" and model.codec.align == "dekr" and model.codec.refine_radius == 0
    assert info.converted_from["tensors"] == len(spec["keys"])


def test_wrapped_files_convert_to_the_same_weights(tmp_path, tiny_dekr):
    _, src, plain = tiny_dekr
    ref = torch.load(plain, weights_only=True)["state_dict"]
    state = torch.load(src, weights_only=True)
    for wrap, obj in (("state_dict", {"state_dict": state, "epoch": 140}),
                      ("module", {f"module.{k}": v for k, v in state.items()})):
        torch.save(obj, tmp_path / f"{wrap}.pth")
        convert_dekr(tmp_path / f"{wrap}.pth", tmp_path / f"{wrap}.ckpt", input_size=128)
        got = torch.load(tmp_path / f"{wrap}.ckpt", weights_only=True)["state_dict"]
        assert got.keys() == ref.keys() and all(torch.equal(got[k], ref[k]) for k in ref)


@pytest.mark.parametrize("width,k", [(32, 17), (32, 14), (48, 17), (48, 14)])
def test_official_layouts_map_every_key_with_nothing_left_over(width, k):
    spec = official_layouts()[(width, k)]
    state = zeros_state_dict(spec)
    layout = dekr_layout(state)
    assert layout == {"width": width, "num_keypoints": k, "heatmap_channels": 32 if width == 32 else 48,
                      "heatmap_blocks": 1, "offset_channels_per_joint": 15, "offset_blocks": 2}
    ours, stored_basis = dekr_to_bapose(state, layout)  # raises on any DEKR tensor without a place
    assert not stored_basis  # released files hold the regular grid: the plain model, no extra buffers
    with torch.device("meta"):
        net = BAPoseNet(f"hrnet_w{width}", num_keypoints=k, decoder=None, heatmap_channels=layout["heatmap_channels"])
    check_state_dict_compatible(net.state_dict(), ours)  # every bapose tensor filled, every shape right
    # every DEKR value lands somewhere: the element counts agree (the 2x9 regular matrices become the fixed grid,
    # the per-joint BN step counters one counter per grouped BN)
    def count(tensors):
        return sum(v.numel() for n, v in tensors.items() if not n.endswith(("regular_matrix", "num_batches_tracked")))

    assert count(ours) == count(state)


def test_generalised_layout_equals_the_given_file():
    # the W32/K=14 file exists: generalising the W32/K=17 file to K=14 must give exactly it (names, shapes, order)
    given = {(s["width"], s["num_joints"]): s for s in (json.loads(p.read_text())
                                                         for p in reference_dir().glob("*.keys.json"))}
    assert layout_for_k(given[("w32", 17)], 14)["keys"] == given[("w32", 14)]["keys"]


def test_regular_basis_and_stored_regular_basis_agree():
    torch.manual_seed(0)
    regular = AdaptiveBlock(15, groups=3)
    stored = AdaptiveBlock(15, groups=3, basis="stored")
    with torch.no_grad():
        regular.transform.weight.normal_(0, 0.05)
        regular.transform.bias.normal_(0, 0.5)
    missing, unexpected = stored.load_state_dict(regular.state_dict(), strict=False)
    assert missing == ["basis"] and not unexpected
    x = torch.randn(1, 45, 9, 11)
    regular.eval(), stored.eval()
    assert torch.allclose(regular(x), stored(x), atol=1e-6)
    with torch.no_grad():
        stored.basis[1] *= 2.0  # another basis for joint 1 only moves joint 1's taps
    y = stored(x)
    assert torch.allclose(y[:, :15], regular(x)[:, :15], atol=1e-6) and not torch.allclose(y[:, 15:30],
                                                                                      regular(x)[:, 15:30])


def test_not_a_dekr_file_gets_one_line_naming_file_and_missing(tmp_path, capsys):
    bad = tmp_path / "resnet.pth"
    torch.save({"conv1.weight": torch.zeros(64, 3, 7, 7), "fc.weight": torch.zeros(10, 512)}, bad)
    with pytest.raises(CheckpointError) as err:
        convert_dekr(bad, tmp_path / "x.ckpt")
    msg = str(err.value)
    assert "\n" not in msg and str(bad) in msg and "is not a DEKR state_dict" in msg
    missing = msg.split("missing ")[1].split(" (")[0].split(", ")
    assert "transition_heatmap.0.weight" in missing and "offset_final_layer.0.weight" in missing
    assert "conv1.weight" not in missing  # what the file has is not reported missing
    # the console script ends with that one line, not a traceback
    import os

    os.environ.pop("HYDRA_FULL_ERROR", None)
    try:
        with pytest.raises(SystemExit) as ended:
            convert_main(["dekr", str(bad), str(tmp_path / "x.ckpt")])
    finally:
        os.environ["HYDRA_FULL_ERROR"] = "1"
    assert str(ended.value).startswith(f"bapose-convert: file '{bad}' is not a DEKR state_dict: missing")
    for content, expect in ((b"not a zip", "not a readable torch weights file \\(neither a torch zip archive"),
                            (b"PK\x03\x04 cut", "truncated zip archive"), (None, "does not exist")):
        path = tmp_path / "other.pth"
        if content is not None:
            path.write_bytes(content)
        with pytest.raises(CheckpointError, match=expect):
            convert_dekr(path if content is not None else tmp_path / "missing.pth", tmp_path / "x.ckpt")
    assert not (tmp_path / "x.ckpt").exists()


def test_joint_set_from_k_or_given(tmp_path, tiny_dekr):
    _, src, _ = tiny_dekr
    with pytest.raises(ConfigError, match="K=17 joints but --meta crowdpose has 14"):
        convert_dekr(src, tmp_path / "x.ckpt", meta="crowdpose")
    # a custom K (5 joints): no preset fits, so the joint set must be given
    torch.manual_seed(0)
    src5 = tmp_path / "k5.pth"
    torch.save(bapose_to_dekr(BAPoseNet("hrnet_w18_small", num_keypoints=5, decoder=None)), src5)
    with pytest.raises(ConfigError, match="K=5 joints.*--meta coco\\|crowdpose or --ann-file"):
        convert_dekr(src5, tmp_path / "x.ckpt")
    ann = tmp_path / "five.json"
    names = ["head", "left_hand", "right_hand", "left_foot", "right_foot"]
    ann.write_text(json.dumps({"categories": [{"id": 1, "name": "person", "keypoints": names, "skeleton": [[1, 2]]}]}))
    summary = convert_dekr(src5, tmp_path / "k5.ckpt", ann_file=ann, input_size=256)
    assert summary["num_keypoints"] == 5 and summary["input_size"] == 256
    model = bapose.load_model(tmp_path / "k5.ckpt")
    assert model.meta.keypoints == tuple(names) and model.meta.flip_index == (0, 2, 1, 4, 3)
    assert model.input_size == 256


def test_converted_checkpoint_in_eval_predict_and_export(tmp_path, tiny_dekr, coco_sample, caplog):
    """bapose-eval, bapose-predict and bapose-export take a converted checkpoint as they take our own, and resize,
    flip and decode it as DEKR does (its stored rules), the same way in eval and predict."""
    import logging

    import numpy as np

    from bapose.training.evaluate import evaluate
    from bapose.cli.export import export
    from bapose.cli.predict import predict
    from bapose.data.inputs import try_read_image as read_image
    from bapose.build import compose_config
    from bapose.data.transforms import EvalTransform
    from bapose.predictor import predict as run_inference
    from bapose.predictor import to_original

    torch.set_num_threads(2)
    _, _, ckpt = tiny_dekr
    data = ["data=coco", f"data.root={coco_sample}", "data.val.ann_file=test_coco.json", "data.val.image_dir=.",
            "data.input_size=128", "data.num_workers=0", "data.persistent_workers=false", "data.pin_memory=false"]
    with caplog.at_level(logging.INFO, logger="bapose"):
        metrics = evaluate(compose_config([f"ckpt_path={ckpt}", *data, "test.flip=true"], config_name="eval",
                                          output_dir=tmp_path / "eval"))
    assert 0.0 <= metrics["val/AP"] <= 1.0 and metrics["flip"] is True
    assert any("eval_resize=dekr" in r.getMessage() for r in caplog.records)
    results = json.loads((tmp_path / "eval" / "results.json").read_text())
    assert results and all(len(r["keypoints"]) == 17 * 3 for r in results)

    # the same people as the DEKR pipeline written out: DEKR's warp, flip with the 3-px shift, grid x = 4 g, back
    gt = json.loads((coco_sample / "test_coco.json").read_text())
    image_info = gt["images"][0]
    model = bapose.load_model(ckpt, input_size=128)
    sample = EvalTransform(128, resize="dekr")(read_image(coco_sample / image_info["file_name"]))
    x = torch.from_numpy(sample["image"]).permute(2, 0, 1)[None].float() / 255
    people = run_inference(model.net, x, model.codec, meta=model.meta, flip=True)[0]
    want = to_original(people.poses.numpy(), sample["input_to_orig"])
    got = np.asarray([r["keypoints"] for r in results if r["image_id"] == image_info["id"]]).reshape(-1, 17, 3)
    assert len(got) == len(want) > 0
    order = lambda p: p[np.lexsort(p[:, :, :2].reshape(len(p), -1).T)]  # noqa: E731
    assert np.abs(order(got) - order(want)).max() < 1e-3

    # bapose-predict: the same resize and decoding from the checkpoint alone
    out = tmp_path / "predict"
    predict(compose_config([f"ckpt_path={ckpt}", f"input={coco_sample / image_info['file_name']}", "flip=true",
                            "num_threads=2", "progress=false", "draw=false", "input_size=128"],
                           config_name="predict", output_dir=out))
    predicted = json.loads((out / "results.json").read_text())
    pred = np.asarray([r["keypoints"] for r in predicted]).reshape(-1, 17, 3)
    assert len(pred) == len(want) and np.abs(order(pred) - order(want)).max() < 1e-2  # results.json: 6 digits

    # bapose-export: ONNX parity with the per-joint tap bases in the graph; the decode rules in the metadata
    report = export(compose_config([f"ckpt_path={ckpt}", f"output={tmp_path / 'dekr.onnx'}", "num_threads=2",
                                    f"image={coco_sample / image_info['file_name']}", "input_size=128"],
                                   config_name="export", output_dir=tmp_path))
    assert report["passed"] and report["max_abs_diff"] < 1e-4
    assert report["input_shape"][2] % 64 == 0 and report["input_shape"][3] % 64 == 0  # DEKR's warp: 64-multiples
    import onnx

    props = {p.key: p.value for p in onnx.load(str(tmp_path / "dekr.onnx")).metadata_props}
    decode = json.loads(props["decode"])
    assert decode["grid_align"] == "dekr" and props["eval_resize"] == "dekr"
