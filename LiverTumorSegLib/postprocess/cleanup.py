"""Final clean-up of the tumor mask and composition of the result labelmap."""

from __future__ import annotations

import math
from typing import List, Optional, Sequence

import numpy as np
from scipy import ndimage

from .. import BACKGROUND_LABEL, LIVER_LABEL, TUMOR_LABEL
from .components import (CONNECTIVITY_26, Box, as_mask, fill_holes, labeled_components_in_box, margin_in_voxels,
                         remove_small_components)


def _check_same_shape(a: np.ndarray, b: np.ndarray, names: str) -> None:
    if a.shape != b.shape:
        raise ValueError(f"{names} must have the same shape, got {a.shape} and {b.shape}")


def tumor_inside_liver(tumor: np.ndarray, liver: np.ndarray, spacing_kji: Optional[Sequence[float]] = None,
                       bulge_mm: float = 0.0, min_inside_fraction: float = 0.5) -> np.ndarray:
    """The tumor voxels that lie inside the liver mask (uint8 0/1). Pass a liver mask that
    includes the tumor (such as the liver stage's ``tumor_search_region``).

    With ``bulge_mm`` > 0, a lesion with at least ``min_inside_fraction`` of its 26-connected
    voxels in the liver also keeps its voxels outside the mask up to ``bulge_mm`` from it: a
    surface lesion bulges the liver's outline, and a liver model that left the bulge out must not
    cut the lesion with it. A lesion mostly outside (a false one in the stomach or bowel) keeps
    only its part inside, as without a bulge. (0.25 kept a little more of the validation surface
    lesions, 0.677 vs 0.676, but let an untrained tumour model's noise over the whole liver grow
    the liver by a 10 mm shell: at 0.5 no lesion's bulge outweighs its part inside the liver.)"""
    tumor, liver = np.asarray(tumor), np.asarray(liver)
    _check_same_shape(tumor, liver, "tumor and liver masks")
    inside = np.logical_and(tumor, liver)
    if bulge_mm < 0:
        raise ValueError(f"bulge_mm must be >= 0, got {bulge_mm}")
    if bulge_mm == 0 or not (tumor.astype(bool, copy=False) & ~liver.astype(bool, copy=False)).any():
        return inside.view(np.uint8)
    if spacing_kji is None:
        raise ValueError("spacing_kji is needed to keep a lesion's bulge by physical distance")
    margin = margin_in_voxels(bulge_mm, spacing_kji)
    labels, count, box = labeled_components_in_box(tumor, margin, ordered=False)
    sizes = np.bincount(labels.ravel(), minlength=count + 1)
    inside_sizes = np.bincount(labels[inside[box]], minlength=count + 1)
    result = inside.view(np.uint8).copy()
    liver_box, result_box = as_mask(liver[box]), result[box]
    for label, extent in enumerate(ndimage.find_objects(labels), start=1):
        if extent is None or inside_sizes[label] < min_inside_fraction * sizes[label]:
            continue
        # the lesion's own box grown by the bulge: every liver voxel within bulge_mm of it lies there
        sub = tuple(slice(max(e.start - m, 0), min(e.stop + m, n)) for e, m, n in zip(extent, margin, labels.shape))
        near = ndimage.distance_transform_edt(~liver_box[sub], sampling=spacing_kji) <= bulge_mm  # 0 in the liver
        result_box[sub] |= ((labels[sub] == label) & near).view(np.uint8)
    return result


def remove_small_lesions(tumor: np.ndarray, voxel_volume_ml: float, min_volume_ml: float) -> np.ndarray:
    """Drop 26-connected lesions smaller than ``min_volume_ml`` (uint8 0/1)."""
    if voxel_volume_ml <= 0:
        raise ValueError(f"voxel_volume_ml must be positive, got {voxel_volume_ml}")
    if min_volume_ml <= 0:
        return as_mask(tumor).astype(np.uint8)
    # A lesion of exactly min_volume_ml is kept; the epsilon absorbs float error in the ratio.
    min_voxels = max(int(math.ceil(min_volume_ml / voxel_volume_ml - 1e-9)), 1)
    return remove_small_components(tumor, min_voxels)


