"""Synthetic liver tumours inserted into a CT's own liver (real or phantom).

Follows the recipe of "Label-Free Liver Tumor Segmentation" (CVPR 2023) as DESIGN.md
summarises it: a tumour is placed inside the liver away from vessels (voxels clearly brighter
than the parenchyma) and from other clearly darker structures; its shape is a randomly
distorted ellipsoid; its texture is smoothed, scaled noise around a mean that is mostly
hypodense relative to the patient's own liver (measured from the CT); sizes are log-uniform
from tiny (< 5 mm) to large (> 50 mm); its edge is blended into the background like partial
volume. The image's own noise is kept inside the tumour, so noise level is no give-away.
"""

from __future__ import annotations

import math
from typing import Dict, List, Optional, Tuple

import numpy as np
import SimpleITK as sitk
from scipy import ndimage

from .. import LIVER_LABEL, TUMOR_LABEL
from ..errors import LiverTumorSegError
from ..geometry import Geometry

# Weight below which a tumour is treated as absent (its outer extent; the faint rest of the
# partial-volume tail is cut at the liver's boundary, where it is invisible under noise).
_EXTENT_WEIGHT = 0.05
# Hypo/hyperdense contrast ranges (HU relative to the liver median) before size scaling.
_HYPO_DELTA_HU = (20.0, 90.0)
_HYPER_DELTA_HU = (20.0, 60.0)
_MIN_ABS_DELTA_HU = 15.0
_MAX_ATTEMPTS = 40


def insert_tumors(ct_hu: np.ndarray, liver: np.ndarray, spacing_kji: Tuple[float, float, float],
                  rng: np.random.Generator, n_tumors: int,
                  size_range_mm: Tuple[float, float] = (4.0, 60.0), hyper_fraction: float = 0.15,
                  avoid_vessels: bool = True) -> Tuple[np.ndarray, np.ndarray, List[dict]]:
    """Insert up to ``n_tumors`` synthetic tumours into the liver of ``ct_hu``.

    ``ct_hu`` (HU) and ``liver`` (nonzero = liver) are (k, j, i) arrays on one grid with
    ``spacing_kji`` in mm. Returns ``(new_ct float32, tumor_mask uint8 0/1, infos)``; the inputs
    are not modified. Each info has ``center_kji``, ``diameter_mm``, ``radius_mm``, ``contrast``
    ("hypo"|"hyper"), ``delta_hu``, ``volume_ml``, ``n_voxels``, ``mean_hu``, ``rim``, ``necrotic``.
    Fewer tumours than asked are placed when the liver has no room left (``len(infos)`` says).
    """
    ct_in = np.asarray(ct_hu)
    liver_in = np.asarray(liver)
    _check_inputs(ct_in, liver_in, spacing_kji, n_tumors, size_range_mm, hyper_fraction)
    spacing = np.asarray(spacing_kji, dtype=np.float64)
    new_ct = ct_in.astype(np.float32, copy=True)
    tumor_mask = np.zeros(ct_in.shape, dtype=np.uint8)
    if n_tumors == 0:
        return new_ct, tumor_mask, []
    liver_full = liver_in > 0
    if not liver_full.any():
        raise LiverTumorSegError("the liver mask is empty, so there is nowhere to insert tumours; "
                                 "pass a mask with the liver as nonzero voxels on the CT's grid")

    crop = _bounding_box(liver_full, pad=2)
    ct_crop = new_ct[crop]  # a view: blending writes straight into new_ct
    liver_crop = liver_full[crop]
    stats = _LiverStats.measure(ct_crop, liver_crop, spacing)
    forbidden = stats.forbidden_mask(liver_crop) if avoid_vessels else None
    stats.smooth = None  # not needed any more
    depth = _ConservativeDepth(liver_crop, spacing)
    occupied = np.zeros(liver_crop.shape, dtype=bool)
    offset = np.array([s.start for s in crop])
    infos: List[dict] = []
    log_lo, log_hi = math.log(size_range_mm[0]), math.log(size_range_mm[1])
    for _ in range(n_tumors):
        contrast = "hyper" if rng.random() < hyper_fraction else "hypo"
        diameter = float(math.exp(rng.uniform(log_lo, log_hi)))
        placed = None
        for attempt in range(_MAX_ATTEMPTS):
            if attempt and attempt % 8 == 0:
                diameter = max(diameter * 0.75, min(size_range_mm[0], 3.0))
            shape = _TumorShape.random(rng, diameter, spacing)
            center = depth.random_center(rng, shape.inner_extent_mm, occupied)
            if center is None:
                diameter = max(diameter * 0.75, min(size_range_mm[0], 3.0))
                continue
            placed = _try_place(rng, shape, center, liver_crop, forbidden, occupied, spacing)
            if placed is not None:
                break
        if placed is None:
            continue
        box, weight, signed_mm, core = placed
        delta = _draw_delta(rng, contrast, diameter)
        info = _blend_tumor(ct_crop, box, weight, signed_mm, core, shape, stats, delta, rng, spacing)
        occupied[box] |= ndimage.binary_dilation(weight > _EXTENT_WEIGHT, iterations=1)
        tumor_mask[crop][box][core] = 1
        info.update(center_kji=tuple(int(c) for c in np.asarray(center) + offset), contrast=contrast,
                    diameter_mm=round(diameter, 3), radius_mm=round(diameter / 2.0, 3),
                    volume_ml=float(core.sum() * np.prod(spacing) / 1000.0), n_voxels=int(core.sum()),
                    liver_median_hu=round(stats.median, 2))
        infos.append(info)
    return new_ct, tumor_mask, infos


