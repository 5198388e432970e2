"""Sliding-window inference with Gaussian blending, without importing MONAI.

The embedded models were validated under MONAI's ``sliding_window_inference`` (Gaussian mode,
sigma 1/8 of the window, windows at a fixed share of overlap, the last one in each axis moved
back to end at the volume's edge, a volume smaller than the window padded around its centre).
This module places the windows and weights them the same way, so the probabilities match it
(Testing/lib/test_sliding_window.py compares them), while sparing ``segment`` the two seconds
that importing MONAI costs (see models.unet).
"""

from __future__ import annotations

import itertools
import math
from typing import Callable, List, Sequence, Tuple

import torch
import torch.nn.functional as F

SIGMA_SCALE = 0.125  # the Gaussian's sigma as a share of the window, per axis
MIN_WEIGHT = 1e-3  # the smallest blending weight, so a window's corner still counts a little


def window_starts(size: int, window: int, overlap: float) -> List[int]:
    """Start indices of the windows along one axis of ``size`` (at least ``window``) voxels: a
    step of ``window * (1 - overlap)`` voxels (at least 1), as few windows as cover the axis, the
    last moved back to end at the edge."""
    if size == window:
        return [0]
    step = max(int(window * (1 - overlap)), 1)
    count = next(n for n in range(1, math.ceil(size / step) + 2) if (n - 1) * step + window >= size)
    return [min(n * step, size - window) for n in range(count)]


def gaussian_weights(window: Sequence[int], dtype: torch.dtype = torch.float32,
                     device: torch.device | str = "cpu") -> torch.Tensor:
    """The blending weight of each voxel of a window: a separable Gaussian of sigma
    ``SIGMA_SCALE`` times the window around its centre, 1 at the centre, at least ``MIN_WEIGHT``."""
    weights = None
    for axis, length in enumerate(window):
        offsets = torch.arange(-(length - 1) / 2.0, (length - 1) / 2.0 + 1, dtype=torch.float, device=device)
        profile = torch.exp(offsets ** 2 / (-2 * (length * SIGMA_SCALE) ** 2))
        weights = profile if weights is None else weights.unsqueeze(-1) * profile[(None,) * axis]
    assert weights is not None
    return torch.clamp(weights, min=max(float(weights.min()), MIN_WEIGHT)).to(dtype)


def _centred_padding(shape: Sequence[int], window: Sequence[int]) -> Tuple[List[Tuple[int, int]], List[int]]:
    """Per axis (before, after) padding that brings an axis shorter than the window to it, split
    around the centre, and F.pad's argument for it (last axis first)."""
    per_axis = []
    for size, length in zip(shape, window):
        missing = max(length - size, 0)
        per_axis.append((missing // 2, missing - missing // 2))
    pad_argument = [value for before_after in reversed(per_axis) for value in before_after]
    return per_axis, pad_argument


def sliding_window_probability(volume: torch.Tensor, window: Sequence[int], predictor: Callable[[torch.Tensor], torch.Tensor],
                               overlap: float, batch_size: int, padding_mode: str, device: torch.device) -> torch.Tensor:
    """The Gaussian-weighted average of ``predictor`` over windows of ``window`` voxels sliding
    across ``volume`` (1, channels, k, j, i), on the CPU: (1, out channels, k, j, i).
    ``predictor`` maps a batch of windows (on ``device``) to its outputs; windows go in batches of
    ``batch_size``; an axis shorter than the window is padded with ``padding_mode`` (F.pad)."""
    if volume.dim() != 5 or volume.shape[0] != 1:
        raise ValueError(f"expected a (1, channels, k, j, i) volume, got shape {tuple(volume.shape)}")
    if not 0 <= overlap < 1:
        raise ValueError(f"overlap must be >= 0 and < 1, got {overlap}")
    window = [int(w) for w in window]
    shape = list(volume.shape[2:])
    per_axis, pad_argument = _centred_padding(shape, window)
    if any(pad_argument):
        volume = F.pad(volume, pad_argument, mode=padding_mode)
    padded = list(volume.shape[2:])
    starts = [window_starts(size, length, overlap) for size, length in zip(padded, window)]
    corners = list(itertools.product(*starts))
    weights = gaussian_weights(window, dtype=volume.dtype, device=device)
    weights_cpu = weights.to("cpu")
    output = None
    total = torch.zeros([1, 1] + padded, dtype=volume.dtype)
    for first in range(0, len(corners), batch_size):
        batch_corners = corners[first:first + batch_size]
        regions = [tuple(slice(c, c + w) for c, w in zip(corner, window)) for corner in batch_corners]
        batch = torch.cat([volume[(slice(None), slice(None)) + region] for region in regions]).to(device)
        predicted = predictor(batch)
        if output is None:
            output = torch.zeros([1, predicted.shape[1]] + padded, dtype=volume.dtype)
        weighted = (predicted * weights).to("cpu")
        for index, region in enumerate(regions):
            output[(slice(None), slice(None)) + region] += weighted[index:index + 1]
            total[(slice(None), slice(None)) + region] += weights_cpu
    assert output is not None
    output /= total
    inside = tuple(slice(before, before + size) for (before, _), size in zip(per_axis, shape))
    return output[(slice(None), slice(None)) + inside]
