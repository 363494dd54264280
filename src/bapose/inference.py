"""Run a pose network with flip / multi-scale testing and decode people (used by validation, eval and predict)."""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from bapose.codecs import BAPoseCodec, Poses, merge_flip
from bapose.data.metadata import DatasetMeta
from bapose.errors import ConfigError, DataError

Net = Callable[[Tensor], tuple[Tensor, Tensor]]


def mirror(images: Tensor, shift: int = 0) -> Tensor:
    """The mirrored batch the flip test runs: ``images.flip(-1)``, then moved ``shift`` pixels left (the last
    ``shift`` columns keep the mirrored values), as DEKR's ``get_multi_stage_outputs`` does for its ``x = 4·g`` grid
    (``BAPoseCodec.flip_shift``)."""
    out = images.flip(-1)
    if shift > 0:
        out[..., :-shift] = out[..., shift:].clone()
    return out


def _run(net: Net, images: Tensor, flip: bool, flip_index: Sequence[int], flip_shift: int = 0
         ) -> tuple[Tensor, Tensor]:
    """Net outputs in float32, flip-merged when asked. Cast once, here, whatever the net's dtype: under bf16 / fp16
    autocast, grid positions above 256 (bf16) or 2048 (fp16) are not representable, and averaging the flipped
    outputs in half precision would lose the sub-pixel offsets the codec decodes."""
    heatmaps, offsets = (t.float() for t in net(images))
    if flip:
        k = offsets.shape[1] // 2
        if len(flip_index) == k + 1:
            # a K+1 channel permutation (meta.flip_index_with_center()): offsets need its K-joint part
            flip_index = flip_index[:k]
        if len(flip_index) != k:
            raise ConfigError(f"predict: 'flip_index' has {len(flip_index)} entries; expected K={k} or K+1")
        # mirrored image through the net, then mapped back: grid mirrored, left/right joints swapped, x negated
        hf, of = (t.float() for t in net(mirror(images, flip_shift)))
        heatmaps, offsets = merge_flip(heatmaps, offsets, hf, of, flip_index)
    return heatmaps, offsets


@torch.no_grad()
def predict(net: Net, images: Tensor, codec: BAPoseCodec, meta: DatasetMeta | None = None, flip: bool = False,
            scales: Sequence[float] = (1.0,), size_divisor: int = 32,
            flip_index: Sequence[int] | None = None) -> list[Poses]:
    """People in a batch of images, in input pixels.

    Args:
        net: any callable ``images -> (heatmaps (B, K+1, H/4, W/4), offsets (B, 2K, H/4, W/4))``.
        images: float ``(B, 3, H, W)`` in [0, 1] (the net normalises).
        codec: the codec the net was trained with.
        meta: dataset metadata (its flip permutation is used when ``flip``).
        flip: average with the mirrored image's outputs.
        flip_index: alternative to ``meta``: a flip permutation of the K joints or of the K+1 heatmap channels
            (``meta.flip_index_with_center()``); giving it turns the flip test on.
        scales: test scales; each resized image is rounded up to ``size_divisor`` multiples. Heatmaps are averaged on
            the scale-1 grid, poses pooled over scales and de-duplicated by pose NMS.

    Returns:
        one :class:`Poses` per image: ``poses (M, K, 3)`` (x, y, joint score) and ``scores (M,)``.
    """
    if images.dim() != 4 or images.shape[1] != 3:
        raise DataError(f"predict: field 'images' has shape {tuple(images.shape)}; expected (B, 3, H, W)")
    if not scales or any(s <= 0 for s in scales):
        raise ConfigError(f"predict: field 'scales' {list(scales)}; expected positive numbers")
    _, _, h, w = images.shape
    if flip_index is not None:
        flip, flip_index = True, list(flip_index)
    elif flip:
        if meta is None:
            raise ConfigError("predict: flip=True needs 'meta' or 'flip_index'")
        flip_index = list(meta.flip_index)
    else:
        flip_index = []
    if list(scales) == [1.0]:
        return codec.decode(*_run(net, images, flip, flip_index, codec.flip_shift))
    outputs, factors = [], []
    for s in scales:
        # rounded up like the evaluation resize pads; the exact per-axis factors map poses back
        hs = max(size_divisor, math.ceil(h * s / size_divisor) * size_divisor)
        ws = max(size_divisor, math.ceil(w * s / size_divisor) * size_divisor)
        img = images if (hs, ws) == (h, w) else F.interpolate(images, size=(hs, ws), mode="bilinear",
                                                                 align_corners=False, antialias=s < 1)
        outputs.append(_run(net, img, flip, flip_index, codec.flip_shift))
        factors.append((hs / h, ws / w))
    return codec.decode_multiscale(outputs, factors, (h, w))


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
