"""OKS, the one implementation (bapose.codecs.oks), against pycocotools' own COCOeval.computeOks on the real samples.

- between poses (what pose NMS compares, MMPose's ``oks_iou``): the predictions of ``coco_sample/example_preds.json``
  (73 real detections) and ``crowdpose_sample/example_preds.json`` against each other; the reference is computeOks
  with one pose as the detection and the other as a ground truth whose every joint is labelled and whose ``area`` is
  the mean of the two joint-box areas, the areas being the ones pycocotools' ``loadRes`` computes for each result;
- against the ground truth (rescoring targets, the codec upper bound): CrowdPose's rules, whose OKS scale is the box
  ``w * h * 0.53`` and whose sigmas are CrowdPose's (the values of ``../shared/data/README.md``).

COCO's sigmas come from pycocotools (``Params.kpt_oks_sigmas``), CrowdPose's from the README: a wrong sigma in our
joint sets, a wrong scale (sum or a single area instead of the mean, w*h*0.5) or a wrong constant fails here.
"""

from __future__ import annotations

import contextlib
import copy
import io
import json
from pathlib import Path

import numpy as np
import pytest
import torch

from bapose.codecs import BAPoseCodec
from bapose.codecs.grouping import greedy_nms
from bapose.codecs.oks import gt_oks_scale, oks_matrix, pose_oks, resolve_sigmas
from bapose.codecs.rescore import oks
from bapose.data.metadata import DatasetMeta
from bapose.predictor import remove_duplicates

pycocotools = pytest.importorskip("pycocotools")
from pycocotools.coco import COCO  # noqa: E402
from pycocotools.cocoeval import COCOeval, Params  # noqa: E402

# ../shared/data/README.md: CrowdPose sigmas in the order of its 14 joints, OKS scale bbox w*h*0.53
CROWDPOSE_SIGMAS = np.array([.79, .79, .72, .72, .62, .62, 1.07, 1.07, .87, .87, .89, .89, .79, .79]) / 10
CROWDPOSE_SCALE = 0.53
SAMPLES = {"coco": ("coco_sample", "test_coco.json", DatasetMeta.coco()),
           "crowdpose": ("crowdpose_sample", "test_crowdpose.json", DatasetMeta.crowdpose())}


def _reference_sigmas(mode: str) -> np.ndarray:
    return Params(iouType="keypoints").kpt_oks_sigmas if mode == "coco" else CROWDPOSE_SIGMAS


def _coco(dataset: dict) -> COCO:
    with contextlib.redirect_stdout(io.StringIO()):
        c = COCO()
        c.dataset = copy.deepcopy(dataset)
        c.createIndex()
    return c


def _compute_oks(gt: dict, results: list[dict], sigmas: np.ndarray, image_id: int) -> np.ndarray:
    """pycocotools' ``computeOks`` of ``results`` (rows, in the order given) against ``gt``'s people (columns)."""
    coco = _coco(gt)
    with contextlib.redirect_stdout(io.StringIO()):
        dt = coco.loadRes(copy.deepcopy(results))
        ev = COCOeval(coco, dt, "keypoints")
    ev.params.kpt_oks_sigmas = np.asarray(sigmas)
    ev.params.maxDets = [len(results) + 1]  # computeOks keeps the top maxDets[-1]: keep every result
    ev.params.imgIds = [image_id]
    ev._prepare()
    # computeOks sorts the results by score (stable); give them strictly decreasing scores in our order
    return np.asarray(ev.computeOks(image_id, 1))


def _results_areas(gt: dict, results: list[dict]) -> np.ndarray:
    """The ``area`` pycocotools' ``loadRes`` gives each keypoint result (its joint box)."""
    with contextlib.redirect_stdout(io.StringIO()):
        dt = _coco(gt).loadRes(copy.deepcopy(results))
    return np.asarray([dt.anns[i + 1]["area"] for i in range(len(results))])


def _pose_pose_reference(gt: dict, preds: list[dict], k: int, sigmas: np.ndarray) -> np.ndarray:
    """``(M, M)`` OKS between the predictions ``preds`` of one image, by computeOks: row ``a`` is ``preds[a]`` as the
    detection against every prediction ``b`` as a fully labelled ground truth with area = mean of the two areas."""
    image_id = preds[0]["image_id"]
    ranked = [{**p, "score": 1.0} for p in preds]
    areas = _results_areas(gt, ranked)
    out = np.zeros((len(preds), len(preds)))
    for a, det in enumerate(ranked):
        people = []
        for b, other in enumerate(preds):
            kp = np.asarray(other["keypoints"], np.float64).reshape(k, 3)
            kp[:, 2] = 2  # every joint labelled: pose NMS compares every joint
            x, y = kp[:, 0], kp[:, 1]
            people.append({"id": b + 1, "image_id": image_id, "category_id": 1, "iscrowd": 0, "num_keypoints": k,
                           "keypoints": kp.reshape(-1).tolist(), "area": (areas[a] + areas[b]) / 2,
                           "bbox": [x.min(), y.min(), x.max() - x.min(), y.max() - y.min()]})
        data = {"images": [{"id": image_id, "width": 1000, "height": 1000}], "annotations": people,
                "categories": gt["categories"]}
        out[a] = _compute_oks(data, [det], sigmas, image_id)[0]
    return out


def _predictions(shared_data: Path, mode: str) -> tuple[dict, dict[int, list[dict]]]:
    folder, gt_name, _ = SAMPLES[mode]
    gt = json.loads((shared_data / folder / gt_name).read_text())
    by_image: dict[int, list[dict]] = {}
    for r in json.loads((shared_data / folder / "example_preds.json").read_text()):
        by_image.setdefault(r["image_id"], []).append(r)
    return gt, by_image