def insert_tumors_image(ct: sitk.Image, liver: sitk.Image, seed: int, n_tumors: int,
                        **kw) -> Tuple[sitk.Image, sitk.Image, List[dict]]:
    """:func:`insert_tumors` on SimpleITK images with a seed; geometry and the CT's pixel type kept.

    Returns ``(ct, labels, infos)`` where labels are 0 background, 1 liver, 2 tumour and each
    info also carries ``center_lps_mm``.
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


# ---------------------------------------------------------------------------------------------

def _check_inputs(ct: np.ndarray, liver: np.ndarray, spacing_kji, n_tumors: int,
                  size_range_mm, hyper_fraction: float) -> None:
    if ct.ndim != 3 or ct.shape != liver.shape:
        raise LiverTumorSegError(f"the CT {ct.shape} and liver mask {liver.shape} must be 3D arrays of one shape")
    if len(spacing_kji) != 3 or min(spacing_kji) <= 0:
        raise LiverTumorSegError(f"spacing {spacing_kji} must be three positive millimetre values")
    if n_tumors < 0:
        raise LiverTumorSegError(f"n_tumors={n_tumors} must be zero or more")
    lo, hi = size_range_mm
    if not 0 < lo <= hi:
        raise LiverTumorSegError(f"size_range_mm={size_range_mm} must be (smallest, largest) diameters > 0")
    if not 0.0 <= hyper_fraction <= 1.0:
        raise LiverTumorSegError(f"hyper_fraction={hyper_fraction} must lie in [0, 1]")


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
        self.shape = liver.shape

    def random_center(self, rng: np.random.Generator, extent_mm: float,
                      occupied: np.ndarray) -> Optional[Tuple[int, int, int]]:
        candidates = np.flatnonzero(self.depth >= extent_mm)
        if candidates.size == 0:
            return None
        f = self.factor
        for _ in range(8):
            block = np.unravel_index(int(candidates[rng.integers(candidates.size)]), self.depth.shape)
            center = tuple(min(int(b * k + k // 2), n - 1) for b, k, n in zip(block, f, self.shape))
            if not occupied[center]:
                return center
        return None


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


def _try_place(rng: np.random.Generator, shape: _TumorShape, center: Tuple[int, int, int], liver: np.ndarray,
               forbidden: Optional[np.ndarray], occupied: np.ndarray, spacing: np.ndarray):
    """Rasterise the tumour at ``center``; None unless all of it lies inside the liver, clear of
    other tumours and (but for a size-dependent fraction) of vessels."""
    half = np.ceil(shape.extent_mm / spacing).astype(int) + 1
    lo = np.asarray(center) - half
    hi = np.asarray(center) + half + 1
    if (lo < 0).any() or (hi > np.asarray(liver.shape)).any():
        return None
    box = tuple(slice(int(a), int(b)) for a, b in zip(lo, hi))
    weight, signed_mm = shape.rasterize(rng, tuple(hi - lo), np.asarray(center) - lo, spacing)
    touched = weight >= _EXTENT_WEIGHT
    if (touched & ~liver[box]).any():
        return None
    weight[~touched] = 0.0
    core = weight >= 0.5
    if not core.any():
        return None
    if (touched & occupied[box]).any():
        return None
    if forbidden is not None:
        if (core & forbidden[box]).sum() > _allowed_vessel_fraction(shape.radius) * core.sum():
            return None
    return box, weight, signed_mm, core


def _allowed_vessel_fraction(radius_mm: float) -> float:
    """Small tumours must miss the vessels; large ones engulf some, as real ones do."""
    if radius_mm < 5.0:
        return 0.0
    if radius_mm < 10.0:
        return 0.02
    return 0.1 if radius_mm < 20.0 else 0.25


def _draw_delta(rng: np.random.Generator, contrast: str, diameter: float) -> float:
    """HU offset of the tumour's mean from the liver median; tiny tumours are subtler."""
    size_factor = float(np.clip(0.55 + 0.45 * (diameter - 4.0) / 16.0, 0.55, 1.0))
    lo, hi = _HYPO_DELTA_HU if contrast == "hypo" else _HYPER_DELTA_HU
    magnitude = max(rng.uniform(lo, hi) * size_factor, _MIN_ABS_DELTA_HU)
    return -magnitude if contrast == "hypo" else magnitude


