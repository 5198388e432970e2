"""One-click corrections of a tumor mask: add the lesion under a clicked point, or remove the
tumor component under it.

``add_lesion`` runs the tumor ensemble (the registry's default tumor model, its members loaded
once by :class:`LesionEditor`) on a cube centred on the click, sized to one sliding window of
the members (96 mm for the embedded models). The model sees a lesion at the click when a voxel
within a few mm of it is at least ``seed_threshold`` probable (lower than the pipeline's 0.5:
the click is the evidence that a lesion is there). The lesion then grows from the click over
the connected voxels of the probability, and its edge is the probability level (0.05-0.95)
whose boundary lies at half the HU contrast between the lesion's core and the liver around it:
the half-maximum edge of a partial-volume-blurred lesion, where a fixed level would cut small
lesions too wide and faint ones too narrow. A lesion cut by the cube's faces is run again on a
larger cube. When the ensemble sees nothing near the click, the lesion is grown from the click
on the CT itself: smoothed HU within the mean +- k standard deviations of the click's
neighbourhood, never across the midpoint to the liver around it, bounded by a maximum radius,
then refined by the project's active contour
(:func:`~LiverTumorSegLib.postprocess.active_contour.refine_lesions`). The same lesion grown on
the CT replaces the model's when the ensemble is unsure near the click (below the pipeline's 0.5)
and that lesion passes its checks and holds at least half of the model's: an unsure ensemble may
draw only part of a lesion (a large bright arterial one). A region that runs on into
the liver (a lesion as dense as the liver near it, a liver darker in one part) is refused with a
message rather than painted: a wrong 100 mL lesion is worse than none.

Either way the lesion lies in the liver's tumor search region
(:func:`~LiverTumorSegLib.stages.liver.tumor_search_region`: the liver, tumors included, with
its in-slice holes filled), exactly the region the pipeline allows its lesions. The lesion's
voxels become tumor (and so part of the liver, which includes its tumors); no other voxel
changes. ``remove_lesion`` turns the 26-connected tumor component under the click into liver.

Points are RAS millimetres, as 3D Slicer shows them; images are SimpleITK images (LPS), the
labelmap the 0/1/2 uint8 image on the CT's grid. The inputs are never modified.
"""

from __future__ import annotations

import logging
import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np
import SimpleITK as sitk
from scipy import ndimage

from . import BACKGROUND_LABEL, LIVER_LABEL, TUMOR_LABEL
from .errors import LiverTumorSegError
from .geometry import Geometry, lps_to_ras
from .measure import Lesion, measure_masks
from .postprocess.active_contour import refine_lesions
from .postprocess.components import CONNECTIVITY_26, bounding_box, in_plane_structure
from .settings_schema import setting
from .stages.crop import Box, crop_image

log = logging.getLogger(__name__)

CONNECTIVITY_6 = ndimage.generate_binary_structure(3, 1)

# Model path
SEED_THRESHOLD = 0.3  # the model sees a lesion at the click when a voxel near it is at least this probable
PROBABILITY_LEVELS = np.round(np.arange(0.05, 0.951, 0.05), 2)  # candidate lesion edges
HALF_CONTRAST_RING_MM = (3.0, 12.0)
CORE_FRACTION = 0.25
CONFIDENT_LEVEL = 0.5  # a lesion whose voxels this probable reach the cube's faces is run on a larger cube  # the liver around a lesion: this far outside its largest candidate
SEED_RADIUS_MM = 4.0  # the lesion starts from the most probable voxel this close to the click
MAX_PATCH_MM = 200.0  # a lesion cut by the cube is run again on a cube up to this size
PATCH_GROWTH = 1.6
# HU fallback
HU_SMOOTH_MM = 1.0  # Gaussian sigma of the HU smoothing
HU_NEIGHBOURHOOD_MM = 4.0  # radius of the click's neighbourhood whose HU statistics define the lesion
HU_K = 2.5  # the lesion's HU range: neighbourhood mean +- HU_K standard deviations ...
HU_MIN_HALF_WIDTH = 15.0  # ... but at least this many HU either side
HU_MIN_CONTRAST = 8.0  # the neighbourhood must differ from the surrounding liver by at least this (HU)
HU_MAX_RADIUS_MM = 50.0
HU_LIVER_SHELLS_MM = (12.0, 27.0, 42.0)  # the liver around the click: the nearest of these shells ...
HU_SHELL_WIDTH_MM = 15.0  # ... (this wide) that differs from the click
HU_LEAK_BORDER = 0.2  # a region on this share of its bounding sphere's surface leaked ...
HU_LEAK_SHELL = 0.5  # ... and so did one over this share of the liver it was told apart from
HU_SHELL_CONTRAST = 15.0  # a shell this much denser or lighter than the click is the liver around it
HU_FILLED_SHELL = 0.6  # a nearer shell as dense as the click must be this much lesion (a large lesion)
HU_LEAK_CONTRAST = 0.5  # a grown region keeps at least this share of the click's contrast to the liver
ACTIVE_CONTOUR_ITERATIONS = 8
AIR_HU = -500.0  # below this a click is in air (outside the body, lung, bowel gas)
# Below the pipeline's tumour threshold near the click the ensemble is unsure of the lesion (it
# would not have drawn it itself) and may draw only a part, as on large bright arterial lesions; then
# the lesion grown on the CT is taken when it passes its own checks (no leak into the liver) and is
# the same lesion: it holds at least half of the model's.
UNSURE_BELOW = float(setting("tumor_threshold").default)
HOLDS_MODEL_LESION = 0.5


