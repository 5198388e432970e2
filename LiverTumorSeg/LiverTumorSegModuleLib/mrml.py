"""Results into MRML and back: the segmentation node, the measurements table, edit detection,
measurements of an edited segmentation, and export through the library's writers (the files the
command line writes, plus the measurements table as CSV).

Uses only what PyPI's ``slicer-core`` offers (scene, nodes, storage nodes, segmentation logic
statics), so CI tests it against a real ``vtkMRMLScene``; inside Slicer it runs unchanged.
Nothing here imports Qt, ``slicer.app`` or ``slicer.modules``, and nothing modifies the input
volume node.

Arrays are NumPy in (k, j, i) order, as in the library.
"""

from __future__ import annotations

import hashlib
import json
import math
from pathlib import Path
from typing import Any, Dict, Iterable, List, Optional, Sequence, Tuple

import numpy as np
import slicer
import vtk
from vtk.util import numpy_support

from . import ensure_library_importable

ensure_library_importable()

from LiverTumorSegLib import LIVER_LABEL, TUMOR_LABEL  # noqa: E402
from LiverTumorSegLib.io.terminology import SEGMENTS, SegmentTerminology  # noqa: E402

ATTRIBUTE_CONTENT_HASH = "LiverTumorSeg.ContentHash"
ATTRIBUTE_REPORT = "LiverTumorSeg.Report"
ATTRIBUTE_MEASUREMENTS_SOURCE = "LiverTumorSeg.MeasurementsSource"  # "segmentation run" | "recomputed" | "lesion edit"
ATTRIBUTE_MEASURED_HASH = "LiverTumorSeg.MeasuredHash"  # content hash of what the table measures
REFERENCE_ROLE_INPUT_VOLUME = "LiverTumorSegInputVolume"
REFERENCE_ROLE_MEASUREMENTS = "LiverTumorSegMeasurements"

# The measurements table: one column per quantity; rows "Liver", "Liver tumor" (all lesions), "Lesion N".
COLUMN_STRUCTURE = "Structure"
COLUMN_LESION_ID = "Lesion ID"
COLUMN_VOLUME = "Volume"
COLUMN_TLVR = "Tumor-to-liver volume ratio"
COLUMN_DIAMETER = "Longest axial diameter"
COLUMN_CENTROID = ("Centroid R", "Centroid A", "Centroid S")
COLUMN_MEAN_HU = "Mean HU"
COLUMN_VOXELS = "Voxels"
TABLE_COLUMNS: Tuple[Tuple[str, str, str, str], ...] = (
    # name, type, unit, description
    (COLUMN_STRUCTURE, "string", "", "Liver (tumor included), all liver tumor, or one lesion"),
    (COLUMN_LESION_ID, "int", "", "Lesion number (0 for the summary rows)"),
    (COLUMN_VOLUME, "double", "mL", "Volume"),
    (COLUMN_TLVR, "double", "%", "Volume as a percentage of the liver volume (TLVR for the tumor row)"),
    (COLUMN_DIAMETER, "double", "mm", "Longest in-plane diameter on any axial slice"),
    (COLUMN_CENTROID[0], "double", "mm", "Centroid, RAS right coordinate"),
    (COLUMN_CENTROID[1], "double", "mm", "Centroid, RAS anterior coordinate"),
    (COLUMN_CENTROID[2], "double", "mm", "Centroid, RAS superior coordinate"),
    (COLUMN_MEAN_HU, "double", "HU", "Mean CT value inside the lesion"),
    (COLUMN_VOXELS, "int", "", "Number of voxels"),
)
LIVER_ROW = "Liver"
TUMOR_ROW = "Liver tumor"


class EditedSegmentationError(RuntimeError):
    """The target segmentation holds content the user made or edited; overwriting it needs consent."""


# ----------------------------------------------------------------------------------------------
# Geometry and arrays


def ensure_segmentation_converters() -> None:
    """Register the segmentation representation converters when nobody has (Slicer's Segmentations
    module does it at startup; bare ``slicer-core`` does not). A no-op inside Slicer."""
    factory = slicer.vtkSegmentationConverterFactory.GetInstance()
    if factory.GetConverterRules():
        return
    for rule in (slicer.vtkBinaryLabelmapToClosedSurfaceConversionRule,
                 slicer.vtkClosedSurfaceToBinaryLabelmapConversionRule,
                 slicer.vtkClosedSurfaceToFractionalLabelmapConversionRule,
                 slicer.vtkFractionalLabelmapToClosedSurfaceConversionRule):
        factory.RegisterConverterRule(rule())


