"""The predictor: one object that turns images into people, used by validation, ``bapose-eval``, ``bapose-predict``,
the rescoring stage and the export check.

:class:`Predictor` owns every step after the net's forward: the flip test (:mod:`bapose.predictor.flip`), the test
scales and their merge, decoding with rescoring and pose NMS (:mod:`bapose.predictor.decode`), and the grouping of
images by their own padded size. That grouping matters: D-WASP's image-pool branch averages over the whole input,
padding included, so an image padded for a larger neighbour would get other people; every entry point here runs
each image at its own padded size, so a person's pose never depends on which images share a batch.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Hashable, Iterable, Iterator, Mapping, Sequence
from typing import Any, TypeVar

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from bapose.codecs.bapose_codec import BAPoseCodec
from bapose.errors import ConfigError, DataError
from bapose.predictor.decode import Poses, decode, decode_multiscale
from bapose.predictor.flip import Net, net_outputs

T = TypeVar("T")
# decoded images waiting for a full batch of their padded size, in batches: bounds memory on folders of many sizes
MAX_PENDING_BATCHES = 4


def images_to_float(images: Tensor) -> Tensor:
    """uint8 ``(B, 3, H, W)`` in [0, 255] -> float32 in [0, 1]; float input is passed through (the net normalises)."""
    return images.float().div_(255.0) if images.dtype == torch.uint8 else images


def to_original(poses: Tensor | np.ndarray, input_to_orig: Tensor | np.ndarray) -> Tensor | np.ndarray:
    """Map ``poses (M, K, 3)`` (or ``(..., 2+)``) from input pixels to original pixels with an affine ``(2, 3)``.

    Only x, y change; scores (column 2) are kept. Returns the input's type (torch stays on its device).
    """
    if isinstance(poses, Tensor):
        a = torch.as_tensor(input_to_orig, dtype=poses.dtype, device=poses.device)
        xy = poses[..., :2] @ a[:, :2].T + a[:, 2]
        return torch.cat([xy, poses[..., 2:]], -1)
    a = np.asarray(input_to_orig, dtype=np.float64)
    if a.shape != (2, 3):
        raise DataError(f"to_original: field 'input_to_orig' has shape {a.shape}; expected (2, 3)")
    p = np.asarray(poses, dtype=np.float64)
    return np.concatenate([p[..., :2] @ a[:, :2].T + a[:, 2], p[..., 2:]], -1)


def group_by(keys: Iterable[Hashable]) -> dict[Any, list[int]]:
    """``{key: [indices with that key]}``, keys in order of first appearance."""
    groups: dict[Any, list[int]] = {}
    for i, key in enumerate(keys):
        groups.setdefault(key, []).append(i)
    return groups


def same_size_batches(items: Iterable[T], size: int, key: Callable[[T], Hashable]) -> Iterator[list[T]]:
    """Batches of up to ``size`` items with equal ``key(item)`` (the padded input size), in input order as far as
    the grouping allows; at most ``MAX_PENDING_BATCHES * size`` items wait for company at any time."""
    pending: dict[Any, list[T]] = {}
    waiting = 0
    for item in items:
        k = key(item)
        group = pending.setdefault(k, [])
        group.append(item)
        waiting += 1
        if len(group) == size:
            yield pending.pop(k)
            waiting -= size
        elif waiting > MAX_PENDING_BATCHES * size:
            fullest = max(pending, key=lambda k: len(pending[k]))
            waiting -= len(pending[fullest])
            yield pending.pop(fullest)
    yield from (g for g in pending.values() if g)


def _numpy_people(result: Poses, input_to_orig: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """One image's people as float64 numpy in original pixels."""
    poses = to_original(result.poses.detach().float().cpu().numpy(), input_to_orig)
    return poses, result.scores.detach().float().cpu().numpy().astype(np.float64)


