"""Generated crowd pose dataset (``data=synthetic``): articulated figures in COCO format, the default of ``make train``.

Every image is a small crowd scene: 1-6 labelled people (configurable) of varied size and pose on a textured, noisy
background, drawn far to near so nearer people occlude farther ones, plus optional tiny unlabelled people and an
``iscrowd=1`` region to exercise the ignore mask. The output is plain COCO keypoint json + jpg, so it goes through
exactly the code path of real data.

How a figure looks, and why:
- Thick tapered limbs, a torso polygon, a head with hair on top, eyes, nose and ears, hands at the wrists, shoes at the
  ankles, darker discs at elbows and knees: every joint sits on a visual landmark a small CNN can localise.
- Everyone faces the camera, so a person's left side is drawn on the image's right (as a real front view). Left and
  right limbs get contrasting colour families (arm and leg of a side share one), but *which* side gets which family is
  a coin flip per person. The left/right cue is thus the body geometry (where the limb attaches, which way the face
  looks), not a fixed colour: the dataset is closed under a horizontal mirror with the left/right joints swapped, so
  flip augmentation and flip testing see consistent labels. (A fixed "left = blue" rule would contradict every
  flipped training sample.)
- Bigger people stand lower in the frame and are drawn later (nearer), like a camera at head height.

Labels (COCO conventions, ``v`` per joint):
- ``v=2``: inside the image and not covered by a nearer person's body.
- ``v=1``: labelled but occluded — the joint pixel is covered by a nearer person (self-occlusion is not marked).
- ``v=0`` with ``x = y = 0``: outside the image.
- ``bbox``, ``area`` and ``segmentation`` describe the *visible* body mask (what COCO annotates): polygons, or an
  uncompressed RLE where a nearer person cuts a hole in the mask (polygons cannot hold holes).
- Layouts where a labelled person would keep less than ``min_visible`` of its body, fewer than half its joints inside
  the image or fewer than 3 unoccluded joints are re-sampled, so every labelled person is recognisable.
- Tiny background people get ``num_keypoints = 0`` (COCO leaves small people unlabelled); a cluster of them may form
  one ``iscrowd=1`` region with an RLE mask. Both become ignore regions for training and are ignored by COCO eval.
- CrowdPose-14 also writes the image ``crowdIndex`` (CrowdPose's definition: mean over people of other people's
  joints inside the person's box / the person's own joints), so easy/medium/hard splits work.

Determinism: image ``i`` of a split is drawn from ``SeedSequence([seed, split, i])``, so the same parameters give the
same json bytes and jpgs, in any process count, and the train set does not depend on ``num_val``.

Layout, read top-down: this module holds the entry points (:func:`ensure_dataset`: the cached, atomically written
dataset; :func:`generate`: render into a folder); :mod:`.spec` the parameters (:class:`SynthSpec`); :mod:`.coco`
one image's jpg and COCO records, a split's json and :func:`dataset_stats`; :mod:`.scene` one crowd image
(:func:`render_scene`: placement, occlusion, labels); :mod:`.figure` one person (pose, colours, drawing primitives);
:mod:`.draw` the pixels (cv2 primitives, masks, background).
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import tempfile
import time
from collections.abc import Iterator
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any

from bapose.data.synthetic.coco import coco_json, dataset_stats, render_image
from bapose.data.synthetic.scene import render_scene
from bapose.data.synthetic.spec import GENERATOR_VERSION, SynthSpec, spec_from_options
from bapose.errors import ConfigError, DataError
from bapose.io import read_json_or_empty
from bapose.paths import cache_dir

__all__ = [
    "GENERATOR_VERSION", "MARKER", "SynthSpec", "dataset_paths", "dataset_stats", "ensure_dataset", "generate",
    "render_scene",
]

MARKER = "SYNTH_COMPLETE.json"


def dataset_paths(root: Path) -> dict[str, Path]:
    """Where a generated dataset keeps its files: ``annotations/{train,val}.json``, ``{train,val}/*.jpg``."""
    root = Path(root)
    return {"train_ann": root / "annotations" / "train.json", "train_images": root / "train",
            "val_ann": root / "annotations" / "val.json", "val_images": root / "val"}


def generate(out_dir: Path, spec: SynthSpec | None = None, workers: int = 1, **params: Any) -> dict[str, Path]:
    """Render the dataset into ``out_dir`` (not atomic: :func:`ensure_dataset` wraps it). Returns its paths.

    Args:
        out_dir: target folder (created).
        spec: the parameters; or give them as keyword arguments (``num_train=...``), see :class:`SynthSpec`.
        workers: processes; >1 renders images in parallel (same bytes: every image has its own seed).
    """
    if spec is None:
        spec = spec_from_options(**params)
    elif params:
        raise ConfigError(f"generate: pass either spec or parameters, not both (got {sorted(params)})")
    paths = dataset_paths(Path(out_dir))
    paths["train_ann"].parent.mkdir(parents=True, exist_ok=True)
    for split, count in (("train", spec.num_train), ("val", spec.num_val)):
        image_dir = paths[f"{split}_images"]
        image_dir.mkdir(parents=True, exist_ok=True)
        jobs = [(spec, split, i, str(image_dir)) for i in range(count)]
        if workers > 1 and count > 1:
            with ProcessPoolExecutor(max_workers=workers) as pool:
                results = list(pool.map(render_image, jobs, chunksize=max(1, count // (4 * workers))))
        else:
            results = [render_image(job) for job in jobs]
        with open(paths[f"{split}_ann"], "w") as f:
            json.dump(coco_json(spec, split, results), f, separators=(",", ":"))
    return paths


# -------------------------------------------------------------------------------------------- cache + atomicity
def _check_complete(root: Path, spec: SynthSpec) -> bool:
    """True when ``root`` holds this exact dataset; DataError when it holds something else; False when absent."""
    if not root.exists():
        return False
    marker = read_json_or_empty(root / MARKER)
    if not marker:
        if root.is_dir() and not any(root.iterdir()):
            return False  # an empty folder the user made for us
        raise DataError(f"synthetic data folder '{root}' exists but has no valid '{MARKER}' marker; expected a "
                        f"complete generated dataset (delete the folder to regenerate, or pick another root)")
    if marker.get("params") != spec.to_dict():
        diff = {k: (marker.get("params", {}).get(k), v) for k, v in spec.to_dict().items()
                if marker.get("params", {}).get(k) != v}
        raise DataError(f"file '{root / MARKER}', field 'params': the dataset there was generated with other "
                        f"parameters {{name: (found, requested)}} = {diff}; expected the requested ones (use another "
                        f"root, or root=null for the hashed cache folder)")
    missing = [str(p) for p in dataset_paths(root).values() if not p.exists()]
    if missing:
        raise DataError(f"synthetic data folder '{root}' has a marker but lacks {missing}; expected a complete dataset "
                        f"(delete the folder to regenerate)")
    return True


@contextlib.contextmanager
def _exclusive(lock_path: Path) -> Iterator[bool]:
    """Hold an exclusive lock on ``lock_path`` (POSIX flock); yields False where locks are unavailable."""
    try:
        import fcntl
    except ImportError:  # Windows: fall back to rename-wins alone
        yield False
        return
    with open(lock_path, "a+") as f:
        fcntl.flock(f.fileno(), fcntl.LOCK_EX)
        try:
            yield True
        finally:
            fcntl.flock(f.fileno(), fcntl.LOCK_UN)


def ensure_dataset(root: Path | None, num_train: int, num_val: int, image_size: int, seed: int,
                   keypoint_set: str = "coco", people: tuple[int, int] = (1, 6), workers: int = 1,
                   **params: Any) -> dict[str, Path]:
    """The generated dataset's paths, rendering it on first use.

    Created atomically: rendered into a temp folder beside ``root``, marked complete, then renamed into place, so a
    crash never leaves a folder that looks complete. Concurrent processes (DDP ranks, parallel jobs) serialise on a
    lock file beside ``root``; without locks (Windows) the first rename wins and the others discard their copy.

    Args:
        root: dataset folder; None = ``cache_dir()/synthetic/<hash of the parameters>``.
        num_train, num_val, image_size, seed, keypoint_set, people, **params: see :class:`SynthSpec`.
        workers: rendering processes (does not change the bytes).

    Returns:
        ``{"train_ann", "train_images", "val_ann", "val_images"}`` paths.
    """
    spec = spec_from_options(num_train=num_train, num_val=num_val, image_size=image_size, seed=seed,
                             keypoint_set=keypoint_set, people=people, **params)
    root = Path(root) if root is not None else cache_dir() / "synthetic" / spec.key()
    if _check_complete(root, spec):
        return dataset_paths(root)
    root.parent.mkdir(parents=True, exist_ok=True)
    with _exclusive(root.parent / f".{root.name}.lock") as locked:
        if _check_complete(root, spec):  # another process finished while we waited for the lock
            return dataset_paths(root)
        if locked:  # temp folders of this root left by crashed runs (live ones would hold the lock)
            for stale in root.parent.glob(f".{root.name}.tmp-*"):
                shutil.rmtree(stale, ignore_errors=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{root.name}.tmp-", dir=root.parent))
        try:
            start = time.perf_counter()
            generate(tmp, spec, workers=workers)
            marker = {"params": spec.to_dict(), "seconds": round(time.perf_counter() - start, 2)}
            (tmp / MARKER).write_text(json.dumps(marker, indent=1))  # written last: marks a complete folder
            if root.is_dir() and not any(root.iterdir()):
                root.rmdir()
            try:
                os.rename(tmp, root)
            except OSError:
                if not _check_complete(root, spec):  # rename-wins: fine only if the winner made our dataset
                    raise
        finally:
            if tmp.exists():
                shutil.rmtree(tmp, ignore_errors=True)
    return dataset_paths(root)

