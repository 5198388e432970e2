"""The public liver datasets' real file layouts, made small here: Medical Segmentation Decathlon
Task03 Liver (imagesTr/labelsTr + dataset.json, labels 0/1/2) and LiTS (volume-N.nii,
segmentation-N.nii, labels 0/1/2), written with nibabel as those datasets were.

Most tests read the layouts' index themselves and check what the library must do with each
file: the image loads as a CT with its geometry (``load_volume``), the label file lies on the
same grid, and the dataset's label values mean what the library's labels mean (1 liver, 2
tumor; the liver volume includes the tumor). The last test runs the library's dataset reader
(``LiverTumorSegLib.develop.datasets``) on the same files."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

from LiverTumorSegLib import LIVER_LABEL, TUMOR_LABEL
from LiverTumorSegLib.geometry import Geometry
from LiverTumorSegLib.io.volume import load_volume
from LiverTumorSegLib.measure import measure_labelmap
from LiverTumorSegLib.models.card import read_card
from LiverTumorSegLib.develop.training.data import prepare_sample

nib = pytest.importorskip("nibabel")


def _ras_affine(image: sitk.Image) -> np.ndarray:
    """The nibabel (RAS) affine of a SimpleITK (LPS) image."""
    lps = np.eye(4)
    lps[:3, :3] = np.asarray(image.GetDirection()).reshape(3, 3) @ np.diag(image.GetSpacing())
    lps[:3, 3] = image.GetOrigin()
    return np.diag([-1.0, -1.0, 1.0, 1.0]) @ lps


def _save_nifti(array_kji: np.ndarray, affine: np.ndarray, path: Path, dtype, slope_inter=None) -> None:
    image = nib.Nifti1Image(np.asarray(array_kji).transpose(2, 1, 0).astype(dtype), affine)
    image.header.set_data_dtype(dtype)
    image.header.set_qform(affine, code=1)
    image.header.set_sform(affine, code=1)
    if slope_inter is not None:
        image.header.set_slope_inter(*slope_inter)
    nib.save(image, str(path))


@pytest.fixture
def msd_task03(tmp_path, helpers) -> Path:
    """Task03_Liver with two training cases (one flipped like many LiTS-derived volumes)."""
    root = tmp_path / "Task03_Liver"
    (root / "imagesTr").mkdir(parents=True)
    (root / "labelsTr").mkdir()
    (root / "imagesTs").mkdir()
    training = []
    for index, orientation in enumerate(("RAS", "LPI")):
        ct = helpers.phantom_ct(size=(48, 40, 26), spacing=(3.5, 3.5, 5.0), direction=helpers.DIRECTIONS[orientation])
        labels = helpers.analytic_labels_like(ct)
        affine = _ras_affine(ct)
        _save_nifti(sitk.GetArrayViewFromImage(ct), affine, root / "imagesTr" / f"liver_{index}.nii.gz", np.int16)
        _save_nifti(labels, affine, root / "labelsTr" / f"liver_{index}.nii.gz", np.uint8)
        training.append({"image": f"./imagesTr/liver_{index}.nii.gz", "label": f"./labelsTr/liver_{index}.nii.gz"})
    dataset = {"name": "Liver", "description": "Liver and tumor segmentation", "tensorImageSize": "3D",
               "modality": {"0": "CT"}, "labels": {"0": "background", "1": "liver", "2": "cancer"},
               "numTraining": len(training), "numTest": 0, "training": training, "test": []}
    (root / "dataset.json").write_text(json.dumps(dataset, indent=4))
    return root


@pytest.fixture
def lits(tmp_path, helpers) -> Path:
    """LiTS batch layout: volume-N.nii (int16, or float with a rescale) and segmentation-N.nii."""
    root = tmp_path / "LiTS" / "Training Batch 1"
    root.mkdir(parents=True)
    for index, orientation in enumerate(("RAS", "oblique")):
        ct = helpers.phantom_ct(size=(48, 40, 26), spacing=(3.5, 3.5, 5.0), direction=helpers.DIRECTIONS[orientation])
        affine = _ras_affine(ct)
        hu = sitk.GetArrayViewFromImage(ct)
        if index == 0:
            _save_nifti(hu, affine, root / f"volume-{index}.nii", np.int16)
        else:  # stored as unsigned with an intercept, as some LiTS volumes are
            _save_nifti(hu.astype(np.int32) + 1024, affine, root / f"volume-{index}.nii", np.uint16,
                        slope_inter=(1.0, -1024.0))
        _save_nifti(helpers.analytic_labels_like(ct), affine, root / f"segmentation-{index}.nii", np.uint8)
    return root


def _check_pair(image_path: Path, label_path: Path, helpers) -> None:
    volume = load_volume(image_path)
    labels = sitk.ReadImage(str(label_path))
    assert Geometry.of(volume.image).matches(Geometry.of(labels)), "image and label share one grid"
    label_array = sitk.GetArrayFromImage(labels)
    assert set(np.unique(label_array)) == {0, 1, 2}
    # The dataset's labels are the library's labels: the phantom liver is 1, its lesion 2 ...
    expected = helpers.analytic_labels_like(volume.image)
    np.testing.assert_array_equal(label_array, expected)
    hu = sitk.GetArrayViewFromImage(volume.image)
    assert np.all(hu[label_array == LIVER_LABEL] == helpers.LIVER_HU)
    assert np.all(hu[label_array == TUMOR_LABEL] == helpers.LESION_HU)
    # ... and measure the way the library defines them (liver volume includes the tumor).
    m = measure_labelmap(label_array, Geometry.of(labels), hu)
    voxel_ml = Geometry.of(labels).voxel_volume_ml
    assert m.liver_volume_ml == pytest.approx(np.count_nonzero(label_array) * voxel_ml)
    assert m.tumor_volume_ml == pytest.approx(np.count_nonzero(label_array == 2) * voxel_ml)
    assert len(m.lesions) == 1 and m.lesions[0].mean_hu == pytest.approx(helpers.LESION_HU)


def test_msd_task03_layout_loads_and_its_labels_map(msd_task03, helpers):
    dataset = json.loads((msd_task03 / "dataset.json").read_text())
    assert dataset["modality"] == {"0": "CT"}
    assert {int(k): v for k, v in dataset["labels"].items()} == {0: "background", LIVER_LABEL: "liver",
                                                                   TUMOR_LABEL: "cancer"}
    assert len(dataset["training"]) == dataset["numTraining"] == 2
    for case in dataset["training"]:
        image_path, label_path = msd_task03 / case["image"], msd_task03 / case["label"]
        assert load_volume(image_path).name == Path(case["image"]).name[: -len(".nii.gz")]
        _check_pair(image_path, label_path, helpers)


def test_lits_layout_loads_and_its_labels_map(lits, helpers):
    volumes = sorted(lits.glob("volume-*.nii"))
    assert [v.name for v in volumes] == ["volume-0.nii", "volume-1.nii"]
    for volume in volumes:
        segmentation = lits / volume.name.replace("volume-", "segmentation-")
        _check_pair(volume, segmentation, helpers)
    assert load_volume(lits / "volume-1.nii").image.GetPixelID() == sitk.sitkFloat32


def test_msd_case_becomes_training_samples_for_both_tasks(msd_task03, tiny_models):
    """An MSD label feeds the liver task as liver+tumor and the tumor task as its tumor only."""
    ct = load_volume(msd_task03 / "imagesTr" / "liver_0.nii.gz").image
    labels = sitk.ReadImage(str(msd_task03 / "labelsTr" / "liver_0.nii.gz"))
    liver_card = read_card(tiny_models.directory / f"{tiny_models.liver}.json")
    tumor_card = read_card(tiny_models.directory / f"{tiny_models.members[0]}.json")
    liver_sample = prepare_sample("liver_0", ct, labels, liver_card)
    tumor_sample = prepare_sample("liver_0", ct, labels, tumor_card)
    label_array = sitk.GetArrayViewFromImage(labels)
    voxel_ml = Geometry.of(labels).voxel_volume_ml
    liver_ml = np.count_nonzero(label_array) * voxel_ml
    tumor_ml = np.count_nonzero(label_array == 2) * voxel_ml
    liver_target_ml = liver_sample.target.sum() * np.prod(liver_card.spacing_mm) / 1000
    tumor_target_ml = tumor_sample.target.sum() * np.prod(tumor_card.spacing_mm) / 1000
    assert liver_target_ml == pytest.approx(liver_ml, rel=0.08)
    assert tumor_target_ml == pytest.approx(tumor_ml, rel=0.15)
    assert liver_sample.image.dtype == np.float32 and 0 <= liver_sample.image.min() <= liver_sample.image.max() <= 1


def test_msd_label_file_is_not_a_ct(msd_task03):
    """Giving a label file where a CT is expected is refused, not segmented."""
    from LiverTumorSegLib.errors import LiverTumorSegError
    with pytest.raises(LiverTumorSegError, match="Hounsfield"):
        load_volume(msd_task03 / "labelsTr" / "liver_0.nii.gz")


@pytest.mark.parametrize("layout", ["msd", "lits"])
def test_dataset_reader_opens_both_layouts(layout, msd_task03, lits, helpers):
    """The library's dataset reader finds every case of the layouts above and loads each as
    (CT in HU, labelmap 0/1/2 on the CT's grid)."""
    datasets = pytest.importorskip("LiverTumorSegLib.develop.datasets", reason="the dataset reader is not in this tree")
    root = msd_task03 if layout == "msd" else lits.parent
    cases = datasets.open_dataset(root)
    assert len(cases) == 2
    for case in cases:
        ct, labels = case.load()
        assert ct.GetPixelID() == sitk.sitkFloat32 and labels.GetPixelID() == sitk.sitkUInt8
        assert Geometry.of(ct).matches(Geometry.of(labels))
        np.testing.assert_array_equal(sitk.GetArrayViewFromImage(labels), helpers.analytic_labels_like(ct))
        np.testing.assert_array_equal(sitk.GetArrayViewFromImage(ct),
                                      sitk.GetArrayFromImage(load_volume(case.image_path).image))
