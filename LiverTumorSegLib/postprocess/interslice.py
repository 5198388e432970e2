"""Inter-slice consistency of a tumor mask (the post-processing of seed 000 that uses
information between axial slices).

A real lesion spans neighbouring axial slices, so the mask is corrected along the axial axis:
1. bridge one-slice gaps: a voxel empty on slice z but set on slices z-1 and z+1 at the same
   in-plane position is set (a lesion the network missed on one slice). Bridges are decided
   per voxel column from the input mask, so they never reach outside the overlap of the
   lesion's footprints on the two neighbouring slices, and never grow in-plane.
2. drop single-slice specks: a 26-connected component that lies on one axial slice only is
   removed (isolated false positives rarely persist across slices).
Bridging runs first, so a fragment one slice away from a lesion it overlaps joins that lesion
instead of being dropped as a speck.
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage

from .components import as_mask, bounding_box, labeled_components_in_box


def bridge_one_slice_gaps(tumor: np.ndarray, axial_axis: int) -> np.ndarray:
    """Set each voxel that is empty but has set voxels directly above and below it along
    ``axial_axis``. Returns uint8 0/1."""
    tumor = as_mask(tumor)
    result = tumor.astype(np.uint8)
    box = bounding_box(tumor)
    if box is None:
        return result
    column = np.moveaxis(tumor[box], axial_axis, 0)
    if column.shape[0] < 3:
        return result
    gaps = column[:-2] & column[2:] & ~column[1:-1]
    view = np.moveaxis(result[box], axial_axis, 0)  # a view into ``result``
    view[1:-1][gaps] = 1
    return result


def drop_single_slice_components(tumor: np.ndarray, axial_axis: int) -> np.ndarray:
    """Remove each 26-connected component whose voxels all lie on one axial slice (uint8 0/1)."""
    tumor = as_mask(tumor)
    result = tumor.astype(np.uint8)
    labels, count, box = labeled_components_in_box(tumor)
    if box is None:
        return result
    objects = ndimage.find_objects(labels)
    single = np.zeros(count + 1, bool)
    for label, extent in enumerate(objects, start=1):
        if extent is not None and extent[axial_axis].stop - extent[axial_axis].start == 1:
            single[label] = True
    if single.any():
        result[box][single[labels]] = 0
    return result


def interslice_consistency(tumor: np.ndarray, axial_axis: int, bridge_gaps: bool = True,
                           drop_single_slice: bool = True) -> np.ndarray:
    """Bridge one-slice gaps, then drop single-slice components (each step optional).
    ``axial_axis`` is the array axis (0, 1 or 2) that numbers the axial slices. Returns uint8 0/1."""
    if axial_axis not in (0, 1, 2):
        raise ValueError(f"axial_axis must be 0, 1 or 2, got {axial_axis}")
    result = as_mask(tumor).astype(np.uint8)
    if bridge_gaps:
        result = bridge_one_slice_gaps(result, axial_axis)
    if drop_single_slice:
        result = drop_single_slice_components(result, axial_axis)
    return result
