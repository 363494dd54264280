"""Codec upper bound: encode the ground truth, decode the targets with the real decoder (no network), score the result.

What a perfect network could reach with this codec at this input size: losses come from people below
``min_center_area`` (no center), centers that collide in center NMS, and offset squares overwritten by a smaller
neighbour.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path

import numpy as np
import torch

from bapose.codecs.bapose_codec import BAPoseCodec
from bapose.data.metadata import MIN_CENTER_AREA, DatasetMeta
from bapose.data.transforms import apply_affine, eval_resize_matrix, invert_affine
from bapose.evaluation import KeypointEvaluator
from bapose.inference import to_original


def codec_upper_bound(gt: str | Path | Mapping, meta: DatasetMeta, mode: str = "coco", input_size: int = 512,
                      codec: BAPoseCodec | None = None, backend: str | None = None,
                      size_divisor: int = 32) -> dict[str, float]:
    """AP of decode(encode(ground truth)) for every image of ``gt`` (sizes from the json, no pixels needed).

    Each image is planned as evaluation resizes it (short side = ``input_size``, padded to ``size_divisor``
    multiples, ``bapose.data.transforms.eval_resize_matrix``); people are encoded in that input frame with areas
    scaled by the resize (bbox w*h where the json has no ``area``), decoded, mapped back to original pixels and scored.
    """
    data = json.loads(Path(gt).read_text()) if not isinstance(gt, Mapping) else gt
    # by default the small-person rule of the scoring rule set (COCO 32^2, CrowdPose none), as training resolves it
    codec = codec or BAPoseCodec(input_size=input_size, min_center_area=MIN_CENTER_AREA[mode])
    k = meta.num_keypoints
    evaluator = KeypointEvaluator(data, meta, mode=mode, backend=backend,
                                  file=None if isinstance(gt, Mapping) else gt)
    per_image: dict[int, list[Mapping]] = {img["id"]: [] for img in data["images"]}
    for ann in data["annotations"]:
        if not ann.get("iscrowd", 0):
            per_image[ann["image_id"]].append(ann)
    for img in data["images"]:
        (rh, rw), padded, input_to_orig = eval_resize_matrix(img["height"], img["width"], input_size, size_divisor)
        anns = per_image[img["id"]]
        kp = np.asarray([a["keypoints"] for a in anns], np.float64).reshape(len(anns), k, 3)
        kp[..., :2] = apply_affine(kp[..., :2], invert_affine(input_to_orig))
        zoom = (rw / img["width"]) * (rh / img["height"])
        areas = np.asarray([a["area"] if "area" in a else a["bbox"][2] * a["bbox"][3] for a in anns]) * zoom
        t = codec.encode(kp, areas, image_size=padded)
        (poses, scores), = codec.decode(torch.from_numpy(t["heatmaps"])[None], torch.from_numpy(t["offsets"])[None])
        evaluator.update([img["id"]], [to_original(poses.numpy(), input_to_orig)], [scores.numpy()])
    return evaluator.compute()
