"""Shared fixtures of the test suites: real-data location, synthetic CTs (files and DICOM
series), every kind of bad input, and tiny deterministic models.

The tiny models are real model cards + safetensors weights of real MONAI UNets, written with
the library's own ``save_weights``/``write_card``. Their weights are set by hand so that each
network is a per-voxel logistic of the normalised HU ("liver" = brighter than 100 HU,
"tumor" = darker than 35 or 25 HU): the pipeline's plumbing (grids, crops, resampling,
files, errors) can then be checked against known physical positions. They say nothing
about segmentation accuracy.
"""

from __future__ import annotations

import math
import os
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, Optional, Sequence, Tuple

import numpy as np
import pytest
import SimpleITK as sitk

# The tests run tiny tensors. On a busy 2-core machine, PyTorch's default of one OpenMP thread
# per core makes them about ten times slower (threads spin-waiting for a core), so the tests and
# the CLI processes they start use one thread unless the caller chose otherwise. Set before any
# test module imports torch.
os.environ.setdefault("OMP_NUM_THREADS", "1")

REPO_ROOT = Path(__file__).resolve().parents[1]
DATA_DIR = (REPO_ROOT / ".." / "shared" / "data").resolve()

# ---------------------------------------------------------------------------------------------
# Real data
# ---------------------------------------------------------------------------------------------


def shared_data_path(relative: str) -> Path:
    """A path under ../shared/data, or skip the test with the reason when it is absent."""
    path = DATA_DIR / relative
    if not path.exists():
        pytest.skip(f"real test data {path} is absent (../shared/data lies outside this workplace)")
    return path


@pytest.fixture(scope="session")
def shared_data():
    """``shared_data("ts_upper_abdomen_3mm/ct.nii.gz")`` -> Path, or skip when absent."""
    return shared_data_path


# ---------------------------------------------------------------------------------------------
# Synthetic abdominal CT, defined in physical LPS mm so that any grid samples the same body
# ---------------------------------------------------------------------------------------------

BODY_SEMI_AXES_XY = (70.0, 55.0)          # elliptic cylinder along S
LIVER_CENTER_LPS = (-15.0, 0.0, 0.0)      # patient's right is -x in LPS
LIVER_SEMI_AXES = (38.0, 30.0, 40.0)      # ~191 mL
LESION_CENTER_LPS = (-20.0, 5.0, 8.0)
LESION_RADIUS_MM = 10.0                   # ~4.2 mL
AIR_HU, BODY_HU, LIVER_HU, LESION_HU = -1000, 40, 160, -60


def rotation_direction(degrees_z: float = 0.0, degrees_x: float = 0.0) -> Tuple[float, ...]:
    """A right-handed oblique direction matrix (rotation about z, then about x), row-major."""
    cz, sz = math.cos(math.radians(degrees_z)), math.sin(math.radians(degrees_z))
    cx, sx = math.cos(math.radians(degrees_x)), math.sin(math.radians(degrees_x))
    rz = np.array([[cz, -sz, 0], [sz, cz, 0], [0, 0, 1]])
    rx = np.array([[1, 0, 0], [0, cx, -sx], [0, sx, cx]])
    return tuple(float(v) for v in (rx @ rz).ravel())


DIRECTIONS: Dict[str, Tuple[float, ...]] = {
    "LPS": (1, 0, 0, 0, 1, 0, 0, 0, 1),
    "RAS": (-1, 0, 0, 0, -1, 0, 0, 0, 1),
    "LPI": (1, 0, 0, 0, 1, 0, 0, 0, -1),
    # image axes i, j, k run along S, L, P (a permuted, sagittal-like acquisition)
    "permuted": (0, 1, 0, 0, 0, 1, 1, 0, 0),
    "oblique": rotation_direction(25.0, 10.0),
}


@dataclass(frozen=True)
class Grid:
    size: Tuple[int, int, int]
    spacing: Tuple[float, float, float]
    direction: Tuple[float, ...]
    origin: Tuple[float, float, float]


