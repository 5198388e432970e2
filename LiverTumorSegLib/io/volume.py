"""Load a CT from a file (NIfTI, NRRD, MHA/MHD) or a DICOM series folder, and check it is one.

Geometry (size, spacing, origin, direction) is kept exactly as read; the pixels become
float32 Hounsfield units. Every way an input can be unusable ends in a LiverTumorSegError
that names the problem and what to do.
"""

from __future__ import annotations

import gzip
import logging
import os
import re
import struct
import sys
import zlib
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, Optional

import numpy as np
import SimpleITK as sitk

from ..errors import LiverTumorSegError

log = logging.getLogger(__name__)

FILE_SUFFIXES = (".nii.gz", ".nii", ".nrrd", ".nhdr", ".mha", ".mhd")
MIN_VOXELS_PER_AXIS = 8
MIN_EXTENT_MM = 30.0


@dataclass
class LoadedVolume:
    """A CT ready for the pipeline. ``name`` names the outputs; ``modality`` is from DICOM or None."""

    image: sitk.Image  # float32 HU
    name: str
    source: str  # "file" | "dicom"
    path: Path
    modality: Optional[str] = None
    series_instance_uid: Optional[str] = None


def output_name(path: Path) -> str:
    """The input's file name without its extension(s), or the DICOM folder's name."""
    path = Path(path)
    if path.is_dir():
        return path.resolve().name
    name = path.name
    for suffix in (".seg.nrrd",) + FILE_SUFFIXES:  # the longest suffix first
        if name.lower().endswith(suffix):
            return name[: -len(suffix)] or name
    return path.stem


def _nifti_data_complete(path: Path) -> bool:
    """False when a NIfTI file holds fewer voxel bytes than its header announces. ITK reads such
    a file without complaint and fills the missing voxels with zeros, so it is checked here."""
    compressed = path.name.lower().endswith(".gz")
    try:
        with (gzip.open(path, "rb") if compressed else open(path, "rb")) as handle:
            header = handle.read(540)
            if len(header) < 348:
                return False
            for endian in ("<", ">"):
                sizeof_hdr = struct.unpack(endian + "i", header[:4])[0]
                if sizeof_hdr == 348:  # NIfTI-1
                    dims = struct.unpack(endian + "8h", header[40:56])
                    bitpix = struct.unpack(endian + "h", header[72:74])[0]
                    vox_offset = int(struct.unpack(endian + "f", header[108:112])[0])
                    break
                if sizeof_hdr == 540:  # NIfTI-2
                    dims = struct.unpack(endian + "8q", header[16:80])
                    bitpix = struct.unpack(endian + "h", header[14:16])[0]
                    vox_offset = int(struct.unpack(endian + "q", header[168:176])[0])
                    break
            else:
                return True  # not a header this check understands: ITK has judged the file
            voxels = int(np.prod([max(int(d), 1) for d in dims[1:1 + max(0, min(int(dims[0]), 7))]]))
            expected = vox_offset + voxels * max(int(bitpix), 0) // 8
            if not compressed:
                return path.stat().st_size >= expected
            available = len(header)
            while available < expected:
                block = handle.read(1 << 22)
                if not block:
                    break
                available += len(block)
            return available >= expected
    except (OSError, EOFError, zlib.error, struct.error):
        return False


@contextmanager
def _native_stderr_silenced() -> Iterator[None]:
    """Silence what C++ readers (GDCM, MetaIO) print straight to the process's stderr: the
    user gets our one error line instead. Python-level stderr is untouched."""
    try:
        sys.stderr.flush()
        saved = os.dup(2)
    except (OSError, ValueError):  # no real stderr (embedded interpreter): nothing to silence
        yield
        return
    devnull = os.open(os.devnull, os.O_WRONLY)
    try:
        os.dup2(devnull, 2)
        yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)
        os.close(devnull)


def _read_file(path: Path) -> sitk.Image:
    if path.stat().st_size == 0:
        raise LiverTumorSegError(f"{path} is empty (0 bytes); give a CT image file")
    try:
        with _native_stderr_silenced():
            image = sitk.ReadImage(str(path))
    except RuntimeError:
        raise LiverTumorSegError(f"{path} cannot be read as an image (not a NIfTI, NRRD, MHA/MHD or DICOM "
                                 "file, or truncated/corrupt); check the file or export it again") from None
    if path.name.lower().endswith((".nii", ".nii.gz")) and not _nifti_data_complete(path):
        raise LiverTumorSegError(f"{path} is truncated (it holds fewer voxels than its header says); "
                                 "copy or export the file again")
    return image


def _read_dicom_folder(folder: Path) -> tuple:
    reader = sitk.ImageSeriesReader()
    try:
        with _native_stderr_silenced():  # GDCM warns on stderr about folders without DICOM
            series_ids = reader.GetGDCMSeriesIDs(str(folder))
    except RuntimeError:
        series_ids = ()
    if not series_ids:
        raise LiverTumorSegError(f"no DICOM image series found in folder {folder}; give a folder of CT "
                                 "DICOM files or an image file")
    files_by_series = {sid: reader.GetGDCMSeriesFileNames(str(folder), sid) for sid in series_ids}
    series_id = max(files_by_series, key=lambda s: len(files_by_series[s]))
    if len(series_ids) > 1:
        log.warning("%s holds %d DICOM series; using the largest (%d files, UID %s)", folder,
                    len(series_ids), len(files_by_series[series_id]), series_id)
    files = files_by_series[series_id]
    reader.SetFileNames(files)
    reader.MetaDataDictionaryArrayUpdateOn()
    reader.LoadPrivateTagsOff()
    try:
        with _native_stderr_silenced():
            image = reader.Execute()
    except RuntimeError as exc:
        raise LiverTumorSegError(f"the DICOM series in {folder} cannot be read ({str(exc).strip().splitlines()[-1][:120]}); "
                                 "check that the files are complete") from None
    modality = reader.GetMetaData(0, "0008|0060").strip() if reader.HasMetaDataKey(0, "0008|0060") else None
    return image, modality, series_id


