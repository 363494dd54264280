"""Pose rescoring: features, OKS targets (vs pycocotools), MLP fit, save/load, codec wiring, wrong-K files."""

from __future__ import annotations

import contextlib
import io
import json
from pathlib import Path

import numpy as np
import pytest
import torch

from bapose.codecs import BAPoseCodec
from bapose.codecs.rescore import (load_rescore, num_features, oks, pearson, pose_features, save_rescore,
                                   train_rescore, training_set)
from bapose.data.metadata import DatasetMeta
from bapose.errors import ConfigError, DataError
from bapose.predictor import decode, decode_multiscale

META = DatasetMeta.coco()
K = META.num_keypoints


@pytest.fixture(autouse=True)
def _one_thread() -> None:
    torch.set_num_threads(1)


@pytest.fixture(scope="module")
def sample(shared_data: Path) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, np.ndarray]:
    d = shared_data / "coco_sample"
    return training_set(d / "test_coco.json", d / "example_preds.json", META.sigmas, META.skeleton)


@pytest.fixture(scope="module")
def trained(sample) -> torch.nn.Module:
    feats, targets, _, _ = sample
    return train_rescore(feats, targets, epochs=300, lr=1e-3, skeleton=META.skeleton, num_keypoints=K)


def test_features_are_link_vectors_lengths_and_joint_scores() -> None:
    rng = np.random.default_rng(0)
    poses = np.concatenate([rng.uniform(0, 100, (5, K, 2)), rng.uniform(0, 1, (5, K, 1))], -1)
    f = pose_features(poses, META.skeleton)
    n_links = len(META.skeleton)
    assert f.shape == (5, num_features(K, META.skeleton)) == (5, 3 * n_links + K)
    a, b = META.skeleton[3]
    diag = np.hypot(*(poses[1, :, :2].max(0) - poses[1, :, :2].min(0)))
    v = (poses[1, b, :2] - poses[1, a, :2]) / diag
    np.testing.assert_allclose(f[1, [3, n_links + 3, 2 * n_links + 3]].numpy(), [v[0], v[1], np.hypot(*v)], rtol=1e-5)
    np.testing.assert_allclose(f[:, 3 * n_links:].numpy(), poses[..., 2], rtol=1e-6)
    # scale-free and translation-free: a person 3x larger elsewhere in the image has the same features
    moved = poses.copy()
    moved[..., :2] = moved[..., :2] * 3 + 50
    np.testing.assert_allclose(pose_features(moved, META.skeleton).numpy(), f.numpy(), rtol=1e-4, atol=1e-6)


def test_oks_matches_pycocotools(shared_data: Path, sample) -> None:
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    d = shared_data / "coco_sample"
    _, targets, _, _ = sample
    results = json.loads((d / "example_preds.json").read_text())
    with contextlib.redirect_stdout(io.StringIO()):
        gt = COCO(str(d / "test_coco.json"))
        dt = gt.loadRes(str(d / "example_preds.json"))
    ev = COCOeval(gt, dt, "keypoints")
    ev.params.maxDets = [len(results)]  # computeOks keeps the top maxDets[-1] per image: keep every prediction
    ev._prepare()
    checked = 0
    for image_id in sorted(gt.getImgIds()):
        ious = np.asarray(ev.computeOks(image_id, 1))
        gts = ev._gts[image_id, 1]
        dts = sorted(ev._dts[image_id, 1], key=lambda x: -x["score"])[: ev.params.maxDets[-1]]
        usable = np.array([not g["ignore"] for g in gts])  # crowd / no labelled joints: COCO ignores them
        for row, det in zip(ious, dts):
            i = next(j for j, r in enumerate(results)
                     if r["image_id"] == image_id and r["keypoints"] == det["keypoints"])
            assert targets[i].item() == pytest.approx(row[usable].max(), abs=1e-6)
            checked += 1
    assert checked == len(results)
    assert 0.0 <= targets.min() and targets.max() <= 1.0 and targets.max() > 0.9


def test_oks_edge_cases() -> None:
    sig = META.sigmas
    gt = np.zeros((1, K, 3))
    gt[0, :, :2] = np.arange(K)[:, None] * 10.0
    gt[0, :5, 2] = 2  # only 5 labelled joints count
    pred = gt.copy()
    pred[0, 5:, :2] += 1000.0  # unlabelled joints far off: still a perfect match
    assert oks(pred, gt, [1000.0], sig)[0] == pytest.approx(1.0)
    assert oks(pred, np.zeros((0, K, 3)), np.zeros(0), sig).tolist() == [0.0]
    # one labelled joint 1 * sigma-scale off: exp(-1/2) averaged with 4 exact joints
    pred2 = gt.copy()
    area = 400.0
    pred2[0, 0, 0] += np.sqrt(area) * 2 * sig[0]
    assert oks(pred2, gt, [area], sig)[0] == pytest.approx((4 + np.exp(-0.5)) / 5)
    with pytest.raises(DataError, match="expected"):
        oks(pred[:, :14], gt, [area], sig)


def test_trained_net_tracks_oks_better_than_the_raw_score(sample, trained) -> None:
    feats, targets, scores, _ = sample
    assert feats.shape == (73, 3 * len(META.skeleton) + K)
    with torch.no_grad():
        pred = trained(feats)
    assert pred.shape == (73,) and 0.0 <= pred.min() and pred.max() <= 1.0
    raw, fitted = pearson(scores, targets), pearson(pred, targets)
    # in-sample (73 real predictions): the raw score is a decent ranker (~0.82), the MLP fits OKS (~0.99)
    assert raw < 0.9
    assert fitted > raw + 0.1 and fitted > 0.95
    assert torch.nn.functional.mse_loss(pred, targets) < 0.2 * targets.var()


