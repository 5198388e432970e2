"""Synthetic liver tumours inserted into a CT's own liver (real or phantom).

Follows the recipe of "Label-Free Liver Tumor Segmentation" (CVPR 2023) as DESIGN.md
summarises it: a tumour is placed inside the liver away from vessels (voxels clearly brighter
than the parenchyma) and from other clearly darker structures; its shape is a randomly
distorted ellipsoid; its texture is smoothed, scaled noise around a mean that is mostly
hypodense relative to the patient's own liver (measured from the CT); sizes are log-uniform
from tiny (< 5 mm) to large (> 50 mm); its edge is blended into the background like partial
volume. The image's own noise is kept inside the tumour, so noise level is no give-away.

A :class:`TumorRecipe` says what kind of tumours to draw; :data:`TUMOR_KINDS` holds the kinds
that real scans show and that a model trained on ellipsoids wholly inside the liver misses:
large iso- to mildly hypodense heterogeneous masses (up to 15 cm), many metastases (up to 30,
some confluent), lesions that reach the surface and bulge it, small lesions, hypervascular
lesions whose look depends on the contrast phase, lesions in the hilum's notch and the other
concave parts of the outline (where a liver model leaves them out), and capsules, necrosis and
calcification. A tumour that bulges out of the liver makes the liver bigger: the liver label
includes it.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
from typing import Dict, List, Optional, Tuple

import numpy as np
import SimpleITK as sitk
from scipy import ndimage

from ... import LIVER_LABEL, TUMOR_LABEL
from ...errors import LiverTumorSegError
from ...geometry import Geometry

# Weight below which a tumour is treated as absent (its outer extent; the faint rest of the
# partial-volume tail is cut at the liver's boundary, where it is invisible under noise).
_EXTENT_WEIGHT = 0.05
# Smallest HU offset of a tumour: 15 HU, or the recipe's own lower bound where that is less
# (iso-dense and washout kinds).
_MIN_ABS_DELTA_HU = 15.0
_MAX_ATTEMPTS = 40
# Outside the liver a bulging tumour displaces fat (a real one pushes into the fat around the
# liver, against bowel and body wall, but does not grow into the kidney, the spleen or a
# muscle), at most ``outside_mm`` from the liver's surface; within _BULGE_SHELL_MM of the surface
# it may cover any soft tissue (the capsule and the boundary's partial volume), never air, bone
# or bright contrast. HU on the lightly smoothed CT, so noise does not speckle a bulge.
_BULGE_FAT_HU = (-200.0, -20.0)
_BULGE_SHELL_HU = (-200.0, 200.0)
_BULGE_SHELL_MM = 2.0
# ... and not the body wall next to a rib or the spine: a real lesion at the rib cage pushes the
# liver in, it does not grow around a rib through the intercostal muscle. Bone is above
# _BONE_HU (cortex; contrast-filled vessels and bowel stay below it in the portal phase).
_BONE_HU = 300.0
_BONE_CLEARANCE_MM = 10.0
# A bulging tumour keeps this share of its shape where the allowance cuts it (bone, air, a solid
# neighbour, too far out): a real one is round where it pushes its neighbours away, not poured
# into the gaps between them.
_MIN_UNCUT_FRACTION = 0.85
# Concave parts of the liver's outline (the hilum's notch where the portal vein enters, the
# gallbladder fossa, the IVC groove): what a closing by a ball of this radius adds to the liver,
# in pieces of at least _CONCAVITY_MIN_ML. A lesion there bulges into fat and vessels that a
# liver model has learnt to leave out.
_CONCAVITY_RADIUS_MM = 20.0
_CONCAVITY_MIN_ML = 2.0


@dataclass(frozen=True)
class TumorRecipe:
    """How to draw tumours. Ranges are (low, high); HU offsets are magnitudes relative to the
    liver's own median HU. The default is the original mixed recipe (ellipsoids wholly inside
    the liver, mostly hypodense)."""

    kind: str = "classic"
    count: Tuple[int, int] = (1, 5)  # tumours per case, used by :func:`insert_tumor_kind`
    size_range_mm: Tuple[float, float] = (4.0, 60.0)  # equivalent diameter, log-uniform
    hyper_fraction: float = 0.15  # share of hyperdense (arterially enhancing) tumours
    hypo_delta_hu: Tuple[float, float] = (20.0, 90.0)
    hyper_delta_hu: Tuple[float, float] = (20.0, 60.0)
    small_are_subtler: bool = True  # tiny tumours get a smaller contrast (partial volume)
    texture_hu: Tuple[float, float] = (4.0, 12.0)  # standard deviation of the tumour's texture
    texture_scale_mm: Tuple[float, float] = (1.0, 3.5)
    necrosis_probability: float = 0.4  # of hypodense tumours over 30 mm
    rim_probability: float = 0.25  # enhancing rim or capsule, tumours over 16 mm
    calcification_probability: float = 0.0
    outside_mm: float = 0.0  # how far a tumour may bulge beyond the liver's surface
    surface_fraction: float = 0.0  # share of tumours centred at the liver's surface
    concave_fraction: float = 0.0  # share of those centred where the outline is concave (the hilum)
    confluent_fraction: float = 0.0  # share of tumours placed overlapping an earlier one
    vessel_tolerance: float = 1.0  # scales how much vessel a tumour may engulf

    def __post_init__(self) -> None:
        lo, hi = self.size_range_mm
        if not 0 < lo <= hi:
            raise LiverTumorSegError(f"size_range_mm={self.size_range_mm} must be (smallest, largest) diameters > 0")
        if not 0.0 <= self.hyper_fraction <= 1.0:
            raise LiverTumorSegError(f"hyper_fraction={self.hyper_fraction} must lie in [0, 1]")
        if self.count[0] < 0 or self.count[1] < self.count[0]:
            raise LiverTumorSegError(f"count={self.count} must be a (low, high) range of counts >= 0")
        if self.outside_mm < 0:
            raise LiverTumorSegError(f"outside_mm={self.outside_mm} must be >= 0")
        if not 0.0 <= self.concave_fraction <= 1.0:
            raise LiverTumorSegError(f"concave_fraction={self.concave_fraction} must lie in [0, 1]")


# The kinds of tumour that real portal-venous (and arterial) scans show, each a recipe.
TUMOR_KINDS: Dict[str, TumorRecipe] = {
    "classic": TumorRecipe(),
    # A large hepatocellular carcinoma or confluent metastasis: 5-15 cm, only 10-40 HU below
    # the liver, coarse heterogeneous texture, engulfed vessels, often reaching the surface.
    "large_isodense": TumorRecipe(
        kind="large_isodense", count=(1, 2), size_range_mm=(50.0, 150.0), hyper_fraction=0.0,
        hypo_delta_hu=(10.0, 40.0), small_are_subtler=False, texture_hu=(6.0, 18.0), texture_scale_mm=(2.5, 8.0),
        necrosis_probability=0.5, rim_probability=0.3, calcification_probability=0.15, outside_mm=20.0,
        surface_fraction=0.3, vessel_tolerance=2.0),
    # A liver crowded with metastases: many 5-40 mm hypodense lesions, some confluent, some at
    # the surface, some with a target-like rim.
    "metastases": TumorRecipe(
        kind="metastases", count=(8, 30), size_range_mm=(5.0, 40.0), hyper_fraction=0.05,
        hypo_delta_hu=(20.0, 80.0), rim_probability=0.35, calcification_probability=0.05, outside_mm=8.0,
        surface_fraction=0.25, confluent_fraction=0.25),
    # Lesions centred at the liver's surface that bulge it and deform its outline.
    "surface": TumorRecipe(
        kind="surface", count=(1, 4), size_range_mm=(12.0, 70.0), hyper_fraction=0.1,
        hypo_delta_hu=(15.0, 70.0), outside_mm=20.0, surface_fraction=1.0, rim_probability=0.3),
    # Small lesions, 5-12 mm: hard to see, easy to miss.
    "small": TumorRecipe(kind="small", count=(2, 8), size_range_mm=(5.0, 12.0), hyper_fraction=0.15,
                         hypo_delta_hu=(25.0, 70.0)),
    # Hypervascular lesions in the arterial phase: brighter than the liver, heterogeneous.
    "hypervascular_arterial": TumorRecipe(
        kind="hypervascular_arterial", count=(1, 4), size_range_mm=(10.0, 80.0), hyper_fraction=1.0,
        hyper_delta_hu=(25.0, 80.0), texture_hu=(6.0, 16.0), necrosis_probability=0.0, rim_probability=0.0,
        outside_mm=10.0, surface_fraction=0.2),
    # The same lesions in the portal-venous or delayed phase: washout (mildly hypodense) with an
    # enhancing capsule.
    "hypervascular_washout": TumorRecipe(
        kind="hypervascular_washout", count=(1, 4), size_range_mm=(15.0, 90.0), hyper_fraction=0.0,
        hypo_delta_hu=(8.0, 30.0), small_are_subtler=False, texture_hu=(5.0, 14.0), texture_scale_mm=(2.0, 6.0),
        necrosis_probability=0.3, rim_probability=0.9, calcification_probability=0.05, outside_mm=10.0,
        surface_fraction=0.2, vessel_tolerance=1.5),
    # Lesions in the concave parts of the outline: the hilum's notch, the gallbladder fossa, the
    # IVC groove, where they border the portal vein, fat and the IVC, engulf large vessels and
    # bulge into the notch.
    "hilum": TumorRecipe(
        kind="hilum", count=(1, 3), size_range_mm=(15.0, 60.0), hyper_fraction=0.1,
        hypo_delta_hu=(15.0, 60.0), outside_mm=20.0, surface_fraction=1.0, concave_fraction=1.0,
        rim_probability=0.3, vessel_tolerance=2.0),
}


def insert_tumors(ct_hu: np.ndarray, liver: np.ndarray, spacing_kji: Tuple[float, float, float],
                  rng: np.random.Generator, n_tumors: int,
                  size_range_mm: Optional[Tuple[float, float]] = None, hyper_fraction: Optional[float] = None,
                  avoid_vessels: bool = True,
                  recipe: Optional[TumorRecipe] = None) -> Tuple[np.ndarray, np.ndarray, List[dict]]:
    """Insert up to ``n_tumors`` synthetic tumours drawn by ``recipe`` (default: the classic
    recipe) into the liver of ``ct_hu``; ``size_range_mm`` and ``hyper_fraction`` override the
    recipe's.

    ``ct_hu`` (HU) and ``liver`` (nonzero = liver) are (k, j, i) arrays on one grid with
    ``spacing_kji`` in mm. Returns ``(new_ct float32, tumor_mask uint8 0/1, infos)``; the inputs
    are not modified. A tumour lies inside the liver unless the recipe lets it bulge out
    (``outside_mm``): then the mask also covers the bulge, which the caller must count as liver.
    Each info has ``center_kji``, ``diameter_mm``, ``radius_mm``, ``contrast`` ("hypo"|"hyper"),
    ``delta_hu``, ``volume_ml``, ``n_voxels``, ``mean_hu``, ``rim``, ``necrotic``, ``calcified``,
    ``kind``, ``at_surface``, ``at_concavity``, ``confluent``, ``outside_ml``. Fewer tumours than asked are placed
    when the liver has no room left (``len(infos)`` says).
    """
    recipe = recipe or TUMOR_KINDS["classic"]
    if size_range_mm is not None:
        recipe = replace(recipe, size_range_mm=tuple(size_range_mm))
    if hyper_fraction is not None:
        recipe = replace(recipe, hyper_fraction=float(hyper_fraction))
    ct_in = np.asarray(ct_hu)
    liver_in = np.asarray(liver)
    _check_inputs(ct_in, liver_in, spacing_kji, n_tumors)
    spacing = np.asarray(spacing_kji, dtype=np.float64)
    new_ct = ct_in.astype(np.float32, copy=True)
    tumor_mask = np.zeros(ct_in.shape, dtype=np.uint8)
    if n_tumors == 0:
        return new_ct, tumor_mask, []
    liver_full = liver_in > 0
    if not liver_full.any():
        raise LiverTumorSegError("the liver mask is empty, so there is nowhere to insert tumours; "
                                 "pass a mask with the liver as nonzero voxels on the CT's grid")

    reach_mm = recipe.outside_mm + (_BONE_CLEARANCE_MM if recipe.outside_mm > 0 else 0.0)  # see bone beyond a bulge
    crop = _bounding_box(liver_full, pad=2 + int(math.ceil(reach_mm / float(spacing.min()))))
    ct_crop = new_ct[crop]  # a view: blending writes straight into new_ct
    tumor_crop = tumor_mask[crop]
    liver_crop = liver_full[crop]
    stats = _LiverStats.measure(ct_crop, liver_crop, spacing)
    forbidden = stats.forbidden_mask(liver_crop) if avoid_vessels else None
    allowance = _bulge_allowance(ct_crop, stats.smooth, liver_crop, spacing, recipe.outside_mm)
    stats.smooth = None  # not needed any more
    depth = _ConservativeDepth(liver_crop, spacing)
    occupied = np.zeros(liver_crop.shape, dtype=bool)
    offset = np.array([s.start for s in crop])
    placed_centers: List[Tuple[np.ndarray, float]] = []
    infos: List[dict] = []
    log_lo, log_hi = math.log(recipe.size_range_mm[0]), math.log(recipe.size_range_mm[1])
    for _ in range(n_tumors):
        contrast = "hyper" if rng.random() < recipe.hyper_fraction else "hypo"
        diameter = float(math.exp(rng.uniform(log_lo, log_hi)))
        at_surface = bool(rng.random() < recipe.surface_fraction)
        # drawn only by recipes that ask, so every other recipe's draws stay as they were
        at_concavity = at_surface and recipe.concave_fraction > 0 and bool(rng.random() < recipe.concave_fraction)
        confluent = bool(placed_centers) and bool(rng.random() < recipe.confluent_fraction)
        placed = None
        for attempt in range(_MAX_ATTEMPTS):
            if attempt and attempt % 8 == 0:
                diameter = max(diameter * 0.75, min(recipe.size_range_mm[0], 3.0))
            shape = _TumorShape.random(rng, diameter, spacing)
            center = _pick_center(rng, shape, depth, occupied, liver_crop, spacing, recipe,
                                  placed_centers if confluent else None, at_surface, at_concavity)
            if center is None:
                diameter = max(diameter * 0.75, min(recipe.size_range_mm[0], 3.0))
                continue
            placed = _try_place(rng, shape, center, liver_crop, allowance, forbidden,
                                None if confluent else occupied, spacing, recipe.vessel_tolerance)
            if placed is not None:
                break
        if placed is None:
            continue
        box, weight, signed_mm, core = placed
        delta = _draw_delta(rng, contrast, diameter, recipe)
        info = _blend_tumor(ct_crop, box, weight, signed_mm, core, shape, stats, delta, rng, spacing, recipe)
        occupied[box] |= ndimage.binary_dilation(weight > _EXTENT_WEIGHT, iterations=1)
        tumor_crop[box][core] = 1
        placed_centers.append((np.asarray(center, dtype=np.float64), shape.radius))
        voxel_ml = float(np.prod(spacing)) / 1000.0
        info.update(center_kji=tuple(int(c) for c in np.asarray(center) + offset), contrast=contrast,
                    diameter_mm=round(diameter, 3), radius_mm=round(diameter / 2.0, 3),
                    volume_ml=float(core.sum()) * voxel_ml, n_voxels=int(core.sum()),
                    liver_median_hu=round(stats.median, 2), kind=recipe.kind, at_surface=at_surface,
                    at_concavity=at_concavity and depth.has_concavity,
                    confluent=confluent, outside_ml=float((core & ~liver_crop[box]).sum()) * voxel_ml)
        infos.append(info)
    return new_ct, tumor_mask, infos


def insert_tumors_image(ct: sitk.Image, liver: sitk.Image, seed: int, n_tumors: int,
                        **kw) -> Tuple[sitk.Image, sitk.Image, List[dict]]:
    """:func:`insert_tumors` on SimpleITK images with a seed; geometry and the CT's pixel type kept.

    Returns ``(ct, labels, infos)`` where labels are 0 background, 1 liver, 2 tumour (a tumour
    that bulges out of the liver is tumour, so the liver grows by it) and each info also carries
    ``center_lps_mm``.
    """
    geometry = Geometry.of(ct)
    if not geometry.matches(Geometry.of(liver)):
        raise LiverTumorSegError("the liver mask is not on the CT's grid (size, spacing, origin or direction "
                                 "differ); resample it onto the CT first")
    ct_array = sitk.GetArrayViewFromImage(ct)
    liver_array = sitk.GetArrayViewFromImage(liver)
    spacing_kji = tuple(reversed(geometry.spacing))
    new_ct, tumor_mask, infos = insert_tumors(ct_array, liver_array, spacing_kji, np.random.default_rng(seed),
                                              n_tumors, **kw)
    out_ct = sitk.GetImageFromArray(_to_dtype(new_ct, ct_array.dtype))
    out_ct.CopyInformation(ct)
    labels = np.where(liver_array > 0, LIVER_LABEL, 0).astype(np.uint8)
    labels[tumor_mask > 0] = TUMOR_LABEL
    out_labels = sitk.GetImageFromArray(labels)
    out_labels.CopyInformation(ct)
    for info in infos:
        info["center_lps_mm"] = tuple(float(v) for v in geometry.index_to_lps(np.asarray(info["center_kji"])))
    return out_ct, out_labels, infos


def insert_tumor_kind(ct: sitk.Image, liver: sitk.Image, seed: int, kind: str,
                      hyper_fraction: Optional[float] = None) -> Tuple[sitk.Image, sitk.Image, List[dict]]:
    """Tumours of one of :data:`TUMOR_KINDS` (their count drawn from the recipe) inserted into
    ``liver`` of ``ct``, as :func:`insert_tumors_image`; ``hyper_fraction`` overrides the recipe's
    share of hyperdense tumours."""
    if kind not in TUMOR_KINDS:
        raise LiverTumorSegError(f"unknown tumour kind '{kind}'; choose one of {', '.join(TUMOR_KINDS)}")
    recipe = TUMOR_KINDS[kind]
    count = int(np.random.default_rng([seed, 17]).integers(recipe.count[0], recipe.count[1] + 1))
    return insert_tumors_image(ct, liver, seed=seed, n_tumors=count, recipe=recipe, hyper_fraction=hyper_fraction)


# ---------------------------------------------------------------------------------------------

def _check_inputs(ct: np.ndarray, liver: np.ndarray, spacing_kji, n_tumors: int) -> None:
    if ct.ndim != 3 or ct.shape != liver.shape:
        raise LiverTumorSegError(f"the CT {ct.shape} and liver mask {liver.shape} must be 3D arrays of one shape")
    if len(spacing_kji) != 3 or min(spacing_kji) <= 0:
        raise LiverTumorSegError(f"spacing {spacing_kji} must be three positive millimetre values")
    if n_tumors < 0:
        raise LiverTumorSegError(f"n_tumors={n_tumors} must be zero or more")


def _bounding_box(mask: np.ndarray, pad: int) -> Tuple[slice, ...]:
    box = []
    for axis in range(mask.ndim):
        other = tuple(a for a in range(mask.ndim) if a != axis)
        hits = np.flatnonzero(mask.any(axis=other))
        box.append(slice(max(0, hits[0] - pad), min(mask.shape[axis], hits[-1] + pad + 1)))
    return tuple(box)


def _to_dtype(values: np.ndarray, dtype: np.dtype) -> np.ndarray:
    if np.issubdtype(dtype, np.integer):
        info = np.iinfo(dtype)
        return np.clip(np.rint(values), info.min, info.max).astype(dtype)
    return values.astype(dtype, copy=False)


class _LiverStats:
    """The liver's own intensity statistics: median parenchyma HU, robust spread of the lightly
    smoothed values, noise level, and that smoothed CT."""

    def __init__(self, median: float, spread: float, noise: float, smooth: np.ndarray) -> None:
        self.median, self.spread, self.noise, self.smooth = median, spread, noise, smooth

    @classmethod
    def measure(cls, ct: np.ndarray, liver: np.ndarray, spacing: np.ndarray) -> "_LiverStats":
        inner = ndimage.binary_erosion(liver, iterations=1)
        if inner.sum() < 50:
            inner = liver
        values = ct[inner]
        median = float(np.median(values))
        smooth = ndimage.gaussian_filter(ct, sigma=_voxels(1.0, spacing), mode="nearest")
        smooth_values = smooth[inner]
        spread = 1.4826 * float(np.median(np.abs(smooth_values - np.median(smooth_values))))
        noise = 1.4826 * float(np.median(np.abs(values - smooth_values)))
        return cls(median, spread, noise, smooth)

    def forbidden_mask(self, liver: np.ndarray) -> np.ndarray:
        """Liver voxels clearly brighter (vessels) or darker (fissures, lesions, unenhanced vessels)
        than the parenchyma after light smoothing (beyond 3 robust SDs, at least 15 HU), grown by
        one voxel."""
        threshold = max(3.0 * self.spread, 15.0)
        different = liver & (np.abs(self.smooth - self.median) > threshold)
        grow = ndimage.generate_binary_structure(3, 1)
        return ndimage.binary_dilation(different, structure=grow, iterations=1)


class _ConservativeDepth:
    """Distance (mm) from liver voxels to the liver's surface, on blocks of ~2 mm for speed and
    made conservative by a block's diagonal: it picks candidate centres deep enough for a tumour
    (the exact check that the whole tumour lies in the liver follows in ``_try_place``)."""

    def __init__(self, liver: np.ndarray, spacing: np.ndarray) -> None:
        self.factor = np.maximum(1, np.floor(2.0 / spacing)).astype(int)
        f = self.factor
        shape = [int(math.ceil(n / k)) * k for n, k in zip(liver.shape, f)]
        padded = np.zeros(shape, dtype=bool)
        padded[:liver.shape[0], :liver.shape[1], :liver.shape[2]] = liver
        blocks = padded.reshape(shape[0] // f[0], f[0], shape[1] // f[1], f[1], shape[2] // f[2], f[2])
        full = blocks.all(axis=(1, 3, 5))
        block_spacing = spacing * f
        border = np.pad(full, 1)  # outside the crop counts as not liver
        depth = ndimage.distance_transform_edt(border, sampling=block_spacing)[1:-1, 1:-1, 1:-1]
        self.depth = (depth - float(np.linalg.norm(block_spacing))).astype(np.float32)
        self.full = full
        self.shape = liver.shape
        self.block_spacing = block_spacing
        self._notch_mm: Optional[np.ndarray] = None

    @property
    def notch_distance_mm(self) -> np.ndarray:
        """Distance (mm, float32, blocks grid; computed once) of each block to the nearest
        concave part of the liver's outline: what a closing of the liver by a ball of
        _CONCAVITY_RADIUS_MM adds, in pieces of at least _CONCAVITY_MIN_ML (inf: none)."""
        if self._notch_mm is None:
            self._notch_mm = np.full(self.full.shape, np.inf, dtype=np.float32)
            r = _CONCAVITY_RADIUS_MM
            pad = int(math.ceil(r / float(self.block_spacing.min()))) + 1
            liver = np.pad(self.full, pad)
            grown = ndimage.distance_transform_edt(~liver, sampling=self.block_spacing) <= r
            closed = ndimage.distance_transform_edt(grown, sampling=self.block_spacing) > r
            notch, count = ndimage.label(closed & ~liver)
            if count:
                block_ml = float(np.prod(self.block_spacing)) / 1000.0
                big = np.bincount(notch.ravel(), minlength=count + 1) * block_ml >= _CONCAVITY_MIN_ML
                big[0] = False
                if big.any():
                    inner = tuple(slice(pad, pad + n) for n in self.full.shape)
                    distance = ndimage.distance_transform_edt(~big[notch], sampling=self.block_spacing)[inner]
                    self._notch_mm = distance.astype(np.float32)
        return self._notch_mm

    @property
    def has_concavity(self) -> bool:
        return bool(np.isfinite(self.notch_distance_mm).any())

    def random_center(self, rng: np.random.Generator, extent_mm: float,
                      occupied: np.ndarray, max_depth_mm: float = math.inf,
                      near_notch_mm: Optional[float] = None) -> Optional[Tuple[int, int, int]]:
        """A voxel at least ``extent_mm`` (and at most ``max_depth_mm``) below the liver's
        surface, not yet occupied (``near_notch_mm``: and at most that far from a concave part
        of the outline when the liver has one); None when there is none."""
        where = self.full & (self.depth >= extent_mm) & (self.depth <= max_depth_mm)
        if near_notch_mm is not None and self.has_concavity:
            where &= self.notch_distance_mm <= near_notch_mm
        candidates = np.flatnonzero(where)
        if candidates.size == 0:
            return None
        f = self.factor
        for _ in range(8):
            block = np.unravel_index(int(candidates[rng.integers(candidates.size)]), self.depth.shape)
            center = tuple(min(int(b * k + k // 2), n - 1) for b, k, n in zip(block, f, self.shape))
            if not occupied[center]:
                return center
        return None

    @property
    def max_depth_mm(self) -> float:
        return float(self.depth[self.full].max()) if self.full.any() else 0.0


def _pick_center(rng: np.random.Generator, shape: "_TumorShape", depth: _ConservativeDepth, occupied: np.ndarray,
                 liver: np.ndarray, spacing: np.ndarray, recipe: TumorRecipe,
                 neighbours: Optional[List[Tuple[np.ndarray, float]]], at_surface: bool,
                 at_concavity: bool = False) -> Optional[Tuple[int, ...]]:
    """Where to try the next tumour: overlapping an earlier one (``neighbours``, confluent
    lesions), at the liver's surface (``at_concavity``: where the outline is concave, when the
    liver has such a part), or deep enough to fit (partly, when it may bulge out)."""
    if neighbours:
        center0, radius0 = neighbours[rng.integers(len(neighbours))]
        direction = rng.normal(size=3)
        direction /= np.linalg.norm(direction)
        distance_mm = (radius0 + shape.radius) * rng.uniform(0.5, 0.9)
        center = np.rint(center0 + direction * distance_mm / spacing).astype(int)
        if (center < 0).any() or (center >= np.asarray(liver.shape)).any() or not liver[tuple(center)]:
            return None
        return tuple(int(c) for c in center)
    if recipe.outside_mm <= 0:
        return depth.random_center(rng, shape.inner_extent_mm, occupied)
    if at_surface and at_concavity:  # inside, its edge at the notch: most of it where a liver model cuts it off
        return depth.random_center(rng, 0.3 * shape.radius, occupied, max_depth_mm=max(0.8 * shape.radius, 2.0),
                                   near_notch_mm=max(shape.radius, 6.0))
    if at_surface:  # centred within a third of its radius of the surface
        return depth.random_center(rng, -math.inf, occupied, max_depth_mm=max(shape.radius / 3.0, 2.0))
    return depth.random_center(rng, min(shape.inner_extent_mm, 0.6 * depth.max_depth_mm), occupied)


def _bulge_allowance(ct: np.ndarray, smooth: np.ndarray, liver: np.ndarray, spacing: np.ndarray,
                     outside_mm: float) -> Optional[np.ndarray]:
    """Where a tumour may lie (float32 0..1): 1 in the liver; outside it, soft tissue within
    ``_BULGE_SHELL_MM`` of the surface and fat within ``outside_mm`` of it (HU of ``smooth``, the
    lightly smoothed CT of :class:`_LiverStats`), fading over the last 2 mm, all at least
    ``_BONE_CLEARANCE_MM`` from bone; None when tumours stay inside."""
    if outside_mm <= 0:
        return None
    distance = ndimage.distance_transform_edt(~liver, sampling=spacing)
    fat = (smooth >= _BULGE_FAT_HU[0]) & (smooth <= _BULGE_FAT_HU[1])
    shell = (distance <= _BULGE_SHELL_MM) & (smooth >= _BULGE_SHELL_HU[0]) & (smooth <= _BULGE_SHELL_HU[1])
    room = fat | shell
    bone = (ct > _BONE_HU) & ~liver
    if bone.any():
        room &= ndimage.distance_transform_edt(~bone, sampling=spacing) >= _BONE_CLEARANCE_MM
    allowance = np.clip((outside_mm - distance) / 2.0, 0.0, 1.0).astype(np.float32)
    allowance[~room] = 0.0
    allowance[liver] = 1.0
    return allowance


class _TumorShape:
    """A randomly distorted, rotated ellipsoid with a soft (partial-volume-like) edge."""

    def __init__(self, radius: float, axes: np.ndarray, rotation: np.ndarray, distortion: float,
                 distortion_scale_mm: float, edge_mm: float) -> None:
        self.radius, self.axes, self.rotation = radius, axes, rotation
        self.distortion, self.distortion_scale_mm, self.edge_mm = distortion, distortion_scale_mm, edge_mm

    @classmethod
    def random(cls, rng: np.random.Generator, diameter: float, spacing: np.ndarray) -> "_TumorShape":
        radius = diameter / 2.0
        axes = np.exp(rng.normal(0.0, 0.15, 3))
        axes /= np.prod(axes) ** (1.0 / 3.0)  # same volume as the sphere of this radius
        q, r = np.linalg.qr(rng.normal(size=(3, 3)))
        rotation = q * np.sign(np.diag(r))
        distortion = rng.uniform(0.04, 0.15) * min(1.0, radius / 5.0)
        edge_mm = 0.3 * float(np.mean(spacing)) + rng.uniform(0.2, 1.0)
        return cls(radius, axes, rotation, distortion, max(0.35 * radius, 1.0), edge_mm)

    @property
    def extent_mm(self) -> float:
        """Radius (mm) of a ball around the centre that holds every voxel the tumour touches."""
        soft = math.log(1.0 / _EXTENT_WEIGHT - 1.0) * self.edge_mm
        return self.radius * float(self.axes.max()) * (1.0 + 2.0 * self.distortion) + soft + 0.5

    @property
    def inner_extent_mm(self) -> float:
        """Radius (mm) of a ball around the centre that the tumour's extent always covers."""
        soft = math.log(1.0 / _EXTENT_WEIGHT - 1.0) * self.edge_mm
        return self.radius * float(self.axes.min()) * (1.0 - 2.0 * self.distortion) + soft

    def rasterize(self, rng: np.random.Generator, box_shape: Tuple[int, ...], center_in_box: np.ndarray,
                  spacing: np.ndarray) -> Tuple[np.ndarray, np.ndarray]:
        """(blend weight in [0, 1], signed depth below the surface in mm), float32, in the box."""
        grids = [((np.arange(n) - c) * s).astype(np.float32) for n, c, s in zip(box_shape, center_in_box, spacing)]
        kk, jj, ii = np.meshgrid(*grids, indexing="ij", sparse=True)
        # physical offsets in (x, y, z)-like order of the array axes; the rotation is arbitrary anyway
        rho_sq = np.zeros(box_shape, dtype=np.float32)
        for row in range(3):
            rotated = (self.rotation[0, row] * kk + self.rotation[1, row] * jj + self.rotation[2, row] * ii)
            rho_sq += (rotated / (self.radius * self.axes[row])) ** 2
        rho = np.sqrt(rho_sq)
        bumps = _unit_noise(rng, box_shape, _voxels(self.distortion_scale_mm, spacing))
        rho -= self.distortion * np.clip(bumps, -2.0, 2.0)
        signed_mm = (1.0 - rho) * self.radius
        weight = 1.0 / (1.0 + np.exp(np.clip(-signed_mm / self.edge_mm, -60.0, 60.0)))
        return weight.astype(np.float32), signed_mm.astype(np.float32)


