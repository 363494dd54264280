"""``BAPoseDataModule``: COCO-format train/val/test datasets, their loaders and collates, for any keypoint set.

Targets are encoded inside the DataLoader workers (``CocoKeypointDataset.__getitem__``), so the main process only
moves batches. Under DDP Lightning swaps in a ``DistributedSampler`` itself: no sampler is built here. With
``synthetic`` options the datamodule points itself at a generated dataset (``bapose.data.synthetic.ensure_dataset``),
created on first use in ``prepare_data`` and only looked up in ``setup``.
"""

from __future__ import annotations

import functools
import logging
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import lightning as L
import numpy as np
import torch
from lightning.fabric.utilities.seed import pl_worker_init_function
from torch.utils.data import DataLoader

from bapose.codecs.build import build_codec
from bapose.data.coco import joint_set_of_json, load_coco_keypoint_json
from bapose.data.dataset import TRAIN_IMAGES, CocoKeypointDataset, configure_worker_process, limit_cv2_threads_before_fork
from bapose.data.epoch_loader import EpochSeededLoader
from bapose.data.metadata import DatasetMeta, rule_set
from bapose.data.transforms import EVAL_RESIZES, EvalTransform, TrainTransform
from bapose.errors import ConfigError, DataError

__all__ = ["BAPoseDataModule", "collate_eval", "collate_train", "datamodule_spec"]

log = logging.getLogger("bapose")

_TARGETS = ("heatmaps", "heatmap_weights", "offsets", "offset_weights")


def _image_ids(samples: Sequence[Mapping[str, Any]]) -> torch.Tensor | list:
    ids = [s["image_id"] for s in samples]
    return torch.as_tensor(ids, dtype=torch.int64) if all(isinstance(i, (int, np.integer)) for i in ids) else ids


