"""KeypointEvaluator / bapose-score against the reference values of shared/data/README.md and crowdposetools rules."""

from __future__ import annotations

import copy
import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch

from bapose.cli.score import main as score_main
from bapose.data.metadata import DatasetMeta
from bapose.errors import DataError
from bapose.evaluation import KeypointEvaluator, to_coco_results, validate_coco_keypoints

# shared/data/README.md: example_preds.json against test_coco.json (pycocotools 2.0.11 == xtcocotools 1.14.3)
REFERENCE = {"AP": 0.8609, "AP50": 0.9931, "AP75": 0.9109, "APm": 0.7756, "APl": 0.9373, "AR": 0.875, "AR50": 1.0,
             "AR75": 0.9167, "ARm": 0.78, "ARl": 0.9429}


def load(path: Path) -> dict:
    return json.loads(path.read_text())


def gt_as_results(gt: dict) -> list[dict]:
    return [{"image_id": a["image_id"], "category_id": 1, "keypoints": a["keypoints"], "score": 1.0}
            for a in gt["annotations"] if any(v > 0 for v in a["keypoints"][2::3])]


@pytest.mark.parametrize("backend", ["pycocotools", "faster"])
def test_reference_values(coco_sample: Path, backend: str) -> None:
    ev = KeypointEvaluator(coco_sample / "test_coco.json", DatasetMeta.coco(), backend=backend)
    ev.add_results(load(coco_sample / "example_preds.json"))
    stats = ev.compute()
    assert list(stats) == list(REFERENCE)
    for k, v in REFERENCE.items():
        assert round(stats[k], 4) == pytest.approx(v, abs=1e-9), k


@pytest.mark.parametrize("backend", ["pycocotools", "faster"])
def test_cli_reproduces_reference(coco_sample: Path, backend: str, capsys: pytest.CaptureFixture) -> None:
    rc = score_main([str(coco_sample / "test_coco.json"), str(coco_sample / "example_preds.json"), "--backend",
                     backend, "--json"])
    assert rc == 0
    stats = json.loads(capsys.readouterr().out)
    assert {k: round(v, 4) for k, v in stats.items()} == REFERENCE
    assert score_main([str(coco_sample / "test_coco.json"), str(coco_sample / "example_preds.json")]) == 0
    assert "| 0.8609 | 0.9931 |" in capsys.readouterr().out


@pytest.mark.parametrize("backend", ["pycocotools", "faster"])
def test_coco_gt_against_itself_is_one(coco_sample: Path, backend: str) -> None:
    gt = load(coco_sample / "test_coco.json")
    ev = KeypointEvaluator(gt, DatasetMeta.coco(), backend=backend)
    ev.add_results(gt_as_results(gt))
    assert all(v == 1.0 for v in ev.compute().values())


@pytest.mark.parametrize("backend", ["pycocotools", "faster"])
def test_crowdpose_gt_against_itself_is_one_in_every_subset(crowdpose_sample: Path, backend: str) -> None:
    gt = load(crowdpose_sample / "test_crowdpose.json")
    ev = KeypointEvaluator(gt, DatasetMeta.crowdpose(), mode="crowdpose", backend=backend)
    ev.add_results(gt_as_results(gt))
    stats = ev.compute()
    # both images have crowdIndex in [0.2, 0.8): easy and hard have no image -> NaN
    assert math.isnan(stats["AP_easy"]) and math.isnan(stats["AP_hard"])
    assert all(stats[k] == 1.0 for k in ("AP", "AP50", "AP75", "AR", "AR50", "AR75", "AP_medium"))
    gt["images"][0]["crowdIndex"], gt["images"][1]["crowdIndex"] = 0.1, 0.9
    ev = KeypointEvaluator(gt, DatasetMeta.crowdpose(), mode="crowdpose", backend=backend)
    ev.add_results(gt_as_results(gt))
    stats = ev.compute()
    assert stats["AP_easy"] == 1.0 and stats["AP_hard"] == 1.0 and math.isnan(stats["AP_medium"])


# shared/data/README.md: crowdpose_sample/example_preds.json against test_crowdpose.json under CrowdPose rules
# (xtcocotools 1.14.3 keypoints_crowd, use_area=False = official crowdposetools); no easy or hard image there
CROWDPOSE_REFERENCE = {"AP": 0.3974, "AP50": 0.8, "AP75": 0.5, "AR": 0.7, "AR50": 1.0, "AR75": 1.0,
                       "AP_medium": 0.3974}


