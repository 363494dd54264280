"""COCO / CrowdPose keypoint AP: results formatting, ground-truth validation and a DDP-aware evaluator.

Scoring is delegated to pycocotools or faster-coco-eval (identical numbers, faster-coco-eval ~2.4x faster). CrowdPose
follows the official crowdposetools rules (shared/data/README.md): OKS scale = bbox w*h*0.53 instead of ``area``,
AP over area 'all', and easy / medium / hard = images with ``crowdIndex`` < 0.2 / [0.2, 0.8) / >= 0.8, each subset
re-scored. A stat with no ground truth behind it (an empty crowd subset, no medium-sized people) is NaN, where
pycocotools writes -1 (a 0 would read as a failure).
"""

from __future__ import annotations

import contextlib
import copy
import io
import json
import math
import warnings
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from bapose.data.metadata import DatasetMeta
from bapose.errors import DataError, where

COCO_KEYS = ("AP", "AP50", "AP75", "APm", "APl", "AR", "AR50", "AR75", "ARm", "ARl")
CROWDPOSE_KEYS = ("AP", "AP50", "AP75", "AR", "AR50", "AR75", "AP_easy", "AP_medium", "AP_hard")
# crowdposetools' easy / medium / hard split of images by crowdIndex
CROWD_SPLITS = (("AP_easy", -math.inf, 0.2), ("AP_medium", 0.2, 0.8), ("AP_hard", 0.8, math.inf))


def _distributed() -> bool:
    return torch.distributed.is_available() and torch.distributed.is_initialized() \
        and torch.distributed.get_world_size() > 1


def _numpy(x: Any) -> np.ndarray:
    if isinstance(x, torch.Tensor):
        return x.detach().float().cpu().numpy()
    return np.asarray(x, dtype=np.float64)


def to_coco_results(image_ids: Sequence[int], poses: Sequence[Any], scores: Sequence[Any],
                    category_id: int = 1) -> list[dict]:
    """People of several images -> COCO keypoint results (``image_id``, ``category_id``, ``keypoints``, ``score``).

    Args:
        image_ids: one id per image.
        poses: per image ``(M, K, 3)`` (x, y, joint score) in original image pixels (numpy or torch).
        scores: per image ``(M,)``.
    """
    if not (len(image_ids) == len(poses) == len(scores)):
        raise DataError(f"to_coco_results: {len(image_ids)} image ids, {len(poses)} pose sets and {len(scores)} score "
                        "sets; expected one of each per image")
    out = []
    for img, p, s in zip(image_ids, poses, scores):
        p, s = _numpy(p), _numpy(s).reshape(-1)
        if p.size == 0:
            continue
        if p.ndim != 3 or p.shape[2] != 3 or p.shape[0] != s.shape[0]:
            raise DataError(f"to_coco_results: image {img}: poses {p.shape} and scores {s.shape}; expected (M, K, 3) "
                            "and (M,)")
        for person, sc in zip(p, s):
            out.append({"image_id": int(img), "category_id": int(category_id),
                        "keypoints": [round(float(v), 3) for v in person.reshape(-1)], "score": float(sc)})
    return out


