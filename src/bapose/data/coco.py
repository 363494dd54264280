"""COCO-format keypoint files: the one reader and structure check of the suite, and the joint set a file declares.

The dataset, the datamodule, the evaluator, ``bapose.load_model``, ``bapose-convert`` and ``bapose-score`` all read
annotation files through :func:`load_coco_keypoint_json` (and :func:`bapose.io.read_json_object`), so a missing, broken or foreign file
gets the same one-line error everywhere, and take a file's joint set from :func:`joint_set_of_json` /
:func:`resolve_joint_set`. Per-annotation value checks against a joint set (K values, finite numbers, boxes, areas)
are the evaluator's (:func:`bapose.evaluation.keypoints.validate_coco_keypoints`); per-sample ones the dataset's.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from pathlib import Path

from bapose.data.metadata import DatasetMeta, keypoint_categories
from bapose.errors import DataError, check_unique_ids, where
from bapose.io import read_json_object

__all__ = ["check_coco_keypoint_json", "joint_set_of_json", "load_coco_keypoint_json",
           "resolve_joint_set"]


def load_coco_keypoint_json(ann_file: str | os.PathLike, keypoints_field: str = "keypoints") -> dict:
    """Load and check the top-level structure of a COCO keypoint json; DataError says what is wrong.

    Checks the lists, unique image ids and unique annotation ids (an evaluation could not tell two people with one
    id apart), each image's ``id`` / ``file_name`` / size and each annotation's ``id`` / ``image_id`` /
    ``keypoints_field``.
    """
    ann_file = Path(ann_file)
    data = read_json_object(ann_file)
    return check_coco_keypoint_json(data, ann_file, keypoints_field)


def check_coco_keypoint_json(data: Mapping, ann_file: object, keypoints_field: str = "keypoints") -> dict:
    """:func:`load_coco_keypoint_json`'s checks on a json already read (``ann_file`` is named in errors)."""
    if not isinstance(data, dict):
        raise DataError(f"{where(ann_file)}: top level is a {type(data).__name__}; expected a COCO keypoint json "
                        "object with 'images', 'annotations' and 'categories'")
    for key in ("images", "annotations", "categories"):
        if not isinstance(data.get(key), list):
            got = "missing" if key not in data else f"a {type(data[key]).__name__}"
            raise DataError(f"{where(ann_file, key)}: {got}; expected a list (is this a COCO keypoint json?)")
    if not any(isinstance(c, dict) and "keypoints" in c for c in data["categories"]):
        raise DataError(f"{where(ann_file, 'categories')}: no category has a 'keypoints' list; expected a COCO "
                        "keypoint json (this looks like a detection/caption file)")
    image_ids: set = set()
    for i, img in enumerate(data["images"]):
        missing = [k for k in ("id", "file_name") if k not in img]
        if missing:
            raise DataError(f"{where(ann_file, 'images')}: entry {i} lacks {missing}; expected 'id' and 'file_name'")
        if img["id"] in image_ids:
            raise DataError(f"{where(ann_file, 'images.id')}: image id {img['id']!r} appears twice ('{img['file_name']}' "
                            "is one of them); expected unique image ids")
        image_ids.add(img["id"])
        # the declared size sizes the ignore masks and the evaluation; optional, but never 0 x 0
        for key in ("width", "height"):
            value = img.get(key)
            if value is not None and (isinstance(value, bool) or not isinstance(value, (int, float)) or value <= 0):
                raise DataError(f"{where(ann_file, f'images.{key}')}: image id {img['id']} ('{img['file_name']}') "
                                f"has {key} {value!r}; expected a positive number of pixels")
    ann_ids: set = set()
    repeated = []
    cat_ids = {c.get("id") for c in keypoint_categories(data, ann_file, keypoints_field)}
    for ann in data["annotations"]:
        if not isinstance(ann, dict):
            raise DataError(f"{where(ann_file, 'annotations')}: an entry is a {type(ann).__name__}; expected an object")
        other = "category_id" in ann and ann["category_id"] not in cat_ids  # e.g. a detection-only category
        missing = [k for k in ("id", "image_id") + (() if other else (keypoints_field,)) if k not in ann]
        if missing:
            raise DataError(f"{where(ann_file, 'annotations', ann.get('id'))}: lacks {missing}; expected 'id', "
                            f"'image_id' and '{keypoints_field}'")
        if ann["id"] in ann_ids:
            repeated.append(ann["id"])
        ann_ids.add(ann["id"])
    check_unique_ids(ann_file, repeated)
    return data


def joint_set_of_json(data: Mapping, file: object = None, keypoints_field: str = "keypoints",
                      name: str | None = None, sigmas: Sequence[float] | None = None,
                      flip_index: Sequence[int] | None = None,
                      skeleton: Sequence[Sequence[int]] | None = None) -> DatasetMeta:
    """The joint set a COCO json declares (its first keypoint category: names, skeleton; flips from the names),
    with any of ``name`` / ``sigmas`` / ``flip_index`` / ``skeleton`` given on top."""
    category = keypoint_categories(data, file, keypoints_field)[0]
    meta = DatasetMeta.from_coco_category(category, name=name, sigmas=sigmas, file=file,
                                          keypoints_field=keypoints_field)
    if flip_index is None and skeleton is None:
        return meta
    spec = meta.spec()
    spec.update({k: v for k, v in (("flip_index", flip_index), ("skeleton", skeleton)) if v is not None})
    return DatasetMeta.build(**spec, source=f"file '{file}' with data.meta")


def resolve_joint_set(meta: str | DatasetMeta | None = None, ann_file: str | os.PathLike | None = None,
                      labels: tuple[str, str] = ("meta=", "ann_file="),
                      keypoints_field: str = "keypoints") -> tuple[DatasetMeta, str] | None:
    """The joint set a user asked for, first of: ``meta`` (a DatasetMeta or a preset name), the keypoint category of
    ``ann_file``; with how messages name where it came from (``labels``: how the caller spells the two options,
    ``meta=`` / ``--meta ``). None when neither is given (the caller falls back to what it knows: a checkpoint's
    joint set, a preset by K)."""
    if isinstance(meta, DatasetMeta):
        return meta, f"dataset '{meta.name}'"
    if meta:
        return DatasetMeta.preset(str(meta)), f"{labels[0]}{meta}"
    if ann_file:
        return joint_set_of_json(read_json_object(ann_file), ann_file, keypoints_field), f"{labels[1]}{ann_file}"
    return None