def centered_grid(size: Sequence[int], spacing: Sequence[float], direction: Sequence[float]) -> Grid:
    """A grid whose centre lies at LPS (0, 0, 0), the phantom's centre."""
    d = np.asarray(direction, dtype=np.float64).reshape(3, 3)
    half = (np.asarray(size, dtype=np.float64) - 1) / 2 * np.asarray(spacing, dtype=np.float64)
    origin = -(d @ half)
    return Grid(tuple(int(s) for s in size), tuple(float(s) for s in spacing),
                tuple(float(v) for v in direction), tuple(float(o) for o in origin))


def voxel_lps(grid: Grid) -> Tuple[np.ndarray, np.ndarray, np.ndarray]:
    """x, y, z LPS coordinates (float32, (k, j, i) arrays) of every voxel centre."""
    d = np.asarray(grid.direction, dtype=np.float64).reshape(3, 3)
    steps = [np.arange(n) * s for n, s in zip(grid.size, grid.spacing)]  # i, j, k
    coords = []
    for row in range(3):
        ci = (steps[0] * d[row, 0])[None, None, :]
        cj = (steps[1] * d[row, 1])[None, :, None]
        ck = (steps[2] * d[row, 2])[:, None, None]
        coords.append((grid.origin[row] + ci + cj + ck).astype(np.float32))
    return coords[0], coords[1], coords[2]


def phantom_labels(grid: Grid) -> np.ndarray:
    """The phantom's analytic labelmap on ``grid`` (0 background, 1 liver, 2 lesion)."""
    x, y, z = voxel_lps(grid)
    lx, ly, lz = LIVER_CENTER_LPS
    ax, ay, az = LIVER_SEMI_AXES
    liver = ((x - lx) / ax) ** 2 + ((y - ly) / ay) ** 2 + ((z - lz) / az) ** 2 <= 1
    cx, cy, cz = LESION_CENTER_LPS
    lesion = (x - cx) ** 2 + (y - cy) ** 2 + (z - cz) ** 2 <= LESION_RADIUS_MM ** 2
    labels = liver.astype(np.uint8)
    labels[lesion & liver] = 2
    return labels


def phantom_ct(size: Sequence[int] = (54, 44, 30), spacing: Sequence[float] = (3.0, 3.0, 3.5),
               direction: Sequence[float] = DIRECTIONS["LPS"], dtype=np.int16, liver_hu: int = LIVER_HU,
               lesion_hu: int = LESION_HU) -> sitk.Image:
    """A synthetic abdominal CT (air, body, liver, one hypodense lesion) on a grid centred on the
    phantom. ``liver_hu=BODY_HU`` gives a CT with no liver in view."""
    grid = centered_grid(size, spacing, direction)
    x, y, _ = voxel_lps(grid)
    bx, by = BODY_SEMI_AXES_XY
    hu = np.full(x.shape, AIR_HU, dtype=np.int32)
    hu[(x / bx) ** 2 + (y / by) ** 2 <= 1] = BODY_HU
    labels = phantom_labels(grid)
    hu[labels == 1] = liver_hu
    hu[labels == 2] = lesion_hu
    image = sitk.GetImageFromArray(hu.astype(dtype))
    image.SetSpacing(grid.spacing)
    image.SetOrigin(grid.origin)
    image.SetDirection(grid.direction)
    return image


def analytic_labels_like(image: sitk.Image) -> np.ndarray:
    return phantom_labels(Grid(tuple(image.GetSize()), tuple(image.GetSpacing()), tuple(image.GetDirection()),
                               tuple(image.GetOrigin())))


def pierced_cube(size: int, cube: slice, tunnel: slice, along: int) -> Tuple[np.ndarray, tuple]:
    """A uint8 ``size``^3 mask, ones on ``cube`` along every axis, pierced by a square tunnel
    (``tunnel`` across) that runs along array axis ``along`` through the whole volume: open at
    both ends in 3-D, an enclosed hole in each slice across it. Returns the mask and the
    tunnel's index."""
    mask = np.zeros((size,) * 3, np.uint8)
    mask[cube, cube, cube] = 1
    index = [tunnel] * 3
    index[along] = slice(None)
    mask[tuple(index)] = 0
    return mask, tuple(index)


