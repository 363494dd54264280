"""Converted DEKR checkpoints decode as DEKR's ``tools/valid.py`` does (HRNet/DEKR 7a30313), formula by formula:

- ``lib/utils/transforms.py`` ``resize_align_multi_scale`` / ``get_affine_transform``: the test resize and the map back;
- ``lib/core/inference.py`` ``get_multi_stage_outputs``: the flip test (mirror, move 3 px left, average the poses
  ``p - offset`` with the mirrored ones, heatmaps with their channel permutation); ``get_reg_poses``: joint =
  grid pixel - offset; ``aggregate_results``: poses x (input size / output size);
- ``lib/core/nms.py`` ``get_heat_value``: heatmaps upsampled by ``up_interpolate`` (``align_corners=True`` to
  4h-3 x 4w-3, replicate-padded by 3), read at ``floor`` of the input-pixel joint, clamped; joint score = center
  score x that value;
- ``lib/utils/rescore.py`` ``get_feature`` + ``lib/models/predictOKS.py``: the rescoring net's input and output.

Each test computes DEKR's formula independently here and compares it with what bapose does.
"""

from __future__ import annotations

import json

import cv2
import numpy as np
import pytest
import torch
import torch.nn.functional as F

from bapose.codecs import BAPoseCodec, load_rescore
from bapose.codecs.rescore import dekr_pose_features
from bapose.checkpoints.convert import DEKR_LINKS, convert_dekr_rescore
from bapose.data.metadata import DatasetMeta
from bapose.data.transforms import EvalTransform, dekr_resize_matrix
from bapose.errors import CheckpointError, ConfigError
from bapose.predictor import joint_scores, mirror, predict, rescore

META = DatasetMeta.coco()
K = META.num_keypoints


def dekr_codec(size: int = 128, **kw) -> BAPoseCodec:
    return BAPoseCodec(input_size=size, refine_radius=0, **kw).with_checkpoint_defaults({"grid_align": "dekr"})


def test_grid_convention_and_checkpoint_default():
    ours, dekr = BAPoseCodec(input_size=64), dekr_codec(64)
    assert ours.align == "center" and dekr.align == "dekr" and (ours.flip_shift, dekr.flip_shift) == (0, 3)
    g = torch.tensor([0.0, 1.0, 2.5])
    assert torch.equal(dekr.to_input(g), 4 * g) and torch.equal(dekr.to_grid(4 * g), g)
    assert torch.equal(ours.to_input(g), (g + 0.5) * 4 - 0.5)
    # an explicit setting wins over the checkpoint's; our own checkpoints (no grid_align stored) stay "center"
    assert BAPoseCodec(input_size=64, grid_align="center").with_checkpoint_defaults({"grid_align": "dekr"}).align \
        == "center"
    assert BAPoseCodec(input_size=64).with_checkpoint_defaults({"refine_radius": 2}).align == "center"
    with pytest.raises(ConfigError, match="grid_align"):
        BAPoseCodec(input_size=64, grid_align="corner")


def _dekr_heat_values(heatmaps: torch.Tensor, joints: torch.Tensor) -> torch.Tensor:
    """DEKR: up_interpolate to input size, then the value at (clamp(floor(y)), clamp(floor(x))). ``joints (T, K, 2)``
    in input pixels -> ``(T, K)``."""
    _, c, h, w = heatmaps.shape
    up = F.interpolate(heatmaps, size=(4 * h - 3, 4 * w - 3), mode="bilinear", align_corners=True)
    up = torch.nn.ReplicationPad2d((0, 3, 0, 3))(up)[0]  # (C, 4h, 4w)
    x = joints[..., 0].floor().clamp(0, 4 * w - 1).long()
    y = joints[..., 1].floor().clamp(0, 4 * h - 1).long()
    k = torch.arange(joints.shape[1]).expand_as(x)
    return up[k, y, x]


def test_joint_scores_read_the_heatmaps_where_dekr_does():
    g = torch.Generator().manual_seed(0)
    h, w = 12, 20
    heatmaps = torch.rand(1, K + 1, h, w, generator=g)
    heatmaps[0, K] = 0
    heatmaps[0, K, 5, 7] = 0.9                                        # one center
    offsets = torch.randn(1, 2 * K, h, w, generator=g) * 6            # joints all over the map
    # and some at its edges: left of it, in the replicated last 3 columns / rows, right of it
    for coord, at in ((0, -3.0), (2, 77.5), (4, 200.0), (7, 46.2), (9, 50.0)):
        offsets[0, coord, 5, 7] = at / 4 - (7 if coord % 2 == 0 else 5)
    codec = dekr_codec((4 * h, 4 * w), center_threshold=0.01, max_people=1)
    centers, joints, center_scores, valid = codec.candidates(heatmaps, offsets)
    assert valid.all() and torch.equal(centers[0, 0], torch.tensor([28.0, 20.0]))  # 4 * (7, 5)
    assert torch.allclose(joints[0, 0], 4 * (torch.tensor([7.0, 5.0]) + offsets[0, :, 5, 7].view(K, 2)))
    assert torch.allclose(joints[0, 0, [0, 1, 2], 0], torch.tensor([-3.0, 77.5, 200.0]))
    poses, scores, _ = joint_scores(codec, heatmaps, center_scores, joints)
    want = 0.9 * _dekr_heat_values(heatmaps, joints[0])
    assert torch.allclose(poses[0, :, :, 2], want, atol=1e-6)
    assert torch.allclose(scores[0], want.mean(-1), atol=1e-6)
    # not what our own convention reads (bilinear at (x + 0.5) / 4 - 0.5, zero off the map)
    ours = joint_scores(BAPoseCodec(input_size=(4 * h, 4 * w), refine_radius=0, max_people=1),
                        heatmaps, center_scores, joints)[0]
    assert (ours[0, :, :, 2] - want).abs().max() > 1e-3


