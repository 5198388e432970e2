"""Write a segmentation result: NAME.seg.nrrd, NAME.nii.gz, NAME.json, NAME_lesions.csv, on
request NAME_seg.dcm (a DICOM SEG referencing the input DICOM series), and after test-time
augmentation the tumor ensemble's mean probability, its standard deviation and the voxel variation
coefficient (``metrics.variation_coefficient``) as NAME_tumor_tta_{mean,std,cv}.nii.gz, float32
volumes on the liver crop's grid (they lie where they belong in the patient). The command line
and the 3D Slicer module both write through :func:`write_outputs` (the module with a
:class:`LabelmapResult` of the segmentation as the user edited it).

All files are written to a temporary folder inside the output folder and moved into
place only when every one is complete, so a failed or killed run leaves nothing half-written.
Existing files are never replaced unless ``force`` is given.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Dict, List, Optional

import numpy as np
import SimpleITK as sitk

from .. import TUMOR_LABEL, __version__
from ..errors import LiverTumorSegError
from ..geometry import Geometry, array_to_image
from ..measure import Measurements, measure_labelmap, write_lesions_csv
from .terminology import SEGMENTS

if TYPE_CHECKING:
    from .dicom_seg import DicomSource

OUTPUT_KEYS = ("segmentation", "labelmap", "report", "lesions_csv")
DICOM_SEG_KEY = "dicom_seg"
TTA_KEYS = ("tta_mean", "tta_std", "tta_cv")  # written on request (segment --uncertainty-maps), from TTA runs


@dataclass
class LabelmapResult:
    """A labelmap to write with what the run that made it reported: the fields of
    ``pipeline.SegmentationResult`` that :func:`write_outputs` reads, for a labelmap that is not
    the result of a run in this process (a segmentation edited in 3D Slicer)."""

    labelmap: sitk.Image  # uint8: 0 background, 1 liver, 2 tumor
    measurements: Measurements
    models: List[Dict[str, Any]] = field(default_factory=list)
    device: Optional[str] = None
    seconds_per_stage: Dict[str, float] = field(default_factory=dict)
    settings: Dict[str, Any] = field(default_factory=dict)
    warnings: List[str] = field(default_factory=list)
    tumor_uncertainty: Optional[sitk.Image] = None
    tumor_probability: Optional[sitk.Image] = None

    @classmethod
    def measured(cls, labels: np.ndarray, geometry: Geometry, ct_hu: Optional[np.ndarray] = None,
                 run_report: Optional[Dict[str, Any]] = None) -> "LabelmapResult":
        """``labels`` (k, j, i) on ``geometry``, measured now (mean HU from ``ct_hu`` when given), with
        the models, device, timings, settings and warnings of the report of the run that made it."""
        report = run_report or {}
        labels = np.ascontiguousarray(labels, dtype=np.uint8)
        return cls(array_to_image(labels, geometry), measure_labelmap(labels, geometry, ct_hu),
                   models=list(report.get("models", [])), device=report.get("device"),
                   seconds_per_stage=dict(report.get("seconds_per_stage", {})),
                   settings=dict(report.get("settings", {})), warnings=list(report.get("warnings", [])))


def output_paths(output_dir: Path, name: str, dicom_seg: bool = False, tta: bool = False) -> Dict[str, Path]:
    output_dir = Path(output_dir)
    paths = {"segmentation": output_dir / f"{name}.seg.nrrd", "labelmap": output_dir / f"{name}.nii.gz",
             "report": output_dir / f"{name}.json", "lesions_csv": output_dir / f"{name}_lesions.csv"}
    if dicom_seg:
        paths[DICOM_SEG_KEY] = output_dir / f"{name}_seg.dcm"
    if tta:
        paths.update({key: output_dir / f"{name}_tumor_{key}.nii.gz" for key in TTA_KEYS})
    return paths


def check_not_overwriting(output_dir: Path, name: str, force: bool, dicom_seg: bool = False,
                          tta: bool = False) -> None:
    """Refuse (before any work is done) when an output file already exists and ``force`` is off."""
    existing = [str(p) for p in output_paths(output_dir, name, dicom_seg, tta).values() if p.exists()]
    if existing and not force:
        raise LiverTumorSegError(f"output {existing[0]} already exists; use --force to overwrite it "
                                 "or choose another --output folder")


def ijk_to_lps_matrix(geometry: Geometry) -> np.ndarray:
    matrix = np.eye(4)
    matrix[:3, :3] = geometry.direction_matrix * np.asarray(geometry.spacing)[None, :]
    matrix[:3, 3] = geometry.origin
    return matrix


def write_seg_nrrd(labelmap: np.ndarray, geometry: Geometry, path: Path) -> None:
    """A 3D Slicer segmentation file (one layer, labels 1 and 2) with names, colors and terminology."""
    import slicerio
    from slicerio.segmentation import terminology_entry_from_string

    segments: List[Dict[str, Any]] = []
    for seg in SEGMENTS:
        present = np.argwhere(labelmap == seg.label)
        if len(present):
            lo, hi = present.min(axis=0)[::-1], present.max(axis=0)[::-1]  # (i, j, k)
            extent = [int(lo[0]), int(hi[0]), int(lo[1]), int(hi[1]), int(lo[2]), int(hi[2])]
        else:
            extent = [0, -1, 0, -1, 0, -1]
        segments.append({"id": seg.segment_id, "name": seg.name, "labelValue": seg.label, "layer": 0,
                         "color": list(seg.color_rgb), "nameAutoGenerated": False, "colorAutoGenerated": False,
                         "extent": extent, "status": "inprogress",
                         "terminology": terminology_entry_from_string(seg.slicer_string())})
    segmentation = {
        "voxels": np.ascontiguousarray(labelmap.transpose(2, 1, 0)),  # slicerio wants (i, j, k)
        "ijkToLPS": ijk_to_lps_matrix(geometry),
        "segments": segments,
        "containedRepresentationNames": ["Binary labelmap"],
        "masterRepresentation": "Binary labelmap",
        "referenceImageExtentOffset": [0, 0, 0],
    }
    slicerio.write_segmentation(str(path), segmentation)


def write_labelmap(labelmap: sitk.Image, path: Path) -> None:
    sitk.WriteImage(sitk.Cast(labelmap, sitk.sitkUInt8), str(path), useCompression=True)


def build_report(result: Any, input_path: Path, name: str, source: str) -> Dict[str, Any]:
    """The JSON report: measurements, models (name, version, sha256), device, timings, settings."""
    report: Dict[str, Any] = {
        "input": str(input_path), "name": name, "input_kind": source,
        "software": {"name": "LiverTumorSegLib", "version": __version__},
    }
    report.update(result.measurements.to_dict())
    geometry = Geometry.of(result.labelmap)
    report.update({
        "labels": {"0": "background", "1": "Liver", "2": "Liver tumor"},
        "grid": {"size": list(geometry.size), "spacing_mm": list(geometry.spacing),
                 "origin_lps_mm": list(geometry.origin), "direction": list(geometry.direction)},
        "models": result.models, "device": result.device, "seconds_per_stage": result.seconds_per_stage,
        "settings": result.settings, "warnings": result.warnings,
        "non_clinical": any(m.get("non_clinical", True) for m in result.models),
    })
    if result.tumor_uncertainty is not None and report.get("lesions"):
        std = sitk.GetArrayViewFromImage(result.tumor_uncertainty)
        report["tumor_tta_std_mean"] = float(std.mean())
        maps = tta_maps(result)
        if maps is not None:
            from ..metrics import on_grid_of

            in_tumor = on_grid_of(result.labelmap, maps["tta_cv"]) == TUMOR_LABEL
            if in_tumor.any():
                cv = sitk.GetArrayViewFromImage(maps["tta_cv"])
                report["tumor_tta_cv_mean_in_tumor"] = float(cv[in_tumor].mean())
    return report


def tta_maps(result: Any) -> Optional[Dict[str, sitk.Image]]:
    """The TTA mean, standard deviation and variation coefficient images of ``result`` by TTA_KEYS
    (None when it carries no TTA maps)."""
    from ..metrics import variation_coefficient

    std, mean = getattr(result, "tumor_uncertainty", None), getattr(result, "tumor_probability", None)
    if std is None or mean is None:
        return None
    cv = sitk.GetImageFromArray(variation_coefficient(sitk.GetArrayViewFromImage(mean),
                                                      sitk.GetArrayViewFromImage(std)))
    cv.CopyInformation(mean)
    return {"tta_mean": sitk.Cast(mean, sitk.sitkFloat32), "tta_std": sitk.Cast(std, sitk.sitkFloat32),
            "tta_cv": cv}


def write_outputs(result: Any, input_path: Path, name: str, source: str, output_dir: Path,
                  force: bool = False, dicom_seg_source: Optional["DicomSource"] = None,
                  report_extra: Optional[Dict[str, Any]] = None, uncertainty_maps: bool = False) -> Dict[str, str]:
    """Write the four outputs of ``result`` (a ``pipeline.SegmentationResult`` or a
    :class:`LabelmapResult`) atomically, plus a DICOM SEG referencing the CT series
    ``dicom_seg_source`` (its folder or its files) when given and the TTA maps (``TTA_KEYS``) when
    ``uncertainty_maps``; ``report_extra`` is added to the JSON report. Returns the paths by key
    (``OUTPUT_KEYS``, ``DICOM_SEG_KEY``, ``TTA_KEYS``)."""
    output_dir = Path(output_dir)
    with_dicom_seg = dicom_seg_source is not None
    maps = tta_maps(result) if uncertainty_maps else None
    if uncertainty_maps and maps is None:
        raise LiverTumorSegError("the uncertainty maps come from the flip test-time augmentation, which this run "
                                 "did not use (it is off with --no-tta and --fast)")
    check_not_overwriting(output_dir, name, force, with_dicom_seg, maps is not None)
    try:
        output_dir.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise LiverTumorSegError(f"cannot create output folder {output_dir} ({exc.strerror})") from None
    final = output_paths(output_dir, name, with_dicom_seg, maps is not None)
    labels = sitk.GetArrayViewFromImage(result.labelmap)
    geometry = Geometry.of(result.labelmap)
    tmp = Path(tempfile.mkdtemp(prefix=".livertumorseg-", dir=output_dir))
    moved: List[Path] = []
    try:
        staged = output_paths(tmp, name, with_dicom_seg, maps is not None)
        if with_dicom_seg:
            from .dicom_seg import write_dicom_seg

            write_dicom_seg(result.labelmap, dicom_seg_source, staged[DICOM_SEG_KEY])
        write_seg_nrrd(np.asarray(labels), geometry, staged["segmentation"])
        write_labelmap(result.labelmap, staged["labelmap"])
        write_lesions_csv(staged["lesions_csv"], result.measurements)
        for key, image in (maps or {}).items():
            sitk.WriteImage(image, str(staged[key]), useCompression=True)
        report = build_report(result, input_path, name, source)
        report.update(report_extra or {})
        report["outputs"] = {k: str(v) for k, v in final.items()}
        staged["report"].write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
        for key in final:
            os.replace(staged[key], final[key])
            moved.append(final[key])
    except BaseException as exc:  # also a cancel (SIGTERM) or Ctrl-C while moving into place
        for path in moved:  # never leave a partial set of outputs
            path.unlink(missing_ok=True)
        if isinstance(exc, OSError):
            raise LiverTumorSegError(f"cannot write outputs to {output_dir} ({exc.strerror or exc})") from None
        raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return {k: str(v) for k, v in final.items()}
