"""The flip test: run the mirrored image too, map its outputs back, average (DEKR's ``get_multi_stage_outputs``)."""

from __future__ import annotations

from collections.abc import Callable, Sequence

from torch import Tensor

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


def flip_back(heatmaps: Tensor, offsets: Tensor, flip_index: Sequence[int]) -> tuple[Tensor, Tensor]:
    """Outputs of a mirrored image -> outputs of the original image.

    The grid is mirrored, heatmap channels permuted by ``flip_index`` + center (``meta.flip_index_with_center()``
    minus its last entry is ``flip_index``), and offsets permuted the same way with x negated: a joint at
    ``p' + o'`` in the mirrored grid is at ``p + (-o'_x, o'_y)`` in the original.

    Args:
        heatmaps: ``(B, K+1, h, w)``; offsets: ``(B, 2K, h, w)``; flip_index: length K.
    """
    k = len(flip_index)
    if heatmaps.shape[1] != k + 1 or offsets.shape[1] != 2 * k:
        raise DataError(f"flip: flip_index has {k} joints but heatmaps have {heatmaps.shape[1]} channels and offsets "
                        f"{offsets.shape[1]}; expected K+1 and 2K")
    hm = heatmaps.flip(-1)[:, list(flip_index) + [k]]
    b, _, h, w = offsets.shape
    off = offsets.flip(-1).view(b, k, 2, h, w)[:, list(flip_index)]
    off = off * off.new_tensor([-1.0, 1.0]).view(1, 1, 2, 1, 1)
    return hm, off.reshape(b, 2 * k, h, w)


def merge_flip(heatmaps: Tensor, offsets: Tensor, heatmaps_flipped: Tensor, offsets_flipped: Tensor,
               flip_index: Sequence[int]) -> tuple[Tensor, Tensor]:
    """Flip test: average the outputs with those of the mirrored image (mapped back by :func:`flip_back`)."""
    hf, of = flip_back(heatmaps_flipped, offsets_flipped, flip_index)
    return (heatmaps + hf) / 2, (offsets + of) / 2


def joint_permutation(flip_index: Sequence[int], k: int) -> list[int]:
    """The K-joint flip permutation from ``flip_index`` of the K joints or of the K+1 heatmap channels
    (``meta.flip_index_with_center()``)."""
    perm = [int(i) for i in flip_index]
    if len(perm) == k + 1:
        perm = perm[:k]
    if len(perm) != k:
        raise ConfigError(f"predict: 'flip_index' has {len(perm)} entries; expected K={k} or K+1")
    return perm


def net_outputs(net: Net, images: Tensor, flip_index: Sequence[int] | None = None, shift: int = 0
                ) -> tuple[Tensor, Tensor]:
    """The net's outputs in float32, flip-merged when ``flip_index`` is given.

    Cast once, here, whatever the net's dtype: under bf16 / fp16 autocast, grid positions above 256 (bf16) or 2048
    (fp16) are not representable, and averaging the flipped outputs in half precision would lose the sub-pixel
    offsets the decoder reads.
    """
    heatmaps, offsets = (t.float() for t in net(images))
    if flip_index is None:
        return heatmaps, offsets
    perm = joint_permutation(flip_index, offsets.shape[1] // 2)
    # mirrored image through the net, then mapped back: grid mirrored, left/right joints swapped, x negated
    hf, of = (t.float() for t in net(mirror(images, shift)))
    return merge_flip(heatmaps, offsets, hf, of, perm)