class Predictor:
    """Images -> people with a net and its codec, under one test protocol.

    Args:
        net: any callable ``images float (B, 3, H, W) in [0, 1] -> (heatmaps (B, K+1, H/4, W/4), offsets (B, 2K,
            H/4, W/4))`` (a ``BAPoseNet``, a LightningModule's forward, an ONNX session wrapper).
        codec: the codec the net was trained with (geometry, candidates and the decode knobs).
        flip_index: the flip permutation of the K joints or of the K+1 heatmap channels
            (``meta.flip_index_with_center()``); needed when ``flip``.
        flip: average with the mirrored image's outputs.
        scales: test scales; each resized image is rounded up to ``size_divisor`` multiples. Heatmaps are averaged on
            the scale-1 grid, poses pooled over scales and de-duplicated by pose NMS.
        size_divisor: the net's input multiple (32): the padded sizes images are grouped by, and the scales' rounding.
    """

    def __init__(self, net: Net, codec: BAPoseCodec, flip_index: Sequence[int] | None = None, flip: bool = False,
                 scales: Sequence[float] = (1.0,), size_divisor: int = 32) -> None:
        scales = tuple(float(s) for s in scales)
        if not scales or any(s <= 0 for s in scales):
            raise ConfigError(f"predict: field 'scales' {list(scales)}; expected positive numbers")
        if flip and flip_index is None:
            raise ConfigError("predict: flip=True needs 'meta' or 'flip_index'")
        self.net, self.codec, self.scales, self.size_divisor = net, codec, scales, int(size_divisor)
        self.flip = bool(flip)
        self.flip_index = [int(i) for i in flip_index] if self.flip else None

    @property
    def protocol(self) -> dict[str, Any]:
        """``{"flip", "scales"}``: the test protocol this predictor runs."""
        return {"flip": self.flip, "scales": list(self.scales)}

    def outputs(self, images: Tensor) -> tuple[Tensor, Tensor]:
        """The net's float32 outputs on ``images`` (one scale), flip-merged when ``flip``."""
        return net_outputs(self.net, images, self.flip_index, self.codec.flip_shift)

    @torch.no_grad()
    def __call__(self, images: Tensor) -> list[Poses]:
        """People in a batch of images of one size, in input pixels: one :class:`Poses` per image.

        Args:
            images: ``(B, 3, H, W)``, uint8 or float in [0, 1] (the net normalises).
        """
        if images.dim() != 4 or images.shape[1] != 3:
            raise DataError(f"predict: field 'images' has shape {tuple(images.shape)}; expected (B, 3, H, W)")
        images = images_to_float(images)
        if self.scales == (1.0,):
            return decode(self.codec, *self.outputs(images))
        h, w = images.shape[-2:]
        div = self.size_divisor
        outputs, factors = [], []
        for s in self.scales:
            # rounded up like the evaluation resize pads; the exact per-axis factors map poses back
            hs, ws = (max(div, math.ceil(side * s / div) * div) for side in (h, w))
            img = images if (hs, ws) == (h, w) else F.interpolate(images, size=(hs, ws), mode="bilinear",
                                                                     align_corners=False, antialias=s < 1)
            outputs.append(self.outputs(img))
            factors.append((hs / h, ws / w))
        return decode_multiscale(self.codec, outputs, factors, (h, w))

    def by_size(self, images: Tensor, valid_size: Tensor | None = None) -> list[Poses]:
        """:meth:`__call__` on a collated batch, each image at its own padded size.

        The collate pads a batch to its largest image; here images run in groups of equal own padded size
        (``valid_size (B, 2)`` rounded up to ``size_divisor``), cropped to it. A batch of one size (the usual case:
        ``val_batch_size=1`` or equal-sized images) is one call.
        """
        if valid_size is None or images.shape[0] == 1:
            return self(images)
        div = self.size_divisor
        own = ((torch.as_tensor(valid_size).reshape(-1, 2).cpu() + div - 1) // div * div).tolist()
        groups = group_by((min(int(h), images.shape[-2]), min(int(w), images.shape[-1])) for h, w in own)
        if len(groups) == 1 and next(iter(groups)) == tuple(images.shape[-2:]):
            return self(images)
        results: list[Any] = [None] * images.shape[0]
        for (h, w), idx in groups.items():
            for i, r in zip(idx, self(images[idx, :, :h, :w]), strict=True):
                results[i] = r
        return results

    def in_original(self, batch: Mapping[str, Any]) -> list[tuple[np.ndarray, np.ndarray]]:
        """People of a val/test batch (``image``, ``input_to_orig``, optional ``valid_size``) in original pixels:
        per image ``(poses (M, K, 3), scores (M,))`` float64."""
        results = self.by_size(batch["image"], batch.get("valid_size"))
        affines = torch.as_tensor(batch["input_to_orig"]).detach().cpu().numpy()
        return [_numpy_people(r, a) for r, a in zip(results, affines, strict=True)]

    def on_images(self, images: Sequence[np.ndarray], transform: Callable[[np.ndarray], Mapping[str, Any]],
                  device: torch.device | str | None = None) -> list[tuple[np.ndarray, np.ndarray]]:
        """People in RGB uint8 images of any sizes -> per image ``(poses (M, K, 3), scores (M,))`` in original pixels.

        Each image is resized by ``transform`` (an ``EvalTransform``: ``image`` padded, ``input_to_orig``,
        ``orig_size``); images of the same padded size run together, each size separately. People regressed
        entirely into an image's own padding (its right / bottom up to the next ``size_divisor`` multiple) are not in
        the picture: kept are those with at least one joint inside the image.
        """
        if device is None:
            params = getattr(self.net, "parameters", None)
            device = next(params()).device if callable(params) else "cpu"
        items = [transform(im) for im in images]
        out: list[Any] = [None] * len(items)
        for members in group_by(it["image"].shape[:2] for it in items).values():
            batch = np.stack([items[i]["image"] for i in members])
            x = torch.from_numpy(batch).to(device).permute(0, 3, 1, 2).float().div_(255.0)
            for i, r in zip(members, self(x), strict=True):
                poses, scores = _numpy_people(r, items[i]["input_to_orig"])
                h, w = items[i]["orig_size"]
                px, py = poses[..., 0], poses[..., 1]
                keep = ((px >= -0.5) & (px < w - 0.5) & (py >= -0.5) & (py < h - 0.5)).any(-1)
                out[i] = (poses[keep], scores[keep])
        return out


def predict(net: Net, images: Tensor, codec: BAPoseCodec, meta: Any = None, flip: bool = False,
            scales: Sequence[float] = (1.0,), size_divisor: int = 32,
            flip_index: Sequence[int] | None = None) -> list[Poses]:
    """People in a batch of images of one size, in input pixels (a :class:`Predictor` used once).

    Args:
        meta: the dataset's ``DatasetMeta`` (its flip permutation is used when ``flip``).
        flip_index: alternative to ``meta``: a flip permutation of the K joints or of the K+1 heatmap channels;
            giving it turns the flip test on.
        net, images, codec, flip, scales, size_divisor: as :class:`Predictor` and :meth:`Predictor.__call__`.
    """
    if flip_index is not None:
        flip = True
    elif flip and meta is not None:
        flip_index = meta.flip_index
    return Predictor(net, codec, flip_index, flip, scales, size_divisor)(images)
