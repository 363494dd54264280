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
import logging
import math
import warnings
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from bapose.data.metadata import DatasetMeta, keypoint_categories, keypoint_names
from bapose.errors import DataError, check_unique_ids, where
from bapose.io import read_json_object

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
            out.append({"image_id": img if isinstance(img, str) else int(img), "category_id": int(category_id),
                        "keypoints": [round(float(v), 3) for v in person.reshape(-1)], "score": float(sc)})
    return out


_INT32_MAX = 2**31 - 1
_LOGGED: set[tuple[str, str]] = set()  # (file, what): each "scored with internal ids" note is logged once
log = logging.getLogger(__name__)


def _plain_id(value: Any) -> Any:
    """An image id as the json writes it: tensors and numpy integers become int, strings stay."""
    if isinstance(value, torch.Tensor):
        return int(value.item())
    return value if isinstance(value, str) else int(value)


def _log_once(file: str, what: str, message: str) -> None:
    if (file, what) not in _LOGGED:
        _LOGGED.add((file, what))
        log.warning(message)


def _id_ok(value: Any) -> bool:
    return isinstance(value, str) or (isinstance(value, (int, np.integer)) and not isinstance(value, bool))


def _other_fields(ann: Mapping, size: int, field: str) -> list[str]:
    """Annotation fields other than ``field`` holding ``size`` numbers (a hint for ``keypoints_field``)."""
    return [key for key, v in ann.items() if key != field and key.startswith("keypoints")
            and isinstance(v, (list, tuple)) and len(v) == size]


def _image_ids(gt: Mapping, file: object) -> set:
    """The ids of ``gt['images']``: each present, an integer (or string), unique."""
    image_ids = set()
    for i, img in enumerate(gt["images"]):
        if not isinstance(img, Mapping) or "id" not in img:
            raise DataError(f"{where(file, f'images[{i}].id')}: missing; expected an image id")
        if not _id_ok(img["id"]):
            raise DataError(f"{where(file, f'images[{i}].id')}: {img['id']!r}; expected an integer id")
        if img["id"] in image_ids:
            raise DataError(f"{where(file, 'images.id')}: image id {img['id']} appears twice; expected unique ids")
        image_ids.add(img["id"])
    return image_ids


def _joint_set_category_ids(gt: Mapping, meta: DatasetMeta, file: object, keypoints_field: str) -> set | None:
    """Ids of the keypoint categories of the meta's joint set (their K checked); None when the file has none."""
    cats = [c for c in gt.get("categories", []) or [] if isinstance(c, Mapping) and "keypoints" in c]
    if not cats:
        return None
    k = meta.num_keypoints
    chosen = keypoint_categories(gt, file, keypoints_field)
    names = keypoint_names(chosen[0], keypoints_field)
    if len(names) != k:
        raise DataError(f"{where(file, 'categories.keypoints')}: category '{chosen[0].get('name')}' has "
                        f"{len(names)} keypoints; expected {k} ({meta.name})")
    return {c.get("id") for c in chosen}


def _check_keypoints(ann: Mapping, aid: Any, meta: DatasetMeta, file: object, keypoints_field: str) -> None:
    """``ann[keypoints_field]``: a list of 3K finite numbers (naming other fields of that length when it is not)."""
    k = meta.num_keypoints
    kp = ann.get(keypoints_field)
    if not isinstance(kp, (list, tuple)) or len(kp) != 3 * k:
        got = len(kp) if isinstance(kp, (list, tuple)) else type(kp).__name__
        others = _other_fields(ann, 3 * k, keypoints_field)
        hint = (f"; the annotations also carry {others} with {3 * k} values: choose one with "
                f"data.meta.keypoints_field={others[0]} (bapose-score --keypoints-field {others[0]})"
                if others else "")
        raise DataError(f"{where(file, keypoints_field, aid)}: {got} values; expected {3 * k} (x, y, v for {k} "
                        f"{meta.name} joints){hint}")
    try:
        arr = np.asarray(kp, dtype=np.float64)
    except (TypeError, ValueError) as e:
        raise DataError(f"{where(file, keypoints_field, aid)}: non-numeric values ({e}); expected numbers") \
            from None
    if not np.isfinite(arr).all():
        raise DataError(f"{where(file, keypoints_field, aid)}: NaN or infinite coordinate at joint(s) "
                        f"{sorted(set((np.nonzero(~np.isfinite(arr))[0] // 3).tolist()))}; expected finite numbers")


