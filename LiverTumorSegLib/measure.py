"""Measurements of a liver/tumor segmentation: volumes, TLVR and a per-lesion table.

NumPy, SciPy and SimpleITK only (no PyTorch), so 3D Slicer can import it to recompute the
numbers after the user edits a segmentation. Voxel counts, centroids, boxes and mean HU come from
SimpleITK's label statistics filters; the axial diameter is this module's own. Definitions:

- liver volume: voxels of liver OR tumor (a tumor lies in the liver, so it is counted in it);
- tumor volume: voxels of tumor; TLVR = tumor volume / liver volume (None without a liver);
- lesions: 26-connected tumor components, ids 1..n by decreasing volume;
- centroid: mean physical position of a lesion's voxel centres, RAS mm;
- longest axial diameter: the largest distance (physical mm, through spacing and direction)
  between two voxel centres of the lesion on one axial slice, never less than one in-plane
  voxel. For a digitised round lesion the farthest pair of voxel centres lies within a
  fraction of a voxel of the true edge, so this matches a caliper set on the lesion's edges
  as seen on the image (a disk of diameter D measures D within a voxel; corner-to-corner or
  pixel-edge distances overshoot by about one voxel);
- mean HU: mean CT value over the lesion's voxels, when a CT is given.
"""

from __future__ import annotations

import csv
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import List, Optional, Tuple, Union

import numpy as np
import SimpleITK as sitk
from scipy import ndimage
from scipy.spatial import ConvexHull

try:
    from scipy.spatial import QhullError
except ImportError:  # SciPy < 1.8 keeps it in the private module
    from scipy.spatial.qhull import QhullError  # type: ignore[no-redef]

from . import LIVER_LABEL, TUMOR_LABEL
from .geometry import Geometry, lps_to_ras
from .postprocess.components import in_plane_structure, labeled_components_in_box

CSV_HEADER = ("lesion_id", "volume_ml", "longest_axial_diameter_mm", "centroid_r_mm",
              "centroid_a_mm", "centroid_s_mm", "mean_hu")

UNITS = {
    "volume": "mL",
    "longest_axial_diameter": "mm (largest in-plane distance between voxel centres on one axial slice)",
    "centroid_ras": "mm, RAS patient coordinates",
    "mean_hu": "Hounsfield units",
    "tlvr": "ratio, tumor volume / liver volume (liver volume includes the tumor)",
}


@dataclass
class Lesion:
    """One 26-connected tumor component."""

    id: int
    volume_ml: float
    longest_axial_diameter_mm: float
    centroid_ras_mm: Tuple[float, float, float]
    mean_hu: Optional[float]
    voxel_count: int


@dataclass
class Measurements:
    """Volumes (liver volume includes the tumor), TLVR and the lesion table."""

    liver_volume_ml: float
    tumor_volume_ml: float
    tlvr: Optional[float]
    lesions: List[Lesion] = field(default_factory=list)

    def to_dict(self) -> dict:
        """A JSON-ready dict of the measurements, their units and the liver-volume convention."""
        lesions = []
        for lesion in self.lesions:
            entry = asdict(lesion)
            entry["centroid_ras_mm"] = [float(c) for c in lesion.centroid_ras_mm]
            lesions.append(entry)
        return {
            "liver_volume_ml": float(self.liver_volume_ml),
            "tumor_volume_ml": float(self.tumor_volume_ml),
            "tlvr": None if self.tlvr is None else float(self.tlvr),
            "liver_volume_includes_tumor": True,
            "units": dict(UNITS),
            "lesions": lesions,
        }


def _check_grid(array: np.ndarray, geometry: Geometry, name: str) -> None:
    expected = tuple(geometry.size[::-1])
    if array.ndim != 3 or tuple(array.shape) != expected:
        raise ValueError(f"{name} of shape {array.shape} does not match the grid: expected "
                         f"(k, j, i) = {expected} from size {geometry.size}")


def _farthest_pair_distance(points_index: np.ndarray, in_plane: Tuple[int, int],
                            geometry: Geometry) -> float:
    """Largest physical distance between points given as (k, j, i) indices on one slice."""
    if len(points_index) > 3:
        # The hull of the points is found in index space (hulls survive affine maps), in the
        # two in-plane coordinates only, so the farthest pair is among its vertices.
        try:
            hull = ConvexHull(points_index[:, list(in_plane)].astype(np.float64))
            points_index = points_index[hull.vertices]
        except QhullError:  # all points on one line: every point stays a candidate
            pass
    physical = geometry.index_to_lps(points_index)
    differences = physical[:, None, :] - physical[None, :, :]
    return float(np.sqrt(np.max(np.einsum("abc,abc->ab", differences, differences))))


