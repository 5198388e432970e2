"""The real CTs of the project's shared data folder (``../shared/data``) and the synthetic cases
built on them, as the training, tuning and evaluation scripts all use them: one place that knows
each case's files and how a phantom gets a tumour kind.

Which case trains which model, and which is held out, is the scripts' business; they say so in
their own docs and in the model cards.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Dict, Optional, Sequence, Tuple

import numpy as np
import SimpleITK as sitk

from ...errors import LiverTumorSegError
from ...geometry import Geometry


@dataclass(frozen=True)
class SharedCase:
    """A real CT of the shared data folder: its image (file or DICOM folder) and, where there is
    one, its reference liver mask, relative to the folder."""

    name: str
    ct: str
    liver: Optional[str]


SHARED_CASES: Dict[str, SharedCase] = {case.name: case for case in (
    SharedCase("ts_upper_abdomen_3mm", "ts_upper_abdomen_3mm/ct.nii.gz", "ts_upper_abdomen_3mm/liver_reference.nii.gz"),
    SharedCase("ts_dicom_upper_abdomen", "ts_dicom_upper_abdomen/dicom",
               "ts_dicom_upper_abdomen/liver_reference.nii.gz"),
    SharedCase("chaos_ct_1", "chaos_ct_1/dicom", "chaos_ct_1/liver_reference.nii.gz"),
    SharedCase("ts_abdomen_3mm", "ts_abdomen_3mm/ct.nii.gz", None),
    SharedCase("ts_thorax_1p5mm", "ts_thorax_1p5mm/ct.nii.gz", None),
)}


def shared_data_dir(repository_root: Path) -> Path:
    """The shared data folder beside a checkout of the repository."""
    return (Path(repository_root) / ".." / "shared" / "data").resolve()


def has_shared_case(data_dir: Path, name: str) -> bool:
    case = SHARED_CASES[name]
    return (Path(data_dir) / case.ct).exists()


def load_shared_case(data_dir: Path, name: str) -> Tuple[sitk.Image, Optional[sitk.Image]]:
    """(CT as float32 HU, reference liver as uint8 0/1 on the CT's grid, or None) of a shared
    case. A reference stored on a slightly different grid is resampled (nearest) onto the CT's."""
    from ...io.volume import load_volume

    if name not in SHARED_CASES:
        raise LiverTumorSegError(f"unknown shared case '{name}'; known: {', '.join(SHARED_CASES)}")
    case = SHARED_CASES[name]
    ct = sitk.Cast(load_volume(Path(data_dir) / case.ct).image, sitk.sitkFloat32)
    if case.liver is None:
        return ct, None
    liver = sitk.ReadImage(str(Path(data_dir) / case.liver), sitk.sitkUInt8)
    if liver.GetSize() == ct.GetSize() and not Geometry.of(ct).matches(Geometry.of(liver)):
        liver.CopyInformation(ct)  # same voxels, header rounding apart
    elif not Geometry.of(ct).matches(Geometry.of(liver)):
        liver = sitk.Resample(liver, ct, sitk.Transform(), sitk.sitkNearestNeighbor, 0, sitk.sitkUInt8)
    return ct, sitk.Cast(liver > 0, sitk.sitkUInt8)


def phantom_with_tumor_kind(seed: int, kind: str, spacing: Sequence[float] = (0.8, 0.8, 1.5),
                            **phantom_args) -> Tuple[sitk.Image, sitk.Image, dict]:
    """A synthetic abdominal CT (``synth.phantom``) without its own tumours, with tumours of
    ``kind`` (``synth.tumors.TUMOR_KINDS``) inserted into its liver under the same seed:
    (CT, labels 0/1/2, the phantom's properties)."""
    from .phantom import make_phantom
    from .tumors import insert_tumor_kind

    phantom = make_phantom(seed, spacing=tuple(spacing), n_tumors=0, **phantom_args)
    liver = sitk.Cast(phantom.labels > 0, sitk.sitkUInt8)
    ct, labels, _ = insert_tumor_kind(phantom.ct, liver, seed=seed, kind=kind)
    return ct, labels, dict(phantom.properties)


# The validation phantoms of the tuning scripts: seeds from 5002 (training draws 0-149, the held-out
# evaluation 10000+), the i-th at spacing VALIDATION_PHANTOM_SPACINGS[i % 2] (x, y, z mm): a
# thin-slice scan and a 2.5 mm one in turn.
VALIDATION_PHANTOM_SEED = 5002
VALIDATION_PHANTOM_SPACINGS = ((0.8, 0.8, 1.5), (1.0, 1.0, 2.5))

# The held-out real DICOM case covers 40 mm of its liver: slabs of validation cases show the same view.
SLAB_MM = 40.0


def slab_around_tumours(ct: sitk.Image, labels: sitk.Image,
                        thickness_mm: float = SLAB_MM) -> Tuple[sitk.Image, sitk.Image]:
    """The CT and labels (0/1/2, same grid, axial slices along the array's first axis) cut to
    ``thickness_mm`` of slices centred on the tumours' centre of mass (the liver's when there is
    no tumour)."""
    array = sitk.GetArrayViewFromImage(labels)
    focus = array == 2 if (array == 2).any() else array > 0
    slices = max(2, int(round(thickness_mm / ct.GetSpacing()[2])))
    centre = int(round(float(np.nonzero(focus)[0].mean())))
    first = int(np.clip(centre - slices // 2, 0, max(0, array.shape[0] - slices)))
    size = list(ct.GetSize())
    size[2] = min(slices, size[2])
    index = [0, 0, first]
    return sitk.RegionOfInterest(ct, size, index), sitk.RegionOfInterest(labels, size, index)
