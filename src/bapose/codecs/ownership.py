"""Who regresses which grid pixel, and where each centre sits: the crowd rules of the codec as pure numpy functions.

- :func:`dekr_offsets` is DEKR's ``OffsetGenerator`` (HRNet/DEKR 7a30313,
  ``lib/dataset/target_generators/target_generators.py``): ownership per joint channel, the smaller person wins.
- :func:`person_owners` gives whole pixels to one person (``center_first``, ``nearest_center``).
- :func:`place_centers` moves centres that another centre's peak would hide from center NMS (``nearest_free``).

Coordinates are output-grid pixels; people are indexed as in the codec's ``keypoints``.
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np

# What encode did with each person's center (``Layout.status``), by index.
CENTER_STATUS = ("ok", "snapped", "moved", "small", "outside", "blocked")
OK, SNAPPED, MOVED, SMALL, OUTSIDE, BLOCKED = range(len(CENTER_STATUS))
# a center pixel must beat every other person's center Gaussian in its NMS window by this much: float32 rounding of
# the splatted map cannot turn the order, and a near-tie is relocated rather than left to chance
PEAK_MARGIN = 1e-3


class DekrOffsets(NamedTuple):
    """What :func:`dekr_offsets` returns: DEKR's offset maps and who owns each of their entries."""

    offsets: np.ndarray  # (2K, h, w) float32, joint - pixel, (x0, y0, x1, y1, ...)
    weights: np.ndarray  # (2K, h, w) float32, the owner's ``weight`` on both channels of its joints, else 0
    owner_plus_one: np.ndarray  # (K, h, w) int32, 1 + whose joint k each pixel carries (0: none; zeros are free)
    last: np.ndarray  # (h, w) int64, the last person to write any channel there (DEKR's area_map), -1: none

    @property
    def joint_owner(self) -> np.ndarray:
        """``(K, h, w)`` int64 whose joint ``k`` each pixel carries (-1: none)."""
        return self.owner_plus_one.astype(np.int64) - 1


