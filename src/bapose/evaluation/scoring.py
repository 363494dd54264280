"""Scoring a results file against a COCO-format ground truth: which joint set and rule set it is scored under
(``bapose-score``, ``scripts/codec_upper_bound.py``), and the table its stats print as."""

from __future__ import annotations

import math
from collections.abc import Sequence

from bapose.data.coco import joint_set_of_json
from bapose.data.metadata import DatasetMeta, keypoint_categories, keypoint_names, rule_set
from bapose.errors import DataError

__all__ = ["format_table", "parse_sigmas", "resolve_dataset"]


def resolve_dataset(gt: dict, dataset: str = "auto", file: object = None, keypoints_field: str = "keypoints",
                    sigmas: Sequence[float] | None = None) -> tuple[DatasetMeta, str]:
    """Metadata and scoring mode for a ground-truth dict.

    ``auto``: CrowdPose rules for CrowdPose-format files (the CrowdPose joint set, images with ``crowdIndex``, or no
    annotation with ``area``: ``bapose.data.metadata.rule_set``), else COCO. The joint set comes from the json's
    keypoint category (any custom K; ``keypoints_field`` picks the joints of files with several sets), else from the
    named preset; ``sigmas`` replaces its OKS sigmas.
    """
    cats = [c for c in gt.get("categories", []) or [] if isinstance(c, dict) and "keypoints" in c]
    if dataset not in ("auto", "coco", "crowdpose"):
        raise DataError(f"--dataset '{dataset}'; expected coco, crowdpose or auto")
    if cats:
        names = keypoint_names(keypoint_categories(gt, file, keypoints_field)[0], keypoints_field)
    else:
        names = DatasetMeta.preset("coco" if dataset == "auto" else dataset).keypoints
    if sigmas is not None and len(sigmas) != len(names):
        raise DataError(f"--sigmas: {len(sigmas)} values; expected {len(names)} (one per joint: "
                        f"{', '.join(map(str, names[:6]))}{', ...' if len(names) > 6 else ''})")
    if cats:
        meta = joint_set_of_json(gt, file, keypoints_field, sigmas=sigmas)
    else:
        meta = DatasetMeta.build("coco" if dataset == "auto" else dataset, sigmas=sigmas)
    mode = rule_set(gt, meta.name) if dataset == "auto" else dataset
    return meta, mode


def parse_sigmas(text: str | None) -> list[float] | None:
    """``"0.079,0.079,..."`` or ``"[0.079, ...]"`` -> floats (None stays None)."""
    if text is None:
        return None
    try:
        return [float(v) for v in text.strip().strip("[]").replace(",", " ").split()]
    except ValueError:
        raise DataError(f"--sigmas '{text}': expected comma-separated numbers, one OKS sigma per joint") from None


def format_table(stats: dict[str, float]) -> str:
    """A two-row markdown table of the stats, 4 decimals (NaN: no ground truth in that subset)."""
    keys = list(stats)
    cells = ["nan" if math.isnan(stats[k]) else f"{stats[k]:.4f}" for k in keys]
    return "| " + " | ".join(keys) + " |\n|" + "---|" * len(keys) + "\n| " + " | ".join(cells) + " |"
