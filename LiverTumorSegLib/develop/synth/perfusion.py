"""Broad, tumour-free darkening of part of a liver: a hard negative for tumour models.

Real portal-venous livers are not uniform: the dependent (posterior) liver, a segment with
altered perfusion (a transient hepatic attenuation difference, a wedge behind a compressed
portal branch) or fatty sparing/infiltration can lie 10-30 HU below the rest of the parenchyma
over a large, smoothly bounded region. It is not tumour, yet it is darker than this scan's own
parenchyma, so a model (or the parenchyma prior) that equates "darker" with "tumour" draws it
(the held-out real liver shows a 180 mL region of this kind). :func:`add_perfusion_variation`
paints such a region into a CT so that training and validation see it as background.
"""

from __future__ import annotations

from typing import Tuple

import numpy as np
import SimpleITK as sitk
from scipy import ndimage

from ...errors import LiverTumorSegError

DARKENING_HU = (12.0, 30.0)  # how much darker than the rest of the liver the region lies
FRACTION = (0.12, 0.35)  # of the liver volume inside the region
EDGE_MM = (8.0, 25.0)  # width of its smooth border
PATTERNS = ("dependent", "wedge")


def add_perfusion_variation(ct: sitk.Image, liver: sitk.Image, seed: int) -> Tuple[sitk.Image, dict]:
    """``ct`` (a copy) with a smooth darkening over part of ``liver`` (0/1 on the CT's grid):
    ``dependent``, the posterior part of the liver (a plane tilted up to ~35 degrees from the
    coronal), or ``wedge``, a peripheral region around a random surface point. The darkening
    fades over a smooth border and is modulated by low-frequency texture. Returns the CT and
    the drawn parameters; the labels do not change (the region is liver, not tumour)."""
    hu = sitk.GetArrayFromImage(ct)
    mask = sitk.GetArrayViewFromImage(liver) > 0
    if hu.shape != mask.shape:
        raise LiverTumorSegError(f"the CT {hu.shape} and liver mask {mask.shape} must share one grid")
    if not mask.any():
        return sitk.Image(ct), {"pattern": "none"}
    rng = np.random.default_rng([seed, 4242])
    spacing_kji = np.array(ct.GetSpacing()[::-1], float)
    pattern = str(rng.choice(PATTERNS, p=(0.65, 0.35)))
    darkening = float(rng.uniform(*DARKENING_HU))
    fraction = float(rng.uniform(*FRACTION))
    edge = float(rng.uniform(*EDGE_MM))
    box = _box(mask)
    inside = mask[box]
    if pattern == "dependent":
        score = _posterior_score(ct, box, inside.shape, rng)
    else:
        score = -_distance_to_surface_point(inside, spacing_kji, rng)
    cut = float(np.quantile(score[inside], 1.0 - fraction))
    weight = 1.0 / (1.0 + np.exp(np.clip(-(score - cut) / (edge / 4.0), -60.0, 60.0)))
    texture = ndimage.gaussian_filter(rng.standard_normal(inside.shape).astype(np.float32),
                                      sigma=tuple(12.0 / spacing_kji))
    texture /= max(float(texture[inside].std()), 1e-6)
    weight *= np.clip(1.0 + 0.25 * texture, 0.4, 1.6)
    out = hu.astype(np.float32)
    region = out[box]
    region[inside] -= (darkening * weight)[inside]
    out[box] = region
    image = sitk.GetImageFromArray(out.astype(hu.dtype) if np.issubdtype(hu.dtype, np.floating)
                                   else np.rint(out).astype(hu.dtype))
    image.CopyInformation(ct)
    return image, {"pattern": pattern, "darkening_hu": round(darkening, 1), "fraction": round(fraction, 3),
                   "edge_mm": round(edge, 1)}


def darkened_region(before: sitk.Image, after: sitk.Image, min_hu: float = 5.0) -> sitk.Image:
    """Where ``after`` (from :func:`add_perfusion_variation`) lies at least ``min_hu`` below
    ``before``: the tumour-free region a tumour model must leave alone (uint8 0/1, their grid)."""
    drop = sitk.GetArrayViewFromImage(before).astype(np.float32) - sitk.GetArrayViewFromImage(after)
    region = sitk.GetImageFromArray((drop >= min_hu).astype(np.uint8))
    region.CopyInformation(before)
    return region


def _box(mask: np.ndarray) -> Tuple[slice, ...]:
    hits = [np.flatnonzero(mask.any(axis=tuple(a for a in range(3) if a != axis))) for axis in range(3)]
    return tuple(slice(int(h[0]), int(h[-1]) + 1) for h in hits)


def _posterior_score(ct: sitk.Image, box: Tuple[slice, ...], shape: Tuple[int, ...],
                     rng: np.random.Generator) -> np.ndarray:
    """Signed distance (mm) along a direction near patient-posterior (LPS +y), per voxel of the box."""
    tilt = rng.normal(0.0, 0.35, size=3)
    direction = np.array([tilt[0], 1.0, tilt[2] * 0.5])
    direction /= np.linalg.norm(direction)
    matrix = np.array(ct.GetDirection(), float).reshape(3, 3)  # columns: index axes i, j, k
    per_index_ijk = (matrix.T @ direction) * np.array(ct.GetSpacing(), float)
    a_i, a_j, a_k = per_index_ijk
    k = np.arange(box[0].start, box[0].stop, dtype=np.float32)[:, None, None]
    j = np.arange(box[1].start, box[1].stop, dtype=np.float32)[None, :, None]
    i = np.arange(box[2].start, box[2].stop, dtype=np.float32)[None, None, :]
    return np.broadcast_to(a_k * k + a_j * j + a_i * i, shape).astype(np.float32)


def _distance_to_surface_point(inside: np.ndarray, spacing_kji: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Distance (mm) from a random point on the liver's surface, per voxel of the box."""
    surface = inside & ~ndimage.binary_erosion(inside)
    points = np.argwhere(surface)
    centre = points[rng.integers(len(points))]
    grid = np.ogrid[tuple(slice(0, n) for n in inside.shape)]
    return np.sqrt(sum(((g - c) * s) ** 2 for g, c, s in zip(grid, centre, spacing_kji))).astype(np.float32)