def dekr_offsets(grid: np.ndarray, labelled: np.ndarray, origin: np.ndarray, eligible: np.ndarray,
                 sizes: np.ndarray, weight: np.ndarray, grid_hw: tuple[int, int], radius: int) -> DekrOffsets:
    """DEKR's ``OffsetGenerator``: offsets and their ownership, joint channel by joint channel.

    People are visited in order; person ``p`` offers each labelled joint ``k`` that lies on the map (``0 <= g <
    size``; the others are skipped) to the pixels ``[o - r, o + r)`` of its square (``o = int(origin)``, clipped to
    the map; people with ``o`` off the map regress nothing). A pixel's channel ``k`` takes the offer when it holds
    no offset yet (DEKR tests the stored vector against (0, 0)) or when the last person to write *any* channel of
    that pixel (DEKR's ``area_map``) is not smaller than ``p``. Within one person the channels are visited in joint
    order, so once ``p`` wrote one channel of a pixel it takes every later one: one vectorised step per person.

    Args:
        grid: ``(N, K, 2)`` joints; labelled: ``(N, K)``; origin: ``(N, 2)`` where each square is anchored (the
            centre, truncated toward zero as DEKR's ``int``); eligible: ``(N,)`` people that regress offsets at all
            (DEKR: the centre row is labelled, i.e. not a small person); sizes: ``(N,)`` what "smaller" compares
            (DEKR: its ``area``; ours: the labelled-joint box diagonal); weight: ``(N,)`` each person's loss weight.
    """
    n, k = labelled.shape
    h, w = grid_hw
    # DEKR's maps, as (K, 2, h, w) views of the (2K, h, w) outputs: the stored vector is what its test reads
    offsets = np.zeros((2 * k, h, w), np.float32)
    weights = np.zeros((2 * k, h, w), np.float32)
    off4, wt4 = offsets.reshape(k, 2, h, w), weights.reshape(k, 2, h, w)
    owner1 = np.zeros((k, h, w), np.int32)  # np.zeros: pages untouched outside the squares cost nothing
    last = np.full((h, w), -1, np.int64)
    on = labelled & (grid[..., 0] >= 0) & (grid[..., 0] < w) & (grid[..., 1] >= 0) & (grid[..., 1] < h)
    ox = np.trunc(np.nan_to_num(origin[:, 0], nan=-1.0)).astype(np.int64)
    oy = np.trunc(np.nan_to_num(origin[:, 1], nan=-1.0)).astype(np.int64)
    who = np.nonzero(eligible & on.any(1) & (ox >= 0) & (ox < w) & (oy >= 0) & (oy < h))[0]
    # people whose square meets nobody else's take every entry of it whatever the order
    near = (np.abs(ox[who, None] - ox[who]) < 2 * radius) & (np.abs(oy[who, None] - oy[who]) < 2 * radius)
    alone = near.sum(1) == 1
    # offsets computed in float64 and stored in float32, as DEKR's map stores them
    gx, gy = grid[..., 0], grid[..., 1]
    for p in who[alone]:  # nobody else writes their square: every offered entry is theirs, in plain slices
        x0, x1, y0, y1 = max(ox[p] - radius, 0), min(ox[p] + radius, w), max(oy[p] - radius, 0), min(oy[p] + radius, h)
        joints = np.nonzero(on[p])[0]
        off4[joints, 0, y0:y1, x0:x1] = gx[p, joints, None, None] - np.arange(x0, x1)
        off4[joints, 1, y0:y1, x0:x1] = gy[p, joints, None, None] - np.arange(y0, y1)[:, None]
        wt4[joints, :, y0:y1, x0:x1] = weight[p]
        owner1[joints, y0:y1, x0:x1] = p + 1
        last[y0:y1, x0:x1] = p
    last_size = np.where(last >= 0, sizes[np.maximum(last, 0)], 0.0)
    for p in who[~alone]:  # the rest in DEKR's order; each step is vectorised over the K channels and the square
        x0, x1, y0, y1 = max(ox[p] - radius, 0), min(ox[p] + radius, w), max(oy[p] - radius, 0), min(oy[p] + radius, h)
        off, wt = off4[:, :, y0:y1, x0:x1], wt4[:, :, y0:y1, x0:x1]  # views (K, 2, sh, sw)
        mine = on[p][:, None, None]  # (K, 1, 1): the joints p offers
        unset = ~(off != 0).any(1) & mine  # (K, sh, sw)
        write = ((last_size[y0:y1, x0:x1] >= sizes[p])[None] | (np.cumsum(unset, 0) > 0)) & mine
        np.copyto(off[:, 0], gx[p, :, None, None] - np.arange(x0, x1), where=write, casting="same_kind")
        np.copyto(off[:, 1], gy[p, :, None, None] - np.arange(y0, y1)[:, None], where=write, casting="same_kind")
        np.copyto(wt, np.float32(weight[p]), where=write[:, None])
        np.copyto(owner1[:, y0:y1, x0:x1], p + 1, where=write)
        wrote = write.any(0)
        last[y0:y1, x0:x1][wrote] = p
        last_size[y0:y1, x0:x1][wrote] = sizes[p]
    return DekrOffsets(offsets, weights, owner1, last)


def person_owners(order: np.ndarray, peak: np.ndarray, pixel: np.ndarray, size: np.ndarray,
                  grid_hw: tuple[int, int], radius: int, rule: str) -> np.ndarray:
    """``(h, w)`` int64: the one person whose offsets each grid pixel carries (-1: none).

    Each person of ``order`` (largest first) bids for the ``(2r+1)^2`` square around their center ``pixel`` with a
    key (lower wins, compared as (primary, secondary); an equal key goes to the later bidder):
    ``center_first``: own center pixel (-inf, size), else (size, -); ``nearest_center``: own center pixel
    (-inf, size), else (squared distance to the center ``peak``, size); any other rule: (size, -).
    """
    h, w = grid_hw
    owner = np.full((h, w), -1, np.int64)
    if not len(order):
        return owner
    best = np.full((2, h, w), np.inf)
    r = radius
    own_first = rule in ("center_first", "nearest_center")
    for i in order:  # a loop over people, each bid vectorised over its square
        cx, cy = pixel[i]
        x0, x1, y0, y1 = max(cx - r, 0), min(cx + r + 1, w), max(cy - r, 0), min(cy + r + 1, h)
        if rule == "nearest_center":
            xs, ys = np.arange(x0, x1) - peak[i, 0], np.arange(y0, y1) - peak[i, 1]
            primary = ys[:, None] ** 2 + xs[None, :] ** 2
        else:
            primary = np.full((y1 - y0, x1 - x0), size[i])
        if own_first:
            primary[cy - y0, cx - x0] = -np.inf
        secondary = size[i] if own_first else 0.0
        b = best[:, y0:y1, x0:x1]
        take = (primary < b[0]) | ((primary == b[0]) & (secondary <= b[1]))
        b[0][take], b[1][take] = primary[take], secondary
        owner[y0:y1, x0:x1][take] = i
    return owner


