"""Crop stage: the liver's bounding box plus a margin in millimetres, in array index space."""

from __future__ import annotations

import math
from typing import Sequence, Tuple

import numpy as np
import SimpleITK as sitk

Box = Tuple[slice, slice, slice]  # (k, j, i)


def liver_box(liver: np.ndarray, spacing_kji: Sequence[float], margin_mm: float) -> Box:
    """Bounding box of the non-zero voxels, grown by ``margin_mm`` per axis and clipped to the array."""
    if not liver.any():
        raise ValueError("cannot crop to an empty liver mask")
    box = []
    for axis in range(3):
        other = tuple(a for a in range(3) if a != axis)
        present = np.flatnonzero(liver.any(axis=other))
        grow = int(math.ceil(margin_mm / float(spacing_kji[axis])))
        box.append(slice(max(0, int(present[0]) - grow), min(liver.shape[axis], int(present[-1]) + 1 + grow)))
    return tuple(box)  # type: ignore[return-value]


def crop_image(image: sitk.Image, box: Box) -> sitk.Image:
    """The sub-image inside ``box`` with its geometry (origin moves, spacing/direction stay)."""
    k, j, i = box
    return image[i.start:i.stop, j.start:j.stop, k.start:k.stop]
