"""COCO-format keypoint datasets (COCO 2017, CrowdPose, generated sets, any custom K) read with pycocotools.

Everything that can be wrong with the annotation file or the image folder is checked when the dataset is built, so a
run fails before training starts with a message naming the file, annotation id and field. Per sample, the dataset
reads the image with OpenCV (in the orientation its annotations were made in: ``orient_image``), builds the ignore
mask (crowd regions and people without labelled keypoints), applies the training augmentation and encodes the codec
targets — inside the DataLoader workers.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Protocol

import cv2
import numpy as np
import torch
from torch.utils.data import Dataset

from bapose.data.images import read_image  # re-exported: the one image reader of the suite
from bapose.data.coco import load_coco_keypoint_json
from bapose.data.metadata import DatasetMeta, keypoint_categories
from bapose.data.transforms import EvalTransform, TrainTransform
from bapose.errors import ConfigError, DataError, where

log = logging.getLogger(__name__)

__all__ = [
    "CocoKeypointDataset", "KeypointEncoder", "configure_worker_process", "load_coco_keypoint_json", "read_image",
]

_MAX_LISTED = 5  # how many missing image paths an error message names
TRAIN_IMAGES = ("labelled", "annotated")  # CocoKeypointDataset(train_images=...)


class KeypointEncoder(Protocol):
    """What the dataset needs of ``bapose.codecs.BAPoseCodec``."""

    def encode(self, keypoints: np.ndarray, areas: np.ndarray, ignore_mask: np.ndarray | None = None,
               image_size: tuple[int, int] | None = None,
               valid_mask: np.ndarray | None = None) -> dict[str, np.ndarray]: ...


def _main_process_rank() -> int:
    """The DDP global rank of a dataset used in the training process itself (no DataLoader worker), else 0: workers
    are told their rank by the datamodule's worker_init_fn, which reseeds torch."""
    if torch.utils.data.get_worker_info() is not None:
        return 0
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        return torch.distributed.get_rank()
    return 0


def configure_worker_process(threads: int = 1, malloc_cache_mb: int = 128) -> None:
    """Settings for a DataLoader worker (its ``worker_init_fn``; the data benchmark applies it too).

    One torch thread: N workers already fill N cores (OpenCV's count is set in the parent, see
    ``limit_cv2_threads_before_fork``). On glibc, large arrays (decoded image, warped image, targets: ~6 MB a sample
    at 512) are otherwise mmap'ed and munmap'ed every sample, page-faulting on every touch: ~1 ms of a ~6 ms sample. Raising the mmap and
    trim thresholds to ``malloc_cache_mb`` keeps those blocks on the heap for reuse (a worker holds up to that much
    freed memory). A no-op where glibc's ``mallopt`` is missing.
    """
    torch.set_num_threads(threads)
    # cv2's thread count is NOT set here: in a forked worker, cv2.setNumThreads joins pool threads that only exist
    # in the parent and deadlocks. The parent calls `limit_cv2_threads_before_fork` before the workers start.
    if malloc_cache_mb <= 0:
        return
    try:
        import ctypes

        libc = ctypes.CDLL("libc.so.6")
        m_trim_threshold, m_mmap_threshold = -1, -3  # glibc's malloc.h constants
        libc.mallopt(m_mmap_threshold, malloc_cache_mb << 20)
        libc.mallopt(m_trim_threshold, 2 * (malloc_cache_mb << 20))
    except (OSError, AttributeError):  # musl, macOS, Windows: keep the system allocator as it is
        pass


def limit_cv2_threads_before_fork(threads: int = 1) -> None:
    """Set OpenCV's thread count in the main process, before DataLoader workers are forked.

    Workers inherit it (N workers already fill N cores, so cv2's own pool would oversubscribe them); setting it inside
    a forked worker instead hangs when the parent has already used cv2's pool (e.g. after generating a dataset).
    """
    if cv2.getNumThreads() != threads:
        cv2.setNumThreads(threads)


