"""The terms every training loss is built from, on soft targets and with a mask of known voxels.

Shapes: ``logits`` (B, C, k, j, i); ``target`` (B, C, k, j, i) class probabilities (one-hot, or
soft after label smoothing); ``known`` (B, 1, k, j, i) 1 where the reference label is known and 0
where it is not (``training.mixed_labels``), or None for everywhere. With p = softmax(logits),
g = target and m = known, summing over the voxels v of one sample b:

    cross entropy   CE    = sum_{b,v} m_bv * (-sum_c g_bcv log p_bcv) / sum_{b,v} m_bv
    soft Dice       D_bc  = (2 sum_v m p g + eps) / (sum_v m p^2 + sum_v m g^2 + eps)   (V-Net's form)
    Dice + CE       L     = mean over samples with a known voxel and over classes c of (1 - D_bc) + CE

A sample without any known voxel adds nothing to any term; a batch without one gives 0.
"""

from __future__ import annotations

from typing import Optional, Tuple

import torch

EPSILON = 1e-5


def one_hot(labels: torch.Tensor, classes: int = 2) -> torch.Tensor:
    """(B, 1, ...) class indices or foreground probabilities -> (B, classes, ...) probabilities.
    With two classes a fractional foreground ``y`` becomes (1 - y, y)."""
    if classes == 2:
        foreground = labels.float()
        return torch.cat([1.0 - foreground, foreground], dim=1)
    indices = labels.long()[:, 0]
    return torch.nn.functional.one_hot(indices, classes).movedim(-1, 1).float()


def known_or_ones(known: Optional[torch.Tensor], like: torch.Tensor) -> torch.Tensor:
    """The known-voxel mask (B, 1, ...) as float; all ones when ``known`` is None."""
    if known is None:
        return torch.ones_like(like[:, :1])
    return known.to(like.dtype)


def _spatial(tensor: torch.Tensor) -> Tuple[int, ...]:
    return tuple(range(2, tensor.ndim))


def cross_entropy(logits: torch.Tensor, target: torch.Tensor, known: Optional[torch.Tensor] = None) -> torch.Tensor:
    """CE with soft targets, averaged over the known voxels of the batch."""
    mask = known_or_ones(known, logits)
    per_voxel = -(target * torch.log_softmax(logits, dim=1)).sum(dim=1, keepdim=True)
    total = mask.sum()
    return (per_voxel * mask).sum() / total if total > 0 else logits.sum() * 0.0


def soft_dice(probabilities: torch.Tensor, target: torch.Tensor, known: Optional[torch.Tensor] = None,
              epsilon: float = EPSILON) -> torch.Tensor:
    """D_bc (B, C): V-Net's soft Dice of each sample and class over its known voxels."""
    mask = known_or_ones(known, probabilities)
    axes = _spatial(probabilities)
    intersection = (mask * probabilities * target).sum(dim=axes)
    denominator = (mask * probabilities ** 2).sum(dim=axes) + (mask * target ** 2).sum(dim=axes)
    return (2.0 * intersection + epsilon) / (denominator + epsilon)


def samples_with_known_voxels(logits: torch.Tensor, known: Optional[torch.Tensor]) -> torch.Tensor:
    """(B,) bool: the samples that have at least one known voxel."""
    if known is None:
        return torch.ones(logits.shape[0], dtype=torch.bool, device=logits.device)
    return known.flatten(1).sum(dim=1) > 0


class DiceCELoss(torch.nn.Module):
    """Dice + cross entropy (the module docstring's L), the default loss (``--loss dicece``);
    ``dice_weight`` and ``ce_weight`` scale its two terms."""

    def __init__(self, dice_weight: float = 1.0, ce_weight: float = 1.0) -> None:
        super().__init__()
        self.dice_weight, self.ce_weight = dice_weight, ce_weight

    def forward(self, logits: torch.Tensor, target: torch.Tensor, known: Optional[torch.Tensor] = None,
                sample_weights: Optional[torch.Tensor] = None) -> torch.Tensor:
        present = samples_with_known_voxels(logits, known)
        dice = soft_dice(torch.softmax(logits, dim=1), target, known)[present]
        dice_term = (1.0 - dice).mean() if dice.numel() else logits.sum() * 0.0
        return self.dice_weight * dice_term + self.ce_weight * cross_entropy(logits, target, known)
