"""Overlap metrics of binary masks, and comparison of masks by physical position."""

from __future__ import annotations

from typing import Dict

import numpy as np
import SimpleITK as sitk


def dice(prediction: np.ndarray, reference: np.ndarray) -> float:
    """Dice of two binary masks; 1.0 when both are empty."""
    p, r = np.asarray(prediction).astype(bool), np.asarray(reference).astype(bool)
    denominator = int(p.sum()) + int(r.sum())
    return 1.0 if denominator == 0 else float(2 * np.logical_and(p, r).sum() / denominator)


def overlap_metrics(prediction: np.ndarray, reference: np.ndarray) -> Dict[str, float]:
    """Dice, IoU, sensitivity and precision (NaN where undefined)."""
    p, r = np.asarray(prediction).astype(bool), np.asarray(reference).astype(bool)
    tp = float(np.logical_and(p, r).sum())
    fp, fn = float(p.sum()) - tp, float(r.sum()) - tp
    return {"dice": dice(p, r),
            "iou": tp / (tp + fp + fn) if tp + fp + fn else 1.0,
            "sensitivity": tp / (tp + fn) if tp + fn else float("nan"),
            "precision": tp / (tp + fp) if tp + fp else float("nan")}


def on_grid_of(reference: sitk.Image, image: sitk.Image) -> np.ndarray:
    """``reference`` resampled (nearest neighbour) onto ``image``'s grid by physical position, so
    masks from different grids, orientations or origins are compared where they really are."""
    resampled = sitk.Resample(reference, image, sitk.Transform(), sitk.sitkNearestNeighbor, 0,
                              reference.GetPixelID())
    return sitk.GetArrayFromImage(resampled)
