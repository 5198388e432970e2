"""Balanced Dice loss (BD loss, seed 000: Xie et al., "Lesion segmentation method for multiple types
of liver cancer based on balanced dice loss", Med. Phys. 2025).

The seed states the aim (balanced learning of several tumour categories whose cases are unevenly
represented; evaluation by Dice per case) but not the formula; this is the reading implemented:
the foreground Dice of each case counts once, whatever the tumour's size (a Dice over the whole
batch lets large tumours dominate), and each tumour category counts as much as any other,
whatever its number of training cases. With D_b the soft foreground Dice of sample b
(``loss_terms.soft_dice``), F the samples whose known voxels hold foreground, and w_b the weight of
b's category (``category_weights``: n / (K n_k) for a category with n_k of n cases, K categories):

    BD = sum_{b in F} w_b (1 - D_b) / sum_{b in F} w_b        (0 when F is empty)
    L  = BD + ce_weight * CE                                  (CE as in ``loss_terms``)

Samples without foreground (tumour-free patches) are left out of the Dice term, where the Dice is
undefined, and learn through the cross entropy. Without categories every w_b is 1 and BD is the
mean Dice loss per case.
"""

from __future__ import annotations

from collections import Counter
from typing import Dict, Optional, Sequence

import torch

from .loss_terms import cross_entropy, known_or_ones, soft_dice


def category_weights(categories: Sequence[str]) -> Dict[str, float]:
    """n / (K n_k) for each of the K categories among the n training cases (mean weight 1)."""
    counts = Counter(categories)
    total, kinds = len(categories), len(counts)
    return {category: total / (kinds * count) for category, count in counts.items()}


class BalancedDiceLoss(torch.nn.Module):
    """BD + cross entropy (the module docstring's L); ``forward`` takes each sample's category
    weight w_b as ``sample_weights`` (B,), all 1 when None."""

    def __init__(self, ce_weight: float = 1.0) -> None:
        super().__init__()
        self.ce_weight = ce_weight

    def forward(self, logits: torch.Tensor, target: torch.Tensor, known: Optional[torch.Tensor] = None,
                sample_weights: Optional[torch.Tensor] = None) -> torch.Tensor:
        mask = known_or_ones(known, logits)
        foreground = (mask * target[:, 1:]).flatten(1).sum(dim=1) > 0
        weights = torch.ones(logits.shape[0], device=logits.device) if sample_weights is None \
            else sample_weights.to(logits.device, logits.dtype)
        dice = soft_dice(torch.softmax(logits, dim=1)[:, 1:], target[:, 1:], known)[:, 0]
        chosen = weights[foreground]
        bd = ((chosen * (1.0 - dice[foreground])).sum() / chosen.sum()) if chosen.numel() else logits.sum() * 0.0
        return bd + self.ce_weight * cross_entropy(logits, target, known)