def validate_coco_keypoints(gt: Mapping, meta: DatasetMeta, file: object = None, require_area: bool = False) -> None:
    """Check a COCO-format keypoint ground truth; raise :class:`DataError` naming file, annotation id and field.

    Checks: ``images`` / ``annotations`` lists, unique image ids, every annotation's ``image_id`` known,
    ``keypoints`` a list of 3K finite numbers, ``bbox`` 4 finite numbers with non-negative width and height, ``area``
    finite and >= 0 (present when ``require_area``), keypoint category names of length K.
    """
    k = meta.num_keypoints
    for key in ("images", "annotations"):
        if not isinstance(gt.get(key), list):
            raise DataError(f"{where(file, key)}: missing or not a list; expected a COCO-format keypoint file")
    image_ids = set()
    for i, img in enumerate(gt["images"]):
        if not isinstance(img, Mapping) or "id" not in img:
            raise DataError(f"{where(file, f'images[{i}].id')}: missing; expected an image id")
        if img["id"] in image_ids:
            raise DataError(f"{where(file, 'images.id')}: image id {img['id']} appears twice; expected unique ids")
        image_ids.add(img["id"])
    for cat in gt.get("categories", []) or []:
        names = cat.get("keypoints") if isinstance(cat, Mapping) else None
        if names is not None and len(names) != k:
            raise DataError(f"{where(file, 'categories.keypoints')}: category '{cat.get('name')}' has {len(names)} "
                            f"keypoints; expected {k} ({meta.name})")
    for i, ann in enumerate(gt["annotations"]):
        aid = ann.get("id", f"#{i}") if isinstance(ann, Mapping) else f"#{i}"
        if not isinstance(ann, Mapping):
            raise DataError(f"{where(file, ann_id=aid)}: not an object; expected a COCO annotation")
        if ann.get("image_id") not in image_ids:
            raise DataError(f"{where(file, 'image_id', aid)}: image id {ann.get('image_id')!r} is not in 'images'")
        kp = ann.get("keypoints")
        if not isinstance(kp, (list, tuple)) or len(kp) != 3 * k:
            got = len(kp) if isinstance(kp, (list, tuple)) else type(kp).__name__
            raise DataError(f"{where(file, 'keypoints', aid)}: {got} values; expected {3 * k} (x, y, v for {k} "
                            f"{meta.name} joints)")
        try:
            arr = np.asarray(kp, dtype=np.float64)
        except (TypeError, ValueError) as e:
            raise DataError(f"{where(file, 'keypoints', aid)}: non-numeric values ({e}); expected numbers") from None
        if not np.isfinite(arr).all():
            raise DataError(f"{where(file, 'keypoints', aid)}: NaN or infinite coordinate at joint(s) "
                            f"{sorted(set((np.nonzero(~np.isfinite(arr))[0] // 3).tolist()))}; expected finite numbers")
        box = ann.get("bbox")
        if box is not None:
            b = np.asarray(box, dtype=np.float64) if isinstance(box, (list, tuple)) else np.zeros(0)
            if b.shape != (4,) or not np.isfinite(b).all():
                raise DataError(f"{where(file, 'bbox', aid)}: {box!r}; expected 4 finite numbers [x, y, w, h]")
            if b[2] < 0 or b[3] < 0:
                raise DataError(f"{where(file, 'bbox', aid)}: negative width/height {box!r}; expected w, h >= 0")
        elif require_area:
            raise DataError(f"{where(file, 'bbox', aid)}: missing; expected [x, y, w, h]")
        if "area" in ann:
            a = ann["area"]
            if not isinstance(a, (int, float)) or not math.isfinite(a) or a < 0:
                raise DataError(f"{where(file, 'area', aid)}: {a!r}; expected a finite number >= 0")
        elif require_area:
            raise DataError(f"{where(file, 'area', aid)}: missing; COCO-mode OKS needs the segment area "
                            "(use mode='crowdpose' for files without it)")


def _load_gt(gt: str | Path | Mapping) -> tuple[dict, str]:
    if isinstance(gt, Mapping):
        return copy.deepcopy(dict(gt)), "<dict>"
    path = Path(gt)
    try:
        with open(path) as f:
            return json.load(f), str(path)
    except FileNotFoundError:
        raise DataError(f"{where(path)}: not found; expected a COCO-format keypoint json") from None
    except json.JSONDecodeError as e:
        raise DataError(f"{where(path)}: not valid json ({e})") from None


