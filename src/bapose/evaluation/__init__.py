"""Keypoint AP (COCO / CrowdPose) and COCO results formatting."""

from bapose.evaluation.keypoints import (
    COCO_KEYS,
    CROWDPOSE_KEYS,
    KeypointEvaluator,
    to_coco_results,
    validate_coco_keypoints,
)

__all__ = ["COCO_KEYS", "CROWDPOSE_KEYS", "KeypointEvaluator", "to_coco_results", "validate_coco_keypoints"]
