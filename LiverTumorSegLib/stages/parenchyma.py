"""Model-free tumor candidates: regions that are darker than this scan's own liver parenchyma.

A large, mildly hypodense lesion (10-40 HU below the liver) is plain to see against the
patient's own parenchyma, even where a tumor model trained on synthetic lesions stays
under-confident. The method, all on the liver crop's grid (arrays + spacing in, arrays out):

1. :func:`parenchyma_statistics`: the parenchyma's HU is the mode of the smoothed HU over the
   liver's interior (eroded by a few mm), vessels (voxels clearly brighter than the parenchyma
   after light smoothing) and fat (< -20 HU) left out; its spread (texture + residual noise at
   that smoothing) is the one-sided robust deviation above the mode, where lesions do not lie.
   By default the parenchyma HU is a quadratic trend of position (``trend_order``), fitted by
   asymmetric least squares so that dark lesions barely bend it, and without what the tumour
   model calls even weakly tumour: a real liver may be 20-30 HU darker at its back than at its
   front, which one HU for the whole liver reads as a lesion.
2. :func:`hypodensity_map`: how far each liver voxel's smoothed HU (smoothed inside the liver
   only, vessels, fat and the surface shell left out, so neither fat outside nor a vessel inside
   shifts it) lies below the parenchyma, as a logistic around max(k spreads, a minimum HU
   difference); optionally at a second, coarse scale too (a large, mildly hypodense,
   heterogeneous lesion is patchy at 2.5 mm in a noisy scan and whole at 6 mm). A thin
   shell under the liver's surface (and around fissure fat) is dark from partial volume with fat;
   there the map is kept only where it continues a dark region that reaches the interior, so a
   lesion at the surface is found whole while a partial-volume rim is not.
3. :func:`hypodense_candidates`: connected regions of the map above a threshold, enclosed holes
   filled, with their volume, size, thickness, mean map value and mean HU below the parenchyma;
   too small or too thin ones (noise specks, vessels, rims) are dropped.
4. :func:`combine_with_model`: the tumor probability raised to ``weight * map`` inside the
   candidates where the model already has evidence (probability >= 0.5 on at least 10 % of the
   candidate, or on 1 mL of it); nothing changes elsewhere. The prior completes lesions the ensemble found in
   part; it never draws a lesion on its own: alone, the map finds 20-31 mL of "tumour" in each
   tumour-free real liver (a dependent darkening of the posterior liver, unenhanced vessels,
   neighbours the liver mask took in), gated by the model it adds none.
   :func:`parenchyma_candidates` runs 1-3 on a ~1.5 mm working grid and
   :func:`apply_parenchyma_prior` runs 1-4 for the pipeline, switched and tuned by a
   :class:`ParenchymaPrior`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, replace
from typing import Dict, List, Optional, Sequence, Tuple, Union

import numpy as np
from scipy import ndimage

Spacing = Sequence[float]


@dataclass(frozen=True)
class ParenchymaPrior:
    """Switch and numbers of the parenchyma prior. The defaults were chosen on validation data
    (synthetic tumours of every kind in ts_upper_abdomen_3mm and chaos_ct_1, tumour-free livers
    for false positives; ``scripts/measure_parenchyma_candidates.py``)."""

    enabled: bool = True
    smoothing_mm: float = 2.5  # Gaussian sigma of the smoothed HU the map compares ...
    # ... and of an optional second, coarse scale (0: off). 6 mm found more of chaos_ct_1's large
    # mild lesions (Dice 0.40 -> 0.61) but merged lesions with a broad dependent darkening of
    # ts_upper_abdomen_3mm's posterior liver (up to 45 mL false tumour), so it is off.
    coarse_smoothing_mm: float = 0.0
    erosion_mm: float = 4.0  # the interior used for the statistics lies this deep in the liver
    fat_hu: float = -20.0  # fissure fat and partial volume with outside fat: never tumor here
    vessel_spreads: float = 3.0  # vessels: lightly smoothed HU above parenchyma + max(this * spread, ...)
    vessel_min_hu: float = 15.0  # ... this many HU
    threshold_spreads: float = 3.0  # the map is 0.5 at max(this * spread, min_delta_hu) below the parenchyma
    min_delta_hu: float = 10.0
    softness: float = 0.2  # logistic width as a fraction of that threshold
    shell_mm: float = 3.0  # the surface shell where the map must continue an interior region
    candidate_threshold: float = 0.5  # map value a candidate's voxels reach
    half_contrast: float = 0.5  # a candidate is drawn at this fraction of its own median darkness (0: off)
    min_diameter_mm: float = 10.0  # candidates smaller (equivalent diameter) are dropped
    min_thickness_mm: float = 3.0  # candidates without a ball of this radius inside are dropped (vessels, rims)
    # > 0: each candidate (as drawn at its half contrast) is opened by a ball of this radius: what
    # no such ball fits in (a thin band of a neighbour the liver mask took in along its surface, a
    # vessel or rim joined to a lesion) is cut off, so it is not raised with the lesion it touches.
    # Off: on validation (tune_postprocess, 110 cases with the 40 mm slabs, default overlap, with
    # min_support_ml 1) 3 mm took tumour outside the reference livers from 20.9 to 14.3 mL but mean
    # Dice per case from 0.652 to 0.647 (large iso-dense 0.58 -> 0.55): heterogeneous lesions are
    # spongy at half contrast, and a larger ball cuts them apart (washout 0.70 -> 0.56 at 4.5 mm)
    opening_mm: float = 0.0
    model_floor: float = 0.5  # model evidence: voxels of a candidate where the probability reaches this ...
    # ... making up at least this fraction of the candidate. 0.10, chosen on validation (30 cases)
    # with the round-9 tumour members: at 0.05 the prior grew their 0.8 mL seed in a tumour-free
    # liver's wedge-shaped darkening into a 4.5 mL false lesion (1.1 mL at 0.10), mean Dice per
    # case 0.656 -> 0.657; with the round-8 members 0.05 and 0.10 were level (0.648 / 0.649).
    min_support_fraction: float = 0.10
    # > 0: a candidate is also supported where its model evidence makes up at least this many mL,
    # whatever its fraction: a large lesion seen whole by the map is completed from a found part
    # of a few mL, which is less than min_support_fraction of it. Validation (tune_postprocess, 110
    # cases): 0 / 1 mL gave mean Dice per case 0.638 / 0.652 (a surface lesion on a 40 mm slab
    # 0.09 -> 0.83), nothing else changed (tumour-free livers at most 0.54 mL either way)
    min_support_ml: float = 1.0
    reach_mm: float = 0.0  # > 0: only a candidate's voxels this close to model evidence are raised
    # > 0: only a candidate's voxels within this many times the equivalent radius of the nearest
    # piece of model evidence are raised: a lesion the model found in part grows by about its own
    # size, not into a broad darker region it happens to touch
    reach_factor: float = 0.0
    # > 0: inside a supported candidate only voxels at least this fraction as dark (below the
    # parenchyma) as the candidate's model evidence is (its median) are raised: a lesion found in
    # part is completed where it is about as dark as the part found, not across a milder broad
    # darkening that joins several lesions into one candidate
    anchor_fraction: float = 0.0
    weight: float = 1.0  # probability' = max(probability, weight * map) inside supported candidates
    working_mm: float = 1.5  # in-plane voxels finer than this are averaged in blocks first (0: never)
    # The parenchyma's HU as a smooth function of position (0: one HU for the whole liver; 1: a
    # linear, 2: a quadratic trend, fitted by asymmetric least squares over the interior), so a
    # scan whose posterior liver is 20-30 HU darker than its anterior (dependent contrast, beam
    # hardening; the held-out ts_dicom_upper_abdomen) is not read as one broad hypodense region.
    # Chosen on validation (tune_postprocess, 58 cases at overlap 0.5), with fit_without_evidence:
    # mean Dice per case 0.6288 (none) / 0.6187 (linear) / 0.6407 (quadratic), worst kind 0.19 /
    # 0.12 / 0.24; washout lesions gain (0.52 -> 0.68 whole, 0.19 -> 0.32 on 40 mm slabs), large
    # iso-dense ones filling much of a slab lose (0.54 -> 0.45; whole scans 0.60 -> 0.59).
    trend_order: int = 2
    # True: the statistics and the trend leave out what the tumour model already calls tumour
    # (probability >= model_floor), so a large lesion the model found in part bends them less
    # (validation with the quadratic trend: 0.6354 -> 0.6407, large iso-dense 0.56 -> 0.59 whole)
    fit_without_evidence: bool = True
    # > 0: with fit_without_evidence, the model's voxels from this probability up are left out of
    # the statistics and the trend (0: from model_floor): the model is under-confident on large
    # mild lesions (0.2-0.5), and each such voxel left in bends the trend into the lesion, while a
    # darker dependent liver, where the model sees nothing, is still followed. Validation
    # (tune_postprocess, 126 cases with the 40 mm slabs): 0 (0.5) / 0.3 / 0.2 / 0.1 gave mean Dice
    # per case 0.668 / 0.671 / 0.674 / 0.680, tumour outside the reference livers 34.0 / 36.3 /
    # 37.0 / 43.3 mL (0.1: 6 mL along a neighbour the liver mask took in), large iso-dense 0.58 /
    # 0.60 / 0.61 / 0.62 (40 mm slabs 0.46 / 0.48 / 0.49 / 0.51), metastases 0.75 -> 0.73
    fit_exclude_probability: float = 0.2
    # The trend's asymmetric least squares: a voxel below the current fit weighs this much (one
    # above it 1 - this), ...
    trend_low_weight: float = 0.1
    # ... and one more than this many spreads below it nothing (0: every voxel below keeps
    # trend_low_weight), so a large lesion, once the fit is above it, stops bending the trend.
    # Off: on validation 2 spreads (with min_support_ml 1) lifted mean Dice per case 0.652 -> 0.666
    # (large iso-dense 0.58 -> 0.61, on 40 mm slabs 0.46 -> 0.53), but the trend then no longer
    # follows a real liver's darker back either: on the held-out ts_dicom_upper_abdomen a surface
    # lesion there grew into 94 mL of tumour along the whole posterior liver (reference 11 mL).
    # Validation now holds that case's kind (surface and classic lesions on a dependent
    # darkening): with them, 2 spreads gave 0.668 -> 0.674 mean but surface lesions on the
    # darkening 0.77 -> 0.65 and tumour outside the reference livers 34 -> 49 mL
    trend_drop_spreads: float = 0.0

    @property
    def fit_exclude_floor(self) -> float:
        """The model probability from which voxels are left out of the statistics and the trend
        (with ``fit_without_evidence``): ``fit_exclude_probability``, or ``model_floor`` when 0."""
        return self.fit_exclude_probability if self.fit_exclude_probability > 0 else self.model_floor


@dataclass(frozen=True)
class ParenchymaStats:
    """The scan's own liver parenchyma, measured by :func:`parenchyma_statistics`."""

    median_hu: float  # parenchyma HU (mode of the smoothed interior, refined by the median near it)
    spread_hu: float  # robust SD of the smoothed parenchyma (texture + residual noise)
    vessel_hu: float  # lightly smoothed HU above which a liver voxel is a vessel
    smoothing_mm: float  # the smoothing the spread was measured at (the map's)
    n_voxels: int  # interior voxels the statistics came from
    coarse_spread_hu: float = math.nan  # the spread at the coarse scale (NaN: no coarse scale)
    coarse_smoothing_mm: float = 0.0
    trend: Tuple[float, ...] = ()  # coefficients of the parenchyma's trend (:func:`trend_terms`); () none
    trend_origin_mm: Tuple[float, float, float] = (0.0, 0.0, 0.0)  # where the trend's terms are 0 (k, j, i)

    def background(self, shape: Sequence[int], spacing_kji: Spacing) -> Union[float, np.ndarray]:
        """The parenchyma's HU at each voxel of a grid of ``shape``: ``median_hu`` plus the trend."""
        if not self.trend:
            return self.median_hu
        return self.median_hu + _trend_at(shape, spacing_kji, self.trend, self.trend_origin_mm)


