"""Mixed-label training (seed 002: a universal CT + MR liver-cancer model trained on a pool of cases
that carry different labels): cases annotated with the liver and tumours, with tumours only, or
with the liver only train one model, and the loss is masked where a case's label is unknown.

Per case, on its image grid, from the labelmap (0 background, 1 liver, 2 tumour, IGNORE_LABEL
unknown), which structures its annotation covers, and, where the liver is not annotated, the
stage-1 liver model's probability P (the seed's liver pseudo-labels):

    liver region  L = reference liver + tumour             if the liver is annotated
                      (P >= 0.5) + tumour                  otherwise
    known voxels for a liver model:
        everywhere (but IGNORE_LABEL)                      if the liver is annotated
        where P is confident (P >= c or P <= 1 - c), and in the tumours   otherwise
    known voxels for a tumour model:
        everywhere (but IGNORE_LABEL)                      if the tumours are annotated
        outside L (a tumour lies in the liver), where L is confident      otherwise

The losses (``loss_terms``) sum only over known voxels (m = 1), so an unannotated structure
neither rewards nor penalises the network. c = 0.9 by default.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional, Tuple

import numpy as np
import SimpleITK as sitk

from ... import LIVER_LABEL, TUMOR_LABEL
from ...errors import LiverTumorSegError

IGNORE_LABEL = 255  # a voxel whose label is unknown
CONFIDENT = 0.9


@dataclass(frozen=True)
class AnnotatedStructures:
    """Which structures a case's label file annotates (its other voxels are background or unknown)."""

    liver: bool = True
    tumor: bool = True

    def describe(self) -> str:
        return "+".join(n for n, on in (("liver", self.liver), ("tumor", self.tumor)) if on) or "nothing"


def compose_labels(labels: np.ndarray, structures: AnnotatedStructures, task: str,
                   pseudo_liver: Optional[np.ndarray] = None,
                   confident: float = CONFIDENT) -> Tuple[np.ndarray, np.ndarray]:
    """(labelmap 0/1/2 with the liver region L, known-voxel mask 0/1), both uint8 on the labels' grid,
    for a model of ``task`` (liver, liver_refine or tumor); see the module docstring."""
    labels = np.asarray(labels)
    unknown = labels == IGNORE_LABEL
    tumor = (labels == TUMOR_LABEL) if structures.tumor else np.zeros(labels.shape, bool)
    confident_map = np.ones(labels.shape, bool)
    if structures.liver:
        liver = (labels == LIVER_LABEL) | tumor
    else:
        if pseudo_liver is None:
            raise LiverTumorSegError("a case without a liver annotation needs liver pseudo-labels from a stage-1 "
                                     "liver model (--pseudo-liver-model)")
        liver = (pseudo_liver >= 0.5) | tumor
        confident_map = (pseudo_liver >= confident) | (pseudo_liver <= 1.0 - confident) | tumor
    if task in ("liver", "liver_refine"):
        known = ~unknown & confident_map
    elif structures.tumor:
        known = ~unknown
    else:
        known = ~unknown & ~liver & confident_map
    composed = np.where(liver, LIVER_LABEL, 0).astype(np.uint8)
    composed[tumor] = TUMOR_LABEL
    return composed, known.astype(np.uint8)


def pseudo_liver_probability(ct: sitk.Image, liver_model: "LoadedModel", device: "torch.device") -> np.ndarray:  # noqa: F821
    """The stage-1 liver model's liver probability (float32) on ``ct``'s grid."""
    from ...inference import predict_image
    from ...preprocess import resample_to

    probability, _ = predict_image(ct, liver_model, device, overlap=0.25)
    return sitk.GetArrayFromImage(resample_to(probability, ct, sitk.sitkLinear, 0.0)).astype(np.float32)