def _try_place(rng: np.random.Generator, shape: _TumorShape, center: Tuple[int, ...], liver: np.ndarray,
               allowance: Optional[np.ndarray], forbidden: Optional[np.ndarray], occupied: Optional[np.ndarray],
               spacing: np.ndarray, vessel_tolerance: float = 1.0):
    """Rasterise the tumour at ``center``; None unless it fits. Without ``allowance`` all of it
    must lie inside the liver; with it, the tumour is cut to the allowance and must keep
    ``_MIN_UNCUT_FRACTION`` of its volume, three quarters of it inside the liver. It must also
    stay clear of ``occupied`` (other tumours; None for a confluent one) and, but for a
    size-dependent fraction, of vessels."""
    half = np.ceil(shape.extent_mm / spacing).astype(int) + 1
    lo = np.asarray(center) - half
    hi = np.asarray(center) + half + 1
    if allowance is None and ((lo < 0).any() or (hi > np.asarray(liver.shape)).any()):
        return None
    lo, hi = np.maximum(lo, 0), np.minimum(hi, np.asarray(liver.shape))
    box = tuple(slice(int(a), int(b)) for a, b in zip(lo, hi))
    weight, signed_mm = shape.rasterize(rng, tuple(hi - lo), np.asarray(center) - lo, spacing)
    whole_core = int((weight >= 0.5).sum())
    if allowance is None:
        if ((weight >= _EXTENT_WEIGHT) & ~liver[box]).any():
            return None
    else:
        weight *= allowance[box]
    touched = weight >= _EXTENT_WEIGHT
    weight[~touched] = 0.0
    core = weight >= 0.5
    n_core = int(core.sum())
    if n_core == 0:
        return None
    if allowance is not None and (n_core < _MIN_UNCUT_FRACTION * whole_core
                                  or (core & liver[box]).sum() < 0.75 * n_core):
        return None
    if occupied is not None and (touched & occupied[box]).any():
        return None
    if forbidden is not None:
        allowed = min(_allowed_vessel_fraction(shape.radius) * vessel_tolerance, 0.5)
        if (core & forbidden[box]).sum() > allowed * n_core:
            return None
    return box, weight, signed_mm, core