@dataclass(frozen=True)
class Candidate:
    """One hypodense region of the map (``label`` in the labels array)."""

    label: int
    n_voxels: int
    volume_ml: float
    diameter_mm: float  # equivalent diameter
    thickness_mm: float  # radius of the largest ball inside it
    mean_map: float
    mean_delta_hu: float  # parenchyma HU minus the region's mean HU (positive: darker)
    kept: bool  # large and thick enough
    scale: int = 0  # the map it came from: 0 fine, 1 coarse


# --- helpers -----------------------------------------------------------------------------------

def _sigma_voxels(mm: float, spacing: Spacing) -> List[float]:
    return [mm / float(s) for s in spacing]


def _check(hu: np.ndarray, mask: np.ndarray, spacing: Spacing) -> Tuple[np.ndarray, np.ndarray]:
    hu, mask = np.asarray(hu), np.asarray(mask)
    if hu.ndim != 3 or hu.shape != mask.shape:
        raise ValueError(f"HU and liver mask must be 3-D arrays of one shape, got {hu.shape} and {mask.shape}")
    if len(spacing) != 3 or min(spacing) <= 0:
        raise ValueError(f"spacing_kji must be three positive spacings in mm, got {tuple(spacing)}")
    return hu.astype(np.float32, copy=False), mask > 0