def _check_bbox(ann: Mapping, aid: Any, file: object, require_bbox: bool) -> None:
    """``ann['bbox']``: 4 finite numbers with w, h >= 0; present when ``require_bbox``."""
    box = ann.get("bbox")
    if box is not None:
        try:
            b = np.asarray(box, dtype=np.float64) if isinstance(box, (list, tuple)) else np.zeros(0)
        except (TypeError, ValueError):
            b = np.zeros(0)
        if b.shape != (4,) or not np.isfinite(b).all():
            raise DataError(f"{where(file, 'bbox', aid)}: {box!r}; expected 4 finite numbers [x, y, w, h]")
        if b[2] < 0 or b[3] < 0:
            raise DataError(f"{where(file, 'bbox', aid)}: negative width/height {box!r}; expected w, h >= 0")
    elif require_bbox:
        raise DataError(f"{where(file, 'bbox', aid)}: missing; expected [x, y, w, h] (the OKS scale of "
                        "CrowdPose rules and of --area-from bbox is the box area)")


def _check_area(ann: Mapping, aid: Any, file: object, require_area: bool) -> None:
    """``ann['area']``: a finite number >= 0; present when ``require_area``."""
    if "area" in ann:
        a = ann["area"]
        if isinstance(a, bool) or not isinstance(a, (int, float)) or not math.isfinite(a) or a < 0:
            raise DataError(f"{where(file, 'area', aid)}: {a!r}; expected a finite number >= 0")
    elif require_area:
        raise DataError(f"{where(file, 'area', aid)}: missing; COCO rules take the OKS scale from the segment "
                        "area: score with CrowdPose rules (--dataset crowdpose, data.eval_mode=crowdpose) or "
                        "take it from the box (--area-from bbox)")


def validate_coco_keypoints(gt: Mapping, meta: DatasetMeta, file: object = None, require_area: bool = False,
                            keypoints_field: str = "keypoints", require_bbox: bool = False) -> list[Mapping]:
    """Check a COCO-format keypoint ground truth; raise :class:`DataError` naming file, annotation id and field.

    Checks: ``images`` / ``annotations`` lists, unique integer (or string) image ids, every annotation's
    ``image_id`` known, unique annotation ids, ``keypoints`` (or ``keypoints_field``) a list of 3K finite numbers,
    ``bbox`` 4 finite numbers with non-negative width and height (present when ``require_bbox``), ``area`` finite and
    >= 0 (present when ``require_area``), keypoint category names of length K.

    Returns:
        the annotations of the joint set: those of the keypoint categories with the meta's joint names (all of them
        when the file has no keypoint category, or the annotations carry no ``category_id``).
    """
    for key in ("images", "annotations"):
        if not isinstance(gt.get(key), list):
            raise DataError(f"{where(file, key)}: missing or not a list; expected a COCO-format keypoint file")
    image_ids = _image_ids(gt, file)
    cat_ids = _joint_set_category_ids(gt, meta, file, keypoints_field)
    anns, seen_ids, repeated = [], set(), []
    for i, ann in enumerate(gt["annotations"]):
        aid = ann.get("id", f"#{i}") if isinstance(ann, Mapping) else f"#{i}"
        if not isinstance(ann, Mapping):
            raise DataError(f"{where(file, ann_id=aid)}: not an object; expected a COCO annotation")
        if cat_ids is not None and "category_id" in ann and ann["category_id"] not in cat_ids:
            continue  # another category (a detection-only class of a mixed file): not this joint set
        if "id" in ann:
            if not _id_ok(ann["id"]):
                raise DataError(f"{where(file, 'id', aid)}: {ann['id']!r}; expected an integer annotation id")
            if ann["id"] in seen_ids:
                repeated.append(ann["id"])
            seen_ids.add(ann["id"])
        anns.append(ann)
        if ann.get("image_id") not in image_ids:
            raise DataError(f"{where(file, 'image_id', aid)}: image id {ann.get('image_id')!r} is not in 'images'")
        _check_keypoints(ann, aid, meta, file, keypoints_field)
        _check_bbox(ann, aid, file, require_bbox)
        _check_area(ann, aid, file, require_area)
    check_unique_ids(file, repeated)
    return anns