@dataclass
class LesionEdit:
    """What an edit did. ``labelmap`` is the new 0/1/2 labelmap (a new image; the input is
    untouched); ``changed`` is True on the voxels whose label changed, inside ``box`` (array
    index slices (k, j, i)), so a front end can apply the edit as an undoable region change;
    ``lesion`` measures the whole lesion added (with any tumor it joined) or removed (its
    ``id`` is 0: ids are given by the full lesion table)."""

    action: str  # "add" | "remove"
    labelmap: sitk.Image
    voxels_changed: int
    box: Box
    changed: np.ndarray
    lesion: Lesion
    method: str  # "model" | "hu_region" (add), "component" (remove)
    point_ras_mm: Tuple[float, float, float]
    seconds: float
    max_probability_near_click: Optional[float] = None

    @property
    def volume_changed_ml(self) -> float:
        return self.voxels_changed * Geometry.of(self.labelmap).voxel_volume_ml

    def summary(self) -> dict:
        """A JSON-ready description (no arrays)."""
        return {"action": self.action, "method": self.method, "point_ras_mm": list(self.point_ras_mm),
                "voxels_changed": int(self.voxels_changed), "volume_changed_ml": round(self.volume_changed_ml, 4),
                "lesion": {"volume_ml": round(self.lesion.volume_ml, 4),
                           "longest_axial_diameter_mm": round(self.lesion.longest_axial_diameter_mm, 2),
                           "centroid_ras_mm": [round(float(c), 2) for c in self.lesion.centroid_ras_mm],
                           "mean_hu": None if self.lesion.mean_hu is None else round(self.lesion.mean_hu, 1)},
                "max_probability_near_click": (None if self.max_probability_near_click is None
                                               else round(float(self.max_probability_near_click), 3)),
                "seconds": round(self.seconds, 3)}


# ---------------------------------------------------------------------------------------------
# Inputs and the click
# ---------------------------------------------------------------------------------------------

def _format_point(point_ras: Sequence[float]) -> str:
    return "R,A,S = (" + ", ".join(f"{float(v):.1f}" for v in point_ras) + ") mm"


def _checked_labels(ct: sitk.Image, labelmap: sitk.Image) -> Tuple[Geometry, np.ndarray]:
    """The labelmap as a uint8 (k, j, i) copy, after checking it is a 0/1/2 labelmap on the CT's grid."""
    for name, image in (("CT", ct), ("labelmap", labelmap)):
        if not isinstance(image, sitk.Image):
            raise LiverTumorSegError(f"the {name} must be a SimpleITK image, got {type(image).__name__}")
        if image.GetDimension() != 3 or image.GetNumberOfComponentsPerPixel() != 1:
            raise LiverTumorSegError(f"the {name} must be a 3-D single-channel image")
    geometry = Geometry.of(ct)
    if not geometry.matches(Geometry.of(labelmap)):
        raise LiverTumorSegError("the labelmap is not on the CT's grid (size, spacing, origin or direction differ); "
                                 "give the labelmap segmented from this CT")
    labels = sitk.GetArrayFromImage(labelmap)
    if labels.dtype != np.uint8:
        if np.issubdtype(labels.dtype, np.floating) and not np.all(np.isfinite(labels)):
            raise LiverTumorSegError("the labelmap has NaN or infinite values; give the 0/1/2 labelmap")
        if labels.size and (labels.min() < 0 or labels.max() > TUMOR_LABEL or np.any(labels != np.round(labels))):
            raise LiverTumorSegError("the labelmap holds values other than 0 (background), 1 (liver) and 2 (tumor)")
        labels = labels.astype(np.uint8)
    elif labels.size and labels.max() > TUMOR_LABEL:
        raise LiverTumorSegError("the labelmap holds values other than 0 (background), 1 (liver) and 2 (tumor)")
    return geometry, labels


def ras_to_index(image: sitk.Image, point_ras: Sequence[float]) -> Tuple[int, int, int]:
    """The (k, j, i) array index of the voxel holding the RAS point; a clear error outside the image."""
    point = np.asarray(point_ras, dtype=np.float64).ravel()
    if point.shape != (3,) or not np.all(np.isfinite(point)):
        raise LiverTumorSegError(f"a point needs three finite RAS coordinates in mm, got {list(point_ras)}")
    lps = lps_to_ras(point)  # the same two sign flips map RAS to LPS
    ijk = np.rint(image.TransformPhysicalPointToContinuousIndex(tuple(float(v) for v in lps))).astype(int)
    size = np.asarray(image.GetSize())
    if np.any(ijk < 0) or np.any(ijk >= size):
        raise LiverTumorSegError(f"the point {_format_point(point)} is outside the image (voxel index "
                                 f"{tuple(int(v) for v in ijk)} of a {size[0]}x{size[1]}x{size[2]} volume); "
                                 "click inside the CT")
    return int(ijk[2]), int(ijk[1]), int(ijk[0])