@pytest.mark.parametrize("backend", ["pycocotools", "faster"])
def test_crowdpose_reference_values_pin_the_oks_scale(crowdpose_sample: Path, backend: str) -> None:
    """The shared case whose AP depends on the CrowdPose OKS scale (bbox w*h*0.53): its reference values, and the
    README's .3674 when the scale is w*h*0.5 (the boxes' widths x 0.5/0.53 make the evaluator's 0.53 scale that)."""
    preds = load(crowdpose_sample / "example_preds.json")
    ev = KeypointEvaluator(crowdpose_sample / "test_crowdpose.json", DatasetMeta.crowdpose(), mode="crowdpose",
                           backend=backend)
    ev.add_results(preds)
    stats = ev.compute()
    for k, v in CROWDPOSE_REFERENCE.items():
        assert round(stats[k], 4) == pytest.approx(v, abs=1e-9), k
    assert math.isnan(stats["AP_easy"]) and math.isnan(stats["AP_hard"])  # README: -1 / null, no such image
    gt = load(crowdpose_sample / "test_crowdpose.json")
    for ann in gt["annotations"]:
        ann["bbox"][2] *= 0.5 / 0.53
    ev = KeypointEvaluator(gt, DatasetMeta.crowdpose(), mode="crowdpose", backend=backend)
    ev.add_results(preds)
    assert round(ev.compute()["AP"], 4) == 0.3674


def noisy_results(gt: dict, seed: int, scale: float) -> list[dict]:
    rng = np.random.default_rng(seed)
    out = []
    for r in gt_as_results(gt):
        kp = np.asarray(r["keypoints"], float).reshape(-1, 3)
        kp[:, :2] += rng.normal(0, scale, (len(kp), 2))
        out.append({**r, "keypoints": kp.reshape(-1).tolist(), "score": float(rng.uniform(0.1, 1))})
    return out


def test_crowdpose_rules_match_faster_coco_eval_keypoints_crowd(crowdpose_sample: Path, tmp_path: Path) -> None:
    """Our CrowdPose scoring == faster-coco-eval's own ``keypoints_crowd`` / ``use_area=False`` (crowdposetools)."""
    from faster_coco_eval import COCO, COCOeval_faster

    gt = load(crowdpose_sample / "test_crowdpose.json")
    gt["images"][0]["crowdIndex"] = 0.9  # one hard and one medium image
    path = tmp_path / "gt.json"
    path.write_text(json.dumps(gt))
    results = noisy_results(gt, 0, 6.0)
    cocogt = COCO(str(path))
    ref = COCOeval_faster(cocogt, cocogt.loadRes(copy.deepcopy(results)), "keypoints_crowd",
                          kpt_oks_sigmas=list(DatasetMeta.crowdpose().sigmas), use_area=False,
                          print_function=lambda *a: None)
    ref.evaluate()
    ref.accumulate()
    ref.summarize()
    expected = dict(zip(("AP", "AP50", "AP75", "AR", "AR50", "AR75", "AP_easy", "AP_medium", "AP_hard"),
                        ref.all_stats))
    for backend in ("pycocotools", "faster"):
        ev = KeypointEvaluator(path, DatasetMeta.crowdpose(), mode="crowdpose", backend=backend)
        ev.add_results(results)
        stats = ev.compute()
        assert 0.1 < stats["AP"] < 0.99  # the noise makes the comparison meaningful
        for k in ("AP", "AP50", "AP75", "AR", "AR50", "AR75", "AP_medium", "AP_hard"):
            assert stats[k] == pytest.approx(expected[k], abs=1e-4), (backend, k)


def test_custom_keypoint_set_uses_meta_sigmas() -> None:
    meta = DatasetMeta.build("tri", keypoints=["a", "b", "c"], sigmas=[0.05, 0.1, 0.2])
    gt = {"images": [{"id": 1, "width": 100, "height": 100}],
          "annotations": [{"id": 1, "image_id": 1, "keypoints": [10, 10, 2, 50, 50, 2, 90, 20, 2], "area": 2500.0,
                           "bbox": [10, 10, 80, 40], "num_keypoints": 3, "iscrowd": 0, "category_id": 1}]}
    shift = 8.0
    pred = np.array([[[10 + shift, 10, 1], [50 + shift, 50, 1], [90 + shift, 20, 1]]], float)
    var = (2 * meta.sigmas_array) ** 2
    oks = np.mean(np.exp(-(shift**2) / var / (2500.0 + np.spacing(1)) / 2))
    expected_ap = np.mean([oks >= t for t in np.linspace(0.5, 0.95, 10)])
    assert 0.1 < expected_ap < 0.9
    for backend in ("pycocotools", "faster"):
        ev = KeypointEvaluator(gt, meta, backend=backend)
        ev.update([1], [pred], [np.array([0.9])])
        assert ev.compute()["AP"] == pytest.approx(expected_ap), backend