def close_lesions(tumor: np.ndarray, probability: np.ndarray, spacing_kji: Sequence[float], radius_mm: float,
                  floor: float) -> np.ndarray:
    """Complete lesions the models drew in fragments (uint8 0/1).

    On a large mildly hypodense lesion the members draw its darker patches, not its edge: a
    cluster of pieces with sub-threshold probability between them. A morphological closing of
    ``radius_mm`` (by physical distance) and 3-D hole filling join such pieces, and only voxels
    with at least ``floor`` ensemble probability are added: gaps the models see as parenchyma
    (two separate metastases a few millimetres apart) stay open. Drawn voxels are never removed."""
    tumor, probability = as_mask(tumor), np.asarray(probability)
    _check_same_shape(tumor, probability, "tumor mask and probability")
    if radius_mm < 0:
        raise ValueError(f"radius_mm must be >= 0, got {radius_mm}")
    result = tumor.astype(np.uint8)
    if radius_mm == 0:
        return result
    # lesions more than twice the radius apart cannot join: each group is closed in its own box
    for box in _boxes_of_groups(tumor, margin_in_voxels(radius_mm, spacing_kji)):
        closed = _closing(tumor[box], spacing_kji, radius_mm)
        completed = fill_holes(closed | tumor[box]) > 0
        result[box] |= (completed & (probability[box] >= floor)).view(np.uint8)
    return result


def _boxes_of_groups(mask: np.ndarray, reach: Sequence[int]) -> List[Box]:
    """Boxes around groups of ``mask``'s 26-connected components: each component's bounding box
    grown by ``reach`` voxels per axis (clipped to the array), overlapping boxes merged until no
    two overlap. Components in different boxes lie more than ``2 * reach`` voxels apart."""
    labels, _ = ndimage.label(mask, structure=CONNECTIVITY_26)
    groups: List[list] = []  # pairwise non-overlapping
    for found in ndimage.find_objects(labels):
        box = [(max(s.start - r, 0), min(s.stop + r, n)) for s, r, n in zip(found, reach, mask.shape)]
        while True:  # absorb every group the box (grown by what it absorbed) overlaps
            hit = next((g for g in groups if all(lo < g_hi and g_lo < hi for (lo, hi), (g_lo, g_hi) in zip(box, g))),
                       None)
            if hit is None:
                break
            groups.remove(hit)
            box = [(min(lo, g_lo), max(hi, g_hi)) for (lo, hi), (g_lo, g_hi) in zip(box, hit)]
        groups.append(box)
    return [tuple(slice(lo, hi) for lo, hi in box) for box in groups]


def _closing(mask: np.ndarray, spacing_kji: Sequence[float], radius_mm: float,
             max_voxels: int = 6_000_000) -> np.ndarray:
    """Morphological closing (bool) of ``mask`` by a ball of ``radius_mm``, by physical distance,
    with background beyond the array. Computed in slabs along the first axis with a halo of twice
    the radius (a voxel's closing depends on the mask within that distance), so memory stays
    bounded on a liver-sized box of a full-resolution CT; the result is the same as in one go."""
    halo_in_plane = [m + 1 for m in margin_in_voxels(radius_mm, spacing_kji)][1:]
    halo_k = margin_in_voxels(2.0 * radius_mm, spacing_kji)[0] + 1
    plane = (mask.shape[1] + 2 * halo_in_plane[0]) * (mask.shape[2] + 2 * halo_in_plane[1])
    slab = max(2 * halo_k, max_voxels // plane - 2 * halo_k)  # at most half of each slab's work is halo
    closed = np.zeros(mask.shape, bool)
    for start in range(0, mask.shape[0], slab):
        stop = min(start + slab, mask.shape[0])
        lo, hi = max(start - halo_k, 0), min(stop + halo_k, mask.shape[0])
        # beyond the array (the pad) is background; beyond a slab, the halo carries the mask on
        pad = [(halo_k if lo == 0 else 0, halo_k if hi == mask.shape[0] else 0)] + [(h, h) for h in halo_in_plane]
        part = np.pad(mask[lo:hi], pad)
        grown = ndimage.distance_transform_edt(~part, sampling=spacing_kji) <= radius_mm
        part_closed = ndimage.distance_transform_edt(grown, sampling=spacing_kji) > radius_mm
        first = pad[0][0] + start - lo
        closed[start:stop] = part_closed[first:first + stop - start, halo_in_plane[0]:-halo_in_plane[0],
                                         halo_in_plane[1]:-halo_in_plane[1]]
    return closed


def compose_labelmap(liver: np.ndarray, tumor: np.ndarray) -> np.ndarray:
    """uint8 labelmap: TUMOR_LABEL where tumor, else LIVER_LABEL where liver, else background."""
    liver, tumor = np.asarray(liver), np.asarray(tumor)
    _check_same_shape(liver, tumor, "liver and tumor masks")
    labelmap = np.full(liver.shape, BACKGROUND_LABEL, np.uint8)
    np.copyto(labelmap, LIVER_LABEL, where=liver.astype(bool, copy=False))
    np.copyto(labelmap, TUMOR_LABEL, where=tumor.astype(bool, copy=False))
    return labelmap
