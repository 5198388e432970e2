"""DICOM Segmentation objects (DICOM SEG): write a labelmap as one, read one onto any image grid.

Writing uses highdicom (the optional ``dicom`` extra): a BINARY segmentation whose frames lie on
the source CT series' slices, with the segments' names and SNOMED CT codes of
``io/terminology.py``, references to the series' SOP instances, and the algorithm stated
(AUTOMATIC, "LiverTumorSeg", the library's version, non-clinical).

Reading uses pydicom only, so that SEGs from any writer (dcmqi, 3D Slicer, highdicom, TCIA
collections) load: each segment's frames are stacked on the SEG's own plane grid and mapped onto
the reference image by physical position (nearest neighbour), so a SEG that covers only part
of a series, or that lies on another grid of the same frame of reference, lands where it belongs.
"""

from __future__ import annotations

import logging
import os
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple

import numpy as np
import SimpleITK as sitk

from .. import __version__
from ..errors import LiverTumorSegError
from ..geometry import Geometry
from .terminology import SEGMENTS, SegmentTerminology

log = logging.getLogger(__name__)

SEGMENTATION_STORAGE = "1.2.840.10008.5.1.4.1.1.66.4"
LABEL_MAP_SEGMENTATION_STORAGE = "1.2.840.10008.5.1.4.1.1.66.7"
SEGMENTATION_SOP_CLASSES = (SEGMENTATION_STORAGE, LABEL_MAP_SEGMENTATION_STORAGE)

ALGORITHM_NAME = "LiverTumorSeg"
SERIES_DESCRIPTION = "LiverTumorSeg liver+tumor (non-clinical)"
CONTENT_DESCRIPTION = "Automatic liver/tumor segmentation, not for clinical use"
SEG_SERIES_NUMBER = 9001
TYPE2_ATTRIBUTES_COPIED = ("PatientName", "PatientID", "PatientBirthDate", "PatientSex", "AccessionNumber",
                           "StudyID", "StudyDate", "StudyTime", "ReferringPhysicianName")


# ---------------------------------------------------------------------------------------------
# Shared helpers
# ---------------------------------------------------------------------------------------------

def _require_pydicom():
    try:
        import pydicom
    except ImportError:
        raise LiverTumorSegError("reading or writing DICOM SEG needs pydicom; install it with "
                                 "'pip install pydicom' (or the package's 'dicom' extra)") from None
    return pydicom


def require_highdicom():
    """The highdicom module, or a user error saying how to install it."""
    try:
        import highdicom
    except ImportError:
        raise LiverTumorSegError("writing DICOM SEG needs highdicom; install it with 'pip install highdicom' "
                                 "(or the package's 'dicom' extra)") from None
    return highdicom


def is_segmentation(dataset: Any) -> bool:
    """True for a DICOM SEG dataset (binary/fractional or label-map segmentation)."""
    return str(dataset.get("SOPClassUID", "")) in SEGMENTATION_SOP_CLASSES or dataset.get("Modality") == "SEG"


def referenced_series_uids(seg: Any) -> List[str]:
    """The Series Instance UIDs a SEG says it was drawn on (Referenced Series Sequence, also those
    of other studies), in the order given."""
    uids: List[str] = []
    items = list(seg.get("ReferencedSeriesSequence", []))
    for study in seg.get("StudiesContainingOtherReferencedInstancesSequence", []):
        items.extend(study.get("ReferencedSeriesSequence", []))
    for item in items:
        uid = str(item.get("SeriesInstanceUID", "")).strip()
        if uid and uid not in uids:
            uids.append(uid)
    return uids


def _rgb_to_dicom_lab(rgb: Tuple[float, float, float]) -> List[int]:
    """sRGB (0..1) -> DICOM-scaled CIELab (D65 white), as RecommendedDisplayCIELabValue wants."""
    linear = [c / 12.92 if c <= 0.04045 else ((c + 0.055) / 1.055) ** 2.4 for c in rgb]
    matrix = np.array([[0.4124, 0.3576, 0.1805], [0.2126, 0.7152, 0.0722], [0.0193, 0.1192, 0.9505]])
    xyz = matrix @ np.asarray(linear) / np.array([0.95047, 1.0, 1.08883])
    f = np.where(xyz > (6 / 29) ** 3, np.cbrt(xyz), xyz / (3 * (6 / 29) ** 2) + 4 / 29)
    lab = (116 * f[1] - 16, 500 * (f[0] - f[1]), 200 * (f[1] - f[2]))
    scaled = (lab[0] * 65535 / 100, (lab[1] + 128) * 65535 / 255, (lab[2] + 128) * 65535 / 255)
    return [int(round(min(max(v, 0), 65535))) for v in scaled]