def test_flip_test_mirrors_and_moves_three_pixels_like_dekr():
    images = torch.rand(2, 3, 32, 64, generator=torch.Generator().manual_seed(1))
    out = mirror(images, 3)
    w = images.shape[-1]
    # DEKR: torch.flip(image, [3]); image[..., :-3] = image[..., 3:]: column c shows original column W-4-c, the last
    # three columns keep the mirrored values (original columns 2, 1, 0)
    assert torch.equal(out[..., : w - 3], images[..., list(range(w - 4, -1, -1))])
    assert torch.equal(out[..., w - 3:], images[..., [2, 1, 0]])
    assert torch.equal(mirror(images, 0), images.flip(-1))


class LinearNet(torch.nn.Module):
    """A fixed random conv net (stride 4) giving heatmaps in (0, 1) and offsets of a few pixels: not flip-symmetric,
    so any slip in the flip test shows."""

    stride, size_divisor, num_keypoints = 4, 32, K

    def __init__(self) -> None:
        super().__init__()
        g = torch.Generator().manual_seed(3)
        self.w = torch.nn.Parameter(torch.randn(3 * K + 1, 3, 4, 4, generator=g) * 0.3)

    def forward(self, x):
        y = F.conv2d(x, self.w, stride=4)
        return torch.sigmoid(y[:, : K + 1]), 3 * torch.tanh(y[:, K + 1:])


def test_flip_decode_equals_dekr_pose_averaging():
    net = LinearNet()
    images = torch.rand(1, 3, 64, 96, generator=torch.Generator().manual_seed(2))
    codec = dekr_codec((64, 96), center_threshold=-1.0, max_people=5)
    with torch.no_grad():
        ours = predict(net, images, codec, meta=META, flip=True)[0]
        # DEKR, written out: DEKR's net returns d = -our offsets; pose = location - d, in grid pixels
        hm, off = net(images)
        hf, of = net(mirror(images, 3))
    h, w = hm.shape[-2:]
    ys, xs = torch.meshgrid(torch.arange(h, dtype=torch.float32), torch.arange(w, dtype=torch.float32),
                            indexing="ij")
    loc = torch.stack([xs, ys]).view(1, 2, h, w)

    def posemap(o):  # (2K, h, w) of joint positions from our offsets (= location - DEKR's offsets)
        return (loc + o.view(K, 2, h, w)).reshape(2 * K, h, w)

    pose = posemap(off[0])
    pose_f = posemap(of[0]).view(K, 2, h, w)[list(META.flip_index)]
    pose_f[:, 0] = w - pose_f[:, 0] - 1
    pose_avg = (pose + pose_f.reshape(2 * K, h, w).flip(-1)) / 2
    heat = (hm + hf.flip(-1)[:, META.flip_index_with_center()]) / 2
    center = heat[0, K]
    pooled = F.max_pool2d(center[None, None], 3, 1, 1)[0, 0]
    score, idx = (center * (pooled == center)).flatten().topk(5)
    joints = 4 * pose_avg.view(K, 2, -1)[:, :, idx].permute(2, 0, 1)            # (5, K, 2) input pixels
    joint_scores = score[:, None] * _dekr_heat_values(heat, joints)
    got = ours.poses
    # every person we return is one of DEKR's candidates (pose NMS keeps a subset), same joints, same joint scores
    assert len(got) >= 1
    for person in got:
        d = (joints - person[:, :2]).abs().amax((1, 2))
        assert d.min() < 1e-4
        assert torch.allclose(person[:, 2], joint_scores[d.argmin()], atol=1e-5)


