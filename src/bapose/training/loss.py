"""Training loss of BAPose / DEKR: masked heatmap MSE + smooth-L1 offset regression (MMPose's DEKR balance)."""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor, nn


class BAPoseLoss(nn.Module):
    """Heatmap + offset loss, with the offset balance of MMPose's DEKR reproduction.

    * heatmaps: ``mean(heatmap_weights * (pred - gt)**2)`` over every entry of the batch — DEKR's ``HeatmapLoss``
      and MMPose's ``KeypointMSELoss`` (mean over channels and pixels per image, then over images).
    * offsets: ``sum(offset_weights * smooth_l1(pred - gt, beta)) / num_pos``, ``num_pos`` the positive weighted
      *entries* of the whole batch (pixels x 2K channels): MMPose's ``SoftWeightSmoothL1Loss`` with
      ``supervise_empty=False`` (and DEKR's ``OffsetsLoss``, which counts the same way).

    The factor on the offset term depends on what ``offset_weights`` hold. The codec's weight is 1 / diagonal of
    the person's labelled-joint box in **output-grid** pixels: MMPose's SPR targets, for which MMPose sets the
    displacement loss weight to 0.002 (COCO) / 0.004 (CrowdPose). DEKR's 0.03 belongs to another weight,
    1 / sqrt(area) in **input** pixels with an area that also spans the image origin (DEKR's ``get_joints`` puts
    the not-yet-set center row and unlabelled joints at (0, 0) before measuring the box); 0.03 on our weights
    makes the offset term 15x MMPose's and, per person, 5-21x DEKR's (sample people). See README "Paper protocol".

    Args:
        heatmap_weight: factor on the heatmap term (DEKR, MMPose: 1.0).
        offset_weight: factor on the offset term (MMPose: 0.002 COCO, 0.004 CrowdPose; DEKR's 0.03 is for its own
            weights, see above).
        beta: smooth-L1 transition point in output-grid pixels (DEKR, MMPose: 1/9).
    """

    def __init__(self, heatmap_weight: float = 1.0, offset_weight: float = 0.002, beta: float = 1.0 / 9.0) -> None:
        super().__init__()
        self.heatmap_weight = float(heatmap_weight)
        self.offset_weight = float(offset_weight)
        self.beta = float(beta)

    def forward(self, heatmaps: Tensor, offsets: Tensor, gt_heatmaps: Tensor, heatmap_weights: Tensor,
                gt_offsets: Tensor, offset_weights: Tensor) -> dict[str, Tensor]:
        """Compute the loss terms.

        Args:
            heatmaps: predicted ``(B, K+1, h, w)``.
            offsets: predicted ``(B, 2K, h, w)`` in output-grid pixels.
            gt_heatmaps: target ``(B, K+1, h, w)``.
            heatmap_weights: ``(B, K+1, h, w)`` (1 in Gaussians, background weight elsewhere, 0 in ignored regions).
            gt_offsets: target ``(B, 2K, h, w)``.
            offset_weights: ``(B, 1, h, w)`` per-pixel weights (1 / person diagonal), broadcast over the 2K channels;
                a ``(B, 2K, h, w)`` tensor is accepted too.

        Returns:
            ``{"loss", "heatmap", "offset"}``: scalar tensors; ``heatmap`` and ``offset`` are the *weighted* terms,
            so ``loss == heatmap + offset``.
        """
        # compute in float32 even under autocast: squared errors of bf16 maps lose the small background residuals
        heatmaps, offsets = heatmaps.float(), offsets.float()
        hm = (heatmap_weights * (heatmaps - gt_heatmaps.float()) ** 2).mean()

        weights = offset_weights.float().expand_as(offsets)
        num_pos = (weights > 0).sum().clamp(min=1)  # an image with no person must not divide by zero
        reg = F.smooth_l1_loss(offsets, gt_offsets.float(), reduction="none", beta=self.beta)
        off = (reg * weights).sum() / num_pos

        hm = hm * self.heatmap_weight
        off = off * self.offset_weight
        return {"loss": hm + off, "heatmap": hm, "offset": off}