class KeypointEvaluator:
    """COCO / CrowdPose keypoint AP over torch.distributed ranks.

    Args:
        gt: ground-truth json path or COCO dict.
        meta: dataset metadata (K and OKS sigmas; any custom K works).
        mode: ``"coco"`` (OKS scale = ``area``; AP, AP50, AP75, APm, APl, AR, ...) or ``"crowdpose"``
            (OKS scale = bbox w*h*0.53; AP, AP50, AP75, AR, AR50, AR75, AP_easy, AP_medium, AP_hard).
        backend: ``"pycocotools"`` or ``"faster"`` (faster-coco-eval); None picks pycocotools for COCO and
            faster-coco-eval for CrowdPose. Both give the same numbers.
        only_seen_images: score only the images passed to :meth:`update` (useful with limited validation batches);
            by default every image of the ground truth counts, as in the official protocol.
        category_id: category of the results.
    """

    def __init__(self, gt: str | Path | Mapping, meta: DatasetMeta, mode: str = "coco", backend: str | None = None,
                 only_seen_images: bool = False, category_id: int = 1) -> None:
        if mode not in ("coco", "crowdpose"):
            raise DataError(f"KeypointEvaluator: mode '{mode}'; expected 'coco' or 'crowdpose'")
        backend = backend or ("pycocotools" if mode == "coco" else "faster")
        if backend not in ("pycocotools", "faster"):
            raise DataError(f"KeypointEvaluator: backend '{backend}'; expected 'pycocotools' or 'faster'")
        self.meta, self.mode, self.backend = meta, mode, backend
        self.only_seen_images, self.category_id = only_seen_images, category_id
        self.gt, self.file = _load_gt(gt)
        validate_coco_keypoints(self.gt, meta, self.file, require_area=(mode == "coco"))
        for ann in self.gt["annotations"]:
            # pycocotools reads these unconditionally; CrowdPose files lack some of them
            ann.setdefault("iscrowd", 0)
            ann.setdefault("category_id", category_id)
            ann.setdefault("num_keypoints", int(np.count_nonzero(np.asarray(ann["keypoints"][2::3]) > 0)))
            if mode == "crowdpose":
                # crowdposetools' OKS scale. Writing it into `area` makes pycocotools compute crowdposetools' OKS;
                # with only area range 'all' reported, `area` has no other effect.
                x, y, w, h = ann.get("bbox", (0, 0, 0, 0))
                ann["area"] = float(w) * float(h) * 0.53
        self.gt.setdefault("categories", [{"id": category_id, "name": "person",
                                           "keypoints": list(meta.keypoints)}])
        self.image_ids = {img["id"] for img in self.gt["images"]}
        self.reset()

    # ------------------------------------------------------------------ accumulation
    def reset(self) -> None:
        self._results: dict[int, list[dict]] = {}
        self.gathered: dict[int, list[dict]] = {}

    def update(self, image_ids: Sequence[int], poses: Sequence[Any], scores: Sequence[Any]) -> None:
        """Add the people of several images; poses ``(M, K, 3)`` in original image pixels, scores ``(M,)``.

        A repeated image id keeps its first results (DistributedSampler pads the last batch with repeats).
        """
        ids = [int(i.item()) if isinstance(i, torch.Tensor) else int(i) for i in image_ids]
        unknown = sorted(set(ids) - self.image_ids)
        if unknown:
            raise DataError(f"{where(self.file, 'image_id')}: results for image ids {unknown[:20]} "
                            f"{'(and more) ' if len(unknown) > 20 else ''}that are not in the ground truth")
        k = self.meta.num_keypoints
        for img, p in zip(ids, poses):
            p = _numpy(p)
            if p.size and (p.ndim != 3 or p.shape[1:] != (k, 3)):
                raise DataError(f"evaluator: image {img}: poses of shape {p.shape}; expected (M, {k}, 3)")
        results = to_coco_results(ids, poses, scores, self.category_id)
        fresh = [i for i in dict.fromkeys(ids) if i not in self._results]
        for i in fresh:
            self._results[i] = []
        for r in results:
            if r["image_id"] in fresh:
                self._results[r["image_id"]].append(r)

    def add_results(self, results: Iterable[Mapping]) -> None:
        """Add COCO-format results (``image_id``, ``keypoints`` 3K, ``score``), e.g. read from a results json."""
        per_image: dict[int, tuple[list, list]] = {}
        k = self.meta.num_keypoints
        for i, r in enumerate(results):
            try:
                img, kp, sc = int(r["image_id"]), np.asarray(r["keypoints"], np.float64), float(r["score"])
            except (KeyError, TypeError, ValueError) as e:
                raise DataError(f"results entry {i}: {e!r}; expected image_id, keypoints and score") from None
            if kp.size != 3 * k:
                raise DataError(f"results entry {i} (image {img}): field 'keypoints' has {kp.size} values; "
                                f"expected {3 * k}")
            per_image.setdefault(img, ([], []))
            per_image[img][0].append(kp.reshape(k, 3))
            per_image[img][1].append(sc)
        ids = list(per_image)
        self.update(ids, [np.stack(per_image[i][0]) for i in ids], [np.asarray(per_image[i][1]) for i in ids])

    # ------------------------------------------------------------------ scoring
    def _gather(self) -> dict[int, list[dict]] | None:
        """Every rank's results, merged on rank 0 (one ``gather_object``; other ranks get ``None``)."""
        if not _distributed():
            return self._results
        rank, world = torch.distributed.get_rank(), torch.distributed.get_world_size()
        parts: list[Any] | None = [None] * world if rank == 0 else None
        torch.distributed.gather_object(list(self._results.items()), parts, dst=0)
        if rank != 0:
            return None
        merged: dict[int, list[dict]] = {}
        for part in parts:
            for img, res in part:
                merged.setdefault(img, res)  # padded repeats across ranks: keep one copy per image
        return merged

    def compute(self) -> dict[str, float]:
        """Gather over ranks to rank 0 (once), score there, return the same stats dict on every rank.

        Rank 0 keeps the merged results in :attr:`gathered` (``{image id: [COCO result, ...]}``) for callers that
        write them out; the other ranks hold ``{}`` there.
        """
        merged = self._gather()
        stats = None
        if merged is not None:
            self.gathered = merged
            stats = self.score(merged)
        else:
            self.gathered = {}
        if _distributed():
            box = [stats]
            torch.distributed.broadcast_object_list(box, src=0)
            stats = box[0]
        return stats

    def score(self, per_image: Mapping[int, list[dict]]) -> dict[str, float]:
        """Score results grouped by image id (no gathering)."""
        results = [r for res in per_image.values() for r in res]
        img_ids = sorted(per_image) if self.only_seen_images else sorted(self.image_ids)
        keys = COCO_KEYS if self.mode == "coco" else CROWDPOSE_KEYS
        if not results:
            warnings.warn(f"KeypointEvaluator ({self.file}): no predictions to score; every AP/AR is 0",
                          stacklevel=2)
            return {k: 0.0 for k in keys}
        cocoeval = self._cocoeval(results)
        main = self._run(cocoeval, img_ids)
        if self.mode == "coco":
            return dict(zip(COCO_KEYS, main))
        stats = dict(zip(CROWDPOSE_KEYS[:6], (main[0], main[1], main[2], main[5], main[6], main[7])))
        index = {img["id"]: img.get("crowdIndex") for img in self.gt["images"]}
        chosen = set(img_ids)
        for name, lo, hi in CROWD_SPLITS:
            subset = [i for i in sorted(chosen) if index.get(i) is not None and lo <= index[i] < hi]
            stats[name] = self._run(cocoeval, subset)[0] if subset else float("nan")
        return stats

    def _cocoeval(self, results: list[dict]) -> Any:
        sigmas = self.meta.sigmas_array
        quiet = contextlib.redirect_stdout(io.StringIO())
        if self.backend == "pycocotools":
            from pycocotools.coco import COCO
            from pycocotools.cocoeval import COCOeval
            with quiet:
                gt = COCO()
                gt.dataset = self.gt
                gt.createIndex()
                dt = gt.loadRes(copy.deepcopy(results))
                ev = COCOeval(gt, dt, "keypoints")
            ev.params.kpt_oks_sigmas = sigmas
            return ev
        from faster_coco_eval import COCO, COCOeval_faster
        with quiet:
            gt = COCO(copy.deepcopy(self.gt))
            dt = gt.loadRes(copy.deepcopy(results))
            # `area` already holds the crowd OKS scale, so plain "keypoints" OKS equals keypoints_crowd/use_area=False
            ev = COCOeval_faster(gt, dt, "keypoints", kpt_oks_sigmas=list(sigmas), print_function=lambda *a: None)
        return ev

    @staticmethod
    def _run(ev: Any, img_ids: list) -> list[float]:
        ev.params.imgIds = list(img_ids)
        with contextlib.redirect_stdout(io.StringIO()):
            ev.evaluate()
            ev.accumulate()
            ev.summarize()
        # pycocotools writes -1 where no ground truth falls in a range: report NaN, like an empty crowd subset
        return [float(s) if s > -1 else float("nan") for s in ev.stats[:10]]
