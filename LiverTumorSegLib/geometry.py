"""Image geometry helpers: index/physical conversions and axis facts from a SimpleITK image.

Arrays in this library are NumPy arrays in SimpleITK order ``(k, j, i)`` = ``(z, y, x)``;
physical coordinates are LPS millimetres (ITK's convention) unless a name says RAS.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence, Tuple

import numpy as np
import SimpleITK as sitk

from .errors import LiverTumorSegError


@dataclass(frozen=True)
class Geometry:
    """Size (i, j, k), spacing (mm), origin (LPS mm) and 3x3 direction of an image grid."""

    size: Tuple[int, int, int]
    spacing: Tuple[float, float, float]
    origin: Tuple[float, float, float]
    direction: Tuple[float, ...]

    @classmethod
    def of(cls, image: sitk.Image) -> "Geometry":
        return cls(tuple(int(s) for s in image.GetSize()), tuple(float(s) for s in image.GetSpacing()),
                   tuple(float(o) for o in image.GetOrigin()), tuple(float(d) for d in image.GetDirection()))

    @property
    def direction_matrix(self) -> np.ndarray:
        return np.asarray(self.direction, dtype=np.float64).reshape(3, 3)

    @property
    def voxel_volume_ml(self) -> float:
        return float(np.prod(self.spacing)) / 1000.0

    def apply_to(self, image: sitk.Image) -> sitk.Image:
        """Stamp this geometry (not the size) onto ``image`` and return it."""
        image.SetSpacing(self.spacing)
        image.SetOrigin(self.origin)
        image.SetDirection(self.direction)
        return image

    def index_to_lps(self, index_kji: np.ndarray) -> np.ndarray:
        """Continuous array indices ``(..., 3)`` in (k, j, i) order -> LPS mm ``(..., 3)``."""
        ijk = np.asarray(index_kji, dtype=np.float64)[..., ::-1]
        return np.asarray(self.origin) + (ijk * np.asarray(self.spacing)) @ self.direction_matrix.T

    def axial_array_axis(self) -> int:
        """The array axis (0, 1 or 2 in k, j, i order) that runs most along the patient's S axis,
        i.e. the axis that numbers the axial slices."""
        # Column c of the direction matrix is the physical direction of image axis c (i, j, k).
        s_component = np.abs(self.direction_matrix[2, :])
        image_axis = int(np.argmax(s_component))  # 0=i, 1=j, 2=k
        return 2 - image_axis

    def matches(self, other: "Geometry", tol: float = 1e-4) -> bool:
        return (self.size == other.size and np.allclose(self.spacing, other.spacing, atol=tol)
                and np.allclose(self.origin, other.origin, atol=1e-3)
                and np.allclose(self.direction, other.direction, atol=tol))

    def require_same_grid(self, other: "Geometry", what: str, whose: str, fix: str) -> None:
        """Raise a :class:`LiverTumorSegError` unless ``other`` is this grid (:meth:`matches`): "<what>
        is not on <whose> grid (size, spacing, origin or direction differ); <fix>"."""
        if not self.matches(other):
            raise LiverTumorSegError(f"{what} is not on {whose} grid (size, spacing, origin or direction "
                                     f"differ); {fix}")


def lps_to_ras(points: Sequence[float] | np.ndarray) -> np.ndarray:
    p = np.array(points, dtype=np.float64)
    p[..., 0] *= -1
    p[..., 1] *= -1
    return p


def array_to_image(array: np.ndarray, geometry: Geometry) -> sitk.Image:
    """Wrap a (k, j, i) array as a SimpleITK image on ``geometry`` (sizes must agree)."""
    image = sitk.GetImageFromArray(array)
    if tuple(image.GetSize()) != geometry.size:
        raise ValueError(f"array shape {array.shape} does not match grid size {geometry.size}")
    return geometry.apply_to(image)