# ---------------------------------------------------------------------------------------------
# Writing
# ---------------------------------------------------------------------------------------------

@dataclass
class _SourceSeries:
    """The source CT slices, one per labelmap slice k, in k order (headers only)."""

    datasets: List[Any]
    folder: Path


def _read_headers(folder: Path) -> List[Tuple[Path, Any]]:
    pydicom = _require_pydicom()
    headers = []
    for path in sorted(folder.iterdir()):
        if not path.is_file() or path.name.startswith("."):
            continue
        try:
            ds = pydicom.dcmread(str(path), stop_before_pixels=True)
        except Exception:  # not DICOM (a README, a thumbnail, DICOMDIR junk): not part of a series
            continue
        if "ImagePositionPatient" in ds and "ImageOrientationPatient" in ds and "Rows" in ds:
            headers.append((path, ds))
    return headers


def _fill_missing_uids(datasets: List[Any], folder: Path) -> None:
    """Anonymised exports sometimes blank the instance, series or study UIDs; a SEG must name them.
    Instance UIDs come back from the file meta; blank series/study/frame-of-reference UIDs get a
    UID derived from the slices' instance UIDs (the same on every export). The SEG then references
    UIDs that the instances themselves do not carry, so one warning says that a PACS cannot link
    it to the series. Absent patient/study attributes the SEG must carry (type 2) become empty ones."""
    from pydicom.uid import generate_uid

    missing: Dict[str, str] = {}  # attribute -> what the SEG references instead
    for ds in datasets:
        meta = getattr(ds, "file_meta", None)
        if not str(ds.get("SOPInstanceUID", "")).strip() and meta is not None:
            ds.SOPInstanceUID = meta.get("MediaStorageSOPInstanceUID", "")
            missing["SOPInstanceUID"] = "the files' meta headers' instance UIDs"
        if not str(ds.get("SOPClassUID", "")).strip() and meta is not None:
            ds.SOPClassUID = meta.get("MediaStorageSOPClassUID", "")
        if not str(ds.get("SOPInstanceUID", "")).strip():
            raise LiverTumorSegError(f"a DICOM file in {folder} has no SOP Instance UID; a DICOM SEG cannot "
                                     "reference it. Export the series again with its UIDs")
        for keyword in TYPE2_ATTRIBUTES_COPIED:  # required (may be empty) in the SEG, copied from here
            if keyword not in ds:
                setattr(ds, keyword, "")
    instances = sorted(str(ds.SOPInstanceUID) for ds in datasets)
    for keyword in ("StudyInstanceUID", "SeriesInstanceUID", "FrameOfReferenceUID"):
        values = {str(ds.get(keyword, "")).strip() for ds in datasets}
        if values == {""}:
            derived = generate_uid(entropy_srcs=[keyword] + instances)
            missing[keyword] = f"the derived UID {derived}"
            for ds in datasets:
                setattr(ds, keyword, derived)
    if missing:
        log.warning("the DICOM series in %s has no %s in its slices (anonymised?), so the DICOM SEG references "
                    "UIDs that the slices themselves do not carry (%s): a PACS or DICOM viewer cannot link the SEG "
                    "to this series. Use the SEG only with these files, or export the series again with its UIDs "
                    "and segment that", folder, ", ".join(missing), "; ".join(f"{k}: {v}" for k, v in missing.items()))