def _load_gt(gt: str | Path | Mapping, file: object = None) -> tuple[dict, str]:
    if isinstance(gt, Mapping):
        return dict(gt), str(file) if file is not None else "<ground-truth dict>"
    return read_json_object(gt, "a COCO-format keypoint json"), str(gt)


def _box_of(kp: np.ndarray) -> list[float]:
    """Box of the labelled joints ``(K, 3)`` (pycocotools reads a ground truth's ``bbox`` even when unused)."""
    xy = kp[kp[:, 2] > 0, :2]
    if not len(xy):
        return [0.0, 0.0, 0.0, 0.0]
    lo, hi = xy.min(0), xy.max(0)
    return [float(lo[0]), float(lo[1]), float(hi[0] - lo[0]), float(hi[1] - lo[1])]


class KeypointEvaluator:
    """COCO / CrowdPose keypoint AP over torch.distributed ranks, right for any valid COCO-format keypoint file.

    The scorers get a private copy of the ground truth with image and annotation ids renumbered 1..N: pycocotools and
    faster-coco-eval treat annotation id 0 as "unmatched" and mishandle image id 0 and ids beyond 32 bits, so a file
    with such ids would score below 1 against itself. Callers keep using the file's ids (``update``, results); a
    note is logged once per file when its ids needed it. ``num_keypoints`` is recounted from the keypoints
    (pycocotools ignores a person whose ``num_keypoints`` is 0, right or not). Repeated annotation ids raise.

    Args:
        gt: ground-truth json path or COCO dict.
        meta: dataset metadata (K and OKS sigmas; any custom K works).
        mode: ``"coco"`` (OKS scale = ``area``; AP, AP50, AP75, APm, APl, AR, ...) or ``"crowdpose"``
            (OKS scale = bbox w*h*0.53; AP, AP50, AP75, AR, AR50, AR75, AP_easy, AP_medium, AP_hard).
        backend: ``"pycocotools"`` or ``"faster"`` (faster-coco-eval); None picks pycocotools for COCO and
            faster-coco-eval for CrowdPose. Both give the same numbers.
        only_seen_images: score only the images passed to :meth:`update` (useful with limited validation batches);
            by default every image of the ground truth counts, as in the official protocol.
        category_id: category id written into results; None: the file's keypoint category (1 without one).
        file: the file ``gt`` was read from when it is a dict (named in messages).
        area_from: COCO rules' OKS scale: ``"area"`` (the json's segment area, required) or ``"bbox"`` (box w*h,
            for COCO-format files without ``area``). CrowdPose rules always use box w*h*0.53.
        keypoints_field: the annotation field holding the joints (``keypoints_21`` for files with several sets).
    """

    def __init__(self, gt: str | Path | Mapping, meta: DatasetMeta, mode: str = "coco", backend: str | None = None,
                 only_seen_images: bool = False, category_id: int | None = None, file: object = None,
                 area_from: str = "area", keypoints_field: str = "keypoints") -> None:
        if mode not in ("coco", "crowdpose"):
            raise DataError(f"KeypointEvaluator: mode '{mode}'; expected 'coco' or 'crowdpose'")
        backend = backend or ("pycocotools" if mode == "coco" else "faster")
        if backend not in ("pycocotools", "faster"):
            raise DataError(f"KeypointEvaluator: backend '{backend}'; expected 'pycocotools' or 'faster'")
        if area_from not in ("area", "bbox"):
            raise DataError(f"KeypointEvaluator: area_from '{area_from}'; expected 'area' or 'bbox'")
        self.meta, self.mode, self.backend = meta, mode, backend
        self.only_seen_images = only_seen_images
        raw, self.file = _load_gt(gt, file)
        anns = validate_coco_keypoints(raw, meta, self.file, require_area=(mode == "coco" and area_from == "area"),
                                       keypoints_field=keypoints_field,
                                       require_bbox=(mode == "crowdpose" or area_from == "bbox"))
        cats = [c for c in raw.get("categories", []) or [] if isinstance(c, Mapping) and "keypoints" in c]
        if category_id is None:
            category_id = cats[0].get("id", 1) if cats else 1
        self.category_id = category_id
        self.gt, self._to_internal = self._internal_copy(raw, anns, keypoints_field, area_from)
        self.image_ids = set(self._to_internal)
        self.reset()

    def _internal_copy(self, raw: Mapping, anns: list[Mapping], field: str,
                       area_from: str) -> tuple[dict, dict[Any, int]]:
        """The scorers' ground truth: ids 1..N, one category (1), recounted num_keypoints, the OKS scale in area."""
        to_internal = {img["id"]: i for i, img in enumerate(raw["images"], start=1)}
        images = []
        for img in raw["images"]:
            entry = {"id": to_internal[img["id"]]}
            for key in ("width", "height", "crowdIndex", "file_name"):
                if key in img:
                    entry[key] = img[key]
            images.append(entry)
        out, recounted = [], 0
        for j, ann in enumerate(anns, start=1):
            kp = np.asarray(ann[field], dtype=np.float64).reshape(-1, 3)
            visible = int(np.count_nonzero(kp[:, 2] > 0))
            recounted += ann.get("num_keypoints") != visible
            box = [float(v) for v in ann["bbox"]] if ann.get("bbox") is not None else _box_of(kp)
            if self.mode == "crowdpose":
                # crowdposetools' OKS scale. Writing it into `area` makes pycocotools compute crowdposetools' OKS;
                # with only area range 'all' reported, `area` has no other effect.
                area = box[2] * box[3] * 0.53
            elif area_from == "bbox":
                area = box[2] * box[3]
            else:
                area = float(ann["area"])
            out.append({"id": j, "image_id": to_internal[ann["image_id"]], "category_id": 1,
                        "keypoints": [float(v) for v in kp.reshape(-1)], "num_keypoints": visible,
                        "iscrowd": int(bool(ann.get("iscrowd", 0))), "area": area, "bbox": box})
        user_ids = [img["id"] for img in raw["images"]] + [a["id"] for a in anns if "id" in a]
        odd = [i for i in user_ids if isinstance(i, str) or not 0 < int(i) <= _INT32_MAX]
        if odd or len(user_ids) < len(raw["images"]) + len(anns):
            _log_once(self.file, "ids", f"{self.file}: image/annotation ids such as {sorted(set(odd), key=str)[:5]} "
                      "(0, negative, beyond 32 bits or missing) cannot be matched by pycocotools / faster-coco-eval; "
                      "scored with internal ids 1..N, every output keeps the file's ids")
        if recounted:
            _log_once(self.file, "num_keypoints", f"{self.file}: 'num_keypoints' absent or not the count of labelled "
                      f"joints in {recounted} of {len(anns)} annotations; recounted from '{field}'")
        gt = {"images": images, "annotations": out,
              "categories": [{"id": 1, "name": "person", "keypoints": list(self.meta.keypoints)}]}
        return gt, to_internal

    # ------------------------------------------------------------------ accumulation
    def reset(self) -> None:
        self._results: dict[int, list[dict]] = {}
        self.gathered: dict[int, list[dict]] = {}

    def update(self, image_ids: Sequence[int], poses: Sequence[Any], scores: Sequence[Any]) -> None:
        """Add the people of several images; poses ``(M, K, 3)`` in original image pixels, scores ``(M,)``.

        A repeated image id keeps its first results (DistributedSampler pads the last batch with repeats).
        """
        ids = [_plain_id(i) for i in image_ids]
        unknown = sorted(set(ids) - self.image_ids, key=str)
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
                img, kp, sc = _plain_id(r["image_id"]), np.asarray(r["keypoints"], np.float64), float(r["score"])
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
        # the scorers see internal ids 1..N (see the class docstring) and the one internal category
        inner = self._to_internal
        results = [{**r, "image_id": inner[r["image_id"]], "category_id": 1} for res in per_image.values() for r in res]
        img_ids = sorted(inner[i] for i in (per_image if self.only_seen_images else self.image_ids))
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
