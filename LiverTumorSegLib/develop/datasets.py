"""Labelled cases of the public liver datasets, read in their real layouts.

- Medical Segmentation Decathlon Task03_Liver: ``dataset.json`` listing
  ``imagesTr/liver_N.nii.gz`` / ``labelsTr/liver_N.nii.gz`` (0 background, 1 liver, 2 cancer).
- LiTS: ``volume-N.nii`` + ``segmentation-N.nii`` (0/1/2), in any sub-folders
  ("Training Batch 1", "Training Batch 2").
- HCC-TACE-Seg (TCIA): ``PATIENT/STUDY/SERIES/*.dcm``, CT series (several phases) and a DICOM SEG
  with segments such as "Liver", "Mass", "Portal vein", "Abdominal aorta"; the CT is the series
  the SEG references. A clinical table (.csv, or .xlsx with openpyxl) keyed by ``TCIA_ID``.

Every case loads as (CT in float32 HU, uint8 labelmap 0 background / 1 liver / 2 tumor on the
CT's grid); the liver label includes nothing but liver, and liver + tumor is the whole organ.
macOS junk (``._name``, ``__MACOSX``) and hidden files are ignored.
"""

from __future__ import annotations

import csv
import importlib.util
import json
import logging
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, Iterator, List, Optional, Tuple

import numpy as np
import SimpleITK as sitk

from .. import BACKGROUND_LABEL, LIVER_LABEL, TUMOR_LABEL
from ..errors import LiverTumorSegError
from ..geometry import Geometry, array_to_image
from ..io.dicom_seg import is_segmentation, read_dicom_seg, referenced_series_uids
from ..io.volume import load_volume, output_name

log = logging.getLogger(__name__)

MSD = "msd"
LITS = "lits"
HCC_TACE_SEG = "hcc-tace-seg"

CLINICAL_ID_COLUMN = "TCIA_ID"
LITS_VOLUME = re.compile(r"^volume-(\d+)\.nii(\.gz)?$", re.IGNORECASE)
LITS_SEGMENTATION = re.compile(r"^segmentation-(\d+)\.nii(\.gz)?$", re.IGNORECASE)
NIFTI_LABELS = {0: BACKGROUND_LABEL, 1: LIVER_LABEL, 2: TUMOR_LABEL}  # LiTS and MSD Task03


@dataclass
class LabelledCase:
    """One image with its reference labels. ``label_path`` is a NIfTI labelmap or a DICOM SEG;
    ``label_values`` maps a NIfTI file's values to the library's labels."""

    case_id: str
    image_path: Path
    label_path: Path
    dataset: str  # MSD | LITS | HCC_TACE_SEG
    clinical: Optional[Dict[str, Any]] = None
    label_values: Dict[int, int] = field(default_factory=lambda: dict(NIFTI_LABELS))
    series_instance_uid: Optional[str] = None  # HCC-TACE-Seg: the CT series the SEG references

    def load(self) -> Tuple[sitk.Image, sitk.Image]:
        """(CT float32 HU, labelmap uint8 0/1/2 on the CT's grid)."""
        if self.dataset == HCC_TACE_SEG:
            return _load_dicom_case(self)
        return _load_nifti_case(self)


# ---------------------------------------------------------------------------------------------
# File discovery
# ---------------------------------------------------------------------------------------------

def _is_junk(name: str) -> bool:
    """macOS resource forks (``._x``), ``__MACOSX`` folders and other hidden entries."""
    return name.startswith(".") or name == "__MACOSX"


def _walk_files(root: Path) -> Iterator[Tuple[Path, List[str]]]:
    """(folder, sorted file names) for every folder under ``root``, junk left out."""
    for folder, dirs, files in os.walk(root):
        dirs[:] = sorted(d for d in dirs if not _is_junk(d))
        yield Path(folder), sorted(f for f in files if not _is_junk(f))


def _require_file(path: Path, what: str) -> Path:
    if not path.is_file():
        raise LiverTumorSegError(f"{what} {path} does not exist; the dataset is incomplete (re-extract or "
                                 "download it again)")
    return path


# ---------------------------------------------------------------------------------------------
# Label files on the image grid
# ---------------------------------------------------------------------------------------------

def _same_grid(a: Geometry, b: Geometry) -> bool:
    return (a.size == b.size and np.allclose(a.spacing, b.spacing, rtol=1e-4, atol=1e-3)
            and np.allclose(a.origin, b.origin, atol=1e-2) and np.allclose(a.direction, b.direction, atol=1e-3))