def _match_series(labelmap: sitk.Image, folder: Path) -> _SourceSeries:
    """The series in ``folder`` whose slices are the labelmap's k slices (same plane grid)."""
    if not Path(folder).is_dir():
        raise LiverTumorSegError(f"DICOM source folder {folder} does not exist; give the folder of the CT "
                                 "series the segmentation was computed on")
    headers = _read_headers(Path(folder))
    if not headers:
        raise LiverTumorSegError(f"no DICOM image slices found in {folder}; give the folder of the CT series "
                                 "the segmentation was computed on")
    geometry = Geometry.of(labelmap)
    d = geometry.direction_matrix
    spacing = np.asarray(geometry.spacing)
    by_series: Dict[str, List[Any]] = {}
    for _, ds in headers:
        by_series.setdefault(str(ds.get("SeriesInstanceUID", "")).strip(), []).append(ds)
    tolerance = 0.05 * float(spacing.min())
    for datasets in by_series.values():
        slices: List[Optional[Any]] = [None] * geometry.size[2]
        for ds in datasets:
            iop = np.asarray([float(v) for v in ds.ImageOrientationPatient])
            pixel_spacing = [float(v) for v in ds.PixelSpacing] if "PixelSpacing" in ds else [0.0, 0.0]
            if (int(ds.Rows), int(ds.Columns)) != (geometry.size[1], geometry.size[0]) \
                    or not np.allclose(iop[:3], d[:, 0], atol=1e-3) or not np.allclose(iop[3:], d[:, 1], atol=1e-3) \
                    or not np.allclose(pixel_spacing, [spacing[1], spacing[0]], rtol=1e-3, atol=1e-4):
                continue
            offset = np.asarray([float(v) for v in ds.ImagePositionPatient]) - np.asarray(geometry.origin)
            along = d.T @ offset  # mm along the grid's i, j, k axes from the grid's origin
            k = int(round(along[2] / spacing[2]))
            if abs(along[0]) < tolerance and abs(along[1]) < tolerance and abs(along[2] - k * spacing[2]) < tolerance \
                    and 0 <= k < len(slices) and slices[k] is None:
                slices[k] = ds
        if all(s is not None for s in slices):
            _fill_missing_uids(slices, Path(folder))  # type: ignore[arg-type]
            return _SourceSeries(datasets=slices, folder=Path(folder))  # type: ignore[arg-type]
    raise LiverTumorSegError(f"the segmentation's grid ({geometry.size[0]}x{geometry.size[1]}x{geometry.size[2]} voxels, "
                             f"origin {tuple(round(o, 2) for o in geometry.origin)}) does not match any DICOM series "
                             f"in {folder}; a DICOM SEG must lie on the slices of the series it was computed on")


def _segment_description(hd: Any, number: int, segment: SegmentTerminology) -> Any:
    from pydicom.sr.codedict import codes

    def concept(code: Tuple[str, str, str]) -> Any:
        scheme, value, meaning = code
        return hd.sr.CodedConcept(value=value, scheme_designator=scheme, meaning=meaning)

    description = hd.seg.SegmentDescription(
        segment_number=number,
        segment_label=segment.name,
        segmented_property_category=concept(segment.category),
        segmented_property_type=concept(segment.type),
        algorithm_type="AUTOMATIC",
        algorithm_identification=hd.AlgorithmIdentificationSequence(
            name=ALGORITHM_NAME, family=codes.cid7162.ArtificialIntelligence, version=__version__),
        anatomic_regions=[concept(segment.anatomic_region)] if any(segment.anatomic_region) else None,
    )
    description.RecommendedDisplayCIELabValue = _rgb_to_dicom_lab(segment.color_rgb)
    return description


def _segmentation(hd: Any, source: _SourceSeries, pixel_array: np.ndarray,
                  segments: Sequence[SegmentTerminology]) -> Any:
    from pydicom.uid import generate_uid

    return hd.seg.Segmentation(
        source_images=source.datasets,
        pixel_array=pixel_array,
        segmentation_type="BINARY",
        segment_descriptions=[_segment_description(hd, n + 1, s) for n, s in enumerate(segments)],
        series_instance_uid=generate_uid(),
        series_number=SEG_SERIES_NUMBER,
        sop_instance_uid=generate_uid(),
        instance_number=1,
        manufacturer=ALGORITHM_NAME,
        manufacturer_model_name="LiverTumorSegLib",
        software_versions=__version__,
        device_serial_number="none",
        content_description=CONTENT_DESCRIPTION,
        content_label="LIVERTUMORSEG",
        series_description=SERIES_DESCRIPTION,
    )