def ijk_to_ras_matrix(volume_node) -> np.ndarray:
    matrix = vtk.vtkMatrix4x4()
    volume_node.GetIJKToRASMatrix(matrix)
    return np.array([[matrix.GetElement(r, c) for c in range(4)] for r in range(4)])


def geometry_of_volume(volume_node):
    """The library's :class:`Geometry` (LPS) of a volume node's voxel grid (parent transforms ignored)."""
    from LiverTumorSegLib.geometry import Geometry

    image = volume_node.GetImageData()
    if image is None:
        raise ValueError(f"volume '{volume_node.GetName()}' has no image data")
    matrix = ijk_to_ras_matrix(volume_node)
    ras_to_lps = np.diag([-1.0, -1.0, 1.0])
    axes = matrix[:3, :3]
    spacing = np.linalg.norm(axes, axis=0)
    direction = ras_to_lps @ (axes / spacing)
    origin = ras_to_lps @ matrix[:3, 3]
    return Geometry(tuple(int(d) for d in image.GetDimensions()), tuple(float(s) for s in spacing),
                    tuple(float(o) for o in origin), tuple(float(d) for d in direction.ravel()))


def array_from_volume(volume_node) -> np.ndarray:
    """A view of a scalar volume's voxels as a (k, j, i) array."""
    image = volume_node.GetImageData()
    if image is None or image.GetPointData().GetScalars() is None:
        raise ValueError(f"volume '{volume_node.GetName()}' has no image data")
    if image.GetNumberOfScalarComponents() != 1:
        raise ValueError(f"volume '{volume_node.GetName()}' has {image.GetNumberOfScalarComponents()} "
                         "components; a CT has one")
    i, j, k = image.GetDimensions()
    return numpy_support.vtk_to_numpy(image.GetPointData().GetScalars()).reshape(k, j, i)


def _fill_uint8(image, array_kji: np.ndarray):
    array_kji = np.ascontiguousarray(array_kji, dtype=np.uint8)
    k, j, i = array_kji.shape
    image.SetDimensions(i, j, k)
    image.AllocateScalars(vtk.VTK_UNSIGNED_CHAR, 1)
    numpy_support.vtk_to_numpy(image.GetPointData().GetScalars())[:] = array_kji.ravel()
    return image


def _oriented_image(array_kji: np.ndarray, ijk_to_ras: np.ndarray) -> "slicer.vtkOrientedImageData":
    image = _fill_uint8(slicer.vtkOrientedImageData(), array_kji)
    matrix = vtk.vtkMatrix4x4()
    for r in range(4):
        for c in range(4):
            matrix.SetElement(r, c, float(ijk_to_ras[r, c]))
    image.SetImageToWorldMatrix(matrix)
    return image


def _reference_geometry_image(volume_node) -> "slicer.vtkOrientedImageData":
    image = slicer.vtkOrientedImageData()
    image.SetExtent(volume_node.GetImageData().GetExtent())
    matrix = vtk.vtkMatrix4x4()
    volume_node.GetIJKToRASMatrix(matrix)
    image.SetImageToWorldMatrix(matrix)
    return image


# ----------------------------------------------------------------------------------------------
# Files


def write_volume_file(volume_node, path: Path) -> None:
    """Write a volume node to ``path`` (.nrrd) through a private storage node: the node itself, its
    storage node and its modified state are left as they were."""
    if volume_node.GetImageData() is None:
        raise ValueError(f"volume '{volume_node.GetName()}' has no image data")
    storage = slicer.vtkMRMLVolumeArchetypeStorageNode()
    storage.SetFileName(str(path))
    storage.SetUseCompression(0)  # a private temporary file: speed over size
    if not storage.WriteData(volume_node) or not Path(path).is_file():
        raise OSError(f"could not write volume '{volume_node.GetName()}' to {path}")


def read_labelmap_file(path: Path):
    """A labelmap file (NIfTI, NRRD, ...) as a (k, j, i) uint8 array and its grid (the library's
    :class:`Geometry`)."""
    node = slicer.vtkMRMLLabelMapVolumeNode()
    storage = slicer.vtkMRMLVolumeArchetypeStorageNode()
    storage.SetFileName(str(path))
    storage.SetSingleFile(1)
    if not storage.ReadData(node) or node.GetImageData() is None:
        raise OSError(f"could not read the labelmap {path}")
    labels = array_from_volume(node)
    if labels.min(initial=0) < 0 or labels.max(initial=0) > 255:
        raise ValueError(f"{path} holds labels outside 0..255; it is not a LiverTumorSeg labelmap")
    return labels.astype(np.uint8), geometry_of_volume(node)