class CocoKeypointDataset(Dataset):
    """Multi-person keypoint samples from a COCO-format json.

    Args:
        ann_file: COCO keypoint json.
        image_dir: folder the json's ``file_name`` entries are relative to.
        meta: joint set; None reads it from the json's keypoint category (``DatasetMeta.from_coco_category``).
        codec: encodes training targets (``BAPoseCodec``); needed when ``train``.
        transform: ``TrainTransform`` (train) or ``EvalTransform`` (eval); None builds the default from
            ``input_size`` (training defaults: DEKR's augmentation).
        train: training samples (augmented, targets encoded, images chosen by ``train_images``) or evaluation
            samples (resized, every image).
        train_images: which images a training set keeps: ``"labelled"`` (default) those with at least one non-crowd
            person with a labelled joint; ``"annotated"`` every image with any annotation of the keypoint category,
            crowd regions and people without keypoints included (DEKR and MMPose: such images add masked
            background).
        on_bad_sample: "raise" a DataError on a missing/corrupt image, or "skip" it (logged, counted) and drop
            missing images at setup.
        input_size: used only when ``transform`` is None.
        size_divisor: eval padding multiple, used only when ``transform`` is None.
        keypoints_field: the annotation field holding the joints (``keypoints_21`` in files that carry several joint
            sets); the joint names are the category's field of that name when it has one, else its ``keypoints``.
        data: the json already loaded with ``load_coco_keypoint_json`` (the datamodule reads it once when it needs
            the joint set or the rule set before setup); None reads ``ann_file``.

    Every keypoint category with the first one's joint names is read (AP-10K-style files list one category per
    species); annotations of other categories (detection-only classes of a mixed file) are left out.

    A training sample: ``image`` uint8 (3, S, S), ``heatmaps`` (K+1, h, w), ``heatmap_weights`` (K+1, h, w),
    ``offsets`` (2K, h, w), ``offset_weights`` (1, h, w) float32, ``image_id`` int.
    An eval sample: ``image`` uint8 (3, H, W), ``image_id``, ``input_to_orig`` (2, 3) float32, ``orig_size`` (2,)
    and ``valid_size`` (2,) int64 (h, w).

    Counters: ``num_skipped`` (missing images dropped at setup + unreadable images skipped by this process, with
    ``on_bad_sample="skip"``) and ``num_without_people`` (training images left out by ``train_images``).
    """

    def __init__(self, ann_file: str | os.PathLike, image_dir: str | os.PathLike, meta: DatasetMeta | None = None,
                 codec: KeypointEncoder | None = None, transform: TrainTransform | EvalTransform | None = None,
                 train: bool = True, on_bad_sample: str = "raise", input_size: int = 512,
                 size_divisor: int = 32, keypoints_field: str = "keypoints", data: dict | None = None,
                 train_images: str = "labelled") -> None:
        if on_bad_sample not in ("raise", "skip"):
            raise ConfigError(f"field 'on_bad_sample' is '{on_bad_sample}'; expected 'raise' or 'skip'")
        if train_images not in TRAIN_IMAGES:
            raise ConfigError(f"field 'train_images' is '{train_images}'; expected one of {list(TRAIN_IMAGES)}")
        self.train_images = train_images
        if train and codec is None:
            raise ConfigError(f"{where(ann_file)}: a training dataset needs a codec to encode targets")
        self.ann_file = Path(ann_file)
        self.image_dir = Path(image_dir)
        self.train = bool(train)
        self.on_bad_sample = on_bad_sample
        self.codec = codec
        self.num_skipped = 0
        self._rng_seed: int | None = None
        self._rng_state: np.random.Generator | None = None

        self.keypoints_field = str(keypoints_field)
        if data is None:
            data = load_coco_keypoint_json(self.ann_file, self.keypoints_field)
        categories = keypoint_categories(data, self.ann_file, self.keypoints_field)
        category = categories[0]
        self.category_id = category.get("id")
        self._category_ids = {c.get("id") for c in categories}
        file_meta_k = len(category.get(self.keypoints_field) or category["keypoints"])
        self.meta = meta if meta is not None else DatasetMeta.from_coco_category(
            category, file=self.ann_file, keypoints_field=self.keypoints_field)
        k = self.meta.num_keypoints
        if file_meta_k != k:
            raise DataError(f"{where(self.ann_file, 'categories.keypoints')}: {file_meta_k} joint names; expected "
                            f"{k} for dataset '{self.meta.name}'")
        if transform is None:
            transform = (TrainTransform(input_size, self.meta.flip_index) if train
                         else EvalTransform(input_size, size_divisor))
        self.transform = transform

        self._index(data)
        self._check_images()

    # ---------------------------------------------------------------------------------------------- setup checks
    def _index(self, data: dict) -> None:
        """Flat per-annotation arrays and per-image annotation lists (cheap to index inside workers)."""
        k = self.meta.num_keypoints
        field = self.keypoints_field
        anns = [a for a in data["annotations"] if a.get("category_id", self.category_id) in self._category_ids]
        for a in anns:
            kp = a[field]
            if not isinstance(kp, list) or len(kp) != 3 * k:
                got = f"{len(kp)} numbers" if isinstance(kp, list) else f"a {type(kp).__name__}"
                others = [key for key, v in a.items() if key != field and key.startswith("keypoints")
                          and isinstance(v, list) and len(v) == 3 * k]
                hint = (f"; field '{others[0]}' has {3 * k}: choose it with data.meta.keypoints_field={others[0]}"
                        if others else "")
                raise DataError(f"{where(self.ann_file, field, a['id'])}: {got}; expected {3 * k} "
                                f"(x, y, v for each of {k} joints){hint}")
        try:
            keypoints = np.asarray([a[field] for a in anns], dtype=np.float32).reshape(len(anns), k, 3)
        except (TypeError, ValueError):
            bad = next(a for a in anns if not all(isinstance(v, (int, float)) for v in a[field]))
            raise DataError(f"{where(self.ann_file, field, bad['id'])}: contains non-numbers; expected "
                            f"{3 * k} numbers") from None
        self._keypoints = keypoints
        self._labelled = (keypoints[..., 2] > 0).any(axis=1) if len(anns) else np.zeros(0, bool)
        self._iscrowd = np.asarray([bool(a.get("iscrowd", 0)) for a in anns], dtype=bool)
        self._areas = np.asarray([self._area(a) for a in anns], dtype=np.float32)
        self._ann_ids = [a["id"] for a in anns]

        self._images: dict[Any, dict] = {img["id"]: img for img in data["images"]}
        per_image: dict[Any, list[int]] = {i: [] for i in self._images}
        for j, a in enumerate(anns):
            if a["image_id"] not in per_image:
                raise DataError(f"{where(self.ann_file, 'image_id', a['id'])}: image id {a['image_id']} is not in "
                                "'images'; expected an existing image id")
            per_image[a["image_id"]].append(j)
        self._per_image = {i: np.asarray(v, dtype=np.int64) for i, v in per_image.items()}
        # masks are rare (crowds, unlabelled people): keep only their segmentations, not the whole json
        self._segmentations = {j: a["segmentation"] for j, a in enumerate(anns)
                               if (self._iscrowd[j] or not self._labelled[j]) and a.get("segmentation")}

        for j in self._segmentations:  # the mask is drawn at the declared size: it must be there
            img = self._images[anns[j]["image_id"]]
            if "width" not in img or "height" not in img:
                raise DataError(f"{where(self.ann_file, 'images')}: image id {img['id']} ('{img['file_name']}') "
                                f"has no 'width'/'height' but annotation id {anns[j]['id']} needs an ignore mask; "
                                "expected both (pixels)")

        ids = list(self._images)
        self.num_without_people = 0
        if self.train:
            if self.train_images == "annotated":
                # DEKR (COCOKeypoints: getAnnIds(iscrowd=None) > 0) and MMPose (bottom-up: every image with an
                # instance): images with only crowd regions or unlabelled people train the background, masked
                ids = [i for i in ids if len(self._per_image[i])]
                what = "no person annotation"
            else:  # only images with someone to learn a center and offsets from (fewer steps per epoch)
                ids = [i for i in ids if any(self._labelled[j] and not self._iscrowd[j] for j in self._per_image[i])]
                what = "no non-crowd person with labelled keypoints"
            self.num_without_people = len(self._images) - len(ids)
            if self.num_without_people:
                log.info("%s: %d of %d images have %s; left out of training (train_images='%s')",
                         where(self.ann_file), self.num_without_people, len(self._images), what, self.train_images)
        self.ids = ids

    @staticmethod
    def _area(ann: Mapping) -> float:
        """Person area: the json's ``area``; else the polygon area of ``segmentation``; else bbox w*h (CrowdPose)."""
        if "area" in ann:
            return float(ann["area"])
        seg = ann.get("segmentation")
        if isinstance(seg, list) and seg and all(isinstance(p, list) and len(p) >= 6 for p in seg):
            total = 0.0
            for poly in seg:
                xy = np.asarray(poly, dtype=np.float64).reshape(-1, 2)
                total += 0.5 * abs(np.dot(xy[:, 0], np.roll(xy[:, 1], 1)) - np.dot(xy[:, 1], np.roll(xy[:, 0], 1)))
            return total
        if "bbox" in ann and len(ann["bbox"]) == 4:
            return float(ann["bbox"][2]) * float(ann["bbox"][3])
        return 0.0

    def _declared_size(self, image_id: Any) -> tuple[int, int] | None:
        """``(height, width)`` the json declares for an image (the frame of its annotations), or None."""
        info = self._images[image_id]
        if "height" in info and "width" in info:
            return int(info["height"]), int(info["width"])
        return None

    def _image_path(self, image_id: Any) -> Path:
        return self.image_dir / self._images[image_id]["file_name"]

    def _check_images(self) -> None:
        missing = [i for i in self.ids if not self._image_path(i).is_file()]
        if not missing:
            return
        listed = ", ".join(f"'{self._image_path(i)}'" for i in missing[:_MAX_LISTED])
        more = f" and {len(missing) - _MAX_LISTED} more" if len(missing) > _MAX_LISTED else ""
        msg = (f"{where(self.ann_file)}: {len(missing)} of {len(self.ids)} images are missing under "
               f"'{self.image_dir}': {listed}{more}")
        if self.on_bad_sample == "raise":
            raise DataError(msg + "; expected every image listed in 'images' to exist")
        log.warning("%s; skipping them (on_bad_sample='skip')", msg)
        gone = set(missing)
        self.ids = [i for i in self.ids if i not in gone]
        self.num_skipped += len(missing)

    # ---------------------------------------------------------------------------------------------- samples
    def __len__(self) -> int:
        return len(self.ids)

    def annotations(self, image_id: Any) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
        """People and ignore mask of one image, in original pixels.

        Returns:
            keypoints (N, K, 3) float32 of the non-crowd people with labelled keypoints, their areas (N,), and the
            (H, W) bool ignore mask (crowd regions and people without labelled keypoints) or None when empty.
        """
        idx = self._per_image[image_id]
        keep = idx[self._labelled[idx] & ~self._iscrowd[idx]]
        masked = [j for j in idx if j in self._segmentations]
        mask = None
        if masked:
            info = self._images[image_id]
            h, w = int(info["height"]), int(info["width"])
            mask = np.zeros((h, w), dtype=bool)
            for j in masked:
                mask |= self._segmentation_mask(self._segmentations[j], h, w, j)
        return self._keypoints[keep], self._areas[keep], mask

    def _segmentation_mask(self, seg: Any, h: int, w: int, j: int) -> np.ndarray:
        from pycocotools import mask as mask_utils

        try:
            if isinstance(seg, list):  # polygons
                rle = mask_utils.merge(mask_utils.frPyObjects(seg, h, w))
            elif isinstance(seg.get("counts"), list):  # uncompressed RLE (COCO crowds)
                rle = mask_utils.frPyObjects(seg, h, w)
            else:
                rle = dict(seg)
                if isinstance(rle["counts"], str):
                    rle["counts"] = rle["counts"].encode("ascii")
            return mask_utils.decode(rle).astype(bool).reshape(h, w)
        except (TypeError, ValueError, KeyError, AttributeError, IndexError) as err:
            raise DataError(f"{where(self.ann_file, 'segmentation', self._ann_ids[j])}: unreadable ({err}); "
                            "expected polygons or RLE") from None

    def __getitem__(self, index: int) -> dict[str, Any]:
        for attempt in range(len(self.ids)):
            image_id = self.ids[(index + attempt) % len(self.ids)]
            path = self._image_path(image_id)
            try:
                image = read_image(path, self._declared_size(image_id))
            except DataError as err:
                if self.on_bad_sample == "raise":
                    raise
                self.num_skipped += 1
                log.warning("on_bad_sample='skip': skipped %d bad image(s) in this process so far, latest: %s",
                            self.num_skipped, err)
                continue
            return self._train_sample(image_id, image) if self.train else self._eval_sample(image_id, image)
        raise DataError(f"{where(self.ann_file)}: every image under '{self.image_dir}' is unreadable")

    def _train_sample(self, image_id: Any, image: np.ndarray) -> dict[str, Any]:
        keypoints, areas, mask = self.annotations(image_id)
        if mask is not None and mask.shape != image.shape[:2]:
            raise DataError(f"{where(self._image_path(image_id))}: image is {image.shape[1]}x{image.shape[0]} but "
                            f"{where(self.ann_file, 'images')} says {mask.shape[1]}x{mask.shape[0]} (width x height)")
        out = self.transform(image, keypoints, areas, mask, rng=self._rng())
        # the small-person rule reads the annotation's own area (DEKR: obj['area'] < 32**2), not the augmented one
        targets = self.codec.encode(out["keypoints"], areas, out["ignore_mask"], valid_mask=out["valid_mask"])
        # a (3, S, S) view, not a copy: the collate's stack makes the one contiguous copy of the batch
        sample = {"image": torch.from_numpy(out["image"]).permute(2, 0, 1)}
        for name in ("heatmaps", "heatmap_weights", "offsets", "offset_weights"):
            sample[name] = torch.from_numpy(np.ascontiguousarray(targets[name], dtype=np.float32))
        sample["image_id"] = image_id
        return sample

    def _rng(self) -> np.random.Generator:
        """This process's augmentation stream, seeded from torch's seed: DataLoader workers get distinct seeds
        (the datamodule's worker_init_fn mixes base seed, worker id and DDP rank, as Lightning does), so draws differ
        across workers, ranks and epochs yet are reproducible; a forked worker notices the new seed and restarts the
        stream. Without workers (num_workers=0) the main process of every DDP rank has the same torch seed after
        ``seed_everything``: its rank is mixed in here (rank 0 keeps the plain seed)."""
        seed = torch.initial_seed()
        if self._rng_seed != seed:
            rank = _main_process_rank()
            self._rng_state = np.random.default_rng(seed if rank == 0 else [seed, rank])
            self._rng_seed = seed
        return self._rng_state

    def _eval_sample(self, image_id: Any, image: np.ndarray) -> dict[str, Any]:
        out = self.transform(image)
        return {
            "image": torch.from_numpy(np.ascontiguousarray(out["image"].transpose(2, 0, 1))),
            "image_id": image_id,
            "input_to_orig": torch.as_tensor(out["input_to_orig"], dtype=torch.float32),
            "orig_size": torch.as_tensor(out["orig_size"], dtype=torch.int64),
            "valid_size": torch.as_tensor(out["valid_size"], dtype=torch.int64),
        }
