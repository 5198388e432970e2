"""DICOM Segmentation objects (DICOM SEG): write a labelmap as one, read one onto any image grid.

Both use highdicom (the optional ``dicom`` extra).

Writing: a BINARY segmentation whose frames lie on the source CT series' slices (given as its
folder or as its files), with the segments' names, colors and SNOMED CT codes of
``io/terminology.py``, references to the series' SOP instances, and the algorithm stated
(AUTOMATIC, "LiverTumorSeg", the library's version, non-clinical).

Reading: highdicom stacks the frames of a SEG from any writer (dcmqi, 3D Slicer, highdicom, TCIA
collections; binary, fractional or label-map) into a volume on the SEG's own grid, which is
mapped onto the reference image by physical position (nearest neighbour), so a SEG that covers
only part of a series, or that lies on another grid of the same frame of reference, lands where
it belongs.
"""

from __future__ import annotations

import logging
import os
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple, Union

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
# The CT series a SEG is drawn on: its folder, or its files (e.g. from Slicer's DICOM database).
DicomSource = Union[Path, str, Sequence[Union[Path, str]]]
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
        raise LiverTumorSegError("DICOM SEG needs highdicom; install it with 'pip install highdicom' "
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


# ---------------------------------------------------------------------------------------------
# Writing
# ---------------------------------------------------------------------------------------------

@dataclass
class _SourceSeries:
    """The source CT slices, one per labelmap slice k, in k order (headers only)."""

    datasets: List[Any]
    where: str  # the folder or "the N given DICOM files", for messages


def _source_files(source: DicomSource) -> Tuple[List[Path], str]:
    """The candidate files of a DICOM source (a folder's files, or the files given) and how to name
    it in a message; an error when the folder or a file does not exist."""
    if isinstance(source, (str, Path)):
        folder = Path(source)
        if not folder.is_dir():
            raise LiverTumorSegError(f"DICOM source folder {folder} does not exist; give the folder of the CT "
                                     "series the segmentation was computed on")
        return sorted(p for p in folder.iterdir() if p.is_file() and not p.name.startswith(".")), str(folder)
    files = [Path(f) for f in source]
    missing = [f for f in files if not f.is_file()]
    if missing:
        raise LiverTumorSegError(f"{len(missing)} of the {len(files)} DICOM files of the CT series do not exist "
                                 f"(first: {missing[0]}); give the files of the series the segmentation was "
                                 "computed on")
    return files, f"the {len(files)} given DICOM files"


def _read_headers(files: Sequence[Path]) -> List[Tuple[Path, Any]]:
    pydicom = _require_pydicom()
    headers = []
    for path in files:
        try:
            ds = pydicom.dcmread(str(path), stop_before_pixels=True)
        except Exception:  # not DICOM (a README, a thumbnail, DICOMDIR junk): not part of a series
            continue
        if "ImagePositionPatient" in ds and "ImageOrientationPatient" in ds and "Rows" in ds:
            headers.append((path, ds))
    return headers


def _fill_missing_uids(datasets: List[Any], where: str) -> None:
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
            raise LiverTumorSegError(f"a DICOM file in {where} has no SOP Instance UID; a DICOM SEG cannot "
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
        log.warning("the DICOM series of %s has no %s in its slices (anonymised?), so the DICOM SEG references "
                    "UIDs that the slices themselves do not carry (%s): a PACS or DICOM viewer cannot link the SEG "
                    "to this series. Use the SEG only with these files, or export the series again with its UIDs "
                    "and segment that", where, ", ".join(missing), "; ".join(f"{k}: {v}" for k, v in missing.items()))


def _match_series(labelmap: sitk.Image, source: DicomSource) -> _SourceSeries:
    """The series in ``source`` whose slices are the labelmap's k slices (same plane grid)."""
    files, where = _source_files(source)
    headers = _read_headers(files)
    if not headers:
        raise LiverTumorSegError(f"no DICOM image slices found in {where}; give the folder of the CT series "
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
            _fill_missing_uids(slices, where)  # type: ignore[arg-type]
            return _SourceSeries(datasets=slices, where=where)  # type: ignore[arg-type]
    raise LiverTumorSegError(f"the segmentation's grid ({geometry.size[0]}x{geometry.size[1]}x{geometry.size[2]} voxels, "
                             f"origin {tuple(round(o, 2) for o in geometry.origin)}) does not match any DICOM series "
                             f"in {where}; a DICOM SEG must lie on the slices of the series it was computed on")


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
        display_color=hd.color.CIELabColor.from_rgb(*(255.0 * c for c in segment.color_rgb)),
    )
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
                          source: DicomSource, path: Path) -> None:
    """Write one DICOM SEG segment per mask (0/1, may overlap), named and coded by ``segments``;
    the masks lie on the grid of a CT series in ``source`` (its folder, or its files), which the SEG
    references."""
    if not masks or len(masks) != len(segments):
        raise ValueError("give one SegmentTerminology per mask, and at least one mask")
    hd = require_highdicom()
    reference = Geometry.of(masks[0])
    for mask, segment in zip(masks[1:], segments[1:]):
        reference.require_same_grid(Geometry.of(mask), f"the mask of segment '{segment.name}'",
                                    f"the first segment's ('{segments[0].name}')",
                                    "the segment masks of one DICOM SEG must share one grid")
    arrays = [np.asarray(sitk.GetArrayViewFromImage(m)) for m in masks]
    for array, segment in zip(arrays, segments):
        if not np.isin(array, (0, 1)).all():
            raise LiverTumorSegError(f"the mask of segment '{segment.name}' holds values other than 0 and 1")
    path = Path(path)
    if not path.parent.is_dir():
        raise LiverTumorSegError(f"cannot write {path}: folder {path.parent} does not exist")
    series = _match_series(masks[0], source)
    pixel_array = np.stack(arrays, axis=-1).astype(np.uint8)  # (frames, rows, columns, segments)
    with warnings.catch_warnings():
        # Collections such as TCIA's store patient names like "HCC_001"; they are copied as they are.
        warnings.filterwarnings("ignore", message=".*unlikely to represent the intended person name")
        seg = _segmentation(hd, series, pixel_array, segments)
    staged = path.with_name(f".{path.name}.partial")
    try:
        seg.save_as(str(staged))
        os.replace(staged, path)
    except OSError as exc:
        raise LiverTumorSegError(f"cannot write DICOM SEG {path} ({exc.strerror or exc})") from None
    finally:
        staged.unlink(missing_ok=True)


def write_dicom_seg(labelmap: sitk.Image, source: DicomSource, path: Path,
                    segments: Sequence[SegmentTerminology] = SEGMENTS) -> None:
    """Write ``labelmap`` (0 background, 1 liver, 2 tumor, on the grid of the CT series ``source``:
    its folder, or the list of its files) as a DICOM SEG with the segments "Liver" and "Liver tumor"
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
    write_dicom_seg_masks(masks, segments, source, path)


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


def _slice_gap_factor(ds: Any, spacing: np.ndarray, normal: np.ndarray, reference: Geometry) -> int:
    """How many reference slices lie in one step of the SEG's stacked volume: a SEG that states no
    Spacing Between Slices and omits empty slices is stacked at the step between its slabs; when
    that step is a whole multiple of the reference's slice spacing along the same axis and thicker
    than the slices themselves, its slices are that many reference slices apart (else 1)."""
    shared = ds.SharedFunctionalGroupsSequence[0] if "SharedFunctionalGroupsSequence" in ds else None
    measures = shared.get("PixelMeasuresSequence", [None])[0] if shared is not None else None
    if measures is None or measures.get("SpacingBetweenSlices") is not None:
        return 1
    thickness = measures.get("SliceThickness")
    step = float(spacing[0])
    if thickness is not None and float(thickness) >= step * 0.99:
        return 1  # contiguous slabs: the step is the slice spacing
    along = np.abs(reference.direction_matrix.T @ normal)
    axis = int(np.argmax(along))
    if along[axis] < 0.999:
        return 1
    ratio = step / reference.spacing[axis]
    return int(round(ratio)) if ratio > 1.01 and abs(ratio - round(ratio)) < 0.01 else 1


def read_dicom_seg(path: Path, reference: sitk.Image) -> Dict[str, np.ndarray]:
    """Each segment of the DICOM SEG at ``path`` as a uint8 0/1 mask (k, j, i) on ``reference``'s grid,
    placed by physical position (nearest neighbour). Keys are the segments' labels; segments with
    the same label are merged. Fractional segments are thresholded at one half."""
    path = Path(path)
    ds = _read_seg_dataset(path)
    hd = require_highdicom()
    try:
        seg = hd.seg.Segmentation.from_dataset(ds, copy=False)
        numbers = [int(n) for n in seg.segment_numbers]
        volume = seg.get_volume(segment_numbers=numbers, combine_segments=False, allow_missing_positions=True,
                                rescale_fractional=True)
    except (ValueError, RuntimeError, AttributeError, KeyError, NotImplementedError) as exc:
        raise LiverTumorSegError(f"DICOM SEG {path} cannot be read as one volume of parallel, evenly spaced "
                                 f"slices ({str(exc)[:200]})") from None
    array = np.asarray(volume.array)  # (slices, rows, columns, segments)
    axes = np.asarray(volume.affine, dtype=np.float64)[:3, :3]  # columns: slice, row, column steps (LPS)
    spacing = np.linalg.norm(axes, axis=0)
    geometry = Geometry.of(reference)
    factor = _slice_gap_factor(ds, spacing, axes[:, 0] / spacing[0], geometry)
    if factor > 1:  # put the slices back that far apart, with empty slices between them
        spread = np.zeros(((array.shape[0] - 1) * factor + 1,) + array.shape[1:], array.dtype)
        spread[::factor] = array
        array, spacing = spread, spacing / np.array([factor, 1.0, 1.0])
    direction = (axes / np.linalg.norm(axes, axis=0))[:, ::-1]  # image axes i, j, k = column, row, slice
    masks: Dict[str, np.ndarray] = {}
    for channel, number in enumerate(numbers):
        label = str(seg.get_segment_description(number).segment_label or f"Segment {number}")
        image = sitk.GetImageFromArray((array[..., channel] > 0.5).astype(np.uint8))
        image.SetSpacing(tuple(float(v) for v in spacing[::-1]))
        image.SetOrigin(tuple(float(v) for v in volume.affine[:3, 3]))
        image.SetDirection(tuple(float(v) for v in direction.ravel()))
        resampled = sitk.GetArrayFromImage(
            sitk.Resample(image, reference, sitk.Transform(), sitk.sitkNearestNeighbor, 0, sitk.sitkUInt8))
        masks[label] = masks[label] | resampled if label in masks else resampled
    return masks