def _allowed_vessel_fraction(radius_mm: float) -> float:
    """Small tumours must miss the vessels; large ones engulf some, as real ones do."""
    if radius_mm < 5.0:
        return 0.0
    if radius_mm < 10.0:
        return 0.02
    return 0.1 if radius_mm < 20.0 else 0.25


def _draw_delta(rng: np.random.Generator, contrast: str, diameter: float, recipe: TumorRecipe) -> float:
    """HU offset of the tumour's mean from the liver median; tiny tumours are subtler unless the
    recipe says otherwise."""
    size_factor = float(np.clip(0.55 + 0.45 * (diameter - 4.0) / 16.0, 0.55, 1.0)) if recipe.small_are_subtler else 1.0
    lo, hi = recipe.hypo_delta_hu if contrast == "hypo" else recipe.hyper_delta_hu
    magnitude = max(rng.uniform(lo, hi) * size_factor, min(_MIN_ABS_DELTA_HU, lo))
    return -magnitude if contrast == "hypo" else magnitude


def _blend_tumor(ct: np.ndarray, box: Tuple[slice, ...], weight: np.ndarray, signed_mm: np.ndarray, core: np.ndarray,
                 shape: _TumorShape, stats: _LiverStats, delta: float, rng: np.random.Generator,
                 spacing: np.ndarray, recipe: TumorRecipe) -> Dict:
    """Write the tumour into ``ct[box]``: its texture replaces the smooth background, the
    image's own fine noise stays."""
    region = ct[box]
    background = ndimage.gaussian_filter(region, sigma=_voxels(2.0, spacing), mode="nearest")
    # keep the image's own fine noise, but not what an engulfed or nearby vessel leaves in it
    cap = max(3.0 * stats.noise, 4.0)
    fine_noise = np.clip(region - background, -cap, cap)
    mean_hu = max(stats.median + delta, -5.0)
    texture_scale_mm = rng.uniform(*recipe.texture_scale_mm)
    texture = rng.uniform(*recipe.texture_hu) * _unit_noise(rng, region.shape, _voxels(texture_scale_mm, spacing))
    tumor_hu = mean_hu + texture
    necrotic = bool(delta < 0 and shape.radius > 15.0 and rng.random() < recipe.necrosis_probability)
    if necrotic:
        inner = 1.0 / (1.0 + np.exp(-(signed_mm - rng.uniform(0.4, 0.7) * shape.radius) / 2.0))
        tumor_hu = tumor_hu - rng.uniform(10.0, 30.0) * inner
    rim = bool(shape.radius >= 8.0 and rng.random() < recipe.rim_probability)
    if rim:
        thickness = rng.uniform(1.0, min(2.5, 0.2 * shape.radius))
        ring = np.exp(-((signed_mm - thickness / 2.0) / (thickness / 2.0)) ** 2)
        tumor_hu = tumor_hu + (stats.median + rng.uniform(10.0, 40.0) - mean_hu) * ring
    calcified = bool(shape.radius >= 6.0 and rng.random() < recipe.calcification_probability)
    if calcified:
        tumor_hu = tumor_hu + _calcifications(rng, core, spacing)
    region += weight * (tumor_hu + fine_noise - region)
    return {"delta_hu": round(float(delta), 2), "mean_hu": round(float(region[core].mean()), 2),
            "rim": rim, "necrotic": necrotic, "calcified": calcified}