def test_repeated_image_ids_are_dropped(coco_sample: Path) -> None:
    gt = load(coco_sample / "test_coco.json")
    preds = load(coco_sample / "example_preds.json")
    ev = KeypointEvaluator(gt, DatasetMeta.coco())
    ev.add_results(preds)
    ev.add_results([p for p in preds if p["image_id"] == 785])  # a DistributedSampler pad repeats image 785
    assert round(ev.compute()["AP"], 4) == REFERENCE["AP"]


def test_compute_gathers_ranks_and_drops_padded_repeats(coco_sample: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    preds = load(coco_sample / "example_preds.json")
    ids = sorted({p["image_id"] for p in preds})
    ev0 = KeypointEvaluator(coco_sample / "test_coco.json", DatasetMeta.coco())
    ev1 = KeypointEvaluator(coco_sample / "test_coco.json", DatasetMeta.coco())
    ev0.add_results([p for p in preds if p["image_id"] in ids[:2]])
    ev1.add_results([p for p in preds if p["image_id"] in ids[2:] + ids[:1]])  # rank 1 pads with image ids[0]
    dist = torch.distributed
    monkeypatch.setattr(dist, "is_available", lambda: True)
    monkeypatch.setattr(dist, "is_initialized", lambda: True)
    monkeypatch.setattr(dist, "get_world_size", lambda: 2)
    monkeypatch.setattr(dist, "get_rank", lambda: 0)

    def gather_object(obj: object, out: list | None, dst: int = 0) -> None:  # one gather, to rank 0
        assert dst == 0 and out is not None
        out[0], out[1] = obj, list(ev1._results.items())

    monkeypatch.setattr(dist, "gather_object", gather_object)
    monkeypatch.setattr(dist, "broadcast_object_list", lambda box, src=0: None)
    assert round(ev0.compute()["AP"], 4) == REFERENCE["AP"]
    # rank 0 keeps what it gathered (val_results.json / results.json): every image once
    assert sorted(ev0.gathered) == ids and ev0.gathered[ids[0]] == ev0._results[ids[0]]


def test_empty_results_warn_and_score_zero(coco_sample: Path) -> None:
    ev = KeypointEvaluator(coco_sample / "test_coco.json", DatasetMeta.coco())
    ev.update([785], [np.zeros((0, 17, 3))], [np.zeros(0)])
    with pytest.warns(UserWarning, match="no predictions"):
        stats = ev.compute()
    assert stats["AP"] == 0.0 and stats["AR"] == 0.0


def test_unknown_image_ids_raise(coco_sample: Path) -> None:
    ev = KeypointEvaluator(coco_sample / "test_coco.json", DatasetMeta.coco())
    with pytest.raises(DataError, match=r"\[123456789\]"):
        ev.update([785, 123456789], [np.zeros((1, 17, 3))] * 2, [np.ones(1)] * 2)


@pytest.mark.parametrize(("field", "value", "message"), [
    ("keypoints", [1, 2, 2] * 16, "51"),
    ("keypoints", [float("nan")] + [1] * 50, "NaN"),
    ("bbox", [10, 10, -5, 20], "negative"),
])
def test_bad_ground_truth_names_annotation_and_field(coco_sample: Path, field: str, value: list,
                                                     message: str) -> None:
    gt = load(coco_sample / "test_coco.json")
    gt["annotations"][3][field] = value
    ann_id = gt["annotations"][3]["id"]
    with pytest.raises(DataError, match=message) as err:
        validate_coco_keypoints(gt, DatasetMeta.coco(), "test_coco.json")
    assert f"annotation id {ann_id}" in str(err.value) and f"field '{field}'" in str(err.value)
    assert "test_coco.json" in str(err.value)
    with pytest.raises(DataError, match=f"annotation id {ann_id}"):
        KeypointEvaluator(gt, DatasetMeta.coco())


def test_wrong_joint_count_for_meta_and_cli_errors(crowdpose_sample: Path, tmp_path: Path,
                                                   capsys: pytest.CaptureFixture) -> None:
    with pytest.raises(DataError, match="14 keypoints; expected 17"):
        KeypointEvaluator(crowdpose_sample / "test_crowdpose.json", DatasetMeta.coco(), mode="crowdpose")
    bad = tmp_path / "res.json"
    bad.write_text(json.dumps([{"image_id": 1, "keypoints": [0] * 42, "score": 1.0}]))
    assert score_main([str(crowdpose_sample / "test_crowdpose.json"), str(bad)]) == 2
    assert "image ids [1]" in capsys.readouterr().err


def test_to_coco_results_format() -> None:
    poses = [torch.tensor([[[1.0, 2.0, 0.5], [3.0, 4.0, 0.25]]]), np.zeros((0, 2, 3))]
    res = to_coco_results([7, 8], poses, [torch.tensor([0.75]), np.zeros(0)])
    assert res == [{"image_id": 7, "category_id": 1, "keypoints": [1.0, 2.0, 0.5, 3.0, 4.0, 0.25], "score": 0.75}]
