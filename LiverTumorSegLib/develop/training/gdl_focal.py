"""Generalized Dice + focal loss (seed 003: V-Net on MSD Task03 with MONAI's
GeneralizedDiceFocalLoss, softmax, focal weights favouring the cancer class).

Generalized Dice (Sudre et al. 2017) of sample b over its known voxels, with class weights the
inverse squared reference volume (a class absent from the sample takes the largest finite weight
of the sample, as in MONAI), and the focal loss (Lin et al. 2017) with class weights alpha_c:

    w_bc  = 1 / (sum_v m g_bc)^2
    GDL_b = 1 - (2 sum_c w_bc sum_v m p g + eps) / (sum_c w_bc sum_v m (p + g) + eps)
    FL    = sum_{b,v} m * sum_c (-alpha_c (1 - p_c)^gamma g_c log p_c) / sum_{b,v} m
    L     = gdl_weight * mean_b GDL_b + focal_weight * FL

The seed's text writes the combination as "(1 - GDL) * Focal"; the MONAI loss it ran is the
weighted sum above, which is what is implemented. gamma = 2; alpha = (1, 2) (background,
foreground): the seed weighted background, liver and cancer 0, 1, 2; with one foreground class the
background keeps weight 1 so that false positives still cost.
"""

from __future__ import annotations

from typing import Optional, Sequence

import torch

from .loss_terms import EPSILON, known_or_ones, samples_with_known_voxels


def generalized_dice(probabilities: torch.Tensor, target: torch.Tensor, known: Optional[torch.Tensor] = None,
                     epsilon: float = EPSILON) -> torch.Tensor:
    """GDL_b (B,) of each sample (the module docstring's formula)."""
    mask = known_or_ones(known, probabilities)
    axes = tuple(range(2, probabilities.ndim))
    reference = (mask * target).sum(dim=axes)
    weights = 1.0 / reference ** 2
    infinite = torch.isinf(weights)
    weights = torch.where(infinite, torch.zeros_like(weights), weights)
    weights = weights + infinite * weights.max(dim=1, keepdim=True).values
    intersection = (weights * (mask * probabilities * target).sum(dim=axes)).sum(dim=1)
    denominator = (weights * (mask * (probabilities + target)).sum(dim=axes)).sum(dim=1)
    return 1.0 - (2.0 * intersection + epsilon) / (denominator + epsilon)


def focal(logits: torch.Tensor, target: torch.Tensor, known: Optional[torch.Tensor] = None,
          alpha: Sequence[float] = (1.0, 2.0), gamma: float = 2.0) -> torch.Tensor:
    """FL: the class-weighted focal loss averaged over the known voxels."""
    mask = known_or_ones(known, logits)
    log_p = torch.log_softmax(logits, dim=1)
    weights = torch.as_tensor(alpha, dtype=logits.dtype, device=logits.device).view(1, -1, *([1] * (logits.ndim - 2)))
    per_voxel = -(weights * (1.0 - log_p.exp()) ** gamma * target * log_p).sum(dim=1, keepdim=True)
    total = mask.sum()
    return (per_voxel * mask).sum() / total if total > 0 else logits.sum() * 0.0


class GeneralizedDiceFocalLoss(torch.nn.Module):
    """gdl_weight * GDL + focal_weight * FL (``--loss gdl-focal``)."""

    def __init__(self, gdl_weight: float = 1.0, focal_weight: float = 1.0, alpha: Sequence[float] = (1.0, 2.0),
                 gamma: float = 2.0) -> None:
        super().__init__()
        self.gdl_weight, self.focal_weight = gdl_weight, focal_weight
        self.alpha, self.gamma = tuple(alpha), gamma

    def forward(self, logits: torch.Tensor, target: torch.Tensor, known: Optional[torch.Tensor] = None,
                sample_weights: Optional[torch.Tensor] = None) -> torch.Tensor:
        present = samples_with_known_voxels(logits, known)
        gdl = generalized_dice(torch.softmax(logits, dim=1), target, known)[present]
        gdl_term = gdl.mean() if gdl.numel() else logits.sum() * 0.0
        return self.gdl_weight * gdl_term + self.focal_weight * focal(logits, target, known, self.alpha, self.gamma)