def check_same_grid(volume_node, labels_kji: np.ndarray, labels_geometry) -> None:
    """Raise ValueError unless a labelmap lies on the volume's voxel grid (the library's check)."""
    from LiverTumorSegLib.errors import LiverTumorSegError

    i, j, k = volume_node.GetImageData().GetDimensions()
    if labels_kji.shape != (k, j, i):
        raise ValueError(f"the labelmap has {labels_kji.shape[::-1]} voxels, the volume {(i, j, k)}; "
                         "the result does not belong to this volume")
    try:
        geometry_of_volume(volume_node).require_same_grid(labels_geometry, "the labelmap", "the volume's",
                                                          "the result does not belong to this volume")
    except LiverTumorSegError as exc:
        raise ValueError(str(exc)) from None


# ----------------------------------------------------------------------------------------------
# Segmentation node


TERMINOLOGY_TAG = "TerminologyEntry"  # vtkSegment::GetTerminologyEntryTagName(), before Slicer 5.9


def _terminology_tag_name() -> str:
    getter = getattr(slicer.vtkSegment, "GetTerminologyEntryTagName", None)
    return getter() if getter is not None else TERMINOLOGY_TAG


def set_segment_terminology(segment, term: SegmentTerminology) -> None:
    """Name, color and standard terminology of one segment. Slicer 5.9+ has
    ``vtkSegment.SetTerminology``; Slicer 5.6-5.8 store the terminology as the segment's
    "TerminologyEntry" tag."""
    segment.SetName(term.name)
    segment.SetColor(*term.color_rgb)
    segment.SetNameAutoGenerated(False)
    segment.SetColorAutoGenerated(False)
    if hasattr(segment, "SetTerminology"):
        segment.SetTerminology(term.slicer_string())
    else:
        segment.SetTag(_terminology_tag_name(), term.slicer_string())


def segment_terminology_string(segment) -> str:
    """The segment's terminology in Slicer's serialization ("" when it has none)."""
    if hasattr(segment, "GetTerminology"):
        return segment.GetTerminology() or ""
    return segment_tag(segment, _terminology_tag_name())


def segment_tag(segment, name: str) -> str:
    """A segment tag's value ("" when absent). Slicer 5.6-5.8 only have the C++ signature
    ``bool GetTag(std::string, std::string&)``, which Python calls with a VTK reference."""
    value = _vtk_reference("")
    try:
        found = segment.GetTag(name, value)
    except TypeError:  # a GetTag(name) that returns the value
        result = segment.GetTag(name)
        return result if isinstance(result, str) else ""
    return str(value.get()) if found else ""


def _vtk_reference(initial):
    """A VTK pass-by-reference holder (``vtk.reference``; ``vtk.mutable`` in older VTK)."""
    holder = getattr(vtk, "reference", None) or getattr(vtk, "mutable")
    return holder(initial)


def find_segment_id(segmentation_node, term: SegmentTerminology) -> Optional[str]:
    """Our segment in a segmentation node, by ID first and then by name; None if absent."""
    segmentation = segmentation_node.GetSegmentation()
    if segmentation.GetSegment(term.segment_id) is not None:
        return term.segment_id
    segment_id = segmentation.GetSegmentIdBySegmentName(term.name)
    return segment_id or None