def write_dicom_seg_masks(masks: Sequence[sitk.Image], segments: Sequence[SegmentTerminology],
                          source_dicom_folder: Path, path: Path) -> None:
    """Write one DICOM SEG segment per mask (0/1, may overlap), named and coded by ``segments``;
    the masks lie on the grid of a CT series in ``source_dicom_folder``, which the SEG references."""
    if not masks or len(masks) != len(segments):
        raise ValueError("give one SegmentTerminology per mask, and at least one mask")
    hd = require_highdicom()
    reference = Geometry.of(masks[0])
    for mask in masks[1:]:
        if not Geometry.of(mask).matches(reference):
            raise LiverTumorSegError("the segment masks of one DICOM SEG must share one grid")
    arrays = [np.asarray(sitk.GetArrayViewFromImage(m)) for m in masks]
    for array, segment in zip(arrays, segments):
        if not np.isin(array, (0, 1)).all():
            raise LiverTumorSegError(f"the mask of segment '{segment.name}' holds values other than 0 and 1")
    path = Path(path)
    if not path.parent.is_dir():
        raise LiverTumorSegError(f"cannot write {path}: folder {path.parent} does not exist")
    source = _match_series(masks[0], Path(source_dicom_folder))
    pixel_array = np.stack(arrays, axis=-1).astype(np.uint8)  # (frames, rows, columns, segments)
    with warnings.catch_warnings():
        # Collections such as TCIA's store patient names like "HCC_001"; they are copied as they are.
        warnings.filterwarnings("ignore", message=".*unlikely to represent the intended person name")
        seg = _segmentation(hd, source, pixel_array, segments)
    staged = path.with_name(f".{path.name}.partial")
    try:
        seg.save_as(str(staged))
        os.replace(staged, path)
    except OSError as exc:
        raise LiverTumorSegError(f"cannot write DICOM SEG {path} ({exc.strerror or exc})") from None
    finally:
        staged.unlink(missing_ok=True)


def write_dicom_seg(labelmap: sitk.Image, source_dicom_folder: Path, path: Path,
                    segments: Sequence[SegmentTerminology] = SEGMENTS) -> None:
    """Write ``labelmap`` (0 background, 1 liver, 2 tumor, on the grid of the CT series in
    ``source_dicom_folder``) as a DICOM SEG with the segments "Liver" and "Liver tumor"
    (each segment holds the voxels of its own label, as the .seg.nrrd output does)."""
    array = np.asarray(sitk.GetArrayViewFromImage(labelmap))
    known = [0] + [s.label for s in segments]
    unknown = sorted(set(np.unique(array).tolist()) - set(known))
    if unknown:
        raise LiverTumorSegError(f"the labelmap holds label values {unknown} that no segment names; "
                                 f"expected only {known}")
    geometry = Geometry.of(labelmap)
    masks = []
    for segment in segments:
        mask = sitk.GetImageFromArray((array == segment.label).astype(np.uint8))
        masks.append(geometry.apply_to(mask))
    write_dicom_seg_masks(masks, segments, source_dicom_folder, path)


# ---------------------------------------------------------------------------------------------
# Reading
# ---------------------------------------------------------------------------------------------

def _read_seg_dataset(path: Path) -> Any:
    pydicom = _require_pydicom()
    path = Path(path)
    if not path.is_file():
        raise LiverTumorSegError(f"DICOM SEG file {path} does not exist")
    try:
        ds = pydicom.dcmread(str(path))
    except Exception as exc:
        raise LiverTumorSegError(f"{path} cannot be read as DICOM ({str(exc)[:120]}); give a DICOM SEG file") from None
    if str(ds.get("SOPClassUID", "")) not in SEGMENTATION_SOP_CLASSES:
        raise LiverTumorSegError(f"{path} is not a DICOM Segmentation (its SOP Class is "
                                 f"{ds.get('SOPClassUID', 'missing')}, modality {ds.get('Modality', '?')}); "
                                 "give a DICOM SEG file")
    return ds


def _frame_attribute(frame: Any, shared: Any, sequence: str, keyword: str) -> Any:
    for group in (frame, shared):
        if group is not None and sequence in group and len(group[sequence].value) and keyword in group[sequence][0]:
            return group[sequence][0][keyword].value
    return None


def _frame_pixels(ds: Any, path: Path) -> np.ndarray:
    try:
        pixels = ds.pixel_array
    except Exception as exc:
        raise LiverTumorSegError(f"the pixel data of DICOM SEG {path} cannot be decoded ({str(exc)[:160]}); "
                                 "install the decoder it names, or export the SEG uncompressed") from None
    frames = int(ds.get("NumberOfFrames", 1) or 1)
    return np.asarray(pixels).reshape(frames, int(ds.Rows), int(ds.Columns))