def _check_image(image: sitk.Image, path: Path, modality: Optional[str]) -> None:
    if image.GetNumberOfComponentsPerPixel() != 1:
        raise LiverTumorSegError(f"{path} has {image.GetNumberOfComponentsPerPixel()} values per voxel "
                                 "(an RGB or vector image); give a single-channel CT in Hounsfield units")
    dim = image.GetDimension()
    if dim == 2 or (dim == 3 and min(image.GetSize()) == 1 and image.GetSize()[2] == 1):
        raise LiverTumorSegError(f"{path} is a 2-D image; give a 3-D CT volume (a full series)")
    if dim != 3:
        raise LiverTumorSegError(f"{path} is a {dim}-D image; give a single 3-D CT volume "
                                 "(split a 4-D or time series first)")
    size = image.GetSize()
    extent = [n * s for n, s in zip(size, image.GetSpacing())]
    if min(size) < MIN_VOXELS_PER_AXIS or min(extent) < MIN_EXTENT_MM:
        raise LiverTumorSegError(f"{path} is too small to be an abdominal CT ({size[0]}x{size[1]}x{size[2]} "
                                 f"voxels, {extent[0]:.0f}x{extent[1]:.0f}x{extent[2]:.0f} mm); give the "
                                 "whole CT volume")
    if modality and modality.upper() not in ("CT",):
        raise LiverTumorSegError(f"{path} is a {modality} series, but this model segments CT; "
                                 "give a CT series")


def _check_hounsfield(array: np.ndarray, path: Path) -> None:
    finite = np.isfinite(array)
    if not finite.all():
        bad = int(array.size - np.count_nonzero(finite))
        raise LiverTumorSegError(f"{path} contains {bad} NaN or infinite voxels; it is corrupt or not a CT")
    lo, hi = float(array.min()), float(array.max())
    if hi - lo < 1:
        raise LiverTumorSegError(f"{path} is blank (every voxel is {lo:g}); give a CT with image content")
    # Air (outside the body, lungs, bowel gas) is about -1000 HU in every abdominal CT; an MR or
    # an image not in Hounsfield units has no such values.
    sample = array[:: max(1, array.shape[0] // 32)]
    air_fraction = float(np.count_nonzero(sample < -500)) / sample.size
    if lo > -500 or air_fraction < 0.005:
        raise LiverTumorSegError(f"{path} does not look like a CT in Hounsfield units (no air near -1000 HU; "
                                 f"values {lo:g}..{hi:g}); it may be an MR or a non-HU image. Give a CT in HU")


def load_volume(path: Path | str) -> LoadedVolume:
    """Read a CT file or DICOM folder and check it (see module doc)."""
    path = Path(path)
    if not path.exists():
        raise LiverTumorSegError(f"{path} does not exist")
    modality = series_uid = None
    if path.is_dir():
        image, modality, series_uid = _read_dicom_folder(path)
        source = "dicom"
    else:
        image = _read_file(path)
        source = "file"
        if image.HasMetaDataKey("0008|0060"):
            modality = image.GetMetaData("0008|0060").strip() or None
    _check_image(image, path, modality)
    image = sitk.Cast(image, sitk.sitkFloat32)
    _check_hounsfield(sitk.GetArrayViewFromImage(image), path)
    return LoadedVolume(image=image, name=output_name(path), source=source, path=path,
                        modality=modality, series_instance_uid=series_uid)


def is_supported_input(path: Path) -> bool:
    """True for a folder or a file whose name ends in a supported image extension."""
    path = Path(path)
    return path.is_dir() or bool(re.search(r"\.(nii(\.gz)?|nrrd|nhdr|mha|mhd|dcm)$", path.name, re.I))


def read_labelmap(path: Path | str) -> sitk.Image:
    """A 0/1/2 labelmap image (0 background, 1 liver, 2 tumor; NIfTI, NRRD, MHA), checked: it
    exists, reads, is 3-D with one channel and holds no other values. One clear error otherwise."""
    path = Path(path)
    if not path.is_file():
        raise LiverTumorSegError(f"{path} does not exist")
    try:
        image = sitk.ReadImage(str(path))
    except RuntimeError:
        raise LiverTumorSegError(f"{path} cannot be read as a labelmap image") from None
    if image.GetDimension() != 3 or image.GetNumberOfComponentsPerPixel() != 1:
        raise LiverTumorSegError(f"{path} is not a 3-D single-channel labelmap")
    labels = sitk.GetArrayViewFromImage(image)
    if labels.size and (not np.all(np.isfinite(labels)) or labels.min() < 0 or labels.max() > 2
                        or np.any(labels != np.round(labels))):
        raise LiverTumorSegError(f"{path} holds values other than 0 (background), 1 (liver) and 2 (tumor)")
    return image
