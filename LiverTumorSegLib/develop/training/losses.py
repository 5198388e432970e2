"""The segmentation losses ``livertumorseg train --loss`` offers, by name."""

from __future__ import annotations

import torch

from ...errors import LiverTumorSegError
from .bd_loss import BalancedDiceLoss
from .config import LOSS_NAMES
from .gdl_focal import GeneralizedDiceFocalLoss
from .loss_terms import DiceCELoss

LOSSES = dict(zip(LOSS_NAMES, (DiceCELoss, GeneralizedDiceFocalLoss, BalancedDiceLoss)))


def build_loss(name: str) -> torch.nn.Module:
    """The loss ``name`` (dicece, gdl-focal, bd); each takes (logits, target, known, sample_weights)."""
    if name not in LOSSES:
        raise LiverTumorSegError(f"unknown loss '{name}'; choose one of {', '.join(LOSSES)}")
    return LOSSES[name]()
