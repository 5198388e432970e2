"""Liver stage (global view): the liver model on the whole CT, back on the CT grid, cleaned;
then, when the liver model names one, a refinement model on the liver crop (local view, finer
grid) that takes the CT and that first mask and redraws the liver (a cascade)."""

from __future__ import annotations

from typing import Callable, Optional, Sequence

import numpy as np
import SimpleITK as sitk
import torch
from scipy import ndimage

from ..inference import LoadedModel, predict_image
from ..postprocess.components import fill_holes, largest_component
from ..preprocess import resample_to


def probability_to_mask(probability: sitk.Image, reference: sitk.Image, threshold: float = 0.5) -> np.ndarray:
    """Resample a model-grid probability onto ``reference``'s grid (linear) and threshold it (uint8)."""
    on_grid = resample_to(probability, reference, sitk.sitkLinear, 0.0)
    return (sitk.GetArrayViewFromImage(on_grid) >= threshold).astype(np.uint8)


def clean_liver(mask: np.ndarray, keep_largest: bool = True, fill: bool = True) -> np.ndarray:
    """Largest 3-D connected component with its enclosed holes filled. Holes open to the outside
    in 3-D stay open: the IVC and the portal vein at the hilum are not liver."""
    if keep_largest:
        mask = largest_component(mask)
    if fill:
        mask = fill_holes(mask)
    return mask.astype(np.uint8, copy=False)


def tumor_search_region(liver: np.ndarray, axial_axis: int) -> np.ndarray:
    """Where the tumor stage may place lesions: the liver with its holes within each slice along
    the array's ``axial_axis`` filled too. A lesion at the liver's edge that the liver model left
    out shows as such a hole, so the tumor ensemble's finding there is kept and becomes part of
    the liver (the liver includes its tumors); the IVC is in this region but is not liver."""
    return fill_holes(liver, axial_axis)


def segment_liver(ct: sitk.Image, model: LoadedModel, device: torch.device, overlap: float = 0.25,
                  threshold: float = 0.5, keep_largest: bool = True, fill: bool = True,
                  on_progress: Optional[Callable[[float], None]] = None, tta: bool = False) -> np.ndarray:
    """Liver mask (uint8, CT grid, (k, j, i)) from the whole CT (``tta``: the mean probability over
    the training flips)."""
    probability, _ = predict_image(ct, model, device, overlap=overlap, tta=tta, on_progress=on_progress)
    mask = probability_to_mask(probability, ct, threshold)
    return clean_liver(mask, keep_largest, fill)


def liver_cut_by_scan(mask: np.ndarray, axial_axis: int) -> bool:
    """True when the liver reaches the first or last axial slice: part of it is outside the scan."""
    if not mask.any():
        return False
    first = np.take(mask, 0, axis=axial_axis)
    last = np.take(mask, mask.shape[axial_axis] - 1, axis=axial_axis)
    return bool(first.any() or last.any())


def limit_growth(refined: np.ndarray, coarse: np.ndarray, spacing_kji: Sequence[float],
                 growth_mm: float) -> np.ndarray:
    """``refined`` (uint8 0/1) where it lies at most ``growth_mm`` outside ``coarse`` along each
    array axis: within the coarse mask dilated by a box of floor(growth_mm / spacing) voxels each
    side (an axis whose voxels are thicker than ``growth_mm`` gets no growth). What ``refined``
    takes out of ``coarse`` stays out."""
    if growth_mm < 0:
        raise ValueError(f"growth_mm must be >= 0, got {growth_mm}")
    size = tuple(2 * int(np.floor(growth_mm / float(s) + 1e-6)) + 1 for s in spacing_kji)
    allowed = ndimage.maximum_filter(np.asarray(coarse, dtype=np.uint8), size=size)
    return (np.asarray(refined, dtype=np.uint8) & (allowed > 0)).astype(np.uint8)


def refine_liver(ct_crop: sitk.Image, coarse_crop: np.ndarray, model: LoadedModel, device: torch.device,
                 overlap: float = 0.25, threshold: float = 0.5,
                 on_progress: Optional[Callable[[float], None]] = None, tta: bool = False,
                 max_growth_mm: Optional[float] = None) -> np.ndarray:
    """The refinement model's liver on the crop's grid (uint8, (k, j, i)), not yet cleaned.
    ``coarse_crop``: the liver stage's mask on the same crop, given to the model as its prior
    (flipped with the CT under ``tta``). ``max_growth_mm``: how far outside ``coarse_crop`` the
    refinement may draw liver (:func:`limit_growth`; None: anywhere in the crop)."""
    prior = sitk.GetImageFromArray(np.asarray(coarse_crop, dtype=np.float32))
    prior.CopyInformation(ct_crop)
    probability, _ = predict_image(ct_crop, model, device, overlap=overlap, tta=tta, on_progress=on_progress,
                                   prior=prior)
    refined = probability_to_mask(probability, ct_crop, threshold)
    if max_growth_mm is not None:
        refined = limit_growth(refined, coarse_crop, ct_crop.GetSpacing()[::-1], max_growth_mm)
    return refined
