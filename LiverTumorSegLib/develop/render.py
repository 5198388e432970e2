"""PNG overlays of a CT with prediction and reference contours, for people to look at results."""

from __future__ import annotations

from pathlib import Path
from typing import Optional, Sequence

import numpy as np
import SimpleITK as sitk

from .. import LIVER_LABEL, TUMOR_LABEL
from ..preprocess import normalize_hu

PRED_COLORS = {LIVER_LABEL: (255, 140, 0), TUMOR_LABEL: (0, 255, 0)}  # liver orange, tumor green
REF_COLORS = {LIVER_LABEL: (0, 160, 255), TUMOR_LABEL: (255, 0, 255)}  # reference liver blue, tumor magenta


DISPLAY_WINDOW_HU = (-160.0, 240.0)  # abdominal soft tissue, as a radiologist looks at the liver


def _window(hu: np.ndarray) -> np.ndarray:
    return (normalize_hu(hu, DISPLAY_WINDOW_HU) * 255).astype(np.uint8)


def _edges(mask: np.ndarray) -> np.ndarray:
    from scipy.ndimage import binary_erosion

    return mask & ~binary_erosion(mask)


def overlay_slices(pred: np.ndarray, ref: Optional[np.ndarray], n_slices: int) -> np.ndarray:
    """Which axial slices (first array axis, LPS) a reader needs: where the tumours disagree most
    (the slice with the most reference tumour missed, the one with the most tumour drawn outside
    the reference), where there is the most tumour and where the livers disagree most (a spill
    into a neighbour, a lobe left out), up to half the tiles, then slices spread evenly over the
    liver. Sorted, without repeats."""
    organ = pred > 0
    if ref is not None:
        organ = organ | (ref > 0)
    present = np.flatnonzero(organ.any(axis=(1, 2)))
    if len(present) == 0:
        present = np.arange(pred.shape[0])
    picks: list = []
    tumor_pred = pred == TUMOR_LABEL
    tumor_ref = (ref == TUMOR_LABEL) if ref is not None else np.zeros_like(tumor_pred)
    livers_disagree = (pred > 0) ^ (ref > 0) if ref is not None else np.zeros_like(tumor_pred)
    for area in ((tumor_ref & ~tumor_pred).sum(axis=(1, 2)), (tumor_pred & ~tumor_ref).sum(axis=(1, 2)),
                 (tumor_pred | tumor_ref).sum(axis=(1, 2)), livers_disagree.sum(axis=(1, 2))):
        if len(picks) < n_slices // 2 and area.max() > 0 and int(area.argmax()) not in picks:
            picks.append(int(area.argmax()))
    spread = np.linspace(present[0], present[-1], n_slices + 2)[1:-1].round().astype(int)
    for k in sorted(spread, key=lambda k: min((abs(k - p) for p in picks), default=0), reverse=True):
        if len(picks) >= n_slices:
            break
        if int(k) not in picks:
            picks.append(int(k))
    return np.array(sorted(picks), dtype=int)


def axial_overlay(ct: sitk.Image, prediction: sitk.Image, reference: Optional[sitk.Image] = None,
                  n_slices: int = 4, scale: int = 2) -> np.ndarray:
    """RGB mosaic of ``n_slices`` axial slices (:func:`overlay_slices`: through the tumours where
    prediction and reference disagree most, the rest spread over the liver), shown in
    radiological convention (patient right on image left, anterior up): the CT is first put in
    LPS orientation, so flipped or permuted inputs display the same way."""
    ct_lps = sitk.DICOMOrient(ct, "LPS")
    pred = sitk.GetArrayFromImage(sitk.DICOMOrient(prediction, "LPS"))
    ref = None
    if reference is not None:
        ref_on_ct = sitk.Resample(reference, ct, sitk.Transform(), sitk.sitkNearestNeighbor, 0)
        ref = sitk.GetArrayFromImage(sitk.DICOMOrient(ref_on_ct, "LPS"))
    hu = sitk.GetArrayFromImage(ct_lps)
    tiles = []
    for k in overlay_slices(pred, ref, n_slices):
        gray = _window(hu[k])
        rgb = np.stack([gray] * 3, axis=-1)
        for labels, colors in ((ref, REF_COLORS), (pred, PRED_COLORS)):
            if labels is None:
                continue
            for value, color in colors.items():
                rgb[_edges(labels[k] == value)] = color
        tiles.append(np.kron(rgb, np.ones((scale, scale, 1), dtype=np.uint8)))
    return np.concatenate(tiles, axis=1)


def save_png(rgb: np.ndarray, path: Path) -> None:
    from skimage.io import imsave

    Path(path).parent.mkdir(parents=True, exist_ok=True)
    imsave(str(path), rgb, check_contrast=False)


def save_overlay(ct: sitk.Image, prediction: sitk.Image, path: Path, reference: Optional[sitk.Image] = None,
                 n_slices: int = 4) -> None:
    save_png(axial_overlay(ct, prediction, reference, n_slices=n_slices), path)


def stack_rows(rows: Sequence[np.ndarray]) -> np.ndarray:
    """Stack RGB mosaics vertically, padding widths."""
    width = max(r.shape[1] for r in rows)
    padded = [np.pad(r, ((0, 0), (0, width - r.shape[1]), (0, 0))) for r in rows]
    return np.concatenate(padded, axis=0)
