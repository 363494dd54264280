"""Dataset metadata: joint names, flip pairs, OKS sigmas and skeleton — the only place K comes from.

Nothing else in bapose hard-codes 17 joints or COCO names: the codec, evaluator, transforms and drawing all take a
:class:`DatasetMeta`. Presets exist for COCO-17 and CrowdPose-14; any other COCO-format keypoint set is described in
config or read from its json ``categories`` entry.
"""

from __future__ import annotations

import re
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np

from bapose.errors import DataError

COCO_KEYPOINTS = (
    "nose", "left_eye", "right_eye", "left_ear", "right_ear", "left_shoulder", "right_shoulder", "left_elbow",
    "right_elbow", "left_wrist", "right_wrist", "left_hip", "right_hip", "left_knee", "right_knee", "left_ankle",
    "right_ankle",
)
# COCO OKS falloff constants (cocoapi), in COCO_KEYPOINTS order.
COCO_SIGMAS = (
    0.026, 0.025, 0.025, 0.035, 0.035, 0.079, 0.079, 0.072, 0.072, 0.062, 0.062, 0.107, 0.107, 0.087, 0.087, 0.089,
    0.089,
)
# 1-based joint pairs, as COCO's json `skeleton` field writes them.
COCO_SKELETON = (
    (16, 14), (14, 12), (17, 15), (15, 13), (12, 13), (6, 12), (7, 13), (6, 7), (6, 8), (7, 9), (8, 10), (9, 11),
    (2, 3), (1, 2), (1, 3), (2, 4), (3, 5), (4, 6), (5, 7),
)

CROWDPOSE_KEYPOINTS = (
    "left_shoulder", "right_shoulder", "left_elbow", "right_elbow", "left_wrist", "right_wrist", "left_hip",
    "right_hip", "left_knee", "right_knee", "left_ankle", "right_ankle", "head", "neck",
)
# Official crowdposetools sigmas (shared/data/README.md).
CROWDPOSE_SIGMAS = (0.079, 0.079, 0.072, 0.072, 0.062, 0.062, 0.107, 0.107, 0.087, 0.087, 0.089, 0.089, 0.079, 0.079)
CROWDPOSE_SKELETON = (
    (13, 14), (14, 1), (14, 2), (1, 3), (3, 5), (2, 4), (4, 6), (1, 7), (2, 8), (7, 8), (7, 9), (9, 11), (8, 10),
    (10, 12),
)

_LEFT_RIGHT = (
    (re.compile(r"^left[_ ]?(.*)$"), "right_{}"),
    (re.compile(r"^right[_ ]?(.*)$"), "left_{}"),
    (re.compile(r"^l_(.*)$"), "r_{}"),
    (re.compile(r"^r_(.*)$"), "l_{}"),
)


def infer_flip_index(names: Sequence[str]) -> list[int]:
    """Flip permutation from joint names: ``left_x`` <-> ``right_x`` (also ``l_x`` <-> ``r_x``); others map to themselves."""
    lookup = {n.lower(): i for i, n in enumerate(names)}
    flip = list(range(len(names)))
    for i, name in enumerate(names):
        low = name.lower()
        for pattern, template in _LEFT_RIGHT:
            m = pattern.match(low)
            if m:
                partner = template.format(m.group(1))
                # "left_eye" -> "right_eye" also when the json spells it "lefteye"/"righteye"
                for cand in (partner, partner.replace("_", "")):
                    if cand in lookup:
                        flip[i] = lookup[cand]
                        break
                break
    return flip