def smooth_within(hu: np.ndarray, weight: np.ndarray, spacing_kji: Spacing, sigma_mm: float) -> np.ndarray:
    """Gaussian smoothing of ``hu`` that averages only voxels where ``weight`` is set (normalised
    convolution); elsewhere too far from any such voxel, the HU itself. float32."""
    w = weight.astype(np.float32)
    sigma = _sigma_voxels(sigma_mm, spacing_kji)
    num = ndimage.gaussian_filter(hu * w, sigma, mode="nearest", truncate=3.0)
    den = ndimage.gaussian_filter(w, sigma, mode="nearest", truncate=3.0)
    out = np.where(den > 1e-3, num / np.maximum(den, 1e-3), hu)
    return out.astype(np.float32, copy=False)


def depth_mm(mask: np.ndarray, spacing_kji: Spacing) -> np.ndarray:
    """Distance (mm) of each mask voxel to the nearest voxel outside it (the array's border is
    outside); 0 outside. float32."""
    padded = np.pad(mask, 1)
    return ndimage.distance_transform_edt(padded, sampling=spacing_kji)[1:-1, 1:-1, 1:-1].astype(np.float32)


def opening(mask: np.ndarray, spacing_kji: Spacing, radius_mm: float) -> np.ndarray:
    """Morphological opening (bool) of ``mask`` by a ball of ``radius_mm``, by physical distance:
    the voxels of ``mask`` that such a ball inside it covers."""
    core = ndimage.distance_transform_edt(mask, sampling=spacing_kji) > radius_mm
    if not core.any():
        return core
    return ndimage.distance_transform_edt(~core, sampling=spacing_kji) <= radius_mm


def _mode(values: np.ndarray, bin_hu: float = 1.0, smooth_hu: float = 2.0) -> float:
    """Mode of ``values`` from a histogram smoothed by ``smooth_hu``."""
    lo, hi = float(np.floor(values.min())), float(np.ceil(values.max())) + bin_hu
    counts, edges = np.histogram(values, bins=max(int((hi - lo) / bin_hu), 1), range=(lo, hi))
    counts = ndimage.gaussian_filter1d(counts.astype(np.float64), smooth_hu / bin_hu, mode="constant")
    peak = int(np.argmax(counts))
    return float(0.5 * (edges[peak] + edges[peak + 1]))


def _peak(values: np.ndarray) -> Tuple[float, float]:
    """(centre, spread) of the main peak: the histogram mode refined by the median within 2
    upper spreads of it; the spread from the upper side only (lesions lie below the parenchyma)."""
    center = _mode(values)
    spread = 1.0
    for _ in range(3):
        upper = values[values >= center] - center
        spread = max(float(np.median(upper)) / 0.6745, 1.0) if upper.size else 1.0
        near = values[np.abs(values - center) <= 2.0 * spread]
        if near.size:
            center = float(np.median(near))
    return center, spread


_TREND_SCALE_MM = 100.0  # positions enter the trend in units of 10 cm (well-conditioned terms)
_TREND_MIN_EXTENT_MM = 60.0  # an axis the liver spans for less gets no trend terms
_TERM_AXES = ((0,), (1,), (2,), (0, 0), (1, 1), (2, 2), (0, 1), (0, 2), (1, 2))  # the axes each term multiplies


def _axes_mm(shape: Sequence[int], spacing_kji: Spacing, origin_mm: Sequence[float]) -> List[np.ndarray]:
    """Per array axis, the voxel centres' positions (in units of 10 cm from ``origin_mm``),
    shaped to broadcast over a grid of ``shape``."""
    axes = []
    for axis, (n, s, o) in enumerate(zip(shape, spacing_kji, origin_mm)):
        view = [1, 1, 1]
        view[axis] = int(n)
        axes.append(((np.arange(n, dtype=np.float32) * float(s) - float(o)) / _TREND_SCALE_MM).reshape(view))
    return axes


def trend_terms(axes: Sequence[np.ndarray], count: int) -> List[np.ndarray]:
    """The first ``count`` terms of a trend in positions ``axes`` (k, j, i): the 3 linear terms,
    then the 6 quadratic ones (3 for a linear trend, 9 for a quadratic)."""
    if count not in (3, 9):
        raise ValueError(f"a trend has 3 (linear) or 9 (quadratic) terms, got {count}")
    terms = []
    for term in _TERM_AXES[:count]:
        product = axes[term[0]]
        for axis in term[1:]:
            product = product * axes[axis]
        terms.append(product)
    return terms


def _trend_at(shape: Sequence[int], spacing_kji: Spacing, trend: Sequence[float],
              origin_mm: Sequence[float]) -> np.ndarray:
    """The trend's value (HU, about 0 at ``origin_mm``) at each voxel of a grid of ``shape``."""
    terms = trend_terms(_axes_mm(shape, spacing_kji, origin_mm), len(trend))
    return sum(c * t for c, t in zip(trend, terms))


