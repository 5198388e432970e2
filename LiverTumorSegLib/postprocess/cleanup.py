"""Final clean-up of the tumor mask and composition of the result labelmap."""

from __future__ import annotations

import math

import numpy as np

from .. import BACKGROUND_LABEL, LIVER_LABEL, TUMOR_LABEL
from .components import as_mask, remove_small_components


def _check_same_shape(a: np.ndarray, b: np.ndarray, names: str) -> None:
    if a.shape != b.shape:
        raise ValueError(f"{names} must have the same shape, got {a.shape} and {b.shape}")


def tumor_inside_liver(tumor: np.ndarray, liver: np.ndarray) -> np.ndarray:
    """The tumor voxels that lie inside the liver mask (uint8 0/1). Pass a liver mask that
    includes the tumor (such as the liver stage's ``tumor_search_region``)."""
    tumor, liver = np.asarray(tumor), np.asarray(liver)
    _check_same_shape(tumor, liver, "tumor and liver masks")
    return np.logical_and(tumor, liver).view(np.uint8)


def remove_small_lesions(tumor: np.ndarray, voxel_volume_ml: float, min_volume_ml: float) -> np.ndarray:
    """Drop 26-connected lesions smaller than ``min_volume_ml`` (uint8 0/1)."""
    if voxel_volume_ml <= 0:
        raise ValueError(f"voxel_volume_ml must be positive, got {voxel_volume_ml}")
    if min_volume_ml <= 0:
        return as_mask(tumor).astype(np.uint8)
    # A lesion of exactly min_volume_ml is kept; the epsilon absorbs float error in the ratio.
    min_voxels = max(int(math.ceil(min_volume_ml / voxel_volume_ml - 1e-9)), 1)
    return remove_small_components(tumor, min_voxels)


def compose_labelmap(liver: np.ndarray, tumor: np.ndarray) -> np.ndarray:
    """uint8 labelmap: TUMOR_LABEL where tumor, else LIVER_LABEL where liver, else background."""
    liver, tumor = np.asarray(liver), np.asarray(tumor)
    _check_same_shape(liver, tumor, "liver and tumor masks")
    labelmap = np.full(liver.shape, BACKGROUND_LABEL, np.uint8)
    np.copyto(labelmap, LIVER_LABEL, where=liver.astype(bool, copy=False))
    np.copyto(labelmap, TUMOR_LABEL, where=tumor.astype(bool, copy=False))
    return labelmap