def place_centers(order: np.ndarray, center: np.ndarray, ci: np.ndarray, grid_hw: tuple[int, int],
                  peak: np.ndarray, pixel: np.ndarray, status: np.ndarray, nms_radius: int, sigma: float,
                  search_radius: int) -> np.ndarray:
    """``center_collision=nearest_free``: give every person a center peak that survives center NMS.

    A pixel ``q`` with Gaussian centre ``c`` is free when, in the merged center map, ``q`` beats every placed
    person's Gaussian inside its NMS window (half-side ``nms_radius``) and ``c`` does not beat any placed person at
    their own pixel inside theirs (a Gaussian is strongest at the window pixel nearest its centre, so one value per
    pair decides). People whose natural center clashes with nobody keep it; the others are placed after them, in
    ``order`` (larger first), each on the first free candidate: the natural pixel with the sub-pixel Gaussian, then
    pixels by distance to the center (within ``search_radius``) with the Gaussian on the pixel. Updates ``peak``,
    ``pixel``, ``status`` in place; returns ``order`` restricted to the people that got a center.
    """
    h, w = grid_hw
    r = nms_radius
    two_s2 = 2.0 * sigma**2
    limit = np.array([w - 1, h - 1])

    def own(pix: np.ndarray, cen: np.ndarray) -> np.ndarray:  # (C,) each Gaussian at its own pixel
        return np.exp(-((pix - cen) ** 2).sum(-1) / two_s2)

    def strongest(pix: np.ndarray, cen: np.ndarray) -> np.ndarray:  # (C, P): Gaussian p inside window(c)
        near = np.clip(np.round(cen)[None], np.maximum(pix - r, 0)[:, None], np.minimum(pix + r, limit)[:, None])
        return np.exp(-((near - cen[None]) ** 2).sum(-1) / two_s2)

    # all natural centers at once: most people clash with nobody (one vectorised test, no loop)
    pix0, cen0 = ci[order], center[order]
    val0 = own(pix0, cen0)
    threat = strongest(pix0, cen0)  # [i, j]: j's Gaussian inside i's window
    np.fill_diagonal(threat, -np.inf)
    clash = threat + PEAK_MARGIN >= val0[:, None]
    clash = clash.any(1) | clash.any(0)
    placed_pix, placed_peak, placed_val = pix0[~clash], cen0[~clash], val0[~clash]

    d = np.arange(-search_radius, search_radius + 1)
    square = np.stack(np.meshgrid(d, d, indexing="xy"), -1).reshape(-1, 2)  # (S, 2) (dx, dy)
    for i in order[clash]:
        cand = np.concatenate([ci[i][None], ci[i] + square])
        cand = cand[((cand >= 0) & (cand <= limit)).all(1)]
        dist = ((cand[1:] - center[i]) ** 2).sum(-1)
        cand = np.concatenate([cand[:1], cand[1:][np.argsort(dist, kind="stable")]])
        cen = cand.astype(np.float64)
        cen[0] = center[i]  # the natural pixel first, with the sub-pixel Gaussian; then on pixels
        val = own(cand, cen)
        free = (val > strongest(cand, placed_peak).max(1, initial=-np.inf) + PEAK_MARGIN) \
            & (strongest(placed_pix, cen).T + PEAK_MARGIN < placed_val[None]).all(1)
        hit = np.nonzero(free)[0]
        if not len(hit):
            status[i], peak[i], pixel[i] = BLOCKED, np.nan, -1
            continue
        j = hit[0]
        if j > 0:
            status[i] = SNAPPED if (cand[j] == ci[i]).all() else MOVED
        peak[i], pixel[i] = cen[j], cand[j]
        placed_pix = np.concatenate([placed_pix, cand[j:j + 1]])
        placed_peak = np.concatenate([placed_peak, cen[j:j + 1]])
        placed_val = np.append(placed_val, val[j])
    return order[pixel[order, 0] >= 0]