def _fit_trend(values: np.ndarray, where: np.ndarray, spacing_kji: Spacing, prior: ParenchymaPrior,
               spread: float) -> Tuple[Tuple[float, ...], Tuple[float, float, float]]:
    """Coefficients (and origin) of a trend (``prior.trend_order``) of ``values`` over ``where``
    fitted by asymmetric least squares: a voxel below the current fit weighs
    ``trend_low_weight`` (one above it the rest of 1), one more than ``trend_drop_spreads``
    spreads below (when > 0) or 3 spreads above it (a vessel left over) nothing. Lesions are
    dark, so the trend follows the parenchyma's upper side and a large lesion hardly bends it;
    the constant offset this leaves is the parenchyma's peak, measured afterwards."""
    points = np.argwhere(where)
    if len(points) > 200_000:  # a regular subsample is plenty for at most 9 numbers
        points = points[:: len(points) // 200_000 + 1]
    mm = points.astype(np.float32) * np.asarray(spacing_kji, np.float32)
    origin = tuple(float(v) for v in mm.mean(axis=0))
    pos = (mm - np.asarray(origin, np.float32)) / _TREND_SCALE_MM
    count = 3 if prior.trend_order == 1 else 9
    # An axis along which the liver spans less than _TREND_MIN_EXTENT_MM (a scan covering part of
    # it) gets no terms: over a few cm a trend cannot be told apart from a large lesion.
    extent = mm.max(axis=0) - mm.min(axis=0)
    used = np.array([all(extent[a] >= _TREND_MIN_EXTENT_MM for a in term) for term in _TERM_AXES[:count]])
    design = np.stack([np.ones(len(pos), np.float32)] + trend_terms([pos[:, 0], pos[:, 1], pos[:, 2]], count), axis=1)
    design = design[:, np.concatenate([[True], used])]
    target = values[tuple(points.T)].astype(np.float32)
    weights = np.ones(len(target), np.float32)
    fitted = np.zeros(design.shape[1], np.float32)
    for _ in range(8):
        root = np.sqrt(weights)[:, None]
        fitted = np.linalg.lstsq(design * root, target * root[:, 0], rcond=None)[0]
        residual = target - design @ fitted
        weights = np.where(residual >= 0.0, 1.0 - prior.trend_low_weight, prior.trend_low_weight).astype(np.float32)
        weights[residual > 3.0 * spread] = 0.0
        if prior.trend_drop_spreads > 0:
            weights[residual < -prior.trend_drop_spreads * spread] = 0.0
    coefficients = np.zeros(count, np.float32)
    coefficients[used] = fitted[1:]
    return tuple(float(c) for c in coefficients), origin  # type: ignore[return-value]


def _light(hu: np.ndarray, spacing_kji: Spacing) -> np.ndarray:
    """Lightly smoothed HU (1 mm): what tells fat and vessels apart from the parenchyma."""
    return ndimage.gaussian_filter(hu, _sigma_voxels(1.0, spacing_kji), mode="nearest", truncate=3.0)


@dataclass
class _Liver:
    """What every step needs of one liver, computed once: the HU, the lightly smoothed HU, the
    liver without fat and each of its voxels' depth under the surface (mm)."""

    hu: np.ndarray
    spacing: Tuple[float, float, float]
    light: np.ndarray
    not_fat: np.ndarray
    depth: np.ndarray
    _smoothed: Dict[Tuple[float, float], np.ndarray] = field(default_factory=dict)

    @classmethod
    def prepare(cls, hu_crop: np.ndarray, liver_mask: np.ndarray, spacing_kji: Spacing,
                prior: "ParenchymaPrior") -> "_Liver":
        hu, liver = _check(hu_crop, liver_mask, spacing_kji)
        light = _light(hu, spacing_kji)
        not_fat = liver & (light > prior.fat_hu)
        spacing = tuple(float(v) for v in spacing_kji)
        return cls(hu, spacing, light, not_fat, depth_mm(not_fat, spacing))  # type: ignore[arg-type]

    def tissue(self, vessel_hu: float) -> np.ndarray:
        """The liver without fat and vessels (lightly smoothed HU above ``vessel_hu``)."""
        return self.not_fat & (self.light <= vessel_hu)

    def smoothed(self, vessel_hu: float, sigma_mm: float, shell_mm: float) -> np.ndarray:
        """HU smoothed by ``sigma_mm`` over the liver's tissue only: fat, vessels and the
        partial-volume shell (``shell_mm`` under the surface) are left out of the average, so a
        shell voxel takes the interior's value. Kept for the next call with the same numbers."""
        key = (float(vessel_hu), float(sigma_mm))
        if key not in self._smoothed:
            tissue = self.tissue(vessel_hu)
            weights = tissue & (self.depth > shell_mm)
            if not weights.any():
                weights = tissue
            self._smoothed[key] = smooth_within(self.hu, weights, self.spacing, sigma_mm)
        return self._smoothed[key]


# --- 1. statistics ---------------------------------------------------------------------------------

def parenchyma_statistics(hu_crop: np.ndarray, liver_mask: np.ndarray, spacing_kji: Spacing,
                          prior: ParenchymaPrior = ParenchymaPrior()) -> ParenchymaStats:
    """The scan's own parenchyma HU and spread, measured in the liver's interior.

    Light smoothing (1 mm) gives a first parenchyma peak and the vessel threshold (peak +
    max(``vessel_spreads`` spreads, ``vessel_min_hu``)); the final HU and spread are the peak of
    the map's smoothing (``smoothing_mm``, inside the liver, vessels and fat left out) over the
    interior (``erosion_mm`` deep), about the parenchyma's trend when ``trend_order`` > 0 (the HU
    at each voxel: :meth:`ParenchymaStats.background`). Raises ValueError on an empty liver."""
    if not np.any(liver_mask):
        raise ValueError("the liver mask is empty: there is no parenchyma to measure")
    return _statistics(_Liver.prepare(hu_crop, liver_mask, spacing_kji, prior), prior)


def _statistics(liver: _Liver, prior: ParenchymaPrior, exclude: Optional[np.ndarray] = None) -> ParenchymaStats:
    interior = liver.depth > prior.erosion_mm
    if interior.sum() < 200:  # a thin or tiny liver: use what there is
        interior = liver.not_fat if liver.not_fat.any() else liver.depth >= 0
    center, spread = _peak(liver.light[interior])
    vessel_hu = round(center + max(prior.vessel_spreads * spread, prior.vessel_min_hu), 2)
    measured = interior & liver.tissue(vessel_hu)
    if not measured.any():
        measured = interior
    if exclude is not None and np.count_nonzero(measured & ~exclude) >= 200:
        measured = measured & ~exclude
    smooth = liver.smoothed(vessel_hu, prior.smoothing_mm, prior.shell_mm)
    center, spread = _peak(smooth[measured])
    trend, origin = (), (0.0, 0.0, 0.0)
    if prior.trend_order not in (0, 1, 2):
        raise ValueError(f"trend_order must be 0, 1 or 2, got {prior.trend_order}")
    if prior.trend_order > 0:
        if not 0.0 < prior.trend_low_weight <= 0.5 or prior.trend_drop_spreads < 0:
            raise ValueError("trend_low_weight must lie in (0, 0.5] and trend_drop_spreads be >= 0, got "
                             f"{prior.trend_low_weight} and {prior.trend_drop_spreads}")
        trend, origin = _fit_trend(smooth, measured, liver.spacing, prior, spread)
    fitted = _trend_at(smooth.shape, liver.spacing, trend, origin) if trend else 0.0
    if trend:
        center, spread = _peak((smooth - fitted)[measured])
    coarse_spread = math.nan
    if prior.coarse_smoothing_mm > 0:
        values = (liver.smoothed(vessel_hu, prior.coarse_smoothing_mm, prior.shell_mm) - fitted)[measured]
        upper = values[values >= center] - center  # about the fine scale's centre
        coarse_spread = max(float(np.median(upper)) / 0.6745, 1.0) if upper.size else 1.0
    return ParenchymaStats(median_hu=round(center, 2), spread_hu=round(spread, 2), vessel_hu=vessel_hu,
                           smoothing_mm=prior.smoothing_mm, n_voxels=int(measured.sum()),
                           coarse_spread_hu=round(coarse_spread, 2), coarse_smoothing_mm=prior.coarse_smoothing_mm,
                           trend=trend, trend_origin_mm=origin)


# --- 2. map ----------------------------------------------------------------------------------------

def _threshold(stats: ParenchymaStats, prior: ParenchymaPrior, coarse: bool = False) -> float:
    spread = stats.coarse_spread_hu if coarse else stats.spread_hu
    return max(prior.threshold_spreads * spread, prior.min_delta_hu)


def _delta(liver: _Liver, stats: ParenchymaStats, prior: ParenchymaPrior, coarse: bool = False) -> np.ndarray:
    """HU by which each liver voxel's smoothed HU (the fine or the coarse scale) lies below the
    parenchyma (float32; 0 off the liver's tissue)."""
    sigma = stats.coarse_smoothing_mm if coarse else stats.smoothing_mm
    smoothed = liver.smoothed(stats.vessel_hu, sigma, prior.shell_mm)
    delta = (stats.background(smoothed.shape, liver.spacing) - smoothed).astype(np.float32)
    delta[~liver.not_fat] = 0.0
    return delta


def hypodensity_map(hu_crop: np.ndarray, liver_mask: np.ndarray, spacing_kji: Spacing,
                    stats: Optional[ParenchymaStats] = None,
                    prior: ParenchymaPrior = ParenchymaPrior()) -> np.ndarray:
    """float32 in [0, 1] on the crop grid: how strongly each liver voxel's smoothed HU lies below
    the parenchyma, ``sigmoid((median - smoothed - t) / (softness * t))`` with ``t = max(k *
    spread, min_delta_hu)``, the larger of the fine and the coarse scale's. 0 outside
    ``liver_mask`` (pass the tumor search region) and on fat (< ``fat_hu``); in the ``shell_mm``
    shell under the surface (and around fissure fat) only where a dark region (map >= 0.5)
    continues from the interior."""
    if not np.any(liver_mask):
        return np.zeros(np.shape(hu_crop), np.float32)
    liver = _Liver.prepare(hu_crop, liver_mask, spacing_kji, prior)
    stats = stats or _statistics(liver, prior)
    return np.max([scale.map for scale in _scales(liver, stats, prior)], axis=0)


@dataclass
class _Scale:
    """One smoothing scale's darkness below the parenchyma (HU), its threshold and its map."""

    delta: np.ndarray
    threshold: float
    map: np.ndarray


def _scales(liver: _Liver, stats: ParenchymaStats, prior: ParenchymaPrior) -> List[_Scale]:
    coarse = [True] if stats.coarse_smoothing_mm > 0 and math.isfinite(stats.coarse_spread_hu) else []
    scales = []
    for is_coarse in [False] + coarse:
        delta = _delta(liver, stats, prior, coarse=is_coarse)
        threshold = _threshold(stats, prior, coarse=is_coarse)
        scales.append(_Scale(delta, threshold, _map(delta, threshold, liver, prior)))
    return scales


def _map(delta: np.ndarray, threshold: float, liver: _Liver, prior: ParenchymaPrior) -> np.ndarray:
    z = (delta - threshold) / (prior.softness * threshold)
    hypo = (1.0 / (1.0 + np.exp(-np.clip(z, -30.0, 30.0)))).astype(np.float32)
    hypo[~liver.not_fat] = 0.0
    # The shell: dark from partial volume with fat; kept only where it continues an interior region.
    shell = liver.not_fat & (liver.depth <= prior.shell_mm)
    if shell.any():
        dark = hypo >= 0.5
        labels, count = ndimage.label(dark)
        if count:
            interior_counts = np.bincount(labels[dark & ~shell], minlength=count + 1)
            voxel_mm3 = float(np.prod(liver.spacing))
            supported = interior_counts * voxel_mm3 >= (4.0 / 3.0) * math.pi * 2.5 ** 3  # a 5 mm ball
            supported[0] = False
            keep = ndimage.binary_dilation(supported[labels], iterations=1)
        else:
            keep = np.zeros(hypo.shape, bool)
        hypo[shell & ~keep] = 0.0
    return hypo


# --- 3. candidates ------------------------------------------------------------------------------------

def hypodense_candidates(hypodensity: np.ndarray, spacing_kji: Spacing, hu_crop: Optional[np.ndarray] = None,
                         stats: Optional[ParenchymaStats] = None,
                         prior: ParenchymaPrior = ParenchymaPrior(),
                         liver_mask: Optional[np.ndarray] = None) -> Tuple[np.ndarray, List[Candidate]]:
    """Connected regions (6-connected) of ``hypodensity >= candidate_threshold``, enclosed holes
    filled. Returns (int32 labels of the kept candidates, 0 = none; the candidates at least
    ``min_diameter_mm`` large, with their measures; smaller specks are not listed). Kept:
    equivalent diameter >= ``min_diameter_mm`` and a ball of radius ``min_thickness_mm`` fits
    inside (vessels and thin rims do not).

    Given the CT, its statistics and the liver mask, a candidate is drawn at its own half
    contrast (voxels at least ``half_contrast`` times the median darkness of its core, the half
    farthest from its border, below the parenchyma, where that is above the map's threshold):
    the smoothing blurs a dark lesion beyond its edge, and the map's fixed threshold would draw
    it too large. Its mean darkness is then that of the (fine scale's) smoothed HU, else of the HU."""
    delta, threshold = None, math.inf
    if hu_crop is not None and stats is not None and liver_mask is not None and np.any(liver_mask):
        delta = _delta(_Liver.prepare(hu_crop, liver_mask, spacing_kji, prior), stats, prior)
        threshold = _threshold(stats, prior)
    elif hu_crop is not None and stats is not None:
        hu = np.asarray(hu_crop, np.float32)
        delta = (stats.background(hu.shape, spacing_kji) - hu).astype(np.float32)  # measured, not refined
    return _candidates(hypodensity, delta, threshold, spacing_kji, prior)


def _candidates(hypodensity: np.ndarray, delta: Optional[np.ndarray], threshold: float, spacing_kji: Spacing,
                prior: ParenchymaPrior, scale: int = 0) -> Tuple[np.ndarray, List[Candidate]]:
    """Candidates of one map; drawn at half contrast on ``delta`` where that lies above ``threshold``."""
    hypodensity = np.asarray(hypodensity, dtype=np.float32)
    spacing = tuple(float(v) for v in spacing_kji)
    dark = ndimage.binary_fill_holes(hypodensity >= prior.candidate_threshold)
    labels, count = ndimage.label(dark)
    out = np.zeros(labels.shape, np.int32)
    if count == 0:
        return out, []
    voxel_mm3 = float(np.prod(spacing))
    min_voxels = (math.pi / 6.0) * prior.min_diameter_mm ** 3 / voxel_mm3
    sizes = np.bincount(labels.ravel(), minlength=count + 1)
    refine = delta is not None and prior.half_contrast > 0 and math.isfinite(threshold)
    candidates: List[Candidate] = []
    for n, box in enumerate(ndimage.find_objects(labels), start=1):
        if box is None or sizes[n] < min_voxels:
            continue
        box = tuple(slice(max(b.start - 1, 0), min(b.stop + 1, size)) for b, size in zip(box, labels.shape))
        region = labels[box] == n
        inner = depth_mm(region, spacing)
        reshaped = prior.opening_mm > 0
        if refine:
            core = inner >= 0.5 * inner.max()  # its deeper half: not blurred by the smoothing
            level = prior.half_contrast * float(np.median(delta[box][core]))
            if level > threshold:  # a clearly dark lesion, blurred beyond its edge by the smoothing
                region = ndimage.binary_fill_holes(region & (delta[box] >= level))
                reshaped = True
        if prior.opening_mm > 0:
            region = opening(region, spacing, prior.opening_mm)
        if reshaped:
            inner = depth_mm(region, spacing)
        n_voxels = int(region.sum())
        if n_voxels == 0:
            continue
        diameter = (6.0 * n_voxels * voxel_mm3 / math.pi) ** (1.0 / 3.0)
        thickness = float(inner.max())
        kept = bool(diameter >= prior.min_diameter_mm and thickness >= prior.min_thickness_mm)
        if kept:
            out[box][region] = n
        mean_delta = float(delta[box][region].mean()) if delta is not None else float("nan")
        candidates.append(Candidate(label=n, n_voxels=n_voxels, volume_ml=round(n_voxels * voxel_mm3 / 1000.0, 4),
                                    diameter_mm=round(diameter, 2), thickness_mm=round(thickness, 2),
                                    mean_map=round(float(hypodensity[box][region].mean()), 4),
                                    mean_delta_hu=round(mean_delta, 2), kept=kept, scale=scale))
    return out, candidates


# --- 4. combination ----------------------------------------------------------------------------------

def combine_with_model(model_probability: np.ndarray, hypodensity: np.ndarray,
                       candidate_labels: Union[np.ndarray, Sequence[np.ndarray]],
                       prior: ParenchymaPrior = ParenchymaPrior(),
                       spacing_kji: Optional[Spacing] = None,
                       darkness: Optional[np.ndarray] = None) -> np.ndarray:
    """The model's probability raised to ``weight * hypodensity`` inside each kept candidate
    (``candidate_labels`` from :func:`hypodense_candidates`, or one such array per scale, each
    judged on its own) where the model has evidence: at least ``min_support_fraction`` of the
    candidate (and one voxel) at ``model_floor`` or more, or (``min_support_ml`` > 0, needs
    ``spacing_kji``) at least that volume of it. With ``reach_mm`` > 0 (needs
    ``spacing_kji``) only the candidate's voxels within that distance of such model evidence are
    raised; with ``reach_factor`` > 0 only those within that many times the equivalent radius of
    the nearest evidence component; with ``anchor_fraction`` > 0 (needs ``darkness``, HU below
    the parenchyma) only those at least that fraction of the median darkness of the candidate's
    evidence (a candidate whose evidence is not darker than the parenchyma is not raised).
    Unchanged elsewhere. float32, the model's grid."""
    p = np.asarray(model_probability, dtype=np.float32)
    label_sets = [candidate_labels] if isinstance(candidate_labels, np.ndarray) else list(candidate_labels)
    for labels in label_sets:
        if p.shape != np.shape(hypodensity) or p.shape != np.shape(labels):
            raise ValueError(f"probability {p.shape}, map {np.shape(hypodensity)} and candidates "
                             f"{np.shape(labels)} must share one grid")
    anchored = prior.anchor_fraction > 0
    if anchored and (darkness is None or np.shape(darkness) != p.shape):
        raise ValueError(f"anchor_fraction > 0 needs the darkness map on the probability's grid {p.shape}")
    min_support = np.inf  # voxels of model evidence that support a candidate whatever its size
    if prior.min_support_ml > 0:
        if spacing_kji is None:
            raise ValueError("min_support_ml > 0 needs spacing_kji")
        min_support = max(1.0, prior.min_support_ml * 1000.0 / float(np.prod(spacing_kji)))
    inside = np.zeros(p.shape, bool)
    evidence = p >= prior.model_floor
    for labels in label_sets:
        count = int(labels.max()) if labels.size else 0
        if count == 0:
            continue
        sizes = np.bincount(labels.ravel(), minlength=count + 1)
        support = np.bincount(labels[evidence & (labels > 0)], minlength=count + 1)
        supported = (support >= 1) & ((support >= prior.min_support_fraction * sizes) | (support >= min_support))
        supported[0] = False
        if anchored:
            inside |= _as_dark_as_evidence(labels, supported, evidence, np.asarray(darkness, np.float32),
                                           prior.anchor_fraction)
        else:
            inside |= supported[labels]
    out = p.copy()
    if not inside.any():
        return out
    if prior.reach_mm > 0 or prior.reach_factor > 0:
        if spacing_kji is None:
            raise ValueError("reach_mm or reach_factor > 0 needs spacing_kji")
        hits = np.nonzero(inside)
        box = tuple(slice(int(h.min()), int(h.max()) + 1) for h in hits)
        inside[box] &= _within_reach(evidence[box] & inside[box], spacing_kji, prior)
    raised = prior.weight * np.asarray(hypodensity, np.float32)[inside]
    out[inside] = np.maximum(p[inside], raised)
    return out


def _as_dark_as_evidence(labels: np.ndarray, supported: np.ndarray, evidence: np.ndarray, darkness: np.ndarray,
                         fraction: float) -> np.ndarray:
    """The voxels of each ``supported`` candidate at least ``fraction`` times as dark as the
    median darkness of the candidate's ``evidence`` voxels (none where that median is <= 0)."""
    out = np.zeros(labels.shape, bool)
    boxes = ndimage.find_objects(labels)
    for n in np.nonzero(supported)[0]:
        box = boxes[n - 1]
        member = labels[box] == n
        anchor = float(np.median(darkness[box][member & evidence[box]]))
        if anchor > 0:
            out[box] |= member & (darkness[box] >= fraction * anchor)
    return out


def _within_reach(evidence: np.ndarray, spacing_kji: Spacing, prior: ParenchymaPrior) -> np.ndarray:
    """Voxels within ``reach_mm`` of ``evidence`` and (``reach_factor`` > 0) within
    ``reach_factor`` times the equivalent-sphere radius of the nearest evidence component."""
    if not evidence.any():
        return np.zeros(evidence.shape, bool)
    distance, nearest = ndimage.distance_transform_edt(~evidence, sampling=spacing_kji, return_indices=True)
    near = np.ones(evidence.shape, bool) if prior.reach_mm <= 0 else distance <= prior.reach_mm
    if prior.reach_factor > 0:
        pieces, count = ndimage.label(evidence)
        volume_mm3 = np.bincount(pieces.ravel(), minlength=count + 1) * float(np.prod(spacing_kji))
        radius = (3.0 * volume_mm3 / (4.0 * math.pi)) ** (1.0 / 3.0)
        piece = pieces[tuple(nearest)]
        near &= distance <= prior.reach_factor * radius[piece]
    return near


def _block_factors(spacing_kji: Spacing, working_mm: float) -> Tuple[int, int, int]:
    return tuple(max(1, int(working_mm // float(v))) if working_mm > 0 else 1 for v in spacing_kji)  # type: ignore


def _block_mean(array: np.ndarray, factors: Sequence[int]) -> np.ndarray:
    """Mean over blocks of ``factors`` voxels (the array padded at its end by edge values)."""
    pad = [(0, (-n) % f) for n, f in zip(array.shape, factors)]
    a = np.pad(array.astype(np.float32, copy=False), pad, mode="edge")
    k, j, i = (n // f for n, f in zip(a.shape, factors))
    return a.reshape(k, factors[0], j, factors[1], i, factors[2]).mean(axis=(1, 3, 5))


def _upsample(array: np.ndarray, factors: Sequence[int], shape: Sequence[int]) -> np.ndarray:
    for axis, f in enumerate(factors):
        if f > 1:
            array = np.repeat(array, f, axis=axis)
    return array[: shape[0], : shape[1], : shape[2]]


def parenchyma_candidates(hu_crop: np.ndarray, region: np.ndarray, spacing_kji: Spacing,
                          prior: ParenchymaPrior = ParenchymaPrior()
                          ) -> Tuple[np.ndarray, List[np.ndarray], Optional[ParenchymaStats], List[Candidate]]:
    """Steps 1-3 on ``region`` (the tumor search region), on a working grid of about
    ``working_mm`` (in-plane voxels finer than that are averaged in blocks; the map's 2.5 mm
    smoothing makes them redundant), returned on the crop's grid: (hypodensity map float32; per
    scale, fine then coarse, the kept candidates' labels int32; statistics, None for an empty
    region; the candidates of all scales)."""
    return _parenchyma_steps(hu_crop, region, spacing_kji, prior)[:4]


def _parenchyma_steps(hu_crop: np.ndarray, region: np.ndarray, spacing_kji: Spacing, prior: ParenchymaPrior,
                      exclude: Optional[np.ndarray] = None
                      ) -> Tuple[np.ndarray, List[np.ndarray], Optional[ParenchymaStats], List[Candidate],
                                 Optional[np.ndarray]]:
    """:func:`parenchyma_candidates` and, last, when ``anchor_fraction`` > 0 asks for it, the fine
    scale's darkness below the parenchyma (HU, float32, the crop's grid, 0 outside ``region``;
    else None). ``exclude``: voxels the statistics leave out (the model's tumour, with
    ``fit_without_evidence``)."""
    shape = np.shape(hu_crop)
    wanted = prior.anchor_fraction > 0
    if not np.any(region):
        return np.zeros(shape, np.float32), [], None, [], np.zeros(shape, np.float32) if wanted else None
    factors = _block_factors(spacing_kji, prior.working_mm)
    hu, mask, spacing = np.asarray(hu_crop, np.float32), np.asarray(region) > 0, tuple(spacing_kji)
    if exclude is not None:
        exclude = np.asarray(exclude, bool)
    if max(factors) > 1:
        hu, mask = _block_mean(hu, factors), _block_mean(mask, factors) >= 0.5
        exclude = None if exclude is None else _block_mean(exclude, factors) >= 0.5
        spacing = tuple(float(v) * f for v, f in zip(spacing_kji, factors))
        if not mask.any():
            return np.zeros(shape, np.float32), [], None, [], np.zeros(shape, np.float32) if wanted else None
    liver = _Liver.prepare(hu, mask, spacing, prior)
    stats = _statistics(liver, prior, exclude)
    scales = _scales(liver, stats, prior)
    hypo = np.max([scale.map for scale in scales], axis=0)
    darkness = np.where(mask, scales[0].delta, 0.0).astype(np.float32) if wanted else None
    label_sets, candidates = [], []
    for index, scale in enumerate(scales):
        labels, found = _candidates(scale.map, scale.delta, scale.threshold, spacing, prior, index)
        label_sets.append(labels)
        candidates += found
    if max(factors) > 1:
        inside = np.asarray(region) > 0
        hypo = np.where(inside, _upsample(hypo, factors, shape), 0.0).astype(np.float32)
        if darkness is not None:
            darkness = np.where(inside, _upsample(darkness, factors, shape), 0.0).astype(np.float32)
        label_sets = [np.where(inside, _upsample(labels, factors, shape), 0).astype(np.int32) for labels in label_sets]
    return hypo, label_sets, stats, candidates, darkness


@dataclass
class ParenchymaCandidates:
    """Steps 1-3 of one crop (:func:`parenchyma_candidates`), kept so the tumor stage's input
    channel and the prior after it are computed once; ``prior`` is what they were computed with."""

    prior: ParenchymaPrior
    hypodensity: np.ndarray
    label_sets: List[np.ndarray]
    darkness: Optional[np.ndarray] = None  # the fine scale's HU below the parenchyma (for anchor_fraction)
    without_evidence: bool = False  # the statistics left the model's tumour out (fit_without_evidence)

    @classmethod
    def of(cls, hu_crop: np.ndarray, region: np.ndarray, spacing_kji: Spacing,
           prior: ParenchymaPrior = ParenchymaPrior(), exclude: Optional[np.ndarray] = None) -> "ParenchymaCandidates":
        hypo, labels, _, _, darkness = _parenchyma_steps(hu_crop, region, spacing_kji, prior, exclude)
        return cls(prior, hypo, labels, darkness, exclude is not None)

    def fits(self, prior: ParenchymaPrior) -> bool:
        """Whether ``prior`` would compute the same map and candidates (only its combination
        step, step 4, may differ)."""
        steps_4 = ("enabled", "model_floor", "min_support_fraction", "min_support_ml", "reach_mm", "reach_factor",
                   "anchor_fraction", "weight")
        if prior.anchor_fraction > 0 and self.darkness is None:
            return False
        if prior.fit_without_evidence != self.without_evidence:
            return False  # computed before the model's evidence was known, or with it
        if self.without_evidence and prior.fit_exclude_floor != self.prior.fit_exclude_floor:
            return False  # other voxels would have been left out of the statistics
        return replace(self.prior, **{k: getattr(prior, k) for k in steps_4}) == prior


def hypodensity_channel(hu_crop: np.ndarray, region: np.ndarray, spacing_kji: Spacing,
                        prior: ParenchymaPrior = ParenchymaPrior()) -> np.ndarray:
    """The parenchyma map (float32 0..1 on the crop grid, 0 outside ``region``) that tumor models
    with a ``hypodensity`` input channel take, computed as for the prior (whether or not the prior
    itself is enabled), so training and the pipeline give the models the same channel."""
    return parenchyma_candidates(hu_crop, region, spacing_kji, prior)[0]


def apply_parenchyma_prior(model_probability: np.ndarray, hu_crop: np.ndarray, region: np.ndarray,
                           spacing_kji: Spacing, prior: ParenchymaPrior = ParenchymaPrior(),
                           computed: Optional[ParenchymaCandidates] = None) -> np.ndarray:
    """Steps 1-4 for the pipeline: the tumor probability on the crop with the parenchyma prior
    applied inside ``region`` (the tumor search region); the probability itself when disabled.
    ``computed``: steps 1-3 of this crop already done, used when they :meth:`fit <ParenchymaCandidates.fits>`."""
    if not prior.enabled or not np.any(region):
        return np.asarray(model_probability, dtype=np.float32)
    if computed is None or not computed.fits(prior):
        exclude = np.asarray(model_probability) >= prior.fit_exclude_floor if prior.fit_without_evidence else None
        computed = ParenchymaCandidates.of(hu_crop, region, spacing_kji, prior, exclude)
    return combine_with_model(model_probability, computed.hypodensity, computed.label_sets, prior, spacing_kji,
                              computed.darkness)