def write_dicom_series(folder: Path, image: sitk.Image, modality: str = "CT", slope: float = 1.0,
                       intercept: float = -1024.0, signed: bool = False, shuffle_names: bool = True,
                       series_description: str = "synthetic") -> Path:
    """Write ``image`` (HU) as a single-frame DICOM series with pydicom: one file per k slice,
    ImagePositionPatient/ImageOrientationPatient from the image geometry, stored values
    (HU - intercept) / slope. The direction must be right-handed (DICOM slices stack along
    row x column)."""
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, generate_uid

    d = np.asarray(image.GetDirection()).reshape(3, 3)
    if np.linalg.det(d) < 0:
        raise ValueError("DICOM series need a right-handed direction")
    folder.mkdir(parents=True, exist_ok=True)
    hu = sitk.GetArrayFromImage(image).astype(np.float64)
    stored = np.round((hu - intercept) / slope)
    dtype = np.int16 if signed else np.uint16
    info = np.iinfo(dtype)
    if stored.min() < info.min or stored.max() > info.max:
        raise ValueError("HU range does not fit the stored pixel type")
    stored = stored.astype(dtype)
    sop_class = {"CT": "1.2.840.10008.5.1.4.1.1.2", "MR": "1.2.840.10008.5.1.4.1.1.4"}[modality]
    study, series, frame = generate_uid(), generate_uid(), generate_uid()
    spacing = image.GetSpacing()
    origin = np.asarray(image.GetOrigin())
    order = np.random.default_rng(7).permutation(hu.shape[0]) if shuffle_names else np.arange(hu.shape[0])
    for k in range(hu.shape[0]):
        meta = FileMetaDataset()
        meta.MediaStorageSOPClassUID = sop_class
        meta.MediaStorageSOPInstanceUID = generate_uid()
        meta.TransferSyntaxUID = ExplicitVRLittleEndian
        ds = Dataset()
        ds.file_meta = meta
        ds.SOPClassUID = sop_class
        ds.SOPInstanceUID = meta.MediaStorageSOPInstanceUID
        ds.Modality = modality
        ds.PatientName = "Synthetic^Phantom"
        ds.PatientID = "SYNTH0001"
        ds.StudyInstanceUID = study
        ds.SeriesInstanceUID = series
        ds.FrameOfReferenceUID = frame
        ds.SeriesDescription = series_description
        ds.SeriesNumber = 1
        ds.InstanceNumber = k + 1
        ds.ImageType = ["ORIGINAL", "PRIMARY", "AXIAL"]
        position = origin + k * spacing[2] * d[:, 2]
        ds.ImagePositionPatient = [f"{v:.6f}" for v in position]
        ds.ImageOrientationPatient = [f"{v:.6f}" for v in list(d[:, 0]) + list(d[:, 1])]
        ds.PixelSpacing = [f"{spacing[1]:.6f}", f"{spacing[0]:.6f}"]  # row spacing (j), column spacing (i)
        ds.SliceThickness = f"{spacing[2]:.6f}"
        ds.Rows, ds.Columns = int(hu.shape[1]), int(hu.shape[2])
        ds.SamplesPerPixel = 1
        ds.PhotometricInterpretation = "MONOCHROME2"
        ds.BitsAllocated = 16
        ds.BitsStored = 16
        ds.HighBit = 15
        ds.PixelRepresentation = 1 if signed else 0
        if modality == "CT":
            ds.RescaleIntercept = f"{intercept:g}"
            ds.RescaleSlope = f"{slope:g}"
            ds.RescaleType = "HU"
        ds.PixelData = np.ascontiguousarray(stored[k]).tobytes()
        ds.save_as(str(folder / f"IM{order[k]:04d}.dcm"), enforce_file_format=True)
    return folder


@pytest.fixture(scope="session")
def small_ct() -> sitk.Image:
    """The default synthetic CT (int16 HU, LPS, 54x44x30 at 3x3x3.5 mm)."""
    return phantom_ct()


@pytest.fixture(scope="session")
def small_ct_file(tmp_path_factory, small_ct) -> Path:
    path = tmp_path_factory.mktemp("small_ct") / "case01.nii.gz"
    sitk.WriteImage(small_ct, str(path))
    return path


# ---------------------------------------------------------------------------------------------
# Every kind of bad input, with the words its error message must contain
# ---------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class BadInput:
    path: Path
    expect: Tuple[str, ...]  # fragments the error message must contain (lower case)