@dataclass
class _PlaneGrid:
    row_direction: np.ndarray  # direction of increasing column index
    column_direction: np.ndarray
    normal: np.ndarray
    pixel_spacing: Tuple[float, float]  # (between rows, between columns)
    positions: np.ndarray  # (frames, 3) LPS of each frame's first pixel


def _plane_grid(ds: Any, path: Path) -> _PlaneGrid:
    shared = ds.SharedFunctionalGroupsSequence[0] if "SharedFunctionalGroupsSequence" in ds else None
    frames = list(ds.get("PerFrameFunctionalGroupsSequence", []))
    if not frames:
        raise LiverTumorSegError(f"DICOM SEG {path} has no Per-frame Functional Groups; it is not a valid SEG")
    orientations, spacings, positions = set(), set(), []
    first_orientation = first_spacing = None
    for frame in frames:
        iop = _frame_attribute(frame, shared, "PlaneOrientationSequence", "ImageOrientationPatient")
        spacing = _frame_attribute(frame, shared, "PixelMeasuresSequence", "PixelSpacing")
        ipp = _frame_attribute(frame, shared, "PlanePositionSequence", "ImagePositionPatient")
        if iop is None or spacing is None or ipp is None:
            raise LiverTumorSegError(f"DICOM SEG {path} lacks plane orientation, pixel spacing or plane position "
                                     "for its frames; it cannot be placed in the patient's space")
        orientations.add(tuple(round(float(v), 4) for v in iop))
        spacings.add(tuple(round(float(v), 5) for v in spacing))
        if first_orientation is None:
            first_orientation, first_spacing = iop, spacing
        positions.append([float(v) for v in ipp])
    if len(orientations) != 1 or len(spacings) != 1:
        raise LiverTumorSegError(f"the frames of DICOM SEG {path} have {len(orientations)} orientations and "
                                 f"{len(spacings)} pixel spacings; only SEGs whose frames are parallel slices "
                                 "of one grid can be read")
    iop = np.asarray([float(v) for v in first_orientation], dtype=np.float64)
    row = iop[:3] / np.linalg.norm(iop[:3])
    column = iop[3:] - row * float(row @ iop[3:])  # exactly orthogonal to the row direction
    column /= np.linalg.norm(column)
    normal = np.cross(row, column)
    spacing = [float(v) for v in first_spacing]
    return _PlaneGrid(row, column, normal, (float(spacing[0]), float(spacing[1])), np.asarray(positions))


def _slice_spacing(ds: Any, grid: _PlaneGrid, reference: Geometry) -> float:
    """Distance between the SEG's slices: its Spacing Between Slices, else the smallest step
    between frame positions, reduced to the reference's slice spacing when that step is a multiple
    of it and thinner than the step (the SEG omits empty slices, leaving gaps between its slabs)."""
    shared = ds.SharedFunctionalGroupsSequence[0] if "SharedFunctionalGroupsSequence" in ds else None
    stated = _frame_attribute(None, shared, "PixelMeasuresSequence", "SpacingBetweenSlices")
    if stated is not None and float(stated) > 0:
        return float(stated)
    distances = np.unique(np.round(grid.positions @ grid.normal, 3))
    steps = np.diff(distances)
    reference_axis = np.abs(reference.direction_matrix.T @ grid.normal)
    parallel_axis = int(np.argmax(reference_axis))
    reference_step = reference.spacing[parallel_axis] if reference_axis[parallel_axis] > 0.999 else None
    if not len(steps):
        if reference_step:
            return float(reference_step)
        thickness = _frame_attribute(None, shared, "PixelMeasuresSequence", "SliceThickness")
        return float(thickness) if thickness else 1.0
    step = float(steps.min())
    thickness = _frame_attribute(None, shared, "PixelMeasuresSequence", "SliceThickness")
    contiguous = thickness is not None and float(thickness) >= step * 0.99
    if reference_step and step > reference_step * 1.01 and not contiguous:
        ratio = step / reference_step
        if abs(ratio - round(ratio)) < 0.01:
            return float(reference_step)
    return step


