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


def leak_beyond_ml(prediction: np.ndarray, reference: np.ndarray, spacing_kji, margin_mm: float) -> float:
    """Volume (mL) of ``prediction`` lying more than ``margin_mm`` outside ``reference``: what
    spilled into a neighbour, apart from a boundary drawn a voxel or two wide."""
    from scipy import ndimage

    prediction, reference = np.asarray(prediction, bool), np.asarray(reference, bool)
    outside = prediction & ~reference
    if not outside.any():
        return 0.0
    if not reference.any():
        return float(outside.sum()) * float(np.prod(spacing_kji)) / 1000.0
    distance = ndimage.distance_transform_edt(~reference, sampling=spacing_kji)
    return float(np.count_nonzero(outside & (distance > margin_mm))) * float(np.prod(spacing_kji)) / 1000.0


def equivalent_diameter_mm(n_voxels: int, voxel_volume_mm3: float) -> float:
    """Diameter of the sphere with the volume of ``n_voxels`` voxels."""
    return float((6.0 * n_voxels * voxel_volume_mm3 / np.pi) ** (1.0 / 3.0))


def lesion_detection(prediction: np.ndarray, reference: np.ndarray, voxel_volume_mm3: float) -> Dict[str, object]:
    """Lesion-wise detection: each reference lesion (26-connected component) is found when any
    predicted voxel overlaps it; predicted lesions that touch no reference lesion are false
    positives. Returns ``{"reference": [{"diameter_mm", "detected"}...], "predicted":
    [{"diameter_mm", "true_positive"}...], "false_positives": n}`` (diameters: equivalent sphere)."""
    from scipy import ndimage

    structure = np.ones((3, 3, 3), dtype=bool)
    p, r = np.asarray(prediction).astype(bool), np.asarray(reference).astype(bool)
    ref_labels, n_ref = ndimage.label(r, structure)
    pred_labels, n_pred = ndimage.label(p, structure)
    sizes = np.bincount(ref_labels.ravel(), minlength=n_ref + 1)
    hit = np.zeros(n_ref + 1, dtype=bool)
    hit[np.unique(ref_labels[p])] = True
    lesions = [{"diameter_mm": round(equivalent_diameter_mm(int(sizes[i]), voxel_volume_mm3), 1),
                "detected": bool(hit[i])} for i in range(1, n_ref + 1)]
    pred_sizes = np.bincount(pred_labels.ravel(), minlength=n_pred + 1)
    touching = np.zeros(n_pred + 1, dtype=bool)
    touching[np.unique(pred_labels[r])] = True
    predicted = [{"diameter_mm": round(equivalent_diameter_mm(int(pred_sizes[i]), voxel_volume_mm3), 1),
                  "true_positive": bool(touching[i])} for i in range(1, n_pred + 1)]
    false_positives = n_pred - int(np.count_nonzero(touching[1:]))
    return {"reference": lesions, "predicted": predicted, "false_positives": int(false_positives)}


CV_MIN_MEAN = 0.05  # the variation coefficient is reported where the mean probability is at least this


def variation_coefficient(mean: np.ndarray, std: np.ndarray, min_mean: float = CV_MIN_MEAN) -> np.ndarray:
    """The voxel variation coefficient of test-time augmentation, CV = σ / μ (σ, μ: the standard
    deviation and mean of the foreground probability over the flips) where μ >= ``min_mean``, and
    0 elsewhere: where the models see no foreground the ratio of two near-zero numbers is noise."""
    mean, std = np.asarray(mean, np.float32), np.asarray(std, np.float32)
    cv = np.zeros(mean.shape, np.float32)
    where = mean >= min_mean
    cv[where] = std[where] / mean[where]
    return cv