def test_save_load_round_trip_and_wrong_files(tmp_path: Path, sample, trained) -> None:
    feats = sample[0]
    path = tmp_path / "rescore.pt"
    save_rescore(trained, path)
    net = load_rescore(path, num_keypoints=K, skeleton=META.skeleton)
    assert net.skeleton == tuple(META.skeleton) and net.num_keypoints == K and net.hidden == 256
    with torch.no_grad():
        torch.testing.assert_close(net(feats), trained(feats), rtol=0, atol=0)
    with pytest.raises(DataError, match="'num_keypoints' is 17; expected 14"):
        load_rescore(path, num_keypoints=14)
    crowd = DatasetMeta.crowdpose()
    with pytest.raises(DataError, match="'skeleton' differs"):
        load_rescore(path, skeleton=list(META.skeleton[:-1]) + [(0, 16)])
    # a CrowdPose (K=14) net loaded where 17 joints are expected
    small = train_rescore(torch.rand(8, num_features(14, crowd.skeleton)), torch.rand(8), epochs=1, hidden=16,
                          skeleton=crowd.skeleton, num_keypoints=14)
    save_rescore(small, tmp_path / "k14.pt")
    with pytest.raises(DataError, match=r"k14\.pt.*'num_keypoints' is 14; expected 17"):
        load_rescore(tmp_path / "k14.pt", num_keypoints=17)
    (tmp_path / "junk.pt").write_bytes(b"not a torch file")
    with pytest.raises(DataError, match=r"junk\.pt.*unreadable"):
        load_rescore(tmp_path / "junk.pt")
    torch.save({"state_dict": {}, "hidden": 4}, tmp_path / "partial.pt")
    with pytest.raises(DataError, match=r"missing field\(s\) \['in_features', 'skeleton'\]"):
        load_rescore(tmp_path / "partial.pt")


def _people_targets(codec: BAPoseCodec, n: int = 4, size: int = 128) -> tuple[torch.Tensor, torch.Tensor]:
    """Perfect network outputs for ``n`` well-separated synthetic people: ``(1, K+1, h, w)``, ``(1, 2K, h, w)``."""
    rng = np.random.default_rng(1)
    centres = np.array([[32.0, 32.0], [96.0, 32.0], [32.0, 96.0], [96.0, 96.0]])[:n]
    kp = np.concatenate([centres[:, None] + rng.uniform(-20, 20, (n, K, 2)), np.full((n, K, 1), 2.0)], -1)
    t = codec.encode(kp, np.full(n, 1600.0), image_size=(size, size))
    # different peak heights so the people have different raw scores
    heat = torch.from_numpy(t["heatmaps"])[None] * torch.linspace(0.6, 1.0, K + 1)[None, :, None, None]
    return heat, torch.from_numpy(t["offsets"])[None]


def test_codec_rescoring_changes_scores_not_poses(tmp_path: Path, trained) -> None:
    path = tmp_path / "rescore.pt"
    save_rescore(trained, path)
    plain = BAPoseCodec(input_size=128, min_center_area=0.0)
    rescored = BAPoseCodec(input_size=128, min_center_area=0.0, rescore_path=str(path))
    hm, off = _people_targets(plain)
    (a,) = decode(plain, hm, off)
    (b,) = decode(rescored, hm, off)
    assert len(a.poses) == len(b.poses) == 4
    # match people by their joints: identical poses, score multiplied by the predicted OKS
    order_a = torch.argsort(a.poses[:, 0, 0])
    order_b = torch.argsort(b.poses[:, 0, 0])
    torch.testing.assert_close(b.poses[order_b], a.poses[order_a], rtol=0, atol=0)
    expected = a.scores[order_a] * trained.predict_oks(a.poses[order_a])
    torch.testing.assert_close(b.scores[order_b], expected, rtol=1e-5, atol=1e-6)
    assert not torch.allclose(b.scores[order_b], a.scores[order_a], atol=1e-3)
    assert torch.all(b.scores[:-1] >= b.scores[1:])  # NMS output stays sorted by the rescored value
    # multi-scale decoding rescored the same way (one scale = the single-scale result)
    (c,) = decode_multiscale(rescored, [(hm, off)], [(1.0, 1.0)], (128, 128))
    torch.testing.assert_close(c.scores, b.scores)


def test_codec_rejects_missing_and_wrong_k_files(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="rescore_path"):
        BAPoseCodec(input_size=128, rescore_path=str(tmp_path / "missing.pt"))
    crowd = DatasetMeta.crowdpose()
    small = train_rescore(torch.rand(8, num_features(14, crowd.skeleton)), torch.rand(8), epochs=1, hidden=16,
                          skeleton=crowd.skeleton, num_keypoints=14)
    save_rescore(small, tmp_path / "k14.pt")
    codec = BAPoseCodec(input_size=128, min_center_area=0.0, rescore_path=str(tmp_path / "k14.pt"))
    hm, off = _people_targets(codec)
    with pytest.raises(DataError, match=r"k14\.pt.*'num_keypoints' is 14; the network outputs 17"):
        decode(codec, hm, off)
