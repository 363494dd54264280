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

# side words of left/right joint names, in the spellings public datasets use (left_eye, l_eye, LEye, eye_left,
# shoulder.L, "Left Shoulder", rear_left_paw, ...); a name carries its side as one of its words
_SIDES = {"left": "right", "right": "left", "l": "r", "r": "l", "lft": "rgt", "rgt": "lft"}
# words of a name: snake/kebab/dot/space separated, camelCase and PascalCase split (LShoulder -> l, shoulder)
_WORD = re.compile(r"[A-Z]+(?![a-z])|[A-Z]?[a-z]+|[0-9]+")
# OKS sigma of a joint nobody gave one for, when its name matches no COCO / CrowdPose joint
DEFAULT_SIGMA = 0.05


def _words(name: str) -> tuple[str, ...]:
    return tuple(w.lower() for w in _WORD.findall(str(name)))


def _partner_keys(words: tuple[str, ...]) -> list[tuple[str, ...]]:
    """Candidate word lists of the mirrored joint: a side word swapped (left <-> right, l <-> r), else a side glued
    to the first or last word (lefteye, lhip, shoulderl) swapped."""
    swapped = [words[:i] + (_SIDES[w],) + words[i + 1:] for i, w in enumerate(words) if w in _SIDES]
    if swapped:
        return swapped
    out = []
    for i in {0, len(words) - 1}:
        w = words[i] if words else ""
        for side, other in (("left", "right"), ("right", "left"), ("l", "r"), ("r", "l")):
            if w.startswith(side) and len(w) > len(side):
                out.append(words[:i] + (other + w[len(side):],) + words[i + 1:])
            if w.endswith(side) and len(w) > len(side):
                out.append(words[:i] + (w[: -len(side)] + other,) + words[i + 1:])
    return out


def infer_flip_index(names: Sequence[str], source: object = None) -> list[int]:
    """Flip permutation from joint names: a joint named with a side (``left_x`` / ``l_x`` / ``LX`` / ``x_left`` /
    ``x.L`` / ``Left X`` / ``lefteye`` ...) maps to the joint with the other side and otherwise the same words
    (case and separators ignored); every other joint maps to itself. A side-named joint without a partner, or an
    ambiguous one, maps to itself with a warning naming it (``source`` names the file or dataset)."""
    words = [_words(n) for n in names]
    index: dict[tuple[str, ...], list[int]] = {}
    for i, w in enumerate(words):
        index.setdefault(w, []).append(i)
    flip = list(range(len(names)))
    lonely = []
    for i, w in enumerate(words):
        partners = {j for key in _partner_keys(w) for j in index.get(key, ()) if j != i}
        if len(partners) == 1:
            flip[i] = partners.pop()
        elif any(x in _SIDES for x in w) or partners:
            lonely.append(names[i])
    # keep it a permutation that is its own inverse: a one-sided match (a -> b, b -> c) is dropped
    for i, j in enumerate(flip):
        if flip[j] != i:
            lonely.append(names[i])
            flip[i] = i
    if lonely:
        warnings.warn(f"{f'{source}: ' if source else ''}joint(s) {sorted(set(lonely))} look left/right but have no "
                      "single mirrored partner among the joint names; they map to themselves under a horizontal "
                      "flip (give data.meta.flip_index to set the pairs)", stacklevel=2)
    return flip


def _sigma_lookup() -> dict[tuple[str, ...], float]:
    table: dict[tuple[str, ...], float] = {}
    for names, sigmas in ((CROWDPOSE_KEYPOINTS, CROWDPOSE_SIGMAS), (COCO_KEYPOINTS, COCO_SIGMAS)):
        for n, s in zip(names, sigmas):
            table[_words(n)] = s
    # the same joints as other datasets spell them (l_ -> left_): one table serves LShoulder and left_shoulder
    for key, s in list(table.items()):
        table[tuple({"left": "l", "right": "r"}.get(w, w) for w in key)] = s
    return table