def longest_axial_diameter_mm(lesion: np.ndarray, offset_kji: Tuple[int, int, int],
                              geometry: Geometry) -> float:
    """Longest axial diameter (mm) of the lesion ``lesion`` (a boolean box whose first voxel is
    at index ``offset_kji`` of the grid); see the module docstring for the definition."""
    axial = geometry.axial_array_axis()
    in_plane = tuple(axis for axis in range(3) if axis != axial)
    # Only voxels on the lesion's in-plane boundary can be farthest apart.
    interior = ndimage.binary_erosion(lesion, structure=in_plane_structure(axial), border_value=0)
    boundary = lesion & ~interior
    points = np.argwhere(boundary) + np.asarray(offset_kji)
    longest = 0.0
    order = np.argsort(points[:, axial], kind="stable")
    points = points[order]
    starts = np.flatnonzero(np.diff(points[:, axial], prepend=-1))
    for start, stop in zip(starts, list(starts[1:]) + [len(points)]):
        longest = max(longest, _farthest_pair_distance(points[start:stop], in_plane, geometry))
    one_voxel = max(geometry.spacing[2 - axis] for axis in in_plane)
    return max(longest, float(one_voxel))


def measure_masks(liver: np.ndarray, tumor: np.ndarray, geometry: Geometry,
                  ct_hu: Optional[np.ndarray] = None) -> Measurements:
    """Measure liver and tumor masks on ``geometry``'s grid; the liver mask may or may not
    include the tumor (the tumor is always counted in the liver volume)."""
    liver, tumor = np.asarray(liver), np.asarray(tumor)
    _check_grid(liver, geometry, "liver mask")
    _check_grid(tumor, geometry, "tumor mask")
    if ct_hu is not None:
        ct_hu = np.asarray(ct_hu)
        _check_grid(ct_hu, geometry, "CT")
    tumor = tumor if tumor.dtype == bool else tumor != 0
    voxel_ml = geometry.voxel_volume_ml

    labels, count, box = labeled_components_in_box(tumor)  # ids 1..n by decreasing volume
    tumor_voxels = 0
    tumor_outside_liver = 0
    lesions: List[Lesion] = []
    if box is not None:
        tumor_box = tumor[box]
        tumor_voxels = int(np.count_nonzero(tumor_box))
        tumor_outside_liver = int(np.count_nonzero(tumor_box & (liver[box] == 0)))
        offset = np.array([s.start for s in box])
        box_geometry = Geometry(labels.shape[::-1], geometry.spacing, tuple(geometry.index_to_lps(offset)),
                                geometry.direction)
        label_image = box_geometry.apply_to(sitk.GetImageFromArray(labels.view(np.uint32)))
        shape = sitk.LabelShapeStatisticsImageFilter()
        shape.ComputePerimeterOff()
        shape.Execute(label_image)
        intensity = None
        if ct_hu is not None:
            intensity = sitk.LabelIntensityStatisticsImageFilter()
            intensity.Execute(label_image, box_geometry.apply_to(sitk.GetImageFromArray(ct_hu[box])))
        for lesion_id in range(1, count + 1):
            i, j, k, size_i, size_j, size_k = shape.GetBoundingBox(lesion_id)
            lesion = labels[k:k + size_k, j:j + size_j, i:i + size_i] == lesion_id
            voxel_count = int(shape.GetNumberOfPixels(lesion_id))
            lesions.append(Lesion(
                id=lesion_id,
                volume_ml=voxel_count * voxel_ml,
                longest_axial_diameter_mm=longest_axial_diameter_mm(lesion, tuple(offset + (k, j, i)), geometry),
                centroid_ras_mm=tuple(float(c) for c in lps_to_ras(shape.GetCentroid(lesion_id))),
                mean_hu=None if intensity is None else float(intensity.GetMean(lesion_id)),
                voxel_count=voxel_count,
            ))
    liver_voxels = int(np.count_nonzero(liver)) + tumor_outside_liver
    liver_ml, tumor_ml = liver_voxels * voxel_ml, tumor_voxels * voxel_ml
    tlvr = tumor_voxels / liver_voxels if liver_voxels else None
    return Measurements(liver_volume_ml=liver_ml, tumor_volume_ml=tumor_ml, tlvr=tlvr, lesions=lesions)


def measure_labelmap(labelmap: np.ndarray, geometry: Geometry, ct_hu: Optional[np.ndarray] = None,
                     liver_label: int = LIVER_LABEL, tumor_label: int = TUMOR_LABEL) -> Measurements:
    """Measure a labelmap (``liver_label`` liver, ``tumor_label`` tumor) on ``geometry``'s grid."""
    labelmap = np.asarray(labelmap)
    _check_grid(labelmap, geometry, "labelmap")
    return measure_masks(labelmap == liver_label, labelmap == tumor_label, geometry, ct_hu)


def write_lesions_csv(path: Union[str, Path], measurements: Measurements) -> None:
    """Write the lesion table (one row per lesion, header ``CSV_HEADER``); mean_hu is empty
    when no CT was measured."""
    with open(path, "w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(CSV_HEADER)
        for lesion in measurements.lesions:
            r, a, s = lesion.centroid_ras_mm
            writer.writerow([
                lesion.id,
                f"{lesion.volume_ml:.4f}",
                f"{lesion.longest_axial_diameter_mm:.2f}",
                f"{r:.2f}", f"{a:.2f}", f"{s:.2f}",
                "" if lesion.mean_hu is None else f"{lesion.mean_hu:.1f}",
            ])