def _calcifications(rng: np.random.Generator, core: np.ndarray, spacing: np.ndarray) -> np.ndarray:
    """1-4 bright specks (150-500 HU above the tumour, 1-5 mm) at random places in the core."""
    specks = np.zeros(core.shape, dtype=np.float32)
    inside = np.flatnonzero(core)
    for _ in range(int(rng.integers(1, 5))):
        point = np.array(np.unravel_index(int(inside[rng.integers(inside.size)]), core.shape))
        radius = rng.uniform(0.5, 2.5)
        grids = [((np.arange(n) - c) * s).astype(np.float32) for n, c, s in zip(core.shape, point, spacing)]
        kk, jj, ii = np.meshgrid(*grids, indexing="ij", sparse=True)
        blob = np.exp(-(kk ** 2 + jj ** 2 + ii ** 2) / (2.0 * radius ** 2))
        specks = np.maximum(specks, rng.uniform(150.0, 500.0) * blob)
    return specks


def _unit_noise(rng: np.random.Generator, shape: Tuple[int, ...], sigma_vox: np.ndarray) -> np.ndarray:
    """Gaussian-smoothed white noise rescaled to zero mean and unit standard deviation."""
    noise = ndimage.gaussian_filter(rng.standard_normal(shape).astype(np.float32), sigma=sigma_vox, mode="reflect")
    std = float(noise.std())
    return (noise - float(noise.mean())) / std if std > 0 else noise


def _voxels(mm: float, spacing: np.ndarray) -> np.ndarray:
    return np.maximum(mm / np.asarray(spacing, dtype=np.float64), 0.3)
