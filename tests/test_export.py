"""bapose-export: ONNX parity with PyTorch on a real image (dynamic batch and size), loud failure above tolerance,
and the numpy decoder giving the torch codec's poses."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from bapose.cli.export import export
from bapose.build import build_module, compose_config
from bapose.codecs import BAPoseCodec
from bapose.data.metadata import DatasetMeta
from bapose.data.transforms import eval_resize_matrix
from bapose.export import ParityError, decode_numpy, run_onnx
from bapose.models import AdaptiveBlock
from bapose.predictor import decode
from bapose.checkpoints.io import AtomicCheckpointIO

pytest.importorskip("onnxruntime")


@pytest.fixture(scope="module")
def busy_ckpt(tmp_path_factory) -> Path:
    """A small BAPose checkpoint whose adaptive blocks really move their taps and whose outputs are O(1), so parity
    is checked where it is demanding (a fresh net has zero tap offsets and ~0 outputs)."""
    torch.set_num_threads(1)
    torch.manual_seed(0)
    cfg = compose_config(["model=bapose_w18s", "data.input_size=64"])
    module = build_module(cfg, codec=BAPoseCodec(input_size=64))
    module.meta = DatasetMeta.coco()
    net = module.net
    with torch.no_grad():
        # He-scaled head convs: DEKR's own init, Normal(0, 0.001), leaves an untrained net's head features ~0
        for head in (net.heatmap_head, net.offset_head):
            for m in head.modules():
                if isinstance(m, torch.nn.Conv2d):
                    torch.nn.init.kaiming_normal_(m.weight, mode="fan_in", nonlinearity="relu")
                elif isinstance(m, AdaptiveBlock):
                    torch.nn.init.kaiming_normal_(m.weight, mode="fan_in", nonlinearity="relu")
        for m in net.modules():
            if isinstance(m, AdaptiveBlock):
                m.transform.weight.normal_(0, 0.02)   # A and t of ~0.5 px: the bilinear tap sampling matters
                m.transform.bias.normal_(0, 0.5)
        for final in (net.heatmap_head.final, net.offset_head.final):
            final.weight.normal_(0, 0.005)
            final.bias.normal_(0, 0.1)
        net.heatmap_head.final.bias[-1] = 0.3  # a center map above the decode threshold: people to compare
    ckpt = {"state_dict": module.state_dict(), "epoch": 0, "global_step": 0}
    module.on_save_checkpoint(ckpt)
    path = tmp_path_factory.mktemp("ckpt") / "busy.ckpt"
    AtomicCheckpointIO().save_checkpoint(ckpt, path)
    return path


def test_onnx_matches_pytorch_on_a_real_image(tmp_path, busy_ckpt, coco_sample):
    image = coco_sample / "000000197388.jpg"
    cfg = compose_config([f"ckpt_path={busy_ckpt}", f"output={tmp_path / 'm.onnx'}", f"image={image}",
                          "num_threads=1"], config_name="export", output_dir=tmp_path)
    report = export(cfg)
    assert report["passed"] and report["image"] == str(image)
    # resized as evaluation does: 640x392 at short side 64 (the checkpoint's input size), padded to multiples of 32
    assert report["input_shape"] == [1, 3, *eval_resize_matrix(392, 640, 64)[1]] == [1, 3, 64, 128]
    for name in ("image", "batch2"):                  # batch2: another batch size and input size (dynamic axes)
        c = report["checks"][name]
        assert c["heatmaps"] < 1e-4 and c["offsets"] < 1e-4
        assert c["heatmaps_max"] > 0.5 and c["offsets_max"] > 0.5  # outputs of a realistic size, not ~0
    saved = json.loads((tmp_path / "m.json").read_text())
    assert saved["max_abs_diff"] == report["max_abs_diff"]
    # the deployment decode (numpy on onnxruntime's outputs, the file's knobs) gives the torch predictor's people
    people = report["checks"]["people"]
    assert people["people"] == people["people_onnx"] and people["people"][0] > 0
    assert people["max_pose_diff"] < 1e-3

    import onnx

    props = {p.key: p.value for p in onnx.load(str(tmp_path / "m.onnx")).metadata_props}
    assert json.loads(props["num_keypoints"]) == 17 and json.loads(props["keypoints"])[0] == "nose"

    # deployment path: onnxruntime outputs + numpy decoder with the file's decode knobs == torch net + torch codec
    x = torch.rand(2, 3, 96, 64, generator=torch.Generator().manual_seed(1))
    h, o = run_onnx(tmp_path / "m.onnx", x.numpy(), threads=1)
    from bapose import load_model

    loaded = load_model(busy_ckpt)
    knobs = json.loads(props["decode"])
    assert knobs["pose_nms"] == loaded.codec.nms_rule == "oks" and len(knobs["oks_sigmas"]) == 17
    with torch.no_grad():
        ref = decode(loaded.codec, *loaded.net(x))
    got = decode_numpy(h, o, **knobs)
    for r, (poses, scores) in zip(ref, got):
        assert poses.shape == tuple(r.poses.shape) and len(scores) > 0
        assert np.abs(poses - r.poses.numpy()).max() < 1e-3


def test_parity_failure_is_loud(tmp_path, busy_ckpt):
    # tolerance 0: float32 kernels never agree to the last bit, so this must fail and say by how much
    cfg = compose_config([f"ckpt_path={busy_ckpt}", f"output={tmp_path / 'm.onnx'}", "tolerance=0.0", "dynamic=false",
                          "num_threads=1"], config_name="export", output_dir=tmp_path)
    with pytest.raises(ParityError, match=r"max abs difference .* above field 'tolerance' 0"):
        export(cfg)


def _planted_maps(b: int = 2, k: int = 17, h: int = 24, w: int = 40, seed: int = 0):
    g = np.random.default_rng(seed)
    hm = g.random((b, k + 1, h, w)).astype(np.float32) * 0.2
    off = (g.normal(0, 4, (b, 2 * k, h, w))).astype(np.float32)
    for i in range(b):                                # a few clear centers, two of them near each other
        for cy, cx in ((5, 5), (6, 8), (15, 30), (20, 3)):
            hm[i, k, cy, cx] = 0.9 - 0.1 * i
        # (6, 8) regresses nearly the pose of (5, 5): a duplicate every pose NMS rule removes
        dup = off[i, 0::2, 5, 5] + 5 - 8, off[i, 1::2, 5, 5] + 5 - 6
        off[i, 0::2, 6, 8], off[i, 1::2, 6, 8] = dup[0] + 0.05, dup[1] - 0.05
    return hm, off


@pytest.mark.parametrize(("kernel", "refine", "rule", "align"),
                         [(0, 0, "oks", "center"), (5, 0, "oks", "center"), (0, 2, "oks", "center"),
                          (0, 0, "dekr", "center"), (0, 2, "dekr", "center"), (0, 0, "none", "center"),
                          (0, 0, "dekr", "dekr"), (0, 2, "oks", "dekr")])
def test_numpy_decoder_equals_torch_codec(kernel, refine, rule, align):
    hm, off = _planted_maps()
    sigmas = DatasetMeta.coco().sigmas
    codec = BAPoseCodec(input_size=96, nms_kernel=kernel, refine_radius=refine, pose_nms=rule, oks_sigmas=sigmas,
                        max_people_after_nms=5, grid_align=align)
    ref = decode(codec, torch.from_numpy(hm), torch.from_numpy(off))
    got = decode_numpy(hm, off, stride=codec.stride, max_people=codec.max_people,
                       center_threshold=codec.center_threshold, nms_kernel=kernel, refine_radius=refine,
                       pose_nms=rule, oks_sigmas=sigmas, max_people_after_nms=5, grid_align=align)
    assert len(got) == len(ref) == 2
    for r, (poses, scores) in zip(ref, got):
        assert poses.shape == tuple(r.poses.shape) and poses.shape[0] >= 4
        order_t, order_n = np.argsort(-r.scores.numpy(), kind="stable"), np.argsort(-scores, kind="stable")
        np.testing.assert_allclose(poses[order_n], r.poses.numpy()[order_t], atol=1e-4)
        np.testing.assert_allclose(scores[order_n], r.scores.numpy()[order_t], atol=1e-6)
    # one image without the batch axis, and a threshold nobody passes
    single = decode_numpy(hm[0], off[0], nms_kernel=kernel, refine_radius=refine, pose_nms=rule, oks_sigmas=sigmas,
                          max_people_after_nms=5, grid_align=align)
    np.testing.assert_allclose(single[0][0], got[0][0])
    assert decode_numpy(hm, off, center_threshold=1.0)[0][0].shape == (0, 17, 3)
    if align == "dekr":  # the convention changes the answer: x = 4g, not 4g + 1.5
        other = decode_numpy(hm, off, nms_kernel=kernel, refine_radius=refine, pose_nms=rule, oks_sigmas=sigmas,
                             max_people_after_nms=5)
        assert np.abs(other[0][0][:, :, :2] - got[0][0][:, :, :2]).max() >= 1.0


def test_numpy_decoder_recovers_encoded_people(coco_sample):
    gt = json.loads((coco_sample / "test_coco.json").read_text())
    anns = [a for a in gt["annotations"] if a["image_id"] == gt["images"][3]["id"] and a["num_keypoints"] > 0]
    kp = np.asarray([a["keypoints"] for a in anns], np.float64).reshape(-1, 17, 3)
    codec = BAPoseCodec(input_size=(448, 640))
    t = codec.encode(kp, np.asarray([a["area"] for a in anns]))
    (poses, scores), = decode_numpy(t["heatmaps"], t["offsets"])
    ref = decode(codec, torch.from_numpy(t["heatmaps"])[None], torch.from_numpy(t["offsets"])[None])[0]
    np.testing.assert_allclose(poses, ref.poses.numpy(), atol=1e-4)
    vis = kp[..., 2] > 0
    for person, v in zip(kp, vis):                     # every person with a center is found at its labelled joints
        err = np.linalg.norm(poses[:, v, :2] - person[None, v, :2], axis=-1).mean(1).min()
        assert err < 0.5