@dataclass(frozen=True)
class DatasetMeta:
    """What a keypoint dataset is: K joints, their names, how a horizontal flip permutes them, OKS sigmas, skeleton.

    Args:
        name: short name ("coco", "crowdpose", or a custom one).
        keypoints: joint names, length K.
        flip_index: flip_index[k] is the joint that joint k becomes in a mirrored image (length K).
        sigmas: OKS falloff constant per joint (length K).
        skeleton: 0-based joint index pairs for drawing.
    """

    name: str
    keypoints: tuple[str, ...]
    flip_index: tuple[int, ...]
    sigmas: tuple[float, ...]
    skeleton: tuple[tuple[int, int], ...] = field(default=())

    def __post_init__(self) -> None:
        k = len(self.keypoints)
        if k == 0:
            raise DataError(f"dataset '{self.name}': field 'keypoints' is empty; expected at least one joint name")
        if len(self.flip_index) != k:
            raise DataError(f"dataset '{self.name}': field 'flip_index' has {len(self.flip_index)} entries; "
                            f"expected {k} (one per keypoint)")
        if sorted(self.flip_index) != list(range(k)) or any(self.flip_index[j] != i
                                                             for i, j in enumerate(self.flip_index)):
            raise DataError(f"dataset '{self.name}': field 'flip_index' {list(self.flip_index)} is not a "
                            f"permutation of 0..{k - 1} that is its own inverse")
        if len(self.sigmas) != k:
            raise DataError(f"dataset '{self.name}': field 'sigmas' has {len(self.sigmas)} entries; expected {k}")
        if not all(np.isfinite(s) and s > 0 for s in self.sigmas):
            raise DataError(f"dataset '{self.name}': field 'sigmas' must be positive finite numbers, got "
                            f"{list(self.sigmas)}")
        for a, b in self.skeleton:
            if not (0 <= a < k and 0 <= b < k):
                raise DataError(f"dataset '{self.name}': field 'skeleton' pair ({a}, {b}) is out of range 0..{k - 1}")

    @property
    def num_keypoints(self) -> int:
        return len(self.keypoints)

    @property
    def sigmas_array(self) -> np.ndarray:
        return np.asarray(self.sigmas, dtype=np.float64)

    def flip_index_with_center(self) -> list[int]:
        """Flip permutation over the K+1 heatmap channels (the center map, last, maps to itself)."""
        return list(self.flip_index) + [self.num_keypoints]

    # ------------------------------------------------------------------ constructors
    @classmethod
    def coco(cls) -> DatasetMeta:
        return cls("coco", COCO_KEYPOINTS, tuple(infer_flip_index(COCO_KEYPOINTS)), COCO_SIGMAS,
                   tuple((a - 1, b - 1) for a, b in COCO_SKELETON))

    @classmethod
    def crowdpose(cls) -> DatasetMeta:
        return cls("crowdpose", CROWDPOSE_KEYPOINTS, tuple(infer_flip_index(CROWDPOSE_KEYPOINTS)), CROWDPOSE_SIGMAS,
                   tuple((a - 1, b - 1) for a, b in CROWDPOSE_SKELETON))

    @classmethod
    def preset(cls, name: str) -> DatasetMeta:
        presets = {"coco": cls.coco, "crowdpose": cls.crowdpose}
        if name not in presets:
            raise DataError(f"unknown dataset preset '{name}'; expected one of {sorted(presets)} or a custom meta")
        return presets[name]()

    @classmethod
    def build(cls, name: str = "coco", keypoints: Sequence[str] | None = None,
              flip_index: Sequence[int] | None = None, sigmas: Sequence[float] | None = None,
              skeleton: Sequence[Sequence[int]] | None = None) -> DatasetMeta:
        """Config entry point: a preset by name, or a custom set (``keypoints`` given; flips inferred from names,
        sigmas default to 0.05 for every joint, skeleton 0-based)."""
        if keypoints is None:
            base = cls.preset(name)
            return cls(base.name, base.keypoints,
                       tuple(flip_index) if flip_index is not None else base.flip_index,
                       tuple(float(s) for s in sigmas) if sigmas is not None else base.sigmas,
                       tuple(tuple(p) for p in skeleton) if skeleton is not None else base.skeleton)
        names = tuple(str(n) for n in keypoints)
        return cls(name, names,
                   tuple(int(i) for i in flip_index) if flip_index is not None else tuple(infer_flip_index(names)),
                   tuple(float(s) for s in sigmas) if sigmas is not None else (0.05,) * len(names),
                   tuple((int(a), int(b)) for a, b in (skeleton or ())))

    @classmethod
    def from_coco_category(cls, category: Mapping, name: str | None = None,
                           sigmas: Sequence[float] | None = None) -> DatasetMeta:
        """From a COCO json ``categories`` entry (``keypoints`` names, 1-based ``skeleton``)."""
        if "keypoints" not in category:
            raise DataError("category has no field 'keypoints'; expected a COCO keypoint category")
        names = tuple(category["keypoints"])
        for preset in (cls.coco(), cls.crowdpose()):
            if preset.keypoints == names:
                # known joint set: trust the preset (CrowdPose's json ships COCO's 17-joint skeleton, for one)
                return cls.build(preset.name, sigmas=sigmas)
        k = len(names)
        skeleton = []
        for pair in category.get("skeleton", []) or []:
            a, b = int(pair[0]) - 1, int(pair[1]) - 1
            if 0 <= a < k and 0 <= b < k:
                skeleton.append((a, b))
            else:
                warnings.warn(f"category '{category.get('name')}': skeleton pair {list(pair)} is out of range "
                              f"1..{k}; dropped (it is only used for drawing)", stacklevel=2)
        return cls.build(name or str(category.get("name", "custom")), names, sigmas=sigmas, skeleton=skeleton)