def on_image_grid(labels: sitk.Image, image: sitk.Image, label_source: Path) -> sitk.Image:
    """``labels`` on ``image``'s grid: the same grid up to header rounding is taken as is (the
    image's geometry stamped on); any other grid is resampled by physical position (nearest
    neighbour). Labels that miss the image entirely are an error, not an empty labelmap."""
    image_geometry = Geometry.of(image)
    if _same_grid(Geometry.of(labels), image_geometry):
        return image_geometry.apply_to(sitk.Cast(labels, sitk.sitkUInt8))
    log.warning("the labels of %s lie on another grid than their image; resampling them by physical position",
                label_source)
    resampled = sitk.Resample(labels, image, sitk.Transform(), sitk.sitkNearestNeighbor, 0, sitk.sitkUInt8)
    had_labels = bool(np.any(sitk.GetArrayViewFromImage(labels)))
    if had_labels and not np.any(sitk.GetArrayViewFromImage(resampled)):
        raise LiverTumorSegError(f"the labels of {label_source} do not overlap their image (their headers place "
                                 "them elsewhere in the patient); check that the label file belongs to the image")
    return resampled


def _load_nifti_case(case: LabelledCase) -> Tuple[sitk.Image, sitk.Image]:
    image = load_volume(_require_file(case.image_path, "image file")).image
    label_path = _require_file(case.label_path, "label file")
    try:
        raw = sitk.ReadImage(str(label_path))
    except RuntimeError:
        raise LiverTumorSegError(f"label file {label_path} cannot be read as an image (truncated or corrupt); "
                                 "extract or download it again") from None
    if raw.GetDimension() != 3 or raw.GetNumberOfComponentsPerPixel() != 1:
        raise LiverTumorSegError(f"label file {label_path} is not a 3-D single-channel labelmap")
    values = sitk.GetArrayFromImage(raw)
    present = np.unique(values)
    if not np.all(np.equal(np.mod(present, 1), 0)):
        raise LiverTumorSegError(f"label file {label_path} holds non-integer values; it is not a labelmap")
    undefined = sorted(int(v) for v in present if int(v) not in case.label_values)
    if undefined:
        raise LiverTumorSegError(f"label file {label_path} holds the values {undefined}, which the dataset does "
                                 f"not define (known: {sorted(case.label_values)})")
    remapped = np.zeros(values.shape, dtype=np.uint8)
    for source_value, library_label in case.label_values.items():
        if library_label != BACKGROUND_LABEL:
            remapped[values == source_value] = library_label
    labels = array_to_image(remapped, Geometry.of(raw))
    return image, on_image_grid(labels, image, label_path)


# ---------------------------------------------------------------------------------------------
# Medical Segmentation Decathlon Task03_Liver
# ---------------------------------------------------------------------------------------------

def _msd_label_values(labels: Dict[str, str], dataset_json: Path) -> Dict[int, int]:
    mapping: Dict[int, int] = {}
    for value, name in labels.items():
        lowered = str(name).strip().lower()
        if lowered in ("background", "bg"):
            mapping[int(value)] = BACKGROUND_LABEL
        elif lowered == "liver":
            mapping[int(value)] = LIVER_LABEL
        elif any(word in lowered for word in ("cancer", "tumor", "tumour", "lesion")):
            mapping[int(value)] = TUMOR_LABEL
        else:
            raise LiverTumorSegError(f"{dataset_json} defines label {value} '{name}', which is neither background, "
                                     "liver nor tumor; this reader handles the liver task (Task03_Liver)")
    if LIVER_LABEL not in mapping.values():
        raise LiverTumorSegError(f"{dataset_json} defines no 'liver' label ({labels}); give Task03_Liver")
    return mapping


def open_msd(root: Path) -> List[LabelledCase]:
    """The training cases listed in ``root/dataset.json`` (Task03_Liver layout)."""
    root = Path(root)
    dataset_json = _require_file(root / "dataset.json", "MSD index")
    try:
        index = json.loads(dataset_json.read_text(encoding="utf-8"))
    except (ValueError, UnicodeDecodeError) as exc:
        raise LiverTumorSegError(f"{dataset_json} is not valid JSON ({exc}); extract the dataset again") from None
    modalities = {str(v).upper() for v in index.get("modality", {}).values()}
    if modalities and modalities != {"CT"}:
        raise LiverTumorSegError(f"{dataset_json} describes {sorted(modalities)} images; this reader needs CT")
    label_values = _msd_label_values(index.get("labels", {}), dataset_json)
    cases = []
    for entry in index.get("training", []):
        if not isinstance(entry, dict) or "image" not in entry or "label" not in entry:
            raise LiverTumorSegError(f"{dataset_json} lists a training entry without 'image' and 'label': {entry}")
        image_path = root / entry["image"]
        if _is_junk(image_path.name):
            continue
        label_path = _require_file(root / entry["label"], "label file")
        _require_file(image_path, "image file")
        cases.append(LabelledCase(case_id=output_name(image_path), image_path=image_path, label_path=label_path,
                                  dataset=MSD, label_values=dict(label_values)))
    if not cases:
        raise LiverTumorSegError(f"{dataset_json} lists no training cases")
    return cases