@pytest.mark.parametrize("mode", ["coco", "crowdpose"])
def test_oks_between_poses_is_pycocotools_computeoks(shared_data: Path, mode: str) -> None:
    """The OKS pose NMS compares, with the joint set's own sigmas as the codec gets them, equals computeOks."""
    gt, by_image = _predictions(shared_data, mode)
    meta = SAMPLES[mode][2]
    k = meta.num_keypoints
    codec = BAPoseCodec(input_size=512, oks_sigmas=meta.sigmas)  # as the datamodule / load_model fill them
    sigmas = resolve_sigmas(codec.oks_sigmas, k)
    pairs = 0
    for preds in by_image.values():
        xy = np.asarray([p["keypoints"] for p in preds], np.float64).reshape(-1, k, 3)
        want = _pose_pose_reference(gt, preds, k, _reference_sigmas(mode))
        np.testing.assert_allclose(pose_oks(xy, sigmas), want, rtol=0, atol=1e-9)
        pairs += len(preds) * (len(preds) - 1)
        assert (want[~np.eye(len(preds), dtype=bool)] < 1).all()  # real, distinct poses: not a trivial 1
    assert pairs >= (900 if mode == "coco" else 10)
    # what a wrong rule would give is far from it: the sum of the two areas, one area, or another joint set's sigmas
    preds = max(by_image.values(), key=len)
    xy = np.asarray([p["keypoints"] for p in preds], np.float64).reshape(-1, k, 3)
    want = _pose_pose_reference(gt, preds, k, _reference_sigmas(mode))
    area = np.prod(xy[..., :2].max(1) - xy[..., :2].min(1), axis=-1)
    off = ~np.eye(len(preds), dtype=bool)
    for wrong in (oks_matrix(xy, xy, area[:, None] + area[None], sigmas),
                  oks_matrix(xy, xy, np.broadcast_to(area, (len(xy), len(xy))), sigmas),
                  pose_oks(xy, np.full(k, 0.079))):
        assert np.abs(wrong - want)[off].max() > 1e-3


@pytest.mark.parametrize("mode", ["coco", "crowdpose"])
@pytest.mark.parametrize("threshold", [0.1, 0.3, 0.6, 0.9])
def test_pose_nms_by_oks_keeps_what_computeoks_says(shared_data: Path, mode: str, threshold: float) -> None:
    """remove_duplicates under pose_nms=oks keeps exactly the greedy set the reference OKS matrix gives."""
    gt, by_image = _predictions(shared_data, mode)
    meta = SAMPLES[mode][2]
    k = meta.num_keypoints
    codec = BAPoseCodec(input_size=512, pose_nms="oks", pose_nms_oks=threshold, oks_sigmas=meta.sigmas,
                        max_people_after_nms=100)
    removed = 0
    for preds in by_image.values():
        poses = torch.tensor([p["keypoints"] for p in preds], dtype=torch.float64).reshape(-1, k, 3)
        scores = torch.tensor([p["score"] for p in preds], dtype=torch.float64)
        want = greedy_nms(_pose_pose_reference(gt, preds, k, _reference_sigmas(mode)) > threshold, scores.numpy())
        got = remove_duplicates(codec, poses, scores).tolist()
        assert got == want
        removed += len(preds) - len(got)
    if mode == "coco" and threshold < 0.9:
        assert removed > 0  # the 73 detections hold near-duplicates: the rule decides something


def test_oks_with_the_ground_truth_under_crowdpose_rules_is_computeoks(shared_data: Path) -> None:
    """Rescoring targets / the upper bound on CrowdPose: box w*h*0.53 as the scale, CrowdPose's sigmas."""
    gt, by_image = _predictions(shared_data, "crowdpose")
    meta = DatasetMeta.crowdpose()
    k = meta.num_keypoints
    reference = copy.deepcopy(gt)
    for ann in reference["annotations"]:
        ann["area"] = ann["bbox"][2] * ann["bbox"][3] * CROWDPOSE_SCALE
    checked = 0
    for image_id, preds in by_image.items():
        anns = [a for a in gt["annotations"] if a["image_id"] == image_id]
        ranked = [{**p, "score": 1.0 - 0.01 * i} for i, p in enumerate(preds)]
        want = _compute_oks(reference, ranked, CROWDPOSE_SIGMAS, image_id)  # (M, N) over this image's people
        kp = np.asarray([a["keypoints"] for a in anns], np.float64).reshape(-1, k, 3)
        labelled = kp[..., 2] > 0
        usable = labelled.any(1)
        scale = np.asarray([gt_oks_scale(a, "crowdpose") for a in anns])
        pred = np.asarray([p["keypoints"] for p in preds], np.float64).reshape(-1, k, 3)
        got = oks_matrix(pred, kp, scale, meta.sigmas, labelled)
        np.testing.assert_allclose(got[:, usable], want[:, usable], rtol=0, atol=1e-9)
        np.testing.assert_allclose(oks(pred, kp[usable], scale[usable], meta.sigmas), want[:, usable].max(1),
                                   rtol=0, atol=1e-9)
        checked += int(usable.sum()) * len(preds)
    assert checked >= 10
    # COCO's rule on the same file (the box area, no 0.53) gives other numbers
    ann = gt["annotations"][0]
    assert gt_oks_scale(ann, "coco") == pytest.approx(gt_oks_scale(ann, "crowdpose") / CROWDPOSE_SCALE)