@pytest.mark.parametrize("hw", [(480, 640), (427, 640), (640, 427), (500, 500), (97, 131)])
def test_dekr_resize_is_dekrs_warp(hw):
    h, w = hw
    (oh, ow), forward, back = dekr_resize_matrix(h, w, 512)
    short, long_ = (h, w) if h <= w else (w, h)
    s = 512 / short
    long_out = int((512 / short * long_ + 63) // 64 * 64)
    assert (oh, ow) == ((512, long_out) if h <= w else (long_out, 512))
    cx, cy = int(w / 2 + 0.5), int(h / 2 + 0.5)
    # x' = s (x - cx) + W'/2, y' = s (y - cy) + H'/2 (float32 point triples: ~1e-5 relative)
    want = np.array([[s, 0, ow / 2 - s * cx], [0, s, oh / 2 - s * cy]])
    assert np.allclose(forward, want, rtol=1e-5, atol=1e-3)
    assert np.allclose(np.vstack([back, [0, 0, 1]]) @ np.vstack([forward, [0, 0, 1]]), np.eye(3), atol=1e-5)
    image = np.random.default_rng(0).integers(0, 256, (h, w, 3), dtype=np.uint8)
    out = EvalTransform(512, resize="dekr")(image)
    assert np.array_equal(out["image"], cv2.warpAffine(image, forward, (ow, oh)))
    assert np.array_equal(out["input_to_orig"], back) and out["orig_size"] == (h, w)


def _dekr_features(poses: np.ndarray, links) -> np.ndarray:
    """``get_feature`` of DEKR's rescore.py, written out in numpy."""
    a = [p[0] for p in links]
    b = [p[1] for p in links]
    rel = poses[:, a, :2] - poses[:, b, :2]
    length = np.sqrt((rel ** 2).sum(-1))
    norm = np.tile((length[:, 9] + length[:, 11]) / 2, (len(links), 2, 1)).transpose(2, 0, 1)
    norm[norm < 1] = 1
    return np.concatenate([(rel / norm).reshape(len(poses), -1), length / norm[:, :, 0], poses[:, :, 2]], 1)


@pytest.mark.parametrize("name", ["coco", "crowdpose"])
def test_dekr_rescoring_net_converts_with_dekrs_features(tmp_path, name):
    meta = DatasetMeta.preset(name)
    links = DEKR_LINKS[name]
    width = 3 * len(links) + meta.num_keypoints
    assert width == {"coco": 74, "crowdpose": 59}[name]
    g = torch.Generator().manual_seed(0)
    state = {"l1.weight": torch.randn(256, width, generator=g) * 0.2, "l1.bias": torch.randn(256, generator=g) * 0.1,
             "l2.weight": torch.randn(256, 256, generator=g) * 0.1, "l2.bias": torch.randn(256, generator=g) * 0.1,
             "l3.weight": torch.randn(1, 256, generator=g) * 0.1, "l3.bias": torch.tensor([0.3])}
    src = tmp_path / "final_rescore.pth"
    torch.save(state, src)
    summary = convert_dekr_rescore(src, tmp_path / "rescore.pt")
    assert summary["meta"] == name and summary["in_features"] == width
    net = load_rescore(tmp_path / "rescore.pt", num_keypoints=meta.num_keypoints)
    rng = np.random.default_rng(1)
    poses = np.concatenate([rng.uniform(0, 300, (6, meta.num_keypoints, 2)), rng.uniform(0, 1, (6, meta.num_keypoints,
                                                                                                     1))], -1)
    poses[0, :, :2] = 50.0                                            # a collapsed pose: the torso clamp at 1 px
    feats = _dekr_features(poses, links)
    assert np.allclose(dekr_pose_features(torch.from_numpy(poses), links).numpy(), feats, atol=1e-5)
    x = torch.from_numpy(feats).float()
    # PredictOKSNet: l3(relu(l2(relu(l1(x))))), used as it is (no sigmoid)
    want = torch.relu(torch.relu(x @ state["l1.weight"].T + state["l1.bias"]) @ state["l2.weight"].T
                      + state["l2.bias"]) @ state["l3.weight"].T + state["l3.bias"]
    assert torch.allclose(net.predict_oks(torch.from_numpy(poses).float()), want[:, 0], atol=1e-5)
    # in the codec: pose scores x the predicted OKS (DEKR multiplies after its pose NMS, which ranks by heat values)
    codec = BAPoseCodec(input_size=64, rescore_path=str(tmp_path / "rescore.pt"))
    p = torch.from_numpy(poses).float()[None]
    assert torch.allclose(rescore(codec, p, torch.ones(1, 6)), want[:, 0][None], atol=1e-5)


def test_dekr_rescoring_files_that_do_not_fit(tmp_path):
    bad = tmp_path / "x.pth"
    torch.save({"l1.weight": torch.zeros(256, 70), "l1.bias": torch.zeros(256)}, bad)
    with pytest.raises(CheckpointError, match="is not a DEKR rescoring net: missing l2.weight"):
        convert_dekr_rescore(bad, tmp_path / "r.pt")
    torch.save({f"l{i}.{p}": torch.zeros(*((256, 70) if i == 1 else (256, 256) if i == 2 else (1, 256)))
                if p == "weight" else torch.zeros(256 if i < 3 else 1) for i in (1, 2, 3) for p in ("weight", "bias")},
               bad)
    with pytest.raises(ConfigError, match="70 input features match neither of DEKR's link sets"):
        convert_dekr_rescore(bad, tmp_path / "r.pt")
    with pytest.raises(ConfigError, match="DEKR's coco features are 3 x 19 links \\+ 17 joints = 74"):
        convert_dekr_rescore(bad, tmp_path / "r.pt", meta="coco")
    assert json.dumps(DEKR_LINKS["coco"][9]) == "[5, 11]" and json.dumps(DEKR_LINKS["coco"][11]) == "[6, 12]"