def _cube(center_kji: Sequence[int], side_mm: float, spacing_kji: Sequence[float],
          shape: Sequence[int]) -> Box:
    """A box of at most ``side_mm`` per axis around ``center_kji``, shifted (not cut) to stay
    inside the array where the array is large enough."""
    box = []
    for c, s, n in zip(center_kji, spacing_kji, shape):
        width = max(1, min(int(n), int(math.floor(side_mm / float(s) + 1e-6))))
        start = min(max(int(c) - width // 2, 0), int(n) - width)
        box.append(slice(start, start + width))
    return tuple(box)  # type: ignore[return-value]


def _ball(shape: Sequence[int], center: Sequence[int], spacing_kji: Sequence[float], radius_mm: float) -> np.ndarray:
    """Voxels of an array of ``shape`` within ``radius_mm`` of voxel ``center`` (at least the centre)."""
    grids = np.ogrid[tuple(slice(0, n) for n in shape)]
    d2 = sum(((g - c) * float(s)) ** 2 for g, c, s in zip(grids, center, spacing_kji))
    return np.asarray(d2 <= radius_mm ** 2)


def _search_region(labels: np.ndarray, box: Box, axial_axis: int) -> np.ndarray:
    """The pipeline's tumor search region (:func:`~LiverTumorSegLib.stages.liver.tumor_search_region`:
    the liver with its tumors, in-slice holes filled) inside ``box``, computed on the box's slices
    only. Filling in-slice holes needs whole slices, so the box's slices keep their full in-plane
    extent; a hole enclosed in 3-D is enclosed in each of its slices too, so the per-slice fill
    alone gives the same voxels as on the whole volume (a test checks it) at half the cost."""
    slab = [slice(None)] * 3
    slab[axial_axis] = box[axial_axis]
    liver = labels[tuple(slab)] != BACKGROUND_LABEL
    region = np.zeros(liver.shape, bool)
    extent = bounding_box(liver)
    if extent is not None:
        region[extent] = ndimage.binary_fill_holes(liver[extent], structure=in_plane_structure(axial_axis))
    inner = list(box)
    inner[axial_axis] = slice(None)
    return region[tuple(inner)]


def _touches_inner_faces(mask: np.ndarray, box: Box, shape: Sequence[int]) -> bool:
    """True when ``mask`` (the box's shape) reaches a face of ``box`` that is not the array's border."""
    for axis, (s, n) in enumerate(zip(box, shape)):
        if s.start > 0 and np.take(mask, 0, axis=axis).any():
            return True
        if s.stop < n and np.take(mask, mask.shape[axis] - 1, axis=axis).any():
            return True
    return False


def _component_at(mask_full: np.ndarray, click: Tuple[int, int, int], spacing_kji: Sequence[float],
                  start_mm: float = 80.0) -> Tuple[Box, np.ndarray]:
    """The 26-connected component of ``mask_full`` holding ``click`` (which must be set), labelled in
    a box around the click that grows until the component lies inside it: ``(box, component)``."""
    side = start_mm
    shape = mask_full.shape
    while True:
        box = _cube(click, side, spacing_kji, shape)
        labels, _ = ndimage.label(mask_full[box], structure=CONNECTIVITY_26)
        local = tuple(c - s.start for c, s in zip(click, box))
        component = labels == labels[local]
        whole = all(s.start == 0 and s.stop == n for s, n in zip(box, shape))
        if whole or not _touches_inner_faces(component, box, shape):
            return box, component
        side *= 2.0


def _lesion_measurement(component: np.ndarray, box: Box, geometry: Geometry,
                        ct_hu: Optional[np.ndarray]) -> Lesion:
    """The measurements of one lesion given as a mask inside ``box`` (id 0)."""
    corner = np.array([s.start for s in box], dtype=np.float64)
    box_geometry = Geometry(tuple(int(n) for n in component.shape[::-1]), geometry.spacing,
                            tuple(float(v) for v in geometry.index_to_lps(corner)), geometry.direction)
    measured = measure_masks(component, component, box_geometry, ct_hu)
    lesion = measured.lesions[0]
    lesion.id = 0
    return lesion


def _new_labelmap(labels: np.ndarray, like: sitk.Image) -> sitk.Image:
    image = sitk.GetImageFromArray(labels)
    image.CopyInformation(like)
    return image


# ---------------------------------------------------------------------------------------------
# Growing a lesion from the click
# ---------------------------------------------------------------------------------------------

def _largest_component(mask: np.ndarray) -> np.ndarray:
    labels, count = ndimage.label(mask, structure=CONNECTIVITY_6)
    if count <= 1:
        return labels > 0
    return labels == int(np.argmax(np.bincount(labels.ravel())[1:])) + 1


def _component_holding(mask: np.ndarray, seed: Sequence[int]) -> np.ndarray:
    labels, _ = ndimage.label(mask, structure=CONNECTIVITY_6)
    label = labels[tuple(seed)]
    return labels == label if label else np.zeros(mask.shape, bool)


def _smoothed(hu: np.ndarray, spacing_kji: Sequence[float]) -> np.ndarray:
    sigma = tuple(HU_SMOOTH_MM / float(s) for s in spacing_kji)
    return ndimage.gaussian_filter(np.asarray(hu, dtype=np.float32), sigma=sigma, mode="nearest")


def nested_lesions(probability: np.ndarray, allowed: np.ndarray, click: Sequence[int],
                   spacing_kji: Sequence[float], seed_threshold: float = SEED_THRESHOLD,
                   seed_radius_mm: float = SEED_RADIUS_MM) -> Tuple[Dict[float, np.ndarray], float]:
    """The lesion at ``click`` as the probability draws it at each of ``PROBABILITY_LEVELS``:
    ``({level: mask}, the largest allowed probability within seed_radius_mm of the click)``; no
    masks when that probability is below ``seed_threshold`` (the model sees nothing there).

    The lesion is the 6-connected region of allowed voxels at least ``seed_threshold`` probable
    that holds the click (or, when the click's voxel is below it, the most probable voxel near
    the click). Lower levels take the region of their threshold that holds it; higher levels the
    largest region of their threshold inside it (its core). Enclosed holes are filled (a necrotic
    core is lesion). Masks hold for ``probability``'s whole array."""
    near = _ball(probability.shape, click, spacing_kji, seed_radius_mm) & allowed
    near_prob = np.where(near, probability, -1.0)
    best = float(near_prob.max()) if near.any() else 0.0
    if best < seed_threshold:
        return {}, max(best, 0.0)
    candidates = (probability >= seed_threshold) & allowed
    seed = tuple(click) if candidates[tuple(click)] else np.unravel_index(int(np.argmax(near_prob)), near_prob.shape)
    lowest = float(PROBABILITY_LEVELS[0])
    widest = _component_holding((probability >= lowest) & allowed, seed)
    # every level's lesion lies inside the lowest level's: work in its box
    box = bounding_box(widest)
    assert box is not None
    probability, allowed = probability[box], allowed[box]
    seed = tuple(int(c) - s.start for c, s in zip(seed, box))
    region = _component_holding((probability >= seed_threshold) & allowed, seed)
    masks: Dict[float, np.ndarray] = {}
    for level in PROBABILITY_LEVELS:
        level = float(level)
        if level <= seed_threshold:
            mask = widest[box] if level == lowest else _component_holding((probability >= level) & allowed, seed)
        else:
            core = (probability >= level) & region
            if not core.any():
                break
            mask = _largest_component(core)
        full = np.zeros(near.shape, bool)
        own = bounding_box(mask)
        if own is not None:
            inner = tuple(slice(b.start + o.start, b.start + o.stop) for b, o in zip(box, own))
            full[inner] = ndimage.binary_fill_holes(mask[own]) & allowed[own]
        masks[level] = full
    return masks, best


def half_contrast_level(masks: Dict[float, np.ndarray], hu: np.ndarray, allowed: np.ndarray, liver: np.ndarray,
                        spacing_kji: Sequence[float], seed_threshold: float = SEED_THRESHOLD) -> Optional[float]:
    """The level whose lesion boundary lies at half the contrast between the lesion and the liver
    around it (the half-maximum edge of a partial-volume-blurred lesion): the lesion's HU is the
    median of its most probable core (the highest level holding ``CORE_FRACTION`` of its mask
    at ``seed_threshold``), the liver's the median of ``liver`` voxels
    ``HALF_CONTRAST_RING_MM`` outside its largest mask; the boundary's HU is the mean of the
    voxels just inside and just outside it. None when the lesion and the liver do not differ by
    ``HU_MIN_CONTRAST`` or no liver lies around it."""
    smooth = _smoothed(hu, spacing_kji)
    largest = masks[min(masks)]
    # the lesion's core: its most probable part that still holds a quarter of the lesion as the
    # model detects it (its mask at the seed threshold: the lowest levels are mostly the faint rim
    # around a weakly seen lesion, whose HU would pull the lesion's towards the liver's); one
    # voxel's HU would be noise
    detected = [level for level in masks if level <= seed_threshold + 1e-9]
    reference = masks[max(detected)] if detected else largest
    enough = CORE_FRACTION * np.count_nonzero(reference)
    core = masks[max(level for level, m in masks.items() if np.count_nonzero(m) >= enough)]
    lesion_hu = float(np.median(smooth[core]))
    distance = ndimage.distance_transform_edt(~largest, sampling=tuple(float(s) for s in spacing_kji))
    inner_mm, outer_mm = HALF_CONTRAST_RING_MM
    ring = (distance > inner_mm) & (distance <= outer_mm) & liver & allowed
    if np.count_nonzero(ring) < 10:
        return None
    liver_hu = float(np.median(smooth[ring]))
    if abs(lesion_hu - liver_hu) < HU_MIN_CONTRAST:
        return None
    half = (lesion_hu + liver_hu) / 2.0
    best: Optional[Tuple[float, float]] = None
    for level, mask in masks.items():
        near = bounding_box(mask, (1, 1, 1))  # the boundary's neighbourhood: far cheaper than the box
        if near is None:
            continue
        mask_near = mask[near]
        inside = mask_near & ~ndimage.binary_erosion(mask_near, structure=CONNECTIVITY_6)
        outside = ndimage.binary_dilation(mask_near, structure=CONNECTIVITY_6) & ~mask_near & allowed[near]
        if not inside.any() or not outside.any():
            continue
        smooth_near = smooth[near]
        miss = abs((float(smooth_near[inside].mean()) + float(smooth_near[outside].mean())) / 2.0 - half)
        if best is None or miss < best[0]:
            best = (miss, level)
    return None if best is None else best[1]


def grow_from_probability(probability: np.ndarray, allowed: np.ndarray, liver: np.ndarray, hu: np.ndarray,
                          click: Sequence[int], spacing_kji: Sequence[float],
                          seed_threshold: float = SEED_THRESHOLD
                          ) -> Tuple[Optional[np.ndarray], float, Optional[np.ndarray]]:
    """The lesion the probability shows at ``click`` (see :func:`nested_lesions`), its edge at the
    level :func:`half_contrast_level` picks, else at ``seed_threshold``.
    ``(mask or None when the model sees nothing at the click, the largest probability near it, the
    lesion's confident part: its mask at level 0.5 or above)``. The work is done in the box of the
    largest mask grown by the liver ring's width."""
    masks, best = nested_lesions(probability, allowed, click, spacing_kji, seed_threshold)
    if not masks:
        return None, best, None
    margin = [int(math.ceil(HALF_CONTRAST_RING_MM[1] / float(s))) + 1 for s in spacing_kji]
    work = bounding_box(masks[min(masks)], margin)
    assert work is not None
    level = half_contrast_level({k: m[work] for k, m in masks.items()}, hu[work], allowed[work], liver[work],
                                spacing_kji, seed_threshold)
    if level is None:
        level = max(k for k in masks if k <= max(seed_threshold, min(masks)))
    confident = masks.get(max(level, CONFIDENT_LEVEL), masks[level])
    return masks[level], best, confident


def _ring(mask: np.ndarray, allowed: np.ndarray, spacing_kji: Sequence[float],
          inner_mm: float, outer_mm: float) -> np.ndarray:
    """Allowed voxels between ``inner_mm`` and ``outer_mm`` outside ``mask``."""
    distance = ndimage.distance_transform_edt(~mask, sampling=tuple(float(s) for s in spacing_kji))
    return (distance > inner_mm) & (distance <= outer_mm) & allowed


def grow_from_hu(hu: np.ndarray, allowed: np.ndarray, liver_hu: float, click: Sequence[int],
                 spacing_kji: Sequence[float], max_radius_mm: float = HU_MAX_RADIUS_MM,
                 active_contour_iterations: int = ACTIVE_CONTOUR_ITERATIONS) -> np.ndarray:
    """The lesion at ``click`` from the CT alone: smoothed HU within the click neighbourhood's mean
    +- ``HU_K`` standard deviations (at least ``HU_MIN_HALF_WIDTH``), on the lesion's side of the
    midpoint to the liver around it (the median of the nearest of ``HU_LIVER_SHELLS_MM`` around the
    click that differs from it by ``HU_SHELL_CONTRAST``, since a large lesion fills the nearer ones;
    else ``liver_hu``, the whole liver's median), 6-connected to the click, within ``max_radius_mm``, opened once, holes
    filled, then refined by the active contour. Refused when the click's neighbourhood is as dense
    as the liver, or when the region leaked into the liver: it covers much of its bounding sphere's
    surface or of the shell whose liver it was told apart from, it does not fill the nearer shells
    it took for lesion, or its HU no longer stands out from the liver around it."""
    spacing = np.asarray(spacing_kji, dtype=np.float64)
    smooth = _smoothed(hu, spacing)
    # the neighbourhood: at least the click's face neighbours, whatever the spacing
    neighbourhood = _ball(hu.shape, click, spacing, max(HU_NEIGHBOURHOOD_MM, float(spacing.max()))) & allowed
    values = smooth[neighbourhood]
    mean, sd = float(values.mean()), float(values.std())
    # the liver around the lesion: the nearest shell around the click that differs from it (a
    # large lesion fills the nearer ones), else the whole liver's median
    distance_mm = np.sqrt(sum(((g - c) * float(sp)) ** 2 for g, c, sp in
                              zip(np.ogrid[tuple(slice(0, n) for n in hu.shape)], click, spacing)))
    reference, skipped = None, []
    for inner_mm in HU_LIVER_SHELLS_MM:
        shell = (distance_mm > inner_mm) & (distance_mm <= inner_mm + HU_SHELL_WIDTH_MM) & allowed
        if np.count_nonzero(shell) < 10:
            continue
        if abs(float(np.median(smooth[shell])) - mean) >= HU_SHELL_CONTRAST:
            liver_hu, reference = float(np.median(smooth[shell])), shell
            break
        skipped.append(shell)  # as dense as the click: the lesion must fill it (checked below)
    if abs(mean - liver_hu) < HU_MIN_CONTRAST:
        raise LiverTumorSegError(f"the tumor model sees no lesion at the point, and its density ({mean:.0f} HU) is "
                                 f"that of the liver ({liver_hu:.0f} HU); click inside the lesion, or draw it in "
                                 "Segment Editor")
    half = max(HU_K * sd, HU_MIN_HALF_WIDTH)
    low, high = mean - half, mean + half
    midpoint = (mean + liver_hu) / 2.0
    if mean < liver_hu:
        high = min(high, midpoint)
    else:
        low = max(low, midpoint)
    within = _ball(hu.shape, click, spacing, max_radius_mm) & allowed
    candidates = (smooth >= low) & (smooth <= high) & within

    def at_click(mask: np.ndarray) -> Optional[np.ndarray]:
        labels, count = ndimage.label(mask, structure=CONNECTIVITY_6)
        if count == 0:
            return None
        touching = labels[neighbourhood & mask]
        if labels[tuple(click)]:
            return labels == labels[tuple(click)]
        if touching.size == 0:
            return None
        return labels == np.bincount(touching).argmax()

    region = at_click(candidates)
    if region is None:
        raise LiverTumorSegError("the tumor model sees no lesion at the point and no region of like density grows "
                                 "from it; click inside the lesion, or draw it in Segment Editor")
    opened = at_click(ndimage.binary_opening(region, structure=CONNECTIVITY_6))  # cut thin leaks
    if opened is not None:
        region = opened
    region = ndimage.binary_fill_holes(region) & allowed
    # a lesion stays inside its bounding sphere and stands out from the liver around it; a region
    # that leaked into the liver does neither
    border = within & (distance_mm > max_radius_mm - 1.5 * float(spacing.max()))
    if (np.count_nonzero(region & border) > HU_LEAK_BORDER * np.count_nonzero(border)
            or (reference is not None and np.count_nonzero(region & reference) > HU_LEAK_SHELL
                * np.count_nonzero(reference))
            or any(np.count_nonzero(region & shell) < HU_FILLED_SHELL * np.count_nonzero(shell)
                   for shell in skipped)):
        raise LiverTumorSegError("the tumor model sees no lesion at the point, and the region of its density "
                                 f"spreads into the liver around it (no distinct lesion "
                                 "there); click inside the lesion, or draw it in Segment Editor")
    around = _ring(region, allowed, spacing, *HALF_CONTRAST_RING_MM)
    if np.count_nonzero(around) >= 10:
        around_hu = float(np.median(smooth[around]))
        if abs(float(np.median(smooth[region])) - around_hu) < HU_LEAK_CONTRAST * abs(mean - liver_hu):
            raise LiverTumorSegError("the tumor model sees no lesion at the point, and the region of its density "
                                     "spreads into the liver (no distinct lesion there); click inside the lesion, "
                                     "or draw it in Segment Editor")
    if active_contour_iterations > 0:
        refined = refine_lesions(hu, region, allowed, tuple(spacing), iterations=active_contour_iterations)
        refined = refined.astype(bool) & allowed
        kept = at_click(refined)
        if kept is not None:
            region = kept
    return region


# ---------------------------------------------------------------------------------------------
# The editor
# ---------------------------------------------------------------------------------------------

class LesionEditor:
    """Adds and removes lesions at clicked points; loads the tumor ensemble's members once.

    ``tumor_model``: a tumor model or ensemble name (default: the registry's default tumor model);
    ``registry``: where to find it (default: the standard search order); ``device``: cpu, cuda or
    auto; ``seed_threshold``: the probability near the click at which the model is taken to see a lesion there;
    ``use_model=False``: no tumor model (no PyTorch needed), every lesion is grown from the CT around the
    click (the fallback of the model path)."""

    def __init__(self, tumor_model: Optional[str] = None, registry=None, device: str = "cpu",
                 seed_threshold: float = SEED_THRESHOLD, max_patch_mm: float = MAX_PATCH_MM,
                 patch_mm: Optional[float] = None, use_model: bool = True):
        if not 0.0 < seed_threshold < 1.0:
            raise LiverTumorSegError(f"seed_threshold must lie between 0 and 1, got {seed_threshold}")
        self.seed_threshold = float(seed_threshold)
        if not use_model:
            self.registry, self.tumor_card, self.members, self.weights, self.device = None, None, [], [], None
            self.patch_mm = float(patch_mm) if patch_mm else 0.0
            self.max_patch_mm = max(float(max_patch_mm), self.patch_mm)
            return
        from .inference import LoadedModel, resolve_device
        from .models.registry import DEFAULT_TUMOR_MODEL, ModelRegistry

        self.registry = registry or ModelRegistry.default()
        card = self.registry.resolve(tumor_model or DEFAULT_TUMOR_MODEL, task="tumor")
        self.tumor_card = card
        self.members = [LoadedModel.load(self.registry.with_weights(c)) for c in self.registry.ensemble_members(card)]
        self.weights: List[float] = (card.normalized_weights() if hasattr(card, "normalized_weights") else [1.0])
        self.device = resolve_device(device)
        # one sliding window of the largest member: one network pass per member for a lesion that fits
        window_mm = max(min(float(p) * float(s) for p, s in zip(m.card.inference_patch_size_kji,
                                                                 m.card.spacing_mm[::-1]))
                        for m in self.members)
        self.patch_mm = float(patch_mm) if patch_mm else window_mm
        self.max_patch_mm = max(float(max_patch_mm), self.patch_mm)

    @property
    def uses_model(self) -> bool:
        return bool(self.members)

    def model_summaries(self) -> List[dict]:
        if self.tumor_card is None:
            return []
        summaries = [self.tumor_card.summary()]
        if self.tumor_card.kind == "ensemble":
            summaries += [m.card.summary() for m in self.members]
        return summaries

    def probability(self, ct_crop: sitk.Image, region: np.ndarray) -> np.ndarray:
        """The ensemble's tumor probability on ``ct_crop``'s grid (float32, (k, j, i)); ``region``
        (the tumor search region on that grid) is where members that take the parenchyma map
        get it computed."""
        from .stages.parenchyma import hypodensity_channel
        from .stages.tumor import ensemble_probability, needs_hypodensity

        hypodensity = None
        if needs_hypodensity(self.members):
            hypodensity = sitk.GetImageFromArray(hypodensity_channel(sitk.GetArrayViewFromImage(ct_crop), region,
                                                                     ct_crop.GetSpacing()[::-1]))
            hypodensity.CopyInformation(ct_crop)
        probability, _ = ensemble_probability(ct_crop, self.members, self.weights, self.device, overlap=0.25,
                                              hypodensity=hypodensity)
        return probability

    def add(self, ct: sitk.Image, labelmap: sitk.Image, point_ras: Sequence[float]) -> LesionEdit:
        """Segment the lesion at ``point_ras`` and add it to the tumor label (see the module doc)."""
        start = time.perf_counter()
        geometry, labels = _checked_labels(ct, labelmap)
        click = ras_to_index(ct, point_ras)
        spacing_kji = geometry.spacing[::-1]
        axial = geometry.axial_array_axis()
        if not np.any(labels):
            raise LiverTumorSegError("the labelmap has no liver; segment the CT first (livertumorseg segment)")
        side = self.patch_mm
        found = None
        best: Optional[float] = None  # the model's largest probability near the click (None: no model)
        while self.uses_model:
            box = _cube(click, side, spacing_kji, labels.shape)
            local = tuple(c - s.start for c, s in zip(click, box))
            allowed = _search_region(labels, box, axial)
            if not allowed[local]:
                raise _outside_liver(ct, click, point_ras)
            ct_crop = crop_image(ct, box)
            probability = self.probability(ct_crop, allowed)
            hu = sitk.GetArrayViewFromImage(ct_crop)
            region, best, confident = grow_from_probability(probability, allowed, labels[box] == LIVER_LABEL, hu,
                                                            local, spacing_kji, self.seed_threshold)
            if region is None:  # on a larger cube too: keep what the smaller one found
                break
            found = (box, region, best)
            # a lesion cut by the cube reaches its faces with its confident part (a faint tail along
            # the liver does not make it larger): look wider
            if side >= self.max_patch_mm or not _touches_inner_faces(confident, box, labels.shape):
                break
            side = min(side * PATCH_GROWTH, self.max_patch_mm)
        method = "model"
        if found is not None:
            box, region, best = found
            if best is not None and best < UNSURE_BELOW:
                density = self._density_lesion(ct, labels, click, point_ras, axial, spacing_kji)
                if density is not None and _holds(density, (box, region), HOLDS_MODEL_LESION):
                    (box, region), method = density, "hu_region"
        else:
            method = "hu_region"
            box, region = self._density_lesion(ct, labels, click, point_ras, axial, spacing_kji, refusals=True)
        new_labels = labels
        changed = region & (labels[box] != TUMOR_LABEL)
        new_labels[box][changed] = TUMOR_LABEL  # labels is this function's own copy
        seed = click if new_labels[click] == TUMOR_LABEL else _first_voxel(region, box)
        component_box, component = _component_at(new_labels == TUMOR_LABEL, seed, spacing_kji)
        lesion = _lesion_measurement(component, component_box, geometry,
                                     sitk.GetArrayViewFromImage(ct)[component_box])
        return LesionEdit(action="add", labelmap=_new_labelmap(new_labels, labelmap),
                          voxels_changed=int(np.count_nonzero(changed)), box=box, changed=changed, lesion=lesion,
                          method=method, point_ras_mm=tuple(float(v) for v in point_ras),
                          seconds=time.perf_counter() - start, max_probability_near_click=best)

    def _density_lesion(self, ct: sitk.Image, labels: np.ndarray, click: Tuple[int, int, int],
                        point_ras: Sequence[float], axial: int, spacing_kji: Sequence[float],
                        refusals: bool = False) -> Optional[Tuple[Box, np.ndarray]]:
        """``(box, region)`` of the lesion grown on the CT at the click (:func:`grow_from_hu`); a
        refusal raises its error with ``refusals``, else gives None."""
        side = max(self.patch_mm, 2 * HU_MAX_RADIUS_MM + 2 * max(spacing_kji))
        box = _cube(click, side, spacing_kji, labels.shape)
        local = tuple(c - s.start for c, s in zip(click, box))
        allowed = _search_region(labels, box, axial)
        if not allowed[local]:
            raise _outside_liver(ct, click, point_ras)
        hu = sitk.GetArrayFromImage(crop_image(ct, box))  # a copy: a view would outlive its image
        try:
            return box, grow_from_hu(hu, allowed, _liver_median_hu(ct, labels), local, spacing_kji)
        except LiverTumorSegError:
            if refusals:
                raise
            return None

    def remove(self, ct: sitk.Image, labelmap: sitk.Image, point_ras: Sequence[float]) -> LesionEdit:
        return remove_lesion(ct, labelmap, point_ras)


def _outside_liver(ct: sitk.Image, click: Tuple[int, int, int], point_ras: Sequence[float]) -> LiverTumorSegError:
    hu = float(ct.GetPixel(*(int(v) for v in click[::-1])))
    where = "outside the body (air)" if hu < AIR_HU else "outside the liver"
    return LiverTumorSegError(f"the point {_format_point(point_ras)} is on background {where}, {hu:.0f} HU; "
                              "click inside the liver, on the lesion to add")


def _liver_median_hu(ct: sitk.Image, labels: np.ndarray) -> float:
    """The median HU of the liver (label 1; every second voxel per axis is plenty): the density a
    lesion is told apart from. The whole liver, not the click's surroundings, which a large lesion
    may fill."""
    every_other = (slice(None, None, 2),) * 3
    liver = labels[every_other] == LIVER_LABEL
    if not liver.any():
        liver = labels == LIVER_LABEL
        every_other = (slice(None),) * 3
    if not liver.any():
        raise LiverTumorSegError("the labelmap has no liver voxels (label 1) to compare the lesion's density with")
    return float(np.median(sitk.GetArrayViewFromImage(ct)[every_other][liver]))


def _holds(outer: Tuple[Box, np.ndarray], inner: Tuple[Box, np.ndarray], share: float) -> bool:
    """Whether the region ``outer`` (box, mask) holds at least ``share`` of the region ``inner``'s
    voxels (the boxes are slices of one array)."""
    (outer_box, outer_mask), (inner_box, inner_mask) = outer, inner
    points = np.argwhere(inner_mask) + np.array([s.start for s in inner_box])
    if len(points) == 0:
        return True
    local = points - np.array([s.start for s in outer_box])
    inside = np.all((local >= 0) & (local < np.array(outer_mask.shape)), axis=1)
    held = np.zeros(len(points), bool)
    held[inside] = outer_mask[tuple(local[inside].T)]
    return bool(held.mean() >= share)


def _first_voxel(region: np.ndarray, box: Box) -> Tuple[int, int, int]:
    local = np.argwhere(region)[0]
    return tuple(int(v) + s.start for v, s in zip(local, box))  # type: ignore[return-value]


def remove_lesion(ct: sitk.Image, labelmap: sitk.Image, point_ras: Sequence[float]) -> LesionEdit:
    """Turn the 26-connected tumor component under ``point_ras`` (RAS mm) into liver."""
    start = time.perf_counter()
    geometry, labels = _checked_labels(ct, labelmap)
    click = ras_to_index(ct, point_ras)
    label = int(labels[click])
    if label != TUMOR_LABEL:
        where = "on the liver" if label == LIVER_LABEL else "on background (outside the liver)"
        raise LiverTumorSegError(f"the point {_format_point(point_ras)} is {where}, not on a tumor: there is no "
                                 "lesion to remove there; click inside the lesion to remove")
    box, component = _component_at(labels == TUMOR_LABEL, click, geometry.spacing[::-1])
    lesion = _lesion_measurement(component, box, geometry, sitk.GetArrayViewFromImage(ct)[box])
    labels[box][component] = LIVER_LABEL  # labels is this function's own copy
    return LesionEdit(action="remove", labelmap=_new_labelmap(labels, labelmap),
                      voxels_changed=int(np.count_nonzero(component)), box=box, changed=component, lesion=lesion,
                      method="component", point_ras_mm=tuple(float(v) for v in point_ras),
                      seconds=time.perf_counter() - start)


# ---------------------------------------------------------------------------------------------
# Reading a labelmap to edit
# ---------------------------------------------------------------------------------------------

def _paste_onto(labels: np.ndarray, source: sitk.Image, ct: sitk.Image, path: Path) -> sitk.Image:
    """``labels`` (k, j, i), on ``source``'s grid, placed on the CT's grid: the grids must share
    spacing and direction and lie a whole number of voxels apart (a 3D Slicer segmentation may be
    saved cropped to its segments); voxels the source does not cover are background."""
    src, dst = Geometry.of(source), Geometry.of(ct)
    if not (np.allclose(src.spacing, dst.spacing, atol=1e-4) and np.allclose(src.direction, dst.direction, atol=1e-4)):
        raise LiverTumorSegError(f"{path} is not on the CT's grid (its spacing or direction differ); give the "
                                 "labelmap segmented from this CT")
    offset_ijk = np.asarray(ct.TransformPhysicalPointToContinuousIndex(src.origin))
    if not np.allclose(offset_ijk, np.round(offset_ijk), atol=1e-3):
        raise LiverTumorSegError(f"{path} is not on the CT's grid (its voxels are shifted against the CT's); give "
                                 "the labelmap segmented from this CT")
    offset = np.round(offset_ijk).astype(int)[::-1]  # (k, j, i)
    out = np.zeros(tuple(dst.size[::-1]), np.uint8)
    lo = np.maximum(offset, 0)
    hi = np.minimum(offset + np.asarray(labels.shape), np.asarray(out.shape))
    if np.any(hi <= lo):
        raise LiverTumorSegError(f"{path} lies outside the CT; give the labelmap segmented from this CT")
    if np.any(labels) and (np.any(offset < 0) or np.any(offset + np.asarray(labels.shape) > out.shape)):
        inside = labels[tuple(slice(a - o, b - o) for a, b, o in zip(lo, hi, offset))]
        if np.count_nonzero(inside) != np.count_nonzero(labels):
            raise LiverTumorSegError(f"{path} has segment voxels outside the CT; give the labelmap segmented from "
                                     "this CT")
    out[tuple(slice(a, b) for a, b in zip(lo, hi))] = labels[tuple(slice(a - o, b - o)
                                                                   for a, b, o in zip(lo, hi, offset))]
    return _new_labelmap(out, ct)


def _read_seg_nrrd(path: Path, ct: sitk.Image) -> sitk.Image:
    """A 3D Slicer segmentation (.seg.nrrd, as ``segment`` writes it or Slicer saves it) as the 0/1/2
    labelmap on the CT's grid, from its segments named "Liver" and "Liver tumor"."""
    import slicerio

    from .io.terminology import LIVER, TUMOR

    try:
        segmentation = slicerio.read_segmentation(str(path))
    except Exception as exc:  # slicerio raises IOError, pynrrd its own errors
        raise LiverTumorSegError(f"{path} cannot be read as a 3D Slicer segmentation ({str(exc)[:120]})") from None
    segments = {seg.get("name"): seg for seg in segmentation.get("segments", [])}
    if LIVER.name not in segments:
        names = ", ".join(repr(n) for n in segments) or "none"
        raise LiverTumorSegError(f"{path} has no segment named '{LIVER.name}' (its segments: {names}); give the "
                                 "segmentation written by 'livertumorseg segment' or name the liver segment "
                                 f"'{LIVER.name}' and the tumor segment '{TUMOR.name}'")
    liver = slicerio.segment_mask(segmentation, segments[LIVER.name])
    labels = np.where(liver, LIVER_LABEL, BACKGROUND_LABEL).astype(np.uint8)
    if TUMOR.name in segments:
        labels[slicerio.segment_mask(segmentation, segments[TUMOR.name])] = TUMOR_LABEL
    labels = np.ascontiguousarray(labels.transpose(2, 1, 0))  # slicerio's (i, j, k) -> (k, j, i)
    ijk_to_lps = np.asarray(segmentation["ijkToLPS"], dtype=np.float64)
    spacing = np.linalg.norm(ijk_to_lps[:3, :3], axis=0)
    source = sitk.Image([int(n) for n in labels.shape[::-1]], sitk.sitkUInt8)
    source.SetSpacing(tuple(float(v) for v in spacing))
    source.SetDirection(tuple(float(v) for v in (ijk_to_lps[:3, :3] / spacing).ravel()))
    source.SetOrigin(tuple(float(v) for v in ijk_to_lps[:3, 3]))
    return _paste_onto(labels, source, ct, path)


def load_labelmap(path: "Path | str", ct: sitk.Image) -> sitk.Image:
    """The labelmap to edit, as the 0/1/2 uint8 image on the CT's grid: a labelmap image (NIfTI,
    NRRD, MHA; 0 background, 1 liver, 2 tumor) or a 3D Slicer segmentation (.seg.nrrd, segments
    "Liver" and "Liver tumor"), on the CT's grid or a whole-voxel crop of it."""
    from .io.volume import read_labelmap

    path = Path(path)
    if not path.is_file():
        raise LiverTumorSegError(f"{path} does not exist")
    if path.name.lower().endswith(".seg.nrrd"):
        return _read_seg_nrrd(path, ct)
    image = read_labelmap(path)
    return _paste_onto(sitk.GetArrayFromImage(image).astype(np.uint8), image, ct, path)


_default_editor: Optional[LesionEditor] = None


def default_editor() -> LesionEditor:
    """One editor with the default tumor model on the CPU, loaded on first use and kept."""
    global _default_editor
    if _default_editor is None:
        _default_editor = LesionEditor()
    return _default_editor


def add_lesion(ct: sitk.Image, labelmap: sitk.Image, point_ras: Sequence[float],
               editor: Optional[LesionEditor] = None) -> LesionEdit:
    """Segment the lesion at ``point_ras`` (RAS mm) and add it to the tumor label; ``editor``
    (default: :func:`default_editor`) holds the loaded models."""
    return (editor or default_editor()).add(ct, labelmap, point_ras)