def import_labelmap(scene, volume_node, labels_kji: np.ndarray, segmentation_node=None,
                    name: Optional[str] = None):
    """Put a 0/1/2 labelmap on the volume's grid into a segmentation node as the segments "Liver"
    and "Liver tumor" (names, colors, terminology), with the volume as reference geometry.

    "Liver" is the whole liver, tumor included (labels 1 and 2, as the liver volume is measured);
    "Liver tumor" overlaps it (label 2). So erasing a false-positive tumor leaves the liver whole,
    and the merged labelmap (tumor painted last) is the original 0/1/2 labelmap again.

    Into a new node when ``segmentation_node`` is None; otherwise only our two segments of that node
    are replaced (others are kept). The caller decides whether replacing is allowed
    (:func:`needs_overwrite_confirmation`). The content hash is stored for edit detection.
    """
    ensure_segmentation_converters()
    i, j, k = volume_node.GetImageData().GetDimensions()
    if labels_kji.shape != (k, j, i):
        raise ValueError(f"labelmap shape {labels_kji.shape} does not match the volume (k, j, i) = {(k, j, i)}")
    if segmentation_node is None:
        segmentation_node = scene.AddNewNodeByClass("vtkMRMLSegmentationNode",
                                                    name or f"{volume_node.GetName()} liver segmentation")
    if segmentation_node.GetDisplayNode() is None:
        segmentation_node.CreateDefaultDisplayNodes()
    segmentation_node.SetReferenceImageGeometryParameterFromVolumeNode(volume_node)
    segmentation_node.SetNodeReferenceID(REFERENCE_ROLE_INPUT_VOLUME, volume_node.GetID())
    segmentation_node.SetAndObserveTransformNodeID(volume_node.GetTransformNodeID())

    ijk_to_ras = ijk_to_ras_matrix(volume_node)
    segmentation = segmentation_node.GetSegmentation()
    logic = slicer.vtkSlicerSegmentationsModuleLogic
    was_modifying = segmentation_node.StartModify()
    try:
        for term in SEGMENTS:
            existing = find_segment_id(segmentation_node, term)
            if existing is not None:
                segmentation.RemoveSegment(existing)
            segment_id = segmentation.AddEmptySegment(term.segment_id, term.name, term.color_rgb)
            set_segment_terminology(segmentation.GetSegment(segment_id), term)
            mask = labels_kji == term.label if term.label != LIVER_LABEL else labels_kji > 0
            if mask.any():
                image = _oriented_image(mask, ijk_to_ras)
                if not logic.SetBinaryLabelmapToSegment(image, segmentation_node, segment_id,
                                                        logic.MODE_REPLACE, image.GetExtent()):
                    raise RuntimeError(f"could not set the voxels of segment '{term.name}'")
    finally:
        segmentation_node.EndModify(was_modifying)
    mark_unedited(segmentation_node, volume_node)
    return segmentation_node


def segmentation_labelmap(segmentation_node, volume_node) -> np.ndarray:
    """Our two segments merged on the volume's grid: 0 background, 1 liver, 2 tumor (tumor wins
    where they overlap). Missing segments count as empty."""
    return _merged_on_volume_grid(segmentation_node, volume_node, SEGMENTS)


def segment_mask(segmentation_node, term: SegmentTerminology, volume_node) -> np.ndarray:
    """One of our segments as a boolean (k, j, i) mask on the volume's grid (all False if absent)."""
    return _merged_on_volume_grid(segmentation_node, volume_node, (term,)) > 0


def _merged_on_volume_grid(segmentation_node, volume_node, terms: Sequence[SegmentTerminology]) -> np.ndarray:
    ensure_segmentation_converters()
    i, j, k = volume_node.GetImageData().GetDimensions()
    ids = vtk.vtkStringArray()
    values = vtk.vtkIntArray()
    for term in terms:  # in order: later segments are painted over earlier ones
        segment_id = find_segment_id(segmentation_node, term)
        if segment_id is not None:
            ids.InsertNextValue(segment_id)
            values.InsertNextValue(term.label)
    labels = np.zeros((k, j, i), dtype=np.uint8)
    if ids.GetNumberOfValues() == 0:
        return labels
    merged = slicer.vtkOrientedImageData()
    reference = _reference_geometry_image(volume_node)
    if not segmentation_node.GenerateMergedLabelmapForAllSegments(
            merged, slicer.vtkSegmentation.EXTENT_REFERENCE_GEOMETRY, reference, ids, values):
        raise RuntimeError(f"could not read the voxels of '{segmentation_node.GetName()}'")
    if merged.GetPointData().GetScalars() is None:
        return labels
    resampled = slicer.vtkOrientedImageData()
    if not slicer.vtkOrientedImageDataResample.ResampleOrientedImageToReferenceOrientedImage(
            merged, reference, resampled, False, False):
        raise RuntimeError(f"could not resample '{segmentation_node.GetName()}' to the volume's grid")
    extent = resampled.GetExtent()
    array = numpy_support.vtk_to_numpy(resampled.GetPointData().GetScalars()).reshape(
        extent[5] - extent[4] + 1, extent[3] - extent[2] + 1, extent[1] - extent[0] + 1)
    labels[extent[4]:extent[5] + 1, extent[2]:extent[3] + 1, extent[0]:extent[1] + 1] = array
    return labels


