"""The model-input grid and intensity normalisation, shared by inference and training.

A model sees the CT reoriented to its card's orientation (axis permutations and flips only,
no interpolation) and resampled to its card's spacing; probabilities go back to the CT grid
by physical position, so any input orientation and spacing give results on the input grid.
"""

from __future__ import annotations

import math
from typing import Sequence

import numpy as np
import SimpleITK as sitk


def model_grid(image: sitk.Image, spacing_mm: Sequence[float], orientation: str = "LPS") -> sitk.Image:
    """An empty float32 image covering ``image``'s extent in ``orientation`` at ``spacing_mm``."""
    oriented = sitk.DICOMOrient(image, orientation) if image.GetDimension() == 3 else image
    old_size = np.array(oriented.GetSize(), dtype=np.float64)
    old_spacing = np.array(oriented.GetSpacing(), dtype=np.float64)
    new_spacing = np.array(spacing_mm, dtype=np.float64)
    new_size = [max(1, int(math.ceil(n))) for n in old_size * old_spacing / new_spacing]
    direction = np.array(oriented.GetDirection()).reshape(3, 3)
    # Keep the centre of the first voxel's footprint aligned: shift the origin by half the change.
    shift = (new_spacing - old_spacing) / 2.0
    origin = np.array(oriented.GetOrigin()) + direction @ shift
    grid = sitk.Image([int(s) for s in new_size], sitk.sitkFloat32)
    grid.SetSpacing(tuple(float(s) for s in new_spacing))
    grid.SetOrigin(tuple(float(o) for o in origin))
    grid.SetDirection(tuple(float(d) for d in direction.ravel()))
    return grid


def resample_to(image: sitk.Image, reference: sitk.Image, interpolator: int = sitk.sitkLinear,
                default_value: float = 0.0, pixel_type: int = sitk.sitkFloat32,
                extrapolate: bool = False) -> sitk.Image:
    """Resample ``image`` onto ``reference``'s grid by physical position; where ``reference``
    lies outside ``image``, ``default_value``, or with ``extrapolate`` the nearest edge voxel."""
    return sitk.Resample(image, reference, sitk.Transform(), interpolator, default_value, pixel_type, extrapolate)


def resample_to_model_grid(image: sitk.Image, grid: sitk.Image) -> sitk.Image:
    """A model input (the CT, or a mask or map on the CT's grid) on a :func:`model_grid` (float32,
    linear). The grid's size is rounded up, so its last voxel on each axis overhangs the image by
    up to one model voxel; there the image's edge voxel is repeated. A default value there (air
    for the CT, 0 for a mask) would put a false surface at the far edge of every crop, and cut
    the liver off the last slice of a scan that ends inside it. Training and inference both
    use this."""
    return resample_to(image, grid, sitk.sitkLinear, 0.0, sitk.sitkFloat32, extrapolate=True)


def resample_ct_to_model(ct: sitk.Image, spacing_mm: Sequence[float], orientation: str = "LPS") -> sitk.Image:
    """The CT on the model's grid (float32 HU; see :func:`resample_to_model_grid`)."""
    return resample_to_model_grid(ct, model_grid(ct, spacing_mm, orientation))


def normalize_hu(hu: np.ndarray, window: Sequence[float]) -> np.ndarray:
    """Clip to the HU window and scale to [0, 1] (float32)."""
    lo, hi = float(window[0]), float(window[1])
    out = np.clip(hu.astype(np.float32, copy=False), lo, hi)
    out -= lo
    out /= (hi - lo)
    return out
