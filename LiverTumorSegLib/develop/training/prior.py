"""Simulated liver-stage masks: the prior channel of a liver refinement model in training.

A refinement model sees the CT crop and the liver stage's mask and redraws the liver. Trained
on the reference liver as its prior it would learn to copy it; trained on the liver stage's own
output on its training cases it would see almost perfect priors (the liver model fits those).
So the prior is the reference made wrong the way a coarse model is wrong: its surface moved in
and out by a smooth random field and a global bias (millimetres), often with a chunk missing
(an under-segmented tip) or a chunk added (a neighbour organ taken as liver), with soft edges
like a mask resampled from a coarser grid. The defaults are harsh on purpose: with milder errors
(shifts up to 5 mm, a chunk in 30% of patches) the model learned to trust the prior and
corrected little of the liver stage's real errors (phantom liver Dice 0.940 -> 0.942, while
the same model given the reference as prior reached 0.975).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional, Sequence, Tuple

import numpy as np
from scipy import ndimage

OUTSIDE_MM = 100.0  # signed distance used for voxels outside the sample (far outside the liver)


def signed_distance_mm(mask: np.ndarray, spacing_kji: Sequence[float]) -> np.ndarray:
    """Signed distance (float32, mm) to the mask's surface: negative inside, positive outside."""
    mask = np.asarray(mask, bool)
    if not mask.any():
        return np.full(mask.shape, OUTSIDE_MM, np.float32)
    outside = ndimage.distance_transform_edt(~mask, sampling=spacing_kji)
    inside = ndimage.distance_transform_edt(mask, sampling=spacing_kji)
    return np.clip(outside - inside, -OUTSIDE_MM, OUTSIDE_MM).astype(np.float32)


def _smooth_field(rng: np.random.Generator, shape: Sequence[int], nodes: int, sigma_mm: float) -> np.ndarray:
    """A smooth random field (float32, ``shape``): ``nodes``^3 normal values, trilinearly upsampled."""
    coarse = rng.normal(0.0, sigma_mm, size=(nodes,) * 3).astype(np.float32)
    zoom = [s / nodes for s in shape]
    field = ndimage.zoom(coarse, zoom, order=1, mode="nearest", grid_mode=True)
    return field[tuple(slice(0, s) for s in shape)]


def _ball(shape: Sequence[int], centre: np.ndarray, radius_mm: float, spacing_kji: Sequence[float]) -> np.ndarray:
    """A ball (bool, ``shape``) of ``radius_mm`` around the voxel ``centre``."""
    grids = np.ogrid[tuple(slice(0, s) for s in shape)]
    return sum(((g - c) * float(sp)) ** 2 for g, c, sp in zip(grids, centre, spacing_kji)) <= radius_mm ** 2


@dataclass(frozen=True)
class PriorSimulation:
    """How wrong the simulated liver-stage masks are: a smooth surface shift of standard deviation
    up to ``max_shift_mm``, a global bias of standard deviation ``bias_mm``, and with probability
    ``chunk_probability`` a ball (radius in ``chunk_radius_mm``) removed or added. Given a
    ``leak_region`` (a neighbour organ beside the liver), with probability ``leak_probability``
    the part of it within a ball of that radius around one of its voxels is claimed as liver too:
    the liver stage's real mistake, a bowel loop or the IVC drawn as liver. The defaults suit a
    liver (1-2 L); scale them to the organ."""

    max_shift_mm: float = 8.0
    bias_mm: float = 2.5
    chunk_probability: float = 0.7
    chunk_radius_mm: Tuple[float, float] = (10.0, 40.0)
    leak_probability: float = 0.7

    def __call__(self, distance_mm: np.ndarray, spacing_kji: Sequence[float],
                 rng: np.random.Generator, leak_region: Optional[np.ndarray] = None) -> np.ndarray:
        """A plausible liver-stage mask (float32 in [0, 1]) from the reference's signed distance
        ``distance_mm`` (negative inside), edges one voxel soft; with ``leak_region`` (bool, the
        patch's shape; no random draw without one) part of it may be claimed as liver."""
        distance = np.asarray(distance_mm, np.float32)
        shift = _smooth_field(rng, distance.shape, nodes=int(rng.integers(2, 6)),
                              sigma_mm=float(rng.uniform(0.0, self.max_shift_mm)))
        moved = distance + shift + np.float32(rng.normal(0.0, self.bias_mm))
        if rng.random() < self.chunk_probability:
            centre = np.array([rng.integers(0, s) for s in distance.shape], np.float32)
            radius = float(rng.uniform(*self.chunk_radius_mm))
            ball = _ball(distance.shape, centre, radius, spacing_kji)
            moved = np.where(ball, OUTSIDE_MM if rng.random() < 0.6 else -OUTSIDE_MM, moved)
        if leak_region is not None and leak_region.any() and rng.random() < self.leak_probability:
            voxels = np.flatnonzero(leak_region)
            centre = np.array(np.unravel_index(voxels[rng.integers(len(voxels))], leak_region.shape), np.float32)
            radius = float(rng.uniform(*self.chunk_radius_mm))
            moved = np.where(_ball(distance.shape, centre, radius, spacing_kji) & leak_region, -OUTSIDE_MM, moved)
        step = float(min(spacing_kji))
        return np.clip(0.5 - moved / step, 0.0, 1.0).astype(np.float32)
