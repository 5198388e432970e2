"""Active-contour refinement of lesion boundaries (morphological Chan-Vese, one lesion at a time).

Each lesion (26-connected component) is refined in its own box: its bounding box grown by a
margin in millimetres. The CT in the box is clipped to a soft-tissue window and scaled to
[0, 1]; voxels outside the liver and voxels of other lesions are replaced by the median of the
liver parenchyma in the box, so the contour separates the lesion from the liver around it and
is not pulled towards fat, air or a neighbouring lesion. The contour starts from the lesion
mask and moves by at most about one voxel per iteration, so it refines the boundary. The
result is restricted to the liver (plus the lesion's own voxels), and a leak guard keeps the
original lesion when the refined one grew beyond ``MAX_GROWTH`` or shrank below ``MIN_SHRINK``
times its volume: the contour may refine a boundary, never replace it.

When the slices are much thicker than the in-plane pixels (ratio above ``THICK_SLICE_RATIO``),
3-D curvature smoothing would erode a lesion's few slices, so the contour then runs slice by
slice in 2-D on the thick axis.
"""

from __future__ import annotations

from typing import Optional, Sequence, Tuple

import numpy as np
from scipy import ndimage
from skimage.segmentation import morphological_chan_vese

from ..preprocess import normalize_hu
from ..progress import Progress
from .components import CONNECTIVITY_26, as_mask, labeled_components_in_box, margin_in_voxels

SOFT_TISSUE_WINDOW_HU: Tuple[float, float] = (-100.0, 250.0)
MAX_GROWTH = 2.0
MIN_SHRINK = 0.5
THICK_SLICE_RATIO = 2.0
MIN_BOX_WIDTH = 3  # voxels; a thinner box is left unrefined


def thick_slice_axis(spacing_kji: Sequence[float]) -> Optional[int]:
    """The array axis whose spacing exceeds ``THICK_SLICE_RATIO`` times both others, or None."""
    spacing = np.asarray(spacing_kji, dtype=np.float64)
    axis = int(np.argmax(spacing))
    others = np.delete(spacing, axis)
    return axis if spacing[axis] > THICK_SLICE_RATIO * others.max() else None


def _chan_vese_nd(image: np.ndarray, init: np.ndarray, iterations: int, smoothing: int) -> np.ndarray:
    """One 2-D or 3-D contour run; an empty start or a box too thin for the contour's
    gradients is returned unchanged."""
    if not init.any() or min(image.shape) < MIN_BOX_WIDTH:
        return init.copy()
    return morphological_chan_vese(image, iterations, init_level_set=init.view(np.int8),
                                   smoothing=smoothing) > 0


def _chan_vese(image: np.ndarray, init: np.ndarray, iterations: int, smoothing: int,
               slice_axis: Optional[int]) -> np.ndarray:
    """The contour in 3-D, or slice by slice across ``slice_axis`` when that is given."""
    if slice_axis is None:
        return _chan_vese_nd(image, init, iterations, smoothing)
    refined = np.empty(init.shape, bool)
    for z in range(init.shape[slice_axis]):
        index = tuple(z if axis == slice_axis else slice(None) for axis in range(3))
        refined[index] = _chan_vese_nd(image[index], init[index], iterations, smoothing)
    return refined


def refine_one_lesion(hu_box: np.ndarray, lesion: np.ndarray, allowed: np.ndarray, others: np.ndarray,
                      iterations: int, smoothing: int, slice_axis: Optional[int]) -> np.ndarray:
    """Refine one lesion inside its box. ``lesion``: the lesion's voxels; ``allowed``: where it
    may be (liver or lesion); ``others``: other lesions' voxels. Returns the refined lesion, or
    the original one when the contour leaked (grew or shrank beyond the guard)."""
    image = normalize_hu(hu_box, SOFT_TISSUE_WINDOW_HU)
    parenchyma = allowed & ~lesion & ~others
    if parenchyma.any():
        background = float(np.median(image[parenchyma]))
    else:  # the lesion fills the liver in its box: compare it against the window's low end
        background = 0.0
    image[~allowed | others] = background
    refined = _chan_vese(image, lesion, iterations, smoothing, slice_axis)
    refined &= allowed
    refined &= ~others
    # Keep only the pieces that touch the original lesion (the contour can split off specks).
    pieces, count = ndimage.label(refined, structure=CONNECTIVITY_26)
    if count > 1:
        touching = np.unique(pieces[lesion & refined])
        refined = np.isin(pieces, touching[touching > 0])
    initial, final = int(np.count_nonzero(lesion)), int(np.count_nonzero(refined))
    if final > MAX_GROWTH * initial or final < MIN_SHRINK * initial:
        return lesion.copy()
    return refined


def refine_lesions(ct_hu: np.ndarray, tumor: np.ndarray, liver: np.ndarray,
                   spacing_kji: Tuple[float, float, float], iterations: int = 10,
                   margin_mm: float = 5.0, smoothing: int = 1,
                   progress: Optional[Progress] = None) -> np.ndarray:
    """Refine each lesion of ``tumor`` with a morphological Chan-Vese contour on ``ct_hu``
    (HU, same grid) inside a box grown by ``margin_mm``; the union of the refined lesions is
    returned as uint8 0/1, restricted to ``liver`` (or the lesion's own original voxels)."""
    tumor, liver, ct_hu = as_mask(tumor), np.asarray(liver), np.asarray(ct_hu)
    if not (ct_hu.shape == tumor.shape == liver.shape):
        raise ValueError(f"CT, tumor and liver must share one grid, got shapes {ct_hu.shape}, "
                         f"{tumor.shape} and {liver.shape}")
    if len(spacing_kji) != 3 or min(spacing_kji) <= 0:
        raise ValueError(f"spacing_kji must be three positive spacings in mm, got {spacing_kji}")
    if iterations < 0:
        raise ValueError(f"iterations must be >= 0, got {iterations}")
    result = tumor.astype(np.uint8)
    if iterations == 0:
        return result
    margin = margin_in_voxels(margin_mm, spacing_kji)
    # Labels over the tumor's box grown by the margin, so every lesion's own box fits inside.
    labels, count, outer = labeled_components_in_box(tumor, margin)
    if outer is None:
        return result
    slice_axis = thick_slice_axis(spacing_kji)
    result[outer] = 0
    result_outer = result[outer]
    ct_outer, liver_outer = ct_hu[outer], as_mask(liver[outer])
    for index, extent in enumerate(ndimage.find_objects(labels)):
        if progress is not None:
            progress.report("postprocess", index / count, f"refining lesion {index + 1} of {count}")
        box = tuple(slice(max(s.start - m, 0), min(s.stop + m, n))
                    for s, m, n in zip(extent, margin, labels.shape))
        labels_box = labels[box]
        lesion = labels_box == index + 1
        others = (labels_box > 0) & ~lesion
        allowed = liver_outer[box] | lesion
        refined = refine_one_lesion(ct_outer[box], lesion, allowed, others, iterations, smoothing,
                                    slice_axis)
        result_outer[box] |= refined.view(np.uint8)
    if progress is not None:
        progress.report("postprocess", 1.0, f"refined {count} lesion{'s' if count != 1 else ''}")
    return result