def _frame_segments(ds: Any, count: int) -> List[Optional[int]]:
    """The segment number of each frame (None for a label-map SEG, whose pixels are numbers)."""
    shared = ds.SharedFunctionalGroupsSequence[0] if "SharedFunctionalGroupsSequence" in ds else None
    numbers: List[Optional[int]] = []
    for frame in ds.PerFrameFunctionalGroupsSequence:
        number = _frame_attribute(frame, shared, "SegmentIdentificationSequence", "ReferencedSegmentNumber")
        numbers.append(int(number) if number is not None else None)
    return numbers[:count]


def read_dicom_seg(path: Path, reference: sitk.Image) -> Dict[str, np.ndarray]:
    """Each segment of the DICOM SEG at ``path`` as a uint8 0/1 mask (k, j, i) on ``reference``'s grid,
    placed by physical position (nearest neighbour). Keys are the segments' labels; segments with
    the same label are merged."""
    path = Path(path)
    ds = _read_seg_dataset(path)
    pixels = _frame_pixels(ds, path)
    grid = _plane_grid(ds, path)
    if len(grid.positions) != pixels.shape[0]:
        raise LiverTumorSegError(f"DICOM SEG {path} has {pixels.shape[0]} frames but describes "
                                 f"{len(grid.positions)}; the file is inconsistent")
    segmentation_type = str(ds.get("SegmentationType", "BINARY")).upper()
    if segmentation_type == "FRACTIONAL":
        maximum = float(ds.get("MaximumFractionalValue", 255) or 255)
        binary = pixels > maximum / 2
    elif segmentation_type in ("BINARY", "LABELMAP"):
        binary = pixels
    else:
        raise LiverTumorSegError(f"DICOM SEG {path} has the unknown segmentation type {segmentation_type}")
    labels = {int(item.SegmentNumber): str(item.get("SegmentLabel", "") or f"Segment {int(item.SegmentNumber)}")
              for item in ds.SegmentSequence}
    frame_segments = _frame_segments(ds, pixels.shape[0])

    geometry = Geometry.of(reference)
    slice_spacing = _slice_spacing(ds, grid, geometry)
    distances = grid.positions @ grid.normal
    first = int(np.argmin(distances))
    origin = grid.positions[first] - grid.normal * (distances[first] - distances.min())
    in_plane = (grid.positions - origin) @ np.stack([grid.row_direction, grid.column_direction], axis=1)
    if np.abs(in_plane).max() > 0.05 * min(grid.pixel_spacing):
        raise LiverTumorSegError(f"the frames of DICOM SEG {path} are shifted within their planes; only SEGs "
                                 "whose frames stack into one grid can be read")
    slice_float = (distances - distances.min()) / slice_spacing
    slice_index = np.round(slice_float).astype(int)
    if np.abs(slice_float - slice_index).max() > 0.25:
        raise LiverTumorSegError(f"the frames of DICOM SEG {path} are not evenly spaced "
                                 f"({slice_spacing:g} mm expected); it cannot be read as one grid")
    depth = int(slice_index.max()) + 1
    seg_spacing = (grid.pixel_spacing[1], grid.pixel_spacing[0], slice_spacing)
    seg_direction = tuple(np.stack([grid.row_direction, grid.column_direction, grid.normal], axis=1).ravel())

    stacks: Dict[str, np.ndarray] = {}
    shape = (depth, pixels.shape[1], pixels.shape[2])
    for number, label in labels.items():
        stack = stacks.setdefault(label, np.zeros(shape, dtype=np.uint8))
        for frame, (segment, k) in enumerate(zip(frame_segments, slice_index)):
            if segment is None:  # label map: the pixel values are segment numbers
                stack[k] |= (binary[frame] == number).astype(np.uint8)
            elif segment == number:
                stack[k] |= (binary[frame] != 0).astype(np.uint8)
    masks: Dict[str, np.ndarray] = {}
    for label, stack in stacks.items():
        image = sitk.GetImageFromArray(stack)
        image.SetSpacing(seg_spacing)
        image.SetOrigin(tuple(float(v) for v in origin))
        image.SetDirection(seg_direction)
        resampled = sitk.Resample(image, reference, sitk.Transform(), sitk.sitkNearestNeighbor, 0, sitk.sitkUInt8)
        masks[label] = sitk.GetArrayFromImage(resampled)
    return masks