# ----------------------------------------------------------------------------------------------
# Edit detection


def content_hash(segmentation_node, volume_node) -> str:
    """A hash of our two segments' voxels on the volume's grid."""
    labels = segmentation_labelmap(segmentation_node, volume_node)
    digest = hashlib.sha256()
    digest.update(repr(labels.shape).encode())
    digest.update(labels.tobytes())
    return digest.hexdigest()


def mark_unedited(segmentation_node, volume_node) -> None:
    """Remember the current content as the one LiverTumorSeg wrote (saved with the scene)."""
    segmentation_node.SetAttribute(ATTRIBUTE_CONTENT_HASH, content_hash(segmentation_node, volume_node))


def was_edited(segmentation_node, volume_node) -> bool:
    """True when the liver/tumor voxels differ from what LiverTumorSeg last wrote or measured."""
    stored = segmentation_node.GetAttribute(ATTRIBUTE_CONTENT_HASH)
    return stored is None or stored != content_hash(segmentation_node, volume_node)


def measurements_outdated(segmentation_node, volume_node) -> bool:
    """True when the liver/tumor voxels differ from those the measurements table was computed from
    (a lesion edit updates the table without marking the segmentation unedited: it stays protected
    from being overwritten). Scenes saved before the measured hash existed use the content hash."""
    stored = (segmentation_node.GetAttribute(ATTRIBUTE_MEASURED_HASH)
              or segmentation_node.GetAttribute(ATTRIBUTE_CONTENT_HASH))
    return stored is None or stored != content_hash(segmentation_node, volume_node)


def needs_overwrite_confirmation(segmentation_node, volume_node) -> bool:
    """True when writing a new result into this node could destroy work: the node has our segments
    and either LiverTumorSeg did not make them or they were edited since. The content is compared on
    the grid of the volume the node was made from (``volume_node`` when it does not say)."""
    if segmentation_node is None or segmentation_node.GetSegmentation().GetNumberOfSegments() == 0:
        return False
    if not any(find_segment_id(segmentation_node, term) for term in SEGMENTS):
        return False  # our segments are absent: nothing of the user's gets replaced
    return was_edited(segmentation_node, input_volume_node(segmentation_node) or volume_node)


# ----------------------------------------------------------------------------------------------
# Measurements


def measure_segmentation(segmentation_node, volume_node):
    """The library's measurements (volumes, TLVR, lesions) of the segmentation as it is now."""
    from LiverTumorSegLib.measure import measure_labelmap

    labels = segmentation_labelmap(segmentation_node, volume_node)
    ct_hu = array_from_volume(volume_node)
    return measure_labelmap(labels, geometry_of_volume(volume_node), ct_hu=ct_hu)


def _nan_if_none(value: Any) -> float:
    return float("nan") if value is None else float(value)


def measurement_rows(measurements: Dict[str, Any]) -> List[Dict[str, Any]]:
    """Rows of the measurements table from a report/``Measurements.to_dict()`` dictionary."""
    liver_ml = measurements.get("liver_volume_ml")
    tlvr = measurements.get("tlvr")
    rows: List[Dict[str, Any]] = [
        {COLUMN_STRUCTURE: LIVER_ROW, COLUMN_LESION_ID: 0, COLUMN_VOLUME: _nan_if_none(liver_ml)},
        {COLUMN_STRUCTURE: TUMOR_ROW, COLUMN_LESION_ID: 0,
         COLUMN_VOLUME: _nan_if_none(measurements.get("tumor_volume_ml")),
         COLUMN_TLVR: float("nan") if tlvr is None else 100.0 * float(tlvr),
         COLUMN_VOXELS: int(sum(int(les.get("voxel_count", 0)) for les in measurements.get("lesions", [])))},
    ]
    for lesion in measurements.get("lesions", []):
        volume = _nan_if_none(lesion.get("volume_ml"))
        share = 100.0 * volume / liver_ml if liver_ml else float("nan")
        centroid = list(lesion.get("centroid_ras_mm") or [None, None, None])
        row = {COLUMN_STRUCTURE: f"Lesion {lesion['id']}", COLUMN_LESION_ID: int(lesion["id"]),
               COLUMN_VOLUME: volume, COLUMN_TLVR: share,
               COLUMN_DIAMETER: _nan_if_none(lesion.get("longest_axial_diameter_mm")),
               COLUMN_MEAN_HU: _nan_if_none(lesion.get("mean_hu")),
               COLUMN_VOXELS: int(lesion.get("voxel_count", 0))}
        for column, value in zip(COLUMN_CENTROID, centroid):
            row[column] = _nan_if_none(value)
        rows.append(row)
    return rows