# ---------------------------------------------------------------------------------------------
# LiTS
# ---------------------------------------------------------------------------------------------

def _lits_files(root: Path) -> Tuple[Dict[int, Path], Dict[int, Path]]:
    volumes: Dict[int, Path] = {}
    segmentations: Dict[int, Path] = {}
    for folder, files in _walk_files(root):
        for name in files:
            for pattern, found in ((LITS_VOLUME, volumes), (LITS_SEGMENTATION, segmentations)):
                match = pattern.match(name)
                if match:
                    number = int(match.group(1))
                    if number in found:
                        raise LiverTumorSegError(f"{root} holds two files for LiTS case {number} "
                                                 f"({found[number]} and {folder / name}); keep one")
                    found[number] = folder / name
    return volumes, segmentations


def open_lits(root: Path) -> List[LabelledCase]:
    """Every ``volume-N.nii[.gz]`` under ``root`` with its ``segmentation-N.nii[.gz]``."""
    root = Path(root)
    volumes, segmentations = _lits_files(root)
    if not volumes:
        raise LiverTumorSegError(f"no LiTS volume-N.nii files under {root}")
    missing = sorted(set(volumes) - set(segmentations))
    if missing:
        raise LiverTumorSegError(f"{volumes[missing[0]]} has no segmentation-{missing[0]}.nii under {root} "
                                 f"({len(missing)} volume(s) without labels); add the label files")
    for number in sorted(set(segmentations) - set(volumes)):
        log.warning("%s has no volume-%d.nii; skipped", segmentations[number], number)
    return [LabelledCase(case_id=output_name(volumes[n]), image_path=volumes[n], label_path=segmentations[n],
                         dataset=LITS) for n in sorted(volumes)]


# ---------------------------------------------------------------------------------------------
# HCC-TACE-Seg (DICOM CT + DICOM SEG + clinical table)
# ---------------------------------------------------------------------------------------------

LIVER_SEGMENT_NAMES = ("liver",)
TUMOR_SEGMENT_WORDS = ("mass", "tumor", "tumour")


def segment_role(label: str) -> Optional[int]:
    """LIVER_LABEL for a liver segment, TUMOR_LABEL for a tumor ("Mass", "Tumor", "Liver tumor"),
    None for any other structure (vessels, aorta)."""
    lowered = " ".join(label.lower().replace("_", " ").split())
    if any(word in lowered for word in TUMOR_SEGMENT_WORDS):
        return TUMOR_LABEL
    if lowered in LIVER_SEGMENT_NAMES:
        return LIVER_LABEL
    return None


def _parse_cell(text: Any) -> Any:
    if not isinstance(text, str):
        return text
    text = text.strip()
    if text == "":
        return None
    for kind in (int, float):
        try:
            return kind(text)
        except ValueError:
            pass
    return text


def _rows_to_table(rows: List[List[Any]], path: Path) -> Dict[str, Dict[str, Any]]:
    for header_row, header in enumerate(rows[:10]):
        names = [str(h).strip() if h is not None else "" for h in header]
        if CLINICAL_ID_COLUMN.lower() in (n.lower() for n in names):
            break
    else:
        raise LiverTumorSegError(f"clinical table {path} has no '{CLINICAL_ID_COLUMN}' column; give the "
                                 "HCC-TACE-Seg clinical table")
    key_column = [n.lower() for n in names].index(CLINICAL_ID_COLUMN.lower())
    table: Dict[str, Dict[str, Any]] = {}
    for row in rows[header_row + 1:]:
        if key_column >= len(row) or row[key_column] is None or str(row[key_column]).strip() == "":
            continue
        record = {name: _parse_cell(value) for name, value in zip(names, row) if name}
        table[str(row[key_column]).strip()] = record
    return table