def _blend_tumor(ct: np.ndarray, box: Tuple[slice, ...], weight: np.ndarray, signed_mm: np.ndarray, core: np.ndarray,
                 shape: _TumorShape, stats: _LiverStats, delta: float, rng: np.random.Generator,
                 spacing: np.ndarray) -> Dict:
    """Write the tumour into ``ct[box]``: its texture replaces the smooth background, the
    image's own fine noise stays."""
    region = ct[box]
    background = ndimage.gaussian_filter(region, sigma=_voxels(2.0, spacing), mode="nearest")
    # keep the image's own fine noise, but not what an engulfed or nearby vessel leaves in it
    cap = max(3.0 * stats.noise, 4.0)
    fine_noise = np.clip(region - background, -cap, cap)
    mean_hu = max(stats.median + delta, -5.0)
    texture_scale_mm = rng.uniform(1.0, 3.5)
    texture = rng.uniform(4.0, 12.0) * _unit_noise(rng, region.shape, _voxels(texture_scale_mm, spacing))
    tumor_hu = mean_hu + texture
    necrotic = bool(delta < 0 and shape.radius > 15.0 and rng.random() < 0.4)
    if necrotic:
        inner = 1.0 / (1.0 + np.exp(-(signed_mm - rng.uniform(0.4, 0.7) * shape.radius) / 2.0))
        tumor_hu = tumor_hu - rng.uniform(10.0, 30.0) * inner
    rim = bool(shape.radius >= 8.0 and rng.random() < 0.25)
    if rim:
        thickness = rng.uniform(1.0, min(2.5, 0.2 * shape.radius))
        ring = np.exp(-((signed_mm - thickness / 2.0) / (thickness / 2.0)) ** 2)
        tumor_hu = tumor_hu + (stats.median + rng.uniform(10.0, 40.0) - mean_hu) * ring
    region += weight * (tumor_hu + fine_noise - region)
    return {"delta_hu": round(float(delta), 2), "mean_hu": round(float(region[core].mean()), 2),
            "rim": rim, "necrotic": necrotic}


def _unit_noise(rng: np.random.Generator, shape: Tuple[int, ...], sigma_vox: np.ndarray) -> np.ndarray:
    """Gaussian-smoothed white noise rescaled to zero mean and unit standard deviation."""
    noise = ndimage.gaussian_filter(rng.standard_normal(shape).astype(np.float32), sigma=sigma_vox, mode="reflect")
    std = float(noise.std())
    return (noise - float(noise.mean())) / std if std > 0 else noise


def _voxels(mm: float, spacing: np.ndarray) -> np.ndarray:
    return np.maximum(mm / np.asarray(spacing, dtype=np.float64), 0.3)
