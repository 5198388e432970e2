"""Training samples on a model's grid, prepared exactly as the pipeline prepares its inputs."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import List, Optional

import numpy as np
import SimpleITK as sitk
from scipy import ndimage

from ...geometry import Geometry
from ...models.card import HYPODENSITY_CHANNEL, ModelCard
from ...preprocess import model_grid, normalize_hu, resample_to_model_grid
from ...stages.crop import crop_image, liver_box
from ...stages.liver import tumor_search_region
from ...stages.parenchyma import hypodensity_channel
from .prior import signed_distance_mm


@dataclass
class TrainingSample:
    """A normalised CT (float32, (k, j, i)) and its binary target on one model's grid; for a
    liver refinement model also the target's signed distance (mm), from which a simulated
    liver-stage mask is drawn for every patch (``training.prior``)."""

    name: str
    image: np.ndarray
    target: np.ndarray  # uint8 0/1
    prior_distance: Optional[np.ndarray] = None  # float32 mm, negative inside the liver
    hypodensity: Optional[np.ndarray] = None  # float32 0..1: the parenchyma map, for cards with that channel
    # bool: a tumour-free region that looks like tumour (a darkened part of the liver), where
    # hard-negative patches are centred (TrainConfig.hard_negative_fraction)
    hard_negative: Optional[np.ndarray] = None
    _lesions: Optional[List[np.ndarray]] = field(default=None, init=False, repr=False, compare=False)

    def lesion_voxels(self) -> List[np.ndarray]:
        """The flat indices of each connected component of the target (26-connected), computed
        once: what lesion-balanced patch sampling draws from."""
        if self._lesions is None:
            labels, count = ndimage.label(self.target, structure=np.ones((3, 3, 3), bool))
            flat = labels.ravel()
            foreground = np.flatnonzero(flat)
            by_lesion = foreground[np.argsort(flat[foreground], kind="stable")]
            bounds = np.searchsorted(flat[by_lesion], np.arange(1, count + 2))
            self._lesions = [by_lesion[bounds[n]:bounds[n + 1]] for n in range(count)]
        return self._lesions


def prepare_sample(name: str, ct: sitk.Image, labels: sitk.Image, card: ModelCard,
                   crop_margin_mm: Optional[float] = None,
                   hard_negative: Optional[sitk.Image] = None) -> TrainingSample:
    """Put a labelled CT (labels 0/1 liver/2 tumor) on ``card``'s grid.

    A liver card learns liver+tumor (the liver includes its tumors) on the whole CT; a liver
    refinement card learns the same on the liver crop; a tumor card learns the tumor label on the
    liver crop (``crop_margin_mm`` as in the pipeline's crop stage). ``hard_negative`` (0/1 on
    the CT's grid) goes onto the same grid, less the target."""
    label_array = sitk.GetArrayViewFromImage(labels)
    if card.task in ("tumor", "liver_refine"):
        margin = 15.0 if crop_margin_mm is None else crop_margin_mm
        box = liver_box(label_array > 0, ct.GetSpacing()[::-1], margin)
        ct, labels = crop_image(ct, box), crop_image(labels, box)
        if hard_negative is not None:
            hard_negative = crop_image(hard_negative, box)
    target_image = (labels == 2) if card.task == "tumor" else (labels > 0)
    grid = model_grid(ct, card.spacing_mm, card.orientation)
    ct_on_grid = resample_to_model_grid(ct, grid)
    target = mask_on_model_grid(target_image, grid).astype(np.uint8)
    distance = signed_distance_mm(target, grid.GetSpacing()[::-1]) if "liver_prior" in card.input_channels else None
    hypodensity = None
    if HYPODENSITY_CHANNEL in card.input_channels:
        hypodensity = _hypodensity_on_grid(ct, sitk.GetArrayViewFromImage(labels) > 0, grid)
    negative = None if hard_negative is None else mask_on_model_grid(hard_negative, grid) & (target == 0)
    return TrainingSample(name=name, image=normalize_hu(sitk.GetArrayViewFromImage(ct_on_grid), card.hu_window),
                          target=target, prior_distance=distance, hypodensity=hypodensity, hard_negative=negative)


def mask_on_model_grid(mask: sitk.Image, grid: sitk.Image) -> np.ndarray:
    """A 0/1 mask on ``grid`` (bool): linearly resampled, at least half in; how every training
    target and mask reaches the model's grid."""
    on_grid = resample_to_model_grid(sitk.Cast(mask, sitk.sitkFloat32), grid)
    return sitk.GetArrayViewFromImage(on_grid) >= 0.5


def _hypodensity_on_grid(ct_crop: sitk.Image, liver_crop: np.ndarray, grid: sitk.Image) -> np.ndarray:
    """The parenchyma map of the liver crop, as the pipeline computes it (the reference liver in
    place of the liver stage's mask, its tumor search region), on the model's grid."""
    region = tumor_search_region(liver_crop.astype(np.uint8), Geometry.of(ct_crop).axial_array_axis())
    hu = sitk.GetArrayFromImage(ct_crop).astype(np.float32)
    image = sitk.GetImageFromArray(hypodensity_channel(hu, region, ct_crop.GetSpacing()[::-1]))
    image.CopyInformation(ct_crop)
    return sitk.GetArrayFromImage(resample_to_model_grid(image, grid)).astype(np.float32)