def read_clinical_table(path: Path) -> Dict[str, Dict[str, Any]]:
    """Rows of a clinical table (.csv always; .xlsx when openpyxl is installed) by ``TCIA_ID``."""
    path = Path(path)
    _require_file(path, "clinical table")
    if path.suffix.lower() == ".csv":
        with open(path, newline="", encoding="utf-8-sig") as handle:
            rows = [list(r) for r in csv.reader(handle)]
    elif path.suffix.lower() in (".xlsx", ".xlsm"):
        try:
            import openpyxl
        except ImportError:
            raise LiverTumorSegError(f"reading {path} needs openpyxl ('pip install openpyxl'), or save the "
                                     "table as CSV") from None
        workbook = openpyxl.load_workbook(str(path), read_only=True, data_only=True)
        try:
            rows = [list(r) for r in workbook.worksheets[0].iter_rows(values_only=True)]
        finally:
            workbook.close()
    else:
        raise LiverTumorSegError(f"clinical table {path} is neither .csv nor .xlsx")
    return _rows_to_table(rows, path)


@dataclass
class _Series:
    uid: str
    folder: Path
    modality: str
    description: str
    study_uid: str
    patient_id: str


def _read_header(path: Path) -> Optional[Any]:
    import pydicom

    try:
        return pydicom.dcmread(str(path), stop_before_pixels=True)
    except Exception:  # not a DICOM file
        return None


def _index_dicom(root: Path) -> Tuple[Dict[str, _Series], List[Tuple[Path, Any]]]:
    """CT series (by UID) and SEG files under ``root``. TCIA keeps one series per folder, so a
    folder whose first and last files share a series is read by those two headers only."""
    if importlib.util.find_spec("pydicom") is None:
        raise LiverTumorSegError("reading HCC-TACE-Seg needs pydicom ('pip install pydicom')")
    series: Dict[str, _Series] = {}
    segs: List[Tuple[Path, Any]] = []
    for folder, files in _walk_files(root):
        candidates = [folder / f for f in files if f.lower().endswith(".dcm") or "." not in f]
        if not candidates:
            continue
        ends = [_read_header(candidates[0]), _read_header(candidates[-1])]
        uniform = all(h is not None for h in ends) and \
            str(ends[0].get("SeriesInstanceUID", "")) == str(ends[1].get("SeriesInstanceUID", "")) and \
            not is_segmentation(ends[0])
        headers = [(candidates[0], ends[0])] if uniform else [(p, _read_header(p)) for p in candidates]
        for path, header in headers:
            if header is None:
                continue
            if is_segmentation(header):
                segs.append((path, header))
                continue
            uid = str(header.get("SeriesInstanceUID", "")).strip()
            if uid and uid not in series:
                series[uid] = _Series(uid, folder, str(header.get("Modality", "")),
                                      str(header.get("SeriesDescription", "")),
                                      str(header.get("StudyInstanceUID", "")), str(header.get("PatientID", "")))
    return series, segs


def _choose_ct_series(seg_path: Path, seg: Any, series: Dict[str, _Series], root: Path,
                      prefer_series: Optional[str]) -> _Series:
    referenced = referenced_series_uids(seg)
    if referenced:
        present = [series[uid] for uid in referenced if uid in series and series[uid].modality == "CT"]
        if not present:
            raise LiverTumorSegError(f"DICOM SEG {seg_path} references the series {', '.join(referenced)}, which "
                                     f"is not a CT series under {root}; download the CT series it was drawn on")
        if len(present) > 1 and prefer_series:
            preferred = [s for s in present if prefer_series.lower() in s.description.lower()]
            present = preferred or present
        return present[0]
    study = str(seg.get("StudyInstanceUID", ""))
    candidates = [s for s in series.values() if s.modality == "CT" and s.study_uid == study]
    if prefer_series:
        candidates = [s for s in candidates if prefer_series.lower() in s.description.lower()]
    if len(candidates) != 1:
        described = ", ".join(f"'{s.description}'" for s in candidates) or "none"
        raise LiverTumorSegError(f"DICOM SEG {seg_path} names no referenced series and its study holds "
                                 f"{len(candidates)} matching CT series ({described}); pass prefer_series= "
                                 "with a part of the wanted series description")
    return candidates[0]


def _auto_clinical_table(root: Path) -> Optional[Dict[str, Dict[str, Any]]]:
    tables = sorted(p for p in root.iterdir() if p.is_file() and not _is_junk(p.name)
                    and "clinical" in p.name.lower() and p.suffix.lower() in (".csv", ".xlsx"))
    if not tables:
        return None
    table = sorted(tables, key=lambda p: (p.suffix.lower() != ".csv", p.name))[0]  # a CSV first
    try:
        return read_clinical_table(table)
    except LiverTumorSegError as exc:
        log.warning("clinical table not used: %s", exc)
        return None