def collate_train(samples: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """Stack training samples: ``image`` uint8 (B, 3, S, S), the four codec targets (B, C, h, w) float32,
    ``image_id`` (B,) int64 (a list when ids are not integers)."""
    batch: dict[str, Any] = {"image": torch.stack([s["image"] for s in samples])}
    for name in _TARGETS:
        batch[name] = torch.stack([s[name] for s in samples])
    batch["image_id"] = _image_ids(samples)
    return batch


def collate_eval(samples: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """Pad evaluation images (right/bottom, zeros) to the batch's largest size: ``image`` uint8 (B, 3, H, W) with
    H, W multiples of 32 (each sample already is); ``input_to_orig`` (B, 2, 3) float32; ``orig_size`` and
    ``valid_size`` (B, 2) int64 (h, w); ``image_id`` (B,)."""
    h = max(s["image"].shape[1] for s in samples)
    w = max(s["image"].shape[2] for s in samples)
    images = torch.zeros((len(samples), samples[0]["image"].shape[0], h, w), dtype=samples[0]["image"].dtype)
    for i, s in enumerate(samples):
        images[i, :, : s["image"].shape[1], : s["image"].shape[2]] = s["image"]
    return {
        "image": images,
        "image_id": _image_ids(samples),
        "input_to_orig": torch.stack([s["input_to_orig"] for s in samples]),
        "orig_size": torch.stack([s["orig_size"] for s in samples]),
        "valid_size": torch.stack([s["valid_size"] for s in samples]),
    }


def worker_init_fn(worker_id: int, rank: int | None = None) -> None:
    """DataLoader worker setup: Lightning's rank-aware seeding, one thread each for torch/cv2, malloc tuned for large
    per-sample arrays.

    ``pl_worker_init_function`` (what Lightning installs itself when a loader has no ``worker_init_fn``) seeds torch,
    ``random`` and numpy from (base seed, worker id, global rank): every DDP rank draws its own augmentations, where
    the base seed alone (the same on every rank after ``seed_everything``) would give every rank the same draws.
    """
    pl_worker_init_function(worker_id, rank=rank)
    configure_worker_process()


def _plain(cfg: Any) -> dict:
    """Hydra DictConfig / Mapping / None -> plain dict."""
    if cfg is None:
        return {}
    try:
        from omegaconf import DictConfig, OmegaConf

        if isinstance(cfg, DictConfig):
            return dict(OmegaConf.to_container(cfg, resolve=True))
    except ImportError:  # pragma: no cover - omegaconf ships with hydra
        pass
    if not isinstance(cfg, Mapping):
        raise ConfigError(f"expected a mapping, got {type(cfg).__name__}: {cfg!r}")
    return dict(cfg)


class BAPoseDataModule(L.LightningDataModule):
    """Train/val/test loaders over COCO-format keypoint jsons.

    Args:
        name: dataset name (logging, run names).
        input_size: training crop side and eval short side (pixels).
        num_keypoints: K; must equal the meta's K (the model config reads it as ``${data.num_keypoints}``); None
            takes the meta's (``bapose.build.build_datamodule`` writes it back into the config).
        meta: ``DatasetMeta.build`` kwargs (``{name: coco}`` for a preset, or ``keypoints`` [+ ``flip_index``,
            ``sigmas``, ``skeleton``] for a custom set), a ``DatasetMeta``, or None to read the joint set from the
            train (else val) json's keypoint category. Without ``keypoints`` and with a name that is no preset
            (or none), the joint set is read from the json and the given ``sigmas`` / ``flip_index`` /
            ``skeleton`` / ``name`` replace what the json implies. ``keypoints_field`` (any form) picks the
            annotation field holding the joints in files with several joint sets (``keypoints_21``).
        train, val, test: ``{ann_file, image_dir}``; relative paths are resolved against ``root``.
        codec: a ``BAPoseCodec`` (or any object with ``encode``); or a builder called once the joint set and rule
            set are known, ``codec(input_size=, sigmas=, rule_set=, name=)`` (what ``bapose.build.build_datamodule``
            gives: :func:`bapose.codecs.build_codec` over ``conf/codec``); or ``conf/codec`` kwargs for that builder.
        batch_size: training batch per device; ``val_batch_size`` for val/test.
        num_workers, persistent_workers, pin_memory: DataLoader settings of the training loader (persistent only
            when workers > 0; not persistent, a resumed run's data matches the uninterrupted run's:
            ``bapose.data.epoch_loader``); ``pin_memory`` also for val/test.
        val_num_workers: workers of the val/test loaders (never persistent: they run once per validation).
        augmentation: ``TrainTransform`` kwargs (min_scale, max_scale, max_rotation, max_translate,
            max_translate_px, flip_prob, scale_type, color_jitter, hue_jitter).
        on_bad_sample: "raise" or "skip" missing/corrupt images.
        synthetic: ``bapose.data.synthetic.ensure_dataset`` kwargs (num_train, num_val, image_size, seed,
            keypoint_set, ... and an optional ``root``; None = ``$BAPOSE_CACHE/synthetic/<hash>``); replaces
            train/val/test with the generated files (its val split also serves as test).
        root: dataset root folder that relative ``ann_file``/``image_dir`` paths start from.
        size_divisor: eval images are padded to multiples of it.
        eval_mode: "coco" or "crowdpose" rules for the module's evaluator and the codec's small-person rule; None
            takes the dataset's rule set (``bapose.data.metadata.rule_set``: CrowdPose for CrowdPose-format data —
            the CrowdPose joint set, ``crowdIndex`` images, or no ``area`` in the json — else COCO).
        eval_resize: how val/test images are resized: ``"pad"`` (short side = ``input_size``, padded right/bottom)
            or ``"dekr"`` (DEKR's centred warp, for checkpoints converted from DEKR); None: ``"pad"``, except in
            ``bapose-eval``, which takes the rule a checkpoint stores (``bapose.eval_resize``).
        train_images: which training images are used (``CocoKeypointDataset``): ``"labelled"`` (a labelled non-crowd
            person) or ``"annotated"`` (any person annotation, as DEKR and MMPose).

    The codec's ``min_center_area: null`` means "by the rule set": 32^2 under COCO rules, none under CrowdPose
    rules (as DEKR), resolved here before the codec is built and logged once.
    """

    def __init__(self, name: str = "coco", input_size: int = 512, num_keypoints: int | None = 17,
                 meta: Mapping | DatasetMeta | None = None, train: Mapping | None = None, val: Mapping | None = None,
                 test: Mapping | None = None, codec: Any = None, batch_size: int = 8, val_batch_size: int = 1,
                 num_workers: int = 4, persistent_workers: bool = False, pin_memory: bool = True,
                 val_num_workers: int = 0,
                 augmentation: Mapping | None = None, on_bad_sample: str = "raise",
                 synthetic: Mapping | None = None, root: str | os.PathLike | None = None,
                 size_divisor: int = 32, eval_mode: str | None = None, eval_resize: str | None = None,
                 train_images: str = "labelled") -> None:
        super().__init__()
        if train_images not in TRAIN_IMAGES:
            raise ConfigError(f"data field 'train_images' is '{train_images}'; expected one of {list(TRAIN_IMAGES)}")
        self.train_images = train_images
        if size_divisor <= 0 or size_divisor % 32:
            raise ConfigError(f"data field 'size_divisor' is {size_divisor}; expected a positive multiple of 32 "
                              "(HRNet's deepest stride)")
        # the training crop is input_size x input_size and goes into the net unpadded: checked here, at build time,
        # so a bad value fails before any data is generated or read, not deep inside the first forward
        if input_size <= 0 or input_size % size_divisor:
            raise ConfigError(f"data field 'input_size' is {input_size}; expected a positive multiple of "
                              f"{size_divisor} (data.size_divisor; HRNet downsamples by 32), e.g. "
                              f"{max(size_divisor, round(input_size / size_divisor) * size_divisor)}")
        if batch_size <= 0 or val_batch_size <= 0:
            raise ConfigError(f"data fields 'batch_size'/'val_batch_size' are {batch_size}/{val_batch_size}; "
                              "expected positive integers")
        if on_bad_sample not in ("raise", "skip"):
            raise ConfigError(f"data field 'on_bad_sample' is '{on_bad_sample}'; expected 'raise' or 'skip'")
        self.name = name
        self.input_size = int(input_size)
        self.num_keypoints = int(num_keypoints) if num_keypoints is not None else None
        self.root = Path(root) if root is not None else None
        self.splits = {"train": _plain(train), "val": _plain(val), "test": _plain(test)}
        self.synthetic = _plain(synthetic) or None
        self.batch_size = int(batch_size)
        self.val_batch_size = int(val_batch_size)
        self.num_workers = int(num_workers)
        self.persistent_workers = bool(persistent_workers) and self.num_workers > 0
        self.val_num_workers = int(val_num_workers)
        self.pin_memory = bool(pin_memory)
        self.augmentation = _plain(augmentation)
        self.on_bad_sample = on_bad_sample
        self.size_divisor = int(size_divisor)
        if eval_mode not in (None, "coco", "crowdpose"):
            raise ConfigError(f"data field 'eval_mode' is '{eval_mode}'; expected 'coco', 'crowdpose' or null")
        self._eval_mode = eval_mode
        if eval_resize not in (None, *EVAL_RESIZES):
            raise ConfigError(f"data field 'eval_resize' is {eval_resize!r}; expected one of {list(EVAL_RESIZES)} "
                              "or null")
        self.eval_resize = eval_resize
        self._meta_cfg = meta if isinstance(meta, DatasetMeta) else (_plain(meta) if meta is not None else None)
        self.keypoints_field = "keypoints"
        if isinstance(self._meta_cfg, dict):
            self.keypoints_field = str(self._meta_cfg.pop("keypoints_field", None) or "keypoints")
        self._meta: DatasetMeta | None = None
        self._json_cache: dict[Path, dict] = {}  # jsons read before setup (joint set, rule set), handed to datasets
        self._codec_cfg = codec
        self._codec: Any = None
        self.train_dataset: CocoKeypointDataset | None = None
        self.val_dataset: CocoKeypointDataset | None = None
        self.test_dataset: CocoKeypointDataset | None = None
        if self._meta_cfg is not None and not self._meta_from_json:
            self._check_k(self.meta)  # fail at construction, before any data is touched
        if self.augmentation:  # bad augmentation keys fail at construction too
            self._train_transform()

    # ------------------------------------------------------------------------------------------- meta and codec
    def _check_k(self, meta: DatasetMeta) -> None:
        if self.num_keypoints is None:
            self.num_keypoints = meta.num_keypoints
        if meta.num_keypoints != self.num_keypoints:
            raise ConfigError(f"data field 'num_keypoints' is {self.num_keypoints} but the dataset meta "
                              f"'{meta.name}' has K={meta.num_keypoints} joints; expected them to be equal")

    @property
    def _meta_from_json(self) -> bool:
        """Whether the joint set is read from the json (no meta, or a meta without joint names or preset name)."""
        cfg = self._meta_cfg
        if cfg is None:
            return True
        if isinstance(cfg, DatasetMeta) or cfg.get("keypoints") is not None:
            return False
        return cfg.get("name") not in ("coco", "crowdpose")

    def _json(self, ann: Path) -> dict:
        """A split's json, read once until setup hands it to its dataset."""
        if ann not in self._json_cache:
            self._json_cache[ann] = load_coco_keypoint_json(ann, self.keypoints_field)
        return self._json_cache[ann]

    def _first_json(self, *splits: str) -> Path | None:
        for split in splits:
            ann = self._split_paths(split)[0]
            if ann is not None:
                return ann
        return None

    @property
    def meta(self) -> DatasetMeta:
        """The joint set: from config, else from the train/val json's keypoint category."""
        if self._meta is None:
            if isinstance(self._meta_cfg, DatasetMeta):
                meta = self._meta_cfg
            elif not self._meta_from_json:
                meta = DatasetMeta.build(**self._meta_cfg, source="data.meta")
            else:
                ann = self._first_json("train", "val")
                if ann is None:
                    raise ConfigError("data: no 'meta' and no train/val json to read the joint set from")
                given = dict(self._meta_cfg or {})
                meta = joint_set_of_json(self._json(ann), ann, self.keypoints_field, name=given.get("name"),
                                         sigmas=given.get("sigmas"), flip_index=given.get("flip_index"),
                                         skeleton=given.get("skeleton"))
            self._check_k(meta)
            self._meta = meta
        return self._meta

    @property
    def eval_mode(self) -> str:
        """The dataset's rule set, ``"coco"`` or ``"crowdpose"``: ``eval_mode`` when given, else read from the data
        (the CrowdPose joint set, or the val (else train) json: ``bapose.data.metadata.rule_set``)."""
        if self._eval_mode is None:
            if self.meta.name == "crowdpose":
                self._eval_mode = "crowdpose"
            elif self.synthetic:
                self._eval_mode = "coco"  # generated people carry a segment `area` (bapose.data.synthetic)
            else:
                ann = self._first_json("val", "train")
                self._eval_mode = rule_set(self._json(ann), self.meta.name) if ann is not None else "coco"
        return self._eval_mode

    @property
    def codec(self) -> Any:
        """The target codec shared with the LightningModule, made on first use by the builder this datamodule was
        given (``bapose.build``'s ``build_codec`` over ``conf/codec``: it needs the joint set's sigmas and the rule
        set, which may come from the json), or the codec object given."""
        if self._codec is None:
            make = self._codec_cfg
            if make is None or isinstance(make, Mapping):  # conf/codec kwargs (a DictConfig is a Mapping)
                make = functools.partial(build_codec, make)  # kwargs: the one codec builder over them
            if callable(make) and not hasattr(make, "encode"):
                self._codec = make(input_size=self.input_size, sigmas=self.meta.sigmas, rule_set=self.eval_mode,
                                   name=self.name)
            else:
                self._codec = make
            size = getattr(self._codec, "input_size", self.input_size)
            if size != self.input_size:
                raise ConfigError(f"codec input_size {size} differs from data field 'input_size' {self.input_size}; "
                                  "expected them to be equal")
        return self._codec

    def checkpoint_spec(self) -> dict[str, Any]:
        """What a checkpoint stores of this dataset (plain values): ``bapose-eval`` rebuilds the datamodule from it.

        Resolved values: the joint set as ``DatasetMeta.build`` kwargs (+ ``keypoints_field``), the rule set as
        ``eval_mode``, ``root`` as an absolute path; splits as configured (relative to ``root``).
        """
        splits = {k: (dict(v) if v else None) for k, v in self.splits.items()}
        return {
            "_target_": f"{type(self).__module__}.{type(self).__qualname__}",
            "name": self.name, "input_size": self.input_size, "num_keypoints": self.meta.num_keypoints,
            "meta": {**self.meta.spec(), "keypoints_field": self.keypoints_field},
            "root": str(self.root.absolute()) if self.root is not None else None, **splits,
            "batch_size": self.batch_size, "val_batch_size": self.val_batch_size, "num_workers": self.num_workers,
            "val_num_workers": self.val_num_workers, "persistent_workers": self.persistent_workers,
            "pin_memory": self.pin_memory,
            "on_bad_sample": self.on_bad_sample, "synthetic": dict(self.synthetic) if self.synthetic else None,
            "size_divisor": self.size_divisor, "eval_mode": self.eval_mode, "eval_resize": self.eval_resize,
        }

    # ------------------------------------------------------------------------------------------- paths
    def _resolve(self, path: Any) -> Path:
        p = Path(os.path.expanduser(str(path)))
        return p if p.is_absolute() or self.root is None else self.root / p

    def _synthetic_paths(self) -> dict[str, Any]:
        from bapose.data import synthetic as synth  # written separately; imported only when asked for

        opts = dict(self.synthetic or {})
        root = opts.pop("root", None)
        # no root: the generator keys a cache folder by the hash of its options, so sweeps never collide
        return synth.ensure_dataset(Path(root) if root is not None else None, **opts)

    def _split_paths(self, split: str) -> tuple[Path | None, Path | None]:
        """(ann_file, image_dir) of a split, or (None, None) when the split is not configured."""
        if self.synthetic:
            paths = self._synthetic_files
            # the generated set has one held-out split: it serves as val and as test
            key = "train" if split == "train" else "val"
            return Path(paths[f"{key}_ann"]), Path(paths[f"{key}_images"])
        cfg = self.splits[split]
        if not cfg:
            return None, None
        missing = [k for k in ("ann_file", "image_dir") if not cfg.get(k)]
        if missing:
            raise ConfigError(f"data.{split}: missing {missing}; expected 'ann_file' and 'image_dir'")
        ann = self._resolve(cfg["ann_file"])
        if self.root is not None and not self.root.is_dir() and not ann.is_file():
            raise DataError(f"field 'data.root': folder '{self.root}' not found (data.{split}.ann_file "
                            f"'{cfg['ann_file']}' is read from it); expected the '{self.name}' dataset there: "
                            f"data.root=<folder>, or BAPOSE_DATA=<folder holding {self.name}/> (the default root is "
                            f"<paths.data_dir>/{self.name}; conf/data/{self.name}.yaml names its own variable)")
        return ann, self._resolve(cfg["image_dir"])

    @property
    def _synthetic_files(self) -> dict[str, Any]:
        if not hasattr(self, "_synth_cache"):
            self._synth_cache = self._synthetic_paths()
        return self._synth_cache

    @property
    def val_ann_file(self) -> Path | None:
        return self._split_paths("val")[0]

    @property
    def test_ann_file(self) -> Path | None:
        """The test split's json; the val json when no test split is configured."""
        ann = self._split_paths("test")[0]
        return ann if ann is not None else self.val_ann_file

    # ------------------------------------------------------------------------------------------- Lightning hooks
    def prepare_data(self) -> None:
        # rank 0 only: generate the synthetic set once; setup() on every rank then finds it
        if self.synthetic:
            self._synthetic_files  # noqa: B018 - triggers generation

    def _train_transform(self) -> TrainTransform:
        try:
            return TrainTransform(self.input_size, self.meta.flip_index, **self.augmentation)
        except TypeError as err:
            raise ConfigError(f"data field 'augmentation' {self.augmentation}: {err}") from None

    def _dataset(self, split: str, train: bool) -> CocoKeypointDataset | None:
        ann, images = self._split_paths(split)
        if ann is None:
            return None
        transform = self._train_transform() if train else \
            EvalTransform(self.input_size, self.size_divisor, self.eval_resize)
        return CocoKeypointDataset(ann, images, meta=self.meta, codec=self.codec if train else None,
                                   transform=transform, train=train, on_bad_sample=self.on_bad_sample,
                                   keypoints_field=self.keypoints_field, data=self._json_cache.pop(ann, None),
                                   train_images=self.train_images)

    def setup(self, stage: str | None = None) -> None:
        self.eval_mode  # noqa: B018 - the rule set, decided while its json is read once for the datasets anyway
        if stage in (None, "fit") and self.train_dataset is None:
            self.train_dataset = self._dataset("train", train=True)
            if self.train_dataset is None:
                raise ConfigError("data.train is not configured; expected {ann_file, image_dir} to fit")
        if stage in (None, "fit", "validate") and self.val_dataset is None:
            self.val_dataset = self._dataset("val", train=False)
        if stage in (None, "test") and self.test_dataset is None:
            self.test_dataset = self._dataset("test", train=False) if self.splits["test"] and not self.synthetic \
                else self.val_dataset or self._dataset("val", train=False)
        self._json_cache.clear()  # the datasets keep what they need

    def _loader(self, dataset: CocoKeypointDataset | None, split: str, train: bool) -> DataLoader:
        if dataset is None:
            raise ConfigError(f"data.{split} is not set up; call setup() with a stage that builds it "
                              f"and configure data.{split}")
        batch_size = self.batch_size if train else self.val_batch_size
        workers = self.num_workers if train else self.val_num_workers
        # full training batches (BatchNorm), unless the set is smaller than one batch (tiny demo/test sets)
        drop_last = train and len(dataset) >= batch_size
        if workers > 0:
            limit_cv2_threads_before_fork()
        rank = self.trainer.global_rank if self.trainer is not None else None
        kwargs = {"batch_size": batch_size, "drop_last": drop_last, "num_workers": workers,
                  "persistent_workers": self.persistent_workers if train else False, "pin_memory": self.pin_memory,
                  "collate_fn": collate_train if train else collate_eval,
                  "worker_init_fn": functools.partial(worker_init_fn, rank=rank) if workers > 0 else None}
        if train:  # order and augmentation seeds by (seed, epoch): a resumed run sees the uninterrupted run's data
            return EpochSeededLoader(dataset, shuffle=True, epoch_fn=self._current_epoch, **kwargs)
        return DataLoader(dataset, shuffle=False, **kwargs)

    def _current_epoch(self) -> int:
        """The epoch the training loader's next iteration serves: the fit loop's count of processed epochs (what
        Lightning passes to a sampler's ``set_epoch``; ``current_epoch`` lags behind it right after a resume from an
        epoch-end checkpoint); 0 without a trainer."""
        progress = getattr(getattr(self.trainer, "fit_loop", None), "epoch_progress", None)
        if progress is not None:
            return int(progress.current.processed)
        return int(getattr(self.trainer, "current_epoch", 0) or 0) if self.trainer is not None else 0

    def train_dataloader(self) -> DataLoader:
        return self._loader(self.train_dataset, "train", train=True)

    def val_dataloader(self) -> DataLoader:
        return self._loader(self.val_dataset, "val", train=False)

    def test_dataloader(self) -> DataLoader:
        return self._loader(self.test_dataset, "test", train=False)


def datamodule_spec(trainer: Any) -> dict[str, Any] | None:
    """The ``checkpoint_spec`` of a trainer's datamodule (None without a trainer or a BAPoseDataModule)."""
    dm = getattr(trainer, "datamodule", None) if trainer is not None else None
    spec = getattr(dm, "checkpoint_spec", None)
    return spec() if callable(spec) else None