def update_measurements_table(scene, measurements: Dict[str, Any], table_node=None, name: str = "Liver measurements"):
    """Fill (or create) a table node with the measurements; returns it."""
    if table_node is None:
        table_node = scene.AddNewNodeByClass("vtkMRMLTableNode", name)
    rows = measurement_rows(measurements)
    was_modifying = table_node.StartModify()
    try:
        table_node.RemoveAllColumns()
        table = table_node.GetTable()
        for column, kind, unit, description in TABLE_COLUMNS:
            if kind == "string":
                array = vtk.vtkStringArray()
            elif kind == "int":
                array = vtk.vtkIntArray()
            else:
                array = vtk.vtkDoubleArray()
            array.SetName(column)
            for row in rows:
                value = row.get(column)
                if kind == "string":
                    array.InsertNextValue(str(value or ""))
                elif kind == "int":
                    array.InsertNextValue(int(value or 0))
                else:
                    array.InsertNextValue(float("nan") if value is None else float(value))
            table.AddColumn(array)
            table_node.SetColumnUnitLabel(column, unit)
            table_node.SetColumnDescription(column, description)
        table_node.SetLocked(True)  # results, not a spreadsheet: edit the segmentation instead
    finally:
        table_node.EndModify(was_modifying)
    table_node.Modified()
    return table_node


def table_rows(table_node) -> List[Dict[str, Any]]:
    """The measurements table back as row dictionaries (NaN for 'not applicable')."""
    table = table_node.GetTable()
    names = [table.GetColumnName(c) for c in range(table.GetNumberOfColumns())]
    rows = []
    for r in range(table.GetNumberOfRows()):
        row = {}
        for c, column in enumerate(names):
            value = table.GetValue(r, c)
            row[column] = value.ToString() if column == COLUMN_STRUCTURE else (
                value.ToInt() if column in (COLUMN_LESION_ID, COLUMN_VOXELS) else value.ToDouble())
        rows.append(row)
    return rows


def lesion_centroid_ras(table_node, row_index: int) -> Optional[Tuple[float, float, float]]:
    """The centroid (RAS, in the volume's own coordinates) of the lesion in table row ``row_index``;
    None for summary rows."""
    rows = table_rows(table_node)
    if not 0 <= row_index < len(rows) or rows[row_index][COLUMN_LESION_ID] <= 0:
        return None
    centroid = tuple(float(rows[row_index][c]) for c in COLUMN_CENTROID)
    return None if any(math.isnan(v) for v in centroid) else centroid  # type: ignore[return-value]


def local_to_world_ras(node, point_ras: Sequence[float]) -> Tuple[float, float, float]:
    """A point given in ``node``'s own coordinates, in world RAS (through its parent transforms)."""
    parent = node.GetParentTransformNode() if node is not None else None
    if parent is None:
        return tuple(float(v) for v in point_ras)  # type: ignore[return-value]
    transform = vtk.vtkGeneralTransform()
    parent.GetTransformToWorld(transform)
    return tuple(transform.TransformPoint([float(v) for v in point_ras]))  # type: ignore[return-value]


def world_to_local_ras(node, point_ras: Sequence[float]) -> Tuple[float, float, float]:
    """A world RAS point (a click) in ``node``'s own coordinates (through its parent transforms)."""
    parent = node.GetParentTransformNode() if node is not None else None
    if parent is None:
        return tuple(float(v) for v in point_ras)  # type: ignore[return-value]
    transform = vtk.vtkGeneralTransform()
    parent.GetTransformFromWorld(transform)
    return tuple(transform.TransformPoint([float(v) for v in point_ras]))  # type: ignore[return-value]


# ----------------------------------------------------------------------------------------------
# Importing a CLI result