def default_sigmas(names: Sequence[str], source: object = None) -> tuple[float, ...]:
    """OKS sigmas for a joint set nobody gave sigmas for, with a warning saying which joints got which.

    A joint whose name matches a COCO or CrowdPose joint (case, separators and ``l``/``left`` spellings ignored)
    takes that joint's sigma; every other joint gets ``DEFAULT_SIGMA`` (0.05). AP then depends on this guess: give
    the dataset's own sigmas (``data.meta.sigmas``, ``bapose-score --sigmas``) for numbers comparable to others'.
    """
    table = _sigma_lookup()
    sigmas = tuple(float(table.get(_words(n), DEFAULT_SIGMA)) for n in names)
    known = [n for n in names if _words(n) in table]
    other = [n for n in names if _words(n) not in table]
    parts = []
    if known:
        parts.append(f"the COCO/CrowdPose sigma for {len(known)} joint(s) of the same name")
    if other:
        parts.append(f"{DEFAULT_SIGMA} for {other if len(other) <= 8 else f'{len(other)} joints'}")
    warnings.warn(f"{f'{source}: ' if source else ''}no OKS sigmas given for {len(names)} joints; using "
                  f"{' and '.join(parts)}. Set data.meta.sigmas (bapose-score --sigmas) to the dataset's own values "
                  "for AP comparable with other work", stacklevel=2)
    return sigmas


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
              skeleton: Sequence[Sequence[int]] | None = None, source: object = None) -> DatasetMeta:
        """Config entry point: a preset by name, or a custom set (``keypoints`` given; flips inferred from names,
        sigmas from :func:`default_sigmas` with a warning when not given, skeleton 0-based). ``source`` (a file or
        config key) is named in errors and warnings."""
        if keypoints is None:
            base = cls.preset(name)
            return cls(base.name, base.keypoints,
                       tuple(flip_index) if flip_index is not None else base.flip_index,
                       tuple(float(s) for s in sigmas) if sigmas is not None else base.sigmas,
                       tuple(tuple(p) for p in skeleton) if skeleton is not None else base.skeleton)
        names = tuple(str(n) for n in keypoints)
        where_ = source or f"dataset '{name}'"
        try:
            return cls(name, names,
                       tuple(int(i) for i in flip_index) if flip_index is not None
                       else tuple(infer_flip_index(names, where_)),
                       tuple(float(s) for s in sigmas) if sigmas is not None else default_sigmas(names, where_),
                       tuple((int(a), int(b)) for a, b in (skeleton or ())))
        except DataError as e:
            if source is None:
                raise
            raise DataError(f"{source}: {e}") from None

    @classmethod
    def from_coco_category(cls, category: Mapping, name: str | None = None,
                           sigmas: Sequence[float] | None = None, file: object = None,
                           keypoints_field: str = "keypoints") -> DatasetMeta:
        """From a COCO json ``categories`` entry (``keypoints`` names, 1-based ``skeleton``).

        ``keypoints_field``: the annotation field the joints are read from; its names are the category's field of
        the same name when it has one (``keypoints_21``), else the category's ``keypoints``. ``file`` is named in
        errors and warnings.
        """
        src = f"file '{file}'" if file is not None else f"category '{category.get('name', '?')}'"
        names = keypoint_names(category, keypoints_field)
        if not names:
            raise DataError(f"{src}, field 'categories[].keypoints': missing or empty in category "
                            f"'{category.get('name')}'; expected the list of joint names")
        names = tuple(str(n) for n in names)
        for preset in (cls.coco(), cls.crowdpose()):
            if preset.keypoints == names:
                # known joint set: trust the preset (CrowdPose's json ships COCO's 17-joint skeleton, for one)
                return cls.build(preset.name, sigmas=sigmas)
        k = len(names)
        skeleton = []
        for pair in category.get("skeleton", []) or []:
            try:
                a, b = int(pair[0]) - 1, int(pair[1]) - 1
            except (TypeError, ValueError, IndexError):
                a, b = -1, -1
            if 0 <= a < k and 0 <= b < k:
                skeleton.append((a, b))
            else:
                warnings.warn(f"{src}: category '{category.get('name')}': skeleton pair {pair!r} is out of range "
                              f"1..{k}; dropped (it is only used for drawing)", stacklevel=2)
        return cls.build(name or str(category.get("name", "custom")), names, sigmas=sigmas, skeleton=skeleton,
                         source=src)

    def describe(self, names: int = 6) -> str:
        """``'coco' (17 joints: nose, left_eye, ...)``: how messages name a joint set."""
        shown = ", ".join(self.keypoints[:names]) + (", ..." if self.num_keypoints > names else "")
        return f"'{self.name}' ({self.num_keypoints} joints: {shown})"

    def spec(self) -> dict:
        """Plain ``DatasetMeta.build`` kwargs (lists, str, float): what a checkpoint stores."""
        return {"name": self.name, "keypoints": list(self.keypoints), "flip_index": list(self.flip_index),
                "sigmas": list(self.sigmas), "skeleton": [list(p) for p in self.skeleton]}


# ---------------------------------------------------------------------------------------------------- rule sets


def keypoint_categories(data: Mapping, file: object = None, keypoints_field: str = "keypoints") -> list[Mapping]:
    """The categories of a COCO json that carry the joint set: the first keypoint category and every other one with
    the same joint names (AP-10K-style files list one category per species, all with one joint set).
    Raises DataError naming the file when no category has ``keypoints``."""
    cats = [c for c in data.get("categories", []) or [] if isinstance(c, Mapping)
            and isinstance(c.get("keypoints"), (list, tuple))]
    if not cats:
        raise DataError(f"file '{file}', field 'categories': no category has a 'keypoints' list; expected a COCO "
                        "keypoint json")
    first = keypoint_names(cats[0], keypoints_field)
    return [c for c in cats if keypoint_names(c, keypoints_field) == first]


def keypoint_names(category: Mapping, keypoints_field: str = "keypoints") -> tuple[str, ...]:
    """The joint names of a COCO ``categories`` entry for the annotation field ``keypoints_field``: the category's
    field of the same name when it has one (``keypoints_21``), else its ``keypoints`` (empty when it has none)."""
    names = category.get(keypoints_field) if keypoints_field != "keypoints" else None
    if not isinstance(names, (list, tuple)):
        names = category.get("keypoints")
    return tuple(str(n) for n in names) if isinstance(names, (list, tuple)) else ()


def rule_set(data: Mapping, meta_name: str | None = None) -> str:
    """The scoring and small-person rules a COCO-format ground truth follows: ``"crowdpose"`` for CrowdPose-format
    data (the CrowdPose joint set, images with ``crowdIndex``, or no annotation with ``area``), else ``"coco"``."""
    if meta_name == "crowdpose":
        return "crowdpose"
    if any(isinstance(img, Mapping) and "crowdIndex" in img for img in data.get("images", []) or []):
        return "crowdpose"
    anns = [a for a in data.get("annotations", []) or [] if isinstance(a, Mapping)]
    if anns and not any("area" in a for a in anns):
        return "crowdpose"
    return "coco"
