"""Export a segmentation from the scene: what the command line writes (the library's writers,
through :func:`mrml.export_results`), and a DICOM SEG when the CT came from DICOM: the library's
writer (highdicom) over the CT's files in Slicer's DICOM database, else Slicer's
DICOMSegmentationPlugin (QuantitativeReporting extension). A DICOM SEG that cannot be written is a
warning: the other files are kept.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any, Callable, Dict, Optional

from . import mrml
from .process import safe_file_stem

LogFunction = Callable[[str, str], None]  # (level, message)


def _log_info(level: str, message: str) -> None:
    logging.info(message)


def export_results(scene, segmentation_node, folder: Path, name: Optional[str] = None, volume_node=None,
                   overwrite: bool = False, dicom_seg: Optional[bool] = None, log: Optional[LogFunction] = None,
                   dicom_database: Optional[Callable[[], Any]] = None) -> Dict[str, Path]:
    """Export to ``folder``: .seg.nrrd, NIfTI labelmap, CSV, JSON, and DICOM SEG when the CT came from
    DICOM (``dicom_seg=None``) or when asked (``dicom_seg=True``). ``volume_node`` defaults to the CT
    the segmentation was made from, ``name`` to the segmentation's name; ``dicom_database`` gives
    Slicer's DICOM database (``slicer.dicomDatabase``) when a DICOM SEG is written."""
    log = log or _log_info
    volume_node = volume_node or mrml.input_volume_node(segmentation_node)
    if volume_node is None:
        raise ValueError("the segmentation does not say which CT it belongs to; give the volume node")
    name = name or safe_file_stem(segmentation_node.GetName())
    paths = mrml.export_results(segmentation_node, volume_node, Path(folder), name, overwrite=overwrite)
    if dicom_seg is None:
        dicom_seg = mrml.is_from_dicom(volume_node)
    if dicom_seg:
        try:
            paths["dicom_seg"] = export_dicom_seg(scene, segmentation_node, volume_node, Path(folder), name,
                                                  overwrite, dicom_database)
        except Exception as exc:
            log("warning", f"DICOM SEG export failed: {exc}")
    return paths


def export_dicom_seg(scene, segmentation_node, volume_node, folder: Path, name: str, overwrite: bool = False,
                     dicom_database: Optional[Callable[[], Any]] = None) -> Path:
    """DICOM SEG ``NAME_seg.dcm`` with the library's writer (highdicom) from the DICOM database's
    files of the CT; without highdicom, through Slicer's DICOMSegmentationPlugin into the folder
    ``NAME_DICOM_SEG``."""
    try:
        import highdicom  # noqa: F401
    except ImportError:
        plugin_folder = folder / f"{name}_DICOM_SEG"
        export_dicom_seg_with_plugin(scene, segmentation_node, plugin_folder)
        return plugin_folder
    seg_path = folder / f"{name}_seg.dcm"
    if seg_path.exists() and not overwrite:
        raise FileExistsError(f"{seg_path} already exists; choose another folder or allow overwriting")
    if dicom_database is None:
        raise RuntimeError("Slicer's DICOM database is needed to find the CT's DICOM files")
    files = mrml.dicom_instance_files(volume_node, dicom_database())
    return mrml.write_dicom_seg(segmentation_node, volume_node, files, seg_path)


def export_dicom_seg_with_plugin(scene, segmentation_node, folder: Path) -> None:
    """DICOM SEG through Slicer's DICOMSegmentationPlugin (QuantitativeReporting extension)."""
    try:
        import DICOMSegmentationPlugin
        import slicer
    except ImportError:
        raise RuntimeError("DICOM SEG export needs highdicom (pip install highdicom in Slicer's Python "
                           "console: slicer.util.pip_install('highdicom')) or the QuantitativeReporting "
                           "extension (Extensions Manager)") from None
    hierarchy = slicer.vtkMRMLSubjectHierarchyNode.GetSubjectHierarchyNode(scene)
    item = hierarchy.GetItemByDataNode(segmentation_node)
    exporter = DICOMSegmentationPlugin.DICOMSegmentationPluginClass()
    exportables = exporter.examineForExport(item)
    if not exportables:
        raise RuntimeError("the segmentation is not exportable as DICOM SEG: it must sit in the study of a CT "
                           "loaded from DICOM (subject hierarchy)")
    Path(folder).mkdir(parents=True, exist_ok=True)
    for exportable in exportables:
        exportable.directory = str(folder)
    message = exporter.export(exportables)
    if message:
        raise RuntimeError(message)