def _write(image: sitk.Image, path: Path) -> Path:
    sitk.WriteImage(image, str(path))
    return path


def build_bad_inputs(root: Path) -> Dict[str, BadInput]:
    """Bad inputs, each in its own folder (so each gets its own output name)."""
    def folder(name: str) -> Path:
        f = root / name
        f.mkdir(parents=True, exist_ok=True)
        return f

    bad: Dict[str, BadInput] = {}
    bad["missing"] = BadInput(folder("missing") / "nothing_here.nii.gz", ("does not exist",))
    empty = folder("empty") / "empty.nii.gz"
    empty.write_bytes(b"")
    bad["empty_file"] = BadInput(empty, ("empty", "0 bytes"))
    for case, folder_name, suffix in (("truncated_nii_gz", "truncated", ".nii.gz"),
                                      ("truncated_nii", "truncated_raw", ".nii")):
        good = folder(folder_name) / f"whole{suffix}"
        _write(phantom_ct(), good)
        data = good.read_bytes()
        truncated = good.parent / f"{folder_name}{suffix}"
        truncated.write_bytes(data[: len(data) // 2])
        good.unlink()
        bad[case] = BadInput(truncated, ("truncated",))
    text = folder("text") / "notes.txt"
    text.write_text("Patient notes, not an image.\n" * 20)
    bad["text_file"] = BadInput(text, ("cannot be read as an image",))
    fake = folder("fake_nifti") / "fake.nii.gz"
    fake.write_text("this is not a NIfTI file\n")
    bad["text_named_nifti"] = BadInput(fake, ("cannot be read as an image",))
    two_d = sitk.GetImageFromArray(np.full((64, 64), -1000, np.int16))
    bad["two_d"] = BadInput(_write(two_d, folder("two_d") / "slice.nrrd"), ("2-d",))
    one_slice = phantom_ct(size=(54, 44, 1))
    bad["single_slice"] = BadInput(_write(one_slice, folder("single_slice") / "one_slice.nii.gz"), ("2-d",))
    four_d = sitk.GetImageFromArray(np.full((3, 20, 20, 20), -1000, np.int16), isVector=False)
    bad["four_d"] = BadInput(_write(four_d, folder("four_d") / "series4d.nii.gz"), ("4-d",))
    rgb = sitk.GetImageFromArray(np.zeros((20, 20, 20, 3), np.uint8), isVector=True)
    rgb.SetSpacing((3.0, 3.0, 3.0))
    bad["rgb"] = BadInput(_write(rgb, folder("rgb") / "colour.mha"), ("rgb",))
    tiny = sitk.GetImageFromArray(np.full((5, 5, 5), -1000, np.int16))
    bad["tiny"] = BadInput(_write(tiny, folder("tiny") / "tiny.nii.gz"), ("too small",))
    nan = sitk.GetImageFromArray(np.full((30, 40, 40), np.nan, np.float32))
    nan.SetSpacing((3.0, 3.0, 3.0))
    bad["nan"] = BadInput(_write(nan, folder("nan") / "nan.nrrd"), ("nan",))
    mr_like = sitk.Cast(sitk.Abs(phantom_ct()), sitk.sitkUInt16)  # positive values only, no air
    bad["mr_file"] = BadInput(_write(mr_like, folder("mr_file") / "mr.nii.gz"), ("mr",))
    bad["mr_dicom"] = BadInput(
        write_dicom_series(folder("mr_dicom") / "mr_series", sitk.Abs(phantom_ct(size=(40, 36, 12))),
                           modality="MR", intercept=0.0),
        ("mr",))
    bad["empty_folder"] = BadInput(folder("empty_folder") / "nothing", ("no dicom",))
    bad["empty_folder"].path.mkdir()
    non_dicom = folder("non_dicom") / "documents"
    non_dicom.mkdir()
    (non_dicom / "report.txt").write_text("not dicom\n")
    (non_dicom / "IM0001.dcm").write_bytes(b"\x00" * 64 + b"not really DICOM")
    bad["non_dicom_folder"] = BadInput(non_dicom, ("no dicom",))
    no_liver = phantom_ct(liver_hu=BODY_HU, lesion_hu=BODY_HU)
    bad["no_liver"] = BadInput(_write(no_liver, folder("no_liver") / "no_liver.nii.gz"), ("no liver",))
    return bad


LOAD_ERROR_CASES = ("missing", "empty_file", "truncated_nii_gz", "truncated_nii", "text_file", "text_named_nifti",
                    "two_d", "single_slice", "four_d", "rgb", "tiny", "nan", "mr_file", "mr_dicom", "empty_folder",
                    "non_dicom_folder")
PIPELINE_ERROR_CASES = ("no_liver",)


@pytest.fixture(scope="session")
def bad_inputs(tmp_path_factory) -> Dict[str, BadInput]:
    return build_bad_inputs(tmp_path_factory.mktemp("bad_inputs"))


# ---------------------------------------------------------------------------------------------
# Tiny deterministic models
# ---------------------------------------------------------------------------------------------

TINY_HU_WINDOW = (-100.0, 300.0)
TINY_GAIN = 80.0  # logit change per unit of normalised HU (1 per 5 HU)
LIVER_THRESHOLD_HU = 100.0
TUMOR_MEMBERS = (("tiny-tumor-a", 35.0, 3.0), ("tiny-tumor-b", 25.0, 1.0))  # name, threshold HU, weight
THRESHOLD_UNET_ARGS = {"in_channels": 1, "out_channels": 2, "channels": [4, 8], "strides": [1],
                       "num_res_units": 0, "norm": None, "act": "relu"}
REFINE_UNET_ARGS = dict(THRESHOLD_UNET_ARGS, in_channels=2)  # channels: CT, liver prior
RANDOM_UNET_ARGS = {"in_channels": 1, "out_channels": 2, "channels": [4, 8], "strides": [2]}


def threshold_unet_state(threshold_hu: float, brighter_is_foreground: bool, seed: int = 0) -> dict:
    """A MONAI UNet state dict (seeded init, then hand-set) computing, per voxel,
    logit(foreground) - logit(background) = +-GAIN * (x - t), x the normalised HU."""
    t = (threshold_hu - TINY_HU_WINDOW[0]) / (TINY_HU_WINDOW[1] - TINY_HU_WINDOW[0])
    return channel_threshold_unet_state(THRESHOLD_UNET_ARGS, 0, t, brighter_is_foreground, seed)


def channel_threshold_unet_state(args: dict, channel: int, t: float, brighter_is_foreground: bool,
                                 seed: int = 0) -> dict:
    """Like :func:`threshold_unet_state` on input channel ``channel`` of a UNet built with
    ``args`` (e.g. 2 input channels: CT, liver prior), threshold ``t`` in that channel's units."""
    import torch
    from monai.networks.nets import UNet

    torch.manual_seed(seed)
    net = UNet(spatial_dims=3, **args)
    state = {k: torch.zeros_like(v) for k, v in net.state_dict().items()}
    state["model.0.conv.weight"][0, channel, 1, 1, 1] = 1.0  # hidden channel 0 = relu(x) = x
    sign = 1.0 if brighter_is_foreground else -1.0
    state["model.2.conv.weight"][0, 1, 1, 1, 1] = sign * TINY_GAIN  # transposed conv: (in, out, k, k, k)
    state["model.2.conv.bias"][1] = -sign * TINY_GAIN * t
    return state


def random_unet_state(seed: int = 0) -> dict:
    import torch
    from monai.networks.nets import UNet

    torch.manual_seed(seed)
    return UNet(spatial_dims=3, **RANDOM_UNET_ARGS).state_dict()


def write_model(directory: Path, name: str, task: str, state: dict, args: dict, spacing: Sequence[float],
                patch: Sequence[int] = (16, 16, 16), description: str = "", **card_fields) -> Path:
    """Save ``state`` with save_weights and its card with write_card; returns the card path."""
    from LiverTumorSegLib.models.card import ModelCard, write_card
    from LiverTumorSegLib.models.weights import save_weights

    weights_file = f"{name}.safetensors"
    sha = save_weights(state, directory / weights_file)
    card = ModelCard(name=name, version="0.0.1-test", task=task, architecture="UNet", architecture_args=dict(args),
                     spacing_mm=tuple(float(s) for s in spacing), patch_size=tuple(int(p) for p in patch),
                     hu_window=TINY_HU_WINDOW, weights_file=weights_file, weights_sha256=sha,
                     classes={"0": "background", "1": task}, description=description or "test fixture",
                     trained_on="nothing: hand-set weights for plumbing tests", source="Testing/conftest.py",
                     **card_fields)
    card_path = directory / f"{name}.json"
    write_card(card, card_path)
    return card_path


def phantom_case(size: Sequence[int], spacing: Sequence[float]) -> Tuple[sitk.Image, sitk.Image]:
    """The phantom CT on a grid and its analytic labels (0/1/2) on the same grid."""
    ct = phantom_ct(size=size, spacing=spacing)
    labels = sitk.GetImageFromArray(analytic_labels_like(ct))
    labels.CopyInformation(ct)
    return ct, labels


def write_plain_dataset(root: Path, cases: Sequence[Tuple[sitk.Image, sitk.Image]]) -> Path:
    """``cases`` (CT, labels) as the plain training layout: ``root/images/caseI.nii.gz`` and
    ``root/labels/caseI.nii.gz``; returns ``root``."""
    (root / "images").mkdir(parents=True)
    (root / "labels").mkdir()
    for i, (ct, labels) in enumerate(cases):
        sitk.WriteImage(ct, str(root / "images" / f"case{i}.nii.gz"))
        sitk.WriteImage(labels, str(root / "labels" / f"case{i}.nii.gz"))
    return root


def import_blocker(modules: Sequence[str] = (), module_dir: Optional[Path] = None) -> str:
    """Python source to start a subprocess's script with: importing any of ``modules`` (a top-level
    name such as ``torch`` blocks its submodules too; a dotted name such as
    ``LiverTumorSegLib.develop`` blocks that package and its submodules) raises ImportError, as in
    a Python that lacks them; ``module_dir`` (e.g. the Slicer module's folder) goes first on sys.path."""
    path_line = f"sys.path.insert(0, {str(module_dir)!r})\n" if module_dir is not None else ""
    return (f"import sys\n{path_line}BLOCKED = {sorted(modules)!r}\n"
            "class _Blocker:\n"
            "    def find_spec(self, name, path=None, target=None):\n"
            "        if any(name == b or name.startswith(b + '.') for b in BLOCKED):\n"
            "            raise ModuleNotFoundError(f'No module named {name!r} (blocked by the test)', name=name)\n"
            "sys.meta_path.insert(0, _Blocker())\n")


def write_map_member(directory: Path, name: str = "tiny-map-member") -> str:
    """A tumor model that takes the CT and the parenchyma map and calls tumor wherever the map
    (channel 1) is above 0.5, ignoring the CT; returns its name."""
    args = dict(THRESHOLD_UNET_ARGS, in_channels=2)
    write_model(directory, name, "tumor", channel_threshold_unet_state(args, 1, 0.5, brighter_is_foreground=True),
                args, spacing=(4.0, 4.0, 4.0), input_channels=["ct", "hypodensity"],
                description="tumor = parenchyma map above 0.5")
    return name


def write_refined_liver_models(directory: Path, refine_channel: int, refine_threshold: float,
                               liver_name: str = "tiny-liver-refined", refine_name: str = "tiny-liver-refine") -> str:
    """A liver model (the tiny one: brighter than 100 HU) whose card names a liver_refine model
    that thresholds its input channel ``refine_channel`` (0: CT, normalised; 1: liver prior) at
    ``refine_threshold``; returns the liver model's name."""
    write_model(directory, refine_name, "liver_refine",
                channel_threshold_unet_state(REFINE_UNET_ARGS, refine_channel, refine_threshold, True),
                REFINE_UNET_ARGS, spacing=(2.0, 2.0, 2.0), input_channels=["ct", "liver_prior"],
                description=f"liver = input channel {refine_channel} above {refine_threshold}")
    write_model(directory, liver_name, "liver", threshold_unet_state(LIVER_THRESHOLD_HU, brighter_is_foreground=True),
                THRESHOLD_UNET_ARGS, spacing=(5.0, 5.0, 5.0), refine_model=refine_name,
                description="liver = voxels brighter than 100 HU, then refined")
    return liver_name


@dataclass(frozen=True)
class TinyModels:
    directory: Path
    liver: str
    tumor: str
    members: Tuple[str, ...]
    member_weights: Tuple[float, ...]
    random_model: str


@pytest.fixture(scope="session")
def tiny_models_dir(tmp_path_factory) -> Path:
    """A models folder: a liver model (``DEFAULT_LIVER_MODEL``: bright voxels are liver), a
    two-member tumor ensemble (``DEFAULT_TUMOR_MODEL``: dark voxels are tumor, weights 3:1)
    and a randomly initialised UNet (``tiny-random-unet``, strides (2,))."""
    from LiverTumorSegLib.models.card import EnsembleCard, EnsembleMember, write_card
    from LiverTumorSegLib.models.registry import DEFAULT_LIVER_MODEL, DEFAULT_TUMOR_MODEL

    directory = tmp_path_factory.mktemp("tiny_models")
    write_model(directory, DEFAULT_LIVER_MODEL, "liver",
                threshold_unet_state(LIVER_THRESHOLD_HU, brighter_is_foreground=True), THRESHOLD_UNET_ARGS,
                spacing=(5.0, 5.0, 5.0), description="liver = voxels brighter than 100 HU")
    for name, threshold, _ in TUMOR_MEMBERS:
        write_model(directory, name, "tumor", threshold_unet_state(threshold, brighter_is_foreground=False),
                    THRESHOLD_UNET_ARGS, spacing=(4.0, 4.0, 4.0),
                    description=f"tumor = voxels darker than {threshold:g} HU")
    ensemble = EnsembleCard(name=DEFAULT_TUMOR_MODEL, version="0.0.1-test", task="tumor",
                            members=[EnsembleMember(n, w) for n, _, w in TUMOR_MEMBERS],
                            description="test fixture ensemble")
    write_card(ensemble, directory / f"{DEFAULT_TUMOR_MODEL}.json")
    write_model(directory, "tiny-random-unet", "tumor", random_unet_state(0), RANDOM_UNET_ARGS,
                spacing=(6.0, 6.0, 6.0), description="random init, seed 0")
    return directory


@pytest.fixture(scope="session")
def tiny_models(tiny_models_dir) -> TinyModels:
    from LiverTumorSegLib.models.registry import DEFAULT_LIVER_MODEL, DEFAULT_TUMOR_MODEL

    total = sum(w for _, _, w in TUMOR_MEMBERS)
    return TinyModels(tiny_models_dir, DEFAULT_LIVER_MODEL, DEFAULT_TUMOR_MODEL,
                      tuple(n for n, _, _ in TUMOR_MEMBERS), tuple(w / total for _, _, w in TUMOR_MEMBERS),
                      "tiny-random-unet")


@pytest.fixture
def tiny_models_env(monkeypatch, tiny_models_dir, tmp_path) -> Path:
    """LIVERTUMORSEG_MODELS -> the tiny models; LIVERTUMORSEG_CACHE -> an empty per-test folder."""
    monkeypatch.setenv("LIVERTUMORSEG_MODELS", str(tiny_models_dir))
    monkeypatch.setenv("LIVERTUMORSEG_CACHE", str(tmp_path / "model_cache"))
    return tiny_models_dir


@pytest.fixture
def tiny_registry(tiny_models_dir):
    """A registry that sees only the tiny models (not the embedded ones, not the user cache)."""
    from LiverTumorSegLib.models.registry import ModelRegistry

    return ModelRegistry([tiny_models_dir])


@pytest.fixture(scope="session")
def cli_env(tiny_models_dir, tmp_path_factory) -> Dict[str, str]:
    """Environment of a CLI subprocess: the tiny models first, a private (empty) model cache."""
    env = dict(os.environ)
    env["LIVERTUMORSEG_MODELS"] = str(tiny_models_dir)
    env["LIVERTUMORSEG_CACHE"] = str(tmp_path_factory.mktemp("cli_model_cache"))
    env["PYTHONUNBUFFERED"] = "1"
    return env


@pytest.fixture(scope="session")
def python_exe() -> str:
    return sys.executable


def record_predictions(monkeypatch, stage, describe, calls=None) -> list:
    """Wrap a stage module's ``predict_image`` so each call appends ``describe(model, keywords)`` to
    ``calls`` (a new list unless given), which is returned; the predictions stay the real ones."""
    calls = [] if calls is None else calls
    real = stage.predict_image

    def recording(ct, model, device, **kw):
        calls.append(describe(model, kw))
        return real(ct, model, device, **kw)

    monkeypatch.setattr(stage, "predict_image", recording)
    return calls


def tiny_pipeline_settings(**overrides):
    """PipelineSettings for the tiny models on the CPU, fast to run."""
    from LiverTumorSegLib.pipeline import PipelineSettings

    values = dict(device="cpu", active_contour_iterations=4)
    values.update(overrides)
    return PipelineSettings(**values)


@pytest.fixture(scope="session")
def tiny_pipeline(tiny_models_dir):
    """One Pipeline on the tiny models (CPU), shared by the tests that only read from it."""
    from LiverTumorSegLib.models.registry import ModelRegistry
    from LiverTumorSegLib.pipeline import Pipeline

    return Pipeline(tiny_pipeline_settings(), registry=ModelRegistry([tiny_models_dir]))


def dice(a: np.ndarray, b: np.ndarray) -> float:
    a, b = np.asarray(a, bool), np.asarray(b, bool)
    total = int(a.sum()) + int(b.sum())
    return 1.0 if total == 0 else 2.0 * int(np.count_nonzero(a & b)) / total


@pytest.fixture(scope="session")
def helpers():
    """The module's helper functions, for tests that build their own inputs."""
    class _Helpers:
        phantom_ct = staticmethod(phantom_ct)
        phantom_labels = staticmethod(phantom_labels)
        analytic_labels_like = staticmethod(analytic_labels_like)
        pierced_cube = staticmethod(pierced_cube)
        centered_grid = staticmethod(centered_grid)
        write_dicom_series = staticmethod(write_dicom_series)
        write_model = staticmethod(write_model)
        threshold_unet_state = staticmethod(threshold_unet_state)
        channel_threshold_unet_state = staticmethod(channel_threshold_unet_state)
        write_refined_liver_models = staticmethod(write_refined_liver_models)
        write_map_member = staticmethod(write_map_member)
        import_blocker = staticmethod(import_blocker)
        phantom_case = staticmethod(phantom_case)
        write_plain_dataset = staticmethod(write_plain_dataset)
        random_unet_state = staticmethod(random_unet_state)
        tiny_pipeline_settings = staticmethod(tiny_pipeline_settings)
        record_predictions = staticmethod(record_predictions)
        dice = staticmethod(dice)
        rotation_direction = staticmethod(rotation_direction)
        DIRECTIONS = DIRECTIONS
        LIVER_CENTER_LPS = LIVER_CENTER_LPS
        LESION_CENTER_LPS = LESION_CENTER_LPS
        LESION_RADIUS_MM = LESION_RADIUS_MM
        LIVER_SEMI_AXES = LIVER_SEMI_AXES
        LIVER_HU = LIVER_HU
        BODY_HU = BODY_HU
        LESION_HU = LESION_HU
        AIR_HU = AIR_HU
        TINY_HU_WINDOW = TINY_HU_WINDOW
        THRESHOLD_UNET_ARGS = THRESHOLD_UNET_ARGS
        RANDOM_UNET_ARGS = RANDOM_UNET_ARGS
        REFINE_UNET_ARGS = REFINE_UNET_ARGS
        LOAD_ERROR_CASES = LOAD_ERROR_CASES
        PIPELINE_ERROR_CASES = PIPELINE_ERROR_CASES
        Grid = Grid

    return _Helpers


@pytest.fixture
def cli_main():
    """``cli.main`` for in-process command-line tests; restores the logging handlers and the
    SIGTERM handler that ``main`` installs, so later tests are unaffected."""
    import logging
    import signal

    from LiverTumorSegLib import cli

    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    sigterm = signal.getsignal(signal.SIGTERM)
    yield cli.main
    root.handlers[:] = handlers
    root.setLevel(level)
    signal.signal(signal.SIGTERM, sigterm)