def open_hcc_tace_seg(root: Path, clinical_table: Optional[Path] = None,
                      prefer_series: Optional[str] = None) -> List[LabelledCase]:
    """One case per DICOM SEG under ``root``, with the CT series it references. The clinical table
    is ``clinical_table``, else a ``*clinical*.csv|xlsx`` in ``root`` when there is one.
    ``prefer_series`` (part of a series description) picks the CT phase when the SEG names none."""
    root = Path(root)
    if not root.is_dir():
        raise LiverTumorSegError(f"{root} is not a folder")
    clinical = read_clinical_table(Path(clinical_table)) if clinical_table is not None else _auto_clinical_table(root)
    series, segs = _index_dicom(root)
    if not segs:
        raise LiverTumorSegError(f"no DICOM SEG file under {root}; HCC-TACE-Seg cases need their segmentation "
                                 "series (download the SEG series with the CT)")
    cases: List[LabelledCase] = []
    used_ids: Dict[str, int] = {}
    for seg_path, seg in sorted(segs, key=lambda s: str(s[0])):
        ct = _choose_ct_series(seg_path, seg, series, root, prefer_series)
        relative = seg_path.relative_to(root).parts
        patient = str(seg.get("PatientID", "")).strip() or ct.patient_id or (relative[0] if len(relative) > 1 else
                                                                            root.name)
        used_ids[patient] = used_ids.get(patient, 0) + 1
        case_id = patient if used_ids[patient] == 1 else f"{patient}_{used_ids[patient]}"
        record = None
        if clinical is not None:
            record = clinical.get(patient) or (clinical.get(relative[0]) if len(relative) > 1 else None)
            if record is None:
                log.warning("the clinical table has no row for %s", patient)
        cases.append(LabelledCase(case_id=case_id, image_path=ct.folder, label_path=seg_path, dataset=HCC_TACE_SEG,
                                  clinical=record, series_instance_uid=ct.uid))
    return cases


def _load_dicom_case(case: LabelledCase) -> Tuple[sitk.Image, sitk.Image]:
    volume = load_volume(case.image_path)
    if case.series_instance_uid and volume.series_instance_uid != case.series_instance_uid:
        raise LiverTumorSegError(f"{case.image_path} holds several DICOM series and the largest is not the one "
                                 f"the SEG references ({case.series_instance_uid}); keep one series per folder")
    image = volume.image
    masks = read_dicom_seg(case.label_path, image)
    roles = {label: segment_role(label) for label in masks}
    liver = [masks[k] for k, role in roles.items() if role == LIVER_LABEL]
    tumor = [masks[k] for k, role in roles.items() if role == TUMOR_LABEL]
    if not liver:
        raise LiverTumorSegError(f"DICOM SEG {case.label_path} has no liver segment (segments: "
                                 f"{', '.join(sorted(masks))}); a liver reference is needed")
    shape = sitk.GetArrayViewFromImage(image).shape
    tumor_mask = np.any(tumor, axis=0) if tumor else np.zeros(shape, dtype=bool)
    labelmap = np.zeros(shape, dtype=np.uint8)
    labelmap[np.any(liver, axis=0) | tumor_mask] = LIVER_LABEL
    labelmap[tumor_mask] = TUMOR_LABEL
    return image, array_to_image(labelmap, Geometry.of(image))


# ---------------------------------------------------------------------------------------------
# Detection
# ---------------------------------------------------------------------------------------------

def detect_layout(root: Path) -> str:
    """MSD, LITS or HCC_TACE_SEG for the layout of ``root``; LiverTumorSegError when none."""
    root = Path(root)
    if not root.is_dir():
        raise LiverTumorSegError(f"dataset folder {root} does not exist or is not a folder")
    if (root / "dataset.json").is_file():
        return MSD
    found_dicom = False
    for _, files in _walk_files(root):
        if any(LITS_VOLUME.match(f) for f in files):
            return LITS
        found_dicom = found_dicom or any(f.lower().endswith(".dcm") for f in files)
    if found_dicom:
        return HCC_TACE_SEG
    raise LiverTumorSegError(f"{root} is not a recognised liver dataset: expected dataset.json with imagesTr/"
                             "labelsTr (MSD Task03_Liver), volume-N.nii with segmentation-N.nii (LiTS), or "
                             "DICOM CT series with a DICOM SEG (HCC-TACE-Seg)")


def open_dataset(root: Path) -> List[LabelledCase]:
    """The labelled cases of ``root``, whichever of the three layouts it is."""
    layout = detect_layout(root)
    if layout == MSD:
        return open_msd(root)
    if layout == LITS:
        return open_lits(root)
    return open_hcc_tace_seg(root)