def import_results(scene, volume_node, outputs: Dict[str, Any], segmentation_node=None,
                   name: Optional[str] = None) -> Tuple[Any, Any]:
    """Read a finished run's labelmap and report into a segmentation node and a table node.

    ``outputs`` are the CLI's output paths by key ("labelmap", "report" are needed). Returns
    ``(segmentation_node, table_node)``; places both beside the volume in the subject hierarchy.
    """
    labels, labels_geometry = read_labelmap_file(Path(outputs["labelmap"]))
    check_same_grid(volume_node, labels, labels_geometry)
    if labels.max(initial=0) > max(LIVER_LABEL, TUMOR_LABEL):
        raise ValueError(f"{outputs['labelmap']} holds labels above {TUMOR_LABEL}; it is not a LiverTumorSeg labelmap")
    report = json.loads(Path(outputs["report"]).read_text(encoding="utf-8"))
    segmentation_node = import_labelmap(scene, volume_node, labels, segmentation_node, name)
    segmentation_node.SetAttribute(ATTRIBUTE_REPORT, json.dumps(_report_metadata(report)))
    table_node = set_measurements(scene, segmentation_node, report, "segmentation run", volume_node)
    place_beside(volume_node, segmentation_node)
    place_beside(volume_node, table_node)
    return segmentation_node, table_node


def _report_metadata(report: Dict[str, Any]) -> Dict[str, Any]:
    """What of the CLI report stays true after edits (models, device, timings, settings)."""
    keep = ("models", "device", "seconds_per_stage", "settings", "software", "warnings", "non_clinical",
            "tumor_tta_std_mean")
    return {key: report[key] for key in keep if key in report}


def set_measurements(scene, segmentation_node, measurements: Dict[str, Any], source: str, volume_node):
    """Write measurements of the segmentation as it is now (on ``volume_node``'s grid) into its
    table node (created on first use); remember where they came from and what they measured."""
    table_node = measurements_table_node(segmentation_node)
    table_node = update_measurements_table(scene, measurements, table_node,
                                           name=f"{segmentation_node.GetName()} measurements")
    segmentation_node.SetNodeReferenceID(REFERENCE_ROLE_MEASUREMENTS, table_node.GetID())
    segmentation_node.SetAttribute(ATTRIBUTE_MEASUREMENTS_SOURCE, source)
    segmentation_node.SetAttribute(ATTRIBUTE_MEASURED_HASH, content_hash(segmentation_node, volume_node))
    return table_node


def measurements_table_node(segmentation_node):
    return segmentation_node.GetNodeReference(REFERENCE_ROLE_MEASUREMENTS)


def input_volume_node(segmentation_node):
    return segmentation_node.GetNodeReference(REFERENCE_ROLE_INPUT_VOLUME)


def recompute_measurements(scene, segmentation_node, volume_node):
    """Measure the (edited) segmentation with the library's code and update its table; the new
    content becomes the reference for edit detection. Returns ``(measurements, table_node)``."""
    measurements = measure_segmentation(segmentation_node, volume_node)
    table_node = set_measurements(scene, segmentation_node, measurements.to_dict(), "recomputed", volume_node)
    mark_unedited(segmentation_node, volume_node)
    return measurements, table_node


# ----------------------------------------------------------------------------------------------
# Subject hierarchy


def place_beside(volume_node, node) -> bool:
    """Put ``node`` under the same subject-hierarchy parent (the study) as the volume; False when
    the scene has no subject hierarchy items for them."""
    scene = volume_node.GetScene()
    if scene is None:
        return False
    hierarchy = slicer.vtkMRMLSubjectHierarchyNode.GetSubjectHierarchyNode(scene)
    if hierarchy is None:
        return False
    invalid = hierarchy.GetInvalidItemID()
    volume_item = hierarchy.GetItemByDataNode(volume_node)
    if volume_item == invalid:
        return False
    parent = hierarchy.GetItemParent(volume_item)
    item = hierarchy.GetItemByDataNode(node)
    if item == invalid:
        item = hierarchy.CreateItem(parent, node)
    else:
        hierarchy.SetItemParent(item, parent)
    return item != invalid


# ----------------------------------------------------------------------------------------------
# Export


TABLE_SUFFIX = "_measurements.csv"  # the measurements table; the other files: LiverTumorSegLib.io.writers


def export_paths(folder: Path, name: str) -> Dict[str, Path]:
    """The files :func:`export_results` writes, by key: the library's outputs and the table."""
    from LiverTumorSegLib.io.writers import output_paths

    paths = output_paths(Path(folder), name)
    paths["table"] = Path(folder) / f"{name}{TABLE_SUFFIX}"
    return paths


