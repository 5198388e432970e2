"""Connected components of binary masks: largest component, hole filling, lesion labelling.

Masks are 3-D arrays in (k, j, i) order; any non-zero voxel counts as set. Every function
returns a new uint8 0/1 array (or int32 labels) and never modifies its input. Work is done on
the bounding box of the set voxels, so a small object in a large volume costs little.
Foreground connectivity is 26 (face, edge or corner neighbours).
"""

from __future__ import annotations

import math
from typing import Optional, Sequence, Tuple

import numpy as np
import SimpleITK as sitk
from scipy import ndimage

CONNECTIVITY_26 = ndimage.generate_binary_structure(3, 3)

Box = Tuple[slice, slice, slice]


def as_mask(mask: np.ndarray) -> np.ndarray:
    """A 3-D mask as a boolean array (non-zero = set); a boolean input is returned as is."""
    mask = np.asarray(mask)
    if mask.ndim != 3:
        raise ValueError(f"expected a 3-D mask, got an array of shape {mask.shape}")
    return mask if mask.dtype == bool else mask != 0


def bounding_box(mask: np.ndarray, margin: Sequence[int] = (0, 0, 0)) -> Optional[Box]:
    """Slices of the smallest box holding every set voxel, grown by ``margin`` voxels per
    axis and clipped to the array; ``None`` when nothing is set."""
    mask = as_mask(mask)
    objects = ndimage.find_objects(mask.view(np.uint8))  # one C pass; label 1 = the set voxels
    if not objects or objects[0] is None:
        return None
    return tuple(slice(max(s.start - int(m), 0), min(s.stop + int(m), n))
                 for s, m, n in zip(objects[0], margin, mask.shape))


def margin_in_voxels(margin_mm: float, spacing_kji: Sequence[float]) -> Tuple[int, int, int]:
    """A physical margin (mm) as whole voxels per axis, rounded up."""
    return tuple(int(math.ceil(margin_mm / float(s))) if margin_mm > 0 else 0 for s in spacing_kji)


def labeled_components_in_box(mask: np.ndarray, margin: Sequence[int] = (0, 0, 0),
                              ordered: bool = True) -> Tuple[np.ndarray, int, Optional[Box]]:
    """26-connected components of ``mask`` labelled inside its bounding box (grown by
    ``margin``): ``(labels, count, box)`` with int32 labels 1..count, ordered by decreasing size
    when ``ordered`` (ties keep scan order), else in scan order. ``labels`` has the box's shape;
    ``box`` is ``None`` when the mask is empty."""
    mask = as_mask(mask)
    box = bounding_box(mask, margin)
    if box is None:
        return np.zeros((0, 0, 0), np.int32), 0, None
    sub = mask[box]
    labels, count = ndimage.label(sub, structure=CONNECTIVITY_26, output=np.int32)
    if ordered and count > 1:
        order = np.argsort(-_component_sizes(labels, sub, count)[1:], kind="stable")
        if np.any(order != np.arange(count)):  # order[rank] = old label - 1
            relabel = np.zeros(count + 1, np.int32)
            relabel[order + 1] = np.arange(1, count + 1, dtype=np.int32)
            labels = relabel[labels]
    return labels, count, box


def _component_sizes(labels: np.ndarray, mask: np.ndarray, count: int) -> np.ndarray:
    """Voxel count per label 0..count (label 0 counted as 0), counting only the set voxels."""
    return np.bincount(labels[mask], minlength=count + 1)


def label_lesions(mask: np.ndarray) -> Tuple[np.ndarray, int]:
    """26-connected components as int32 labels 1..n (full size), 1 the largest; ``(labels, n)``."""
    mask = as_mask(mask)
    labels_box, count, box = labeled_components_in_box(mask)
    labels = np.zeros(mask.shape, np.int32)
    if box is not None:
        labels[box] = labels_box
    return labels, count


def largest_component(mask: np.ndarray) -> np.ndarray:
    """The largest 26-connected component as uint8 0/1 (empty in, empty out)."""
    mask = as_mask(mask)
    result = np.zeros(mask.shape, np.uint8)
    labels, count, box = labeled_components_in_box(mask, ordered=False)
    if box is not None:
        largest = int(np.argmax(_component_sizes(labels, mask[box], count)[1:])) + 1
        np.equal(labels, largest, out=result[box].view(bool))
    return result


def remove_small_components(mask: np.ndarray, min_voxels: int) -> np.ndarray:
    """Keep the 26-connected components with at least ``min_voxels`` voxels (uint8 0/1); SimpleITK's
    relabelling drops the smaller ones."""
    mask = as_mask(mask)
    result = np.zeros(mask.shape, np.uint8)
    box = bounding_box(mask)
    if box is None:
        return result
    components = sitk.ConnectedComponent(sitk.GetImageFromArray(mask[box].view(np.uint8)), True)
    kept = sitk.RelabelComponent(components, minimumObjectSize=max(int(min_voxels), 0), sortByObjectSize=False)
    result[box] = sitk.GetArrayViewFromImage(kept) > 0
    return result


def in_plane_structure(axial_axis: int) -> np.ndarray:
    """4-connectivity inside one slice perpendicular to ``axial_axis``, nothing across slices."""
    structure = np.zeros((3, 3, 3), bool)
    index = [slice(None)] * 3
    index[axial_axis] = 1
    structure[tuple(index)] = ndimage.generate_binary_structure(2, 1)
    return structure


def fill_holes(mask: np.ndarray, axial_axis: Optional[int] = None) -> np.ndarray:
    """Fill holes enclosed in 3-D; with ``axial_axis``, then also holes enclosed within each
    slice along it (a channel that opens to the outside in 3-D, such as the IVC running through
    the liver or a vessel entering at the hilum, is an enclosed hole in each axial slice).
    Returns uint8 0/1."""
    if axial_axis is not None and axial_axis not in (0, 1, 2):
        raise ValueError(f"axial_axis must be None, 0, 1 or 2, got {axial_axis}")
    mask = as_mask(mask)
    result = np.zeros(mask.shape, np.uint8)
    box = bounding_box(mask)
    if box is None:
        return result
    # Background outside the tight box is all connected to the outside, so filling inside the
    # box (whose border counts as outside) is the same as filling the whole volume.
    filled = ndimage.binary_fill_holes(mask[box])
    if axial_axis is not None:
        filled = ndimage.binary_fill_holes(filled, structure=in_plane_structure(axial_axis))
    result[box] = filled
    return result
