"""Training samples on a model's grid, prepared exactly as the pipeline prepares its inputs."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import numpy as np
import SimpleITK as sitk

from ..models.card import ModelCard
from ..preprocess import model_grid, normalize_hu, resample_to
from ..stages.crop import crop_image, liver_box


@dataclass
class TrainingSample:
    """A normalised CT (float32, (k, j, i)) and its binary target on one model's grid."""

    name: str
    image: np.ndarray
    target: np.ndarray  # uint8 0/1


def prepare_sample(name: str, ct: sitk.Image, labels: sitk.Image, card: ModelCard,
                   crop_margin_mm: Optional[float] = None) -> TrainingSample:
    """Put a labelled CT (labels 0/1 liver/2 tumor) on ``card``'s grid.

    A liver card learns liver+tumor (the liver includes its tumors); a tumor card learns the
    tumor label on the liver crop (``crop_margin_mm`` as in the pipeline's crop stage)."""
    label_array = sitk.GetArrayViewFromImage(labels)
    if card.task == "tumor":
        margin = 15.0 if crop_margin_mm is None else crop_margin_mm
        box = liver_box(label_array > 0, ct.GetSpacing()[::-1], margin)
        ct, labels = crop_image(ct, box), crop_image(labels, box)
        target_value = (sitk.GetArrayViewFromImage(labels) == 2).astype(np.float32)
    else:
        target_value = (sitk.GetArrayViewFromImage(labels) > 0).astype(np.float32)
    grid = model_grid(ct, card.spacing_mm, card.orientation)
    ct_on_grid = resample_to(ct, grid, sitk.sitkLinear, -1024.0)
    target_image = sitk.GetImageFromArray(target_value)
    target_image.CopyInformation(labels)
    target_on_grid = resample_to(target_image, grid, sitk.sitkLinear, 0.0)
    return TrainingSample(name=name,
                          image=normalize_hu(sitk.GetArrayViewFromImage(ct_on_grid), card.hu_window),
                          target=(sitk.GetArrayViewFromImage(target_on_grid) >= 0.5).astype(np.uint8))