def existing_exports(folder: Path, name: str) -> List[Path]:
    return [p for p in export_paths(folder, name).values() if p.exists()]


def labelmap_image(segmentation_node, volume_node):
    """Our segments as the library's 0/1/2 labelmap: a SimpleITK image on the volume's grid."""
    from LiverTumorSegLib.geometry import array_to_image

    return array_to_image(segmentation_labelmap(segmentation_node, volume_node), geometry_of_volume(volume_node))


def export_results(segmentation_node, volume_node, folder: Path, name: str, overwrite: bool = False) -> Dict[str, Path]:
    """Write what the command line writes (.seg.nrrd, 0/1/2 NIfTI labelmap, lesions CSV, JSON
    report) with the library's writers, plus the measurements table as CSV, into ``folder``; the
    measurements are those of the segmentation as it is now, the report keeps what the run
    reported (models, device, timings, settings). Existing files are kept unless ``overwrite``."""
    from LiverTumorSegLib.io.writers import LabelmapResult, write_outputs

    folder = Path(folder)
    paths = export_paths(folder, name)
    if not overwrite:
        existing = existing_exports(folder, name)
        if existing:
            raise FileExistsError(f"{existing[0]} already exists; choose another folder or allow overwriting")
    run_report = json.loads(segmentation_node.GetAttribute(ATTRIBUTE_REPORT) or "{}")
    result = LabelmapResult.measured(segmentation_labelmap(segmentation_node, volume_node),
                                     geometry_of_volume(volume_node), array_from_volume(volume_node), run_report)
    storage = volume_node.GetStorageNode()
    input_path = Path(storage.GetFileName()) if storage is not None and storage.GetFileName() else \
        Path(volume_node.GetName())
    extra = {"input_volume": volume_node.GetName(),
             "edited_after_segmentation": bool(was_edited(segmentation_node, volume_node))}
    if "tumor_tta_std_mean" in run_report:
        extra["tumor_tta_std_mean"] = run_report["tumor_tta_std_mean"]
    write_outputs(result, input_path, name, "slicer", folder, force=True, report_extra=extra)

    table_node = slicer.vtkMRMLTableNode()
    update_measurements_table(None, result.measurements.to_dict(), table_node)
    storage = slicer.vtkMRMLTableStorageNode()
    storage.SetFileName(str(paths["table"]))
    if not storage.WriteData(table_node):
        raise OSError(f"could not write {paths['table']}")
    return paths


def write_dicom_seg(segmentation_node, volume_node, instance_files: Sequence[Path], path: Path) -> Path:
    """A DICOM SEG of our segments, written by the library (highdicom), that references the CT's
    DICOM ``instance_files`` (see :func:`dicom_instance_files`)."""
    from LiverTumorSegLib.io.dicom_seg import write_dicom_seg as write

    write(labelmap_image(segmentation_node, volume_node), list(instance_files), Path(path))
    return Path(path)


def is_from_dicom(volume_node) -> bool:
    """True when the volume was loaded from DICOM (Slicer keeps the instance UIDs)."""
    uids = volume_node.GetAttribute("DICOM.instanceUIDs")
    return bool(uids and uids.strip())


def dicom_instance_files(volume_node, database) -> List[Path]:
    """The files of the DICOM instances ``volume_node`` was loaded from, found in Slicer's DICOM
    ``database`` (``slicer.dicomDatabase``: ``fileForInstance(uid)``)."""
    uids = (volume_node.GetAttribute("DICOM.instanceUIDs") or "").split()
    if not uids:
        raise RuntimeError(f"volume '{volume_node.GetName()}' was not loaded from DICOM; a DICOM SEG must "
                           "reference the CT's DICOM series")
    files = [Path(database.fileForInstance(uid) or "") for uid in uids]
    missing = [uid for uid, path in zip(uids, files) if not path.is_file()]
    if missing:
        raise RuntimeError(f"{len(missing)} of the {len(uids)} DICOM files of '{volume_node.GetName()}' are no "
                           "longer in the DICOM database; import the series again")
    return files


def iter_our_segments(segmentation_node) -> Iterable[Tuple[SegmentTerminology, Any]]:
    """Our segments present in the node, with their terminology."""
    segmentation = segmentation_node.GetSegmentation()
    for term in SEGMENTS:
        segment_id = find_segment_id(segmentation_node, term)
        if segment_id is not None:
            yield term, segmentation.GetSegment(segment_id)

