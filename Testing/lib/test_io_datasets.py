"""Reading the public liver datasets in their real layouts, made small here: MSD Task03_Liver
(dataset.json, imagesTr/labelsTr, macOS junk files), LiTS (volume-N/segmentation-N in nested
batch folders) and HCC-TACE-Seg (CT phases + DICOM SEG with Liver/Mass/Portal vein + clinical
table)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

from LiverTumorSegLib import LIVER_LABEL, TUMOR_LABEL
from LiverTumorSegLib.errors import LiverTumorSegError
from LiverTumorSegLib.geometry import Geometry
from LiverTumorSegLib.develop.datasets import (HCC_TACE_SEG, LITS, MSD, LabelledCase, detect_layout, open_dataset,
                                               open_hcc_tace_seg, open_lits, open_msd, read_clinical_table, segment_role)
from LiverTumorSegLib.io.volume import load_volume

SIZE = (32, 28, 12)  # 160 x 140 x 72 mm: the phantom's liver and lesion, with air around the body
SPACING = (5.0, 5.0, 6.0)
APPLE_DOUBLE = b"\x00\x05\x16\x07\x00\x02\x00\x00Mac OS X        " + b"\x00" * 64


def _junk(path: Path) -> None:
    """A macOS resource-fork file as the real MSD archive holds (``._liver_0.nii.gz``)."""
    path.write_bytes(APPLE_DOUBLE)


def _ct(helpers, orientation: str = "LPS", size=SIZE, spacing=SPACING) -> sitk.Image:
    return helpers.phantom_ct(size=size, spacing=spacing, direction=helpers.DIRECTIONS[orientation])


def _labels_image(helpers, ct: sitk.Image, values=None) -> sitk.Image:
    labels = helpers.analytic_labels_like(ct)
    if values is not None:  # relabel 0/1/2 to a dataset's own numbering
        labels = np.asarray(values, dtype=np.uint8)[labels]
    image = sitk.GetImageFromArray(labels)
    image.CopyInformation(ct)
    return image


def _check_case(case: LabelledCase, helpers) -> None:
    image, labels = case.load()
    assert image.GetPixelID() == sitk.sitkFloat32 and labels.GetPixelID() == sitk.sitkUInt8
    assert Geometry.of(labels) == Geometry.of(image)
    np.testing.assert_array_equal(sitk.GetArrayViewFromImage(labels), helpers.analytic_labels_like(image))


# ---------------------------------------------------------------------------------------------
# MSD Task03_Liver
# ---------------------------------------------------------------------------------------------

def _write_msd(root: Path, helpers, labels=None, value_of=(0, 1, 2)) -> Path:
    (root / "imagesTr").mkdir(parents=True)
    (root / "labelsTr").mkdir()
    (root / "imagesTs").mkdir()
    training = []
    for index, orientation in enumerate(("RAS", "LPI")):
        ct = _ct(helpers, orientation)
        sitk.WriteImage(ct, str(root / "imagesTr" / f"liver_{index}.nii.gz"))
        sitk.WriteImage(_labels_image(helpers, ct, value_of), str(root / "labelsTr" / f"liver_{index}.nii.gz"))
        _junk(root / "imagesTr" / f"._liver_{index}.nii.gz")
        _junk(root / "labelsTr" / f"._liver_{index}.nii.gz")
        training.append({"image": f"./imagesTr/liver_{index}.nii.gz", "label": f"./labelsTr/liver_{index}.nii.gz"})
    sitk.WriteImage(_ct(helpers), str(root / "imagesTs" / "liver_99.nii.gz"))
    dataset = {"name": "Liver", "tensorImageSize": "3D", "modality": {"0": "CT"},
               "labels": labels or {"0": "background", "1": "liver", "2": "cancer"},
               "numTraining": len(training), "numTest": 1, "training": training,
               "test": ["./imagesTs/liver_99.nii.gz"]}
    (root / "dataset.json").write_text(json.dumps(dataset, indent=4))
    _junk(root / "._dataset.json")
    return root


@pytest.fixture(scope="module")
def msd_root(tmp_path_factory, helpers) -> Path:
    return _write_msd(tmp_path_factory.mktemp("msd") / "Task03_Liver", helpers)


def test_msd_cases_load_with_labels_on_the_image_grid(msd_root, helpers):
    assert detect_layout(msd_root) == MSD
    cases = open_dataset(msd_root)
    assert [c.case_id for c in cases] == ["liver_0", "liver_1"]
    assert all(c.dataset == MSD and c.clinical is None for c in cases)
    assert cases[0].image_path == msd_root / "imagesTr" / "liver_0.nii.gz"
    for case in cases:
        _check_case(case, helpers)


def test_msd_labels_are_remapped_by_their_names(tmp_path, helpers):
    """A dataset.json numbering its labels otherwise (1 cancer, 2 liver) still gives 1 liver, 2 tumor."""
    root = _write_msd(tmp_path / "Task03_Liver", helpers,
                      labels={"0": "background", "1": "cancer", "2": "liver"}, value_of=(0, 2, 1))
    for case in open_msd(root):
        assert case.label_values == {0: 0, 1: TUMOR_LABEL, 2: LIVER_LABEL}
        _check_case(case, helpers)


def test_msd_missing_label_file_is_named(tmp_path, helpers):
    root = _write_msd(tmp_path / "Task03_Liver", helpers)
    (root / "labelsTr" / "liver_1.nii.gz").unlink()
    with pytest.raises(LiverTumorSegError, match=r"label file .*liver_1\.nii\.gz does not exist"):
        open_dataset(root)


def test_msd_label_value_the_dataset_does_not_define_is_refused(tmp_path, helpers):
    root = _write_msd(tmp_path / "Task03_Liver", helpers)
    label_path = root / "labelsTr" / "liver_0.nii.gz"
    labels = sitk.ReadImage(str(label_path))
    array = sitk.GetArrayFromImage(labels)
    array[array == 2] = 5
    bad = sitk.GetImageFromArray(array)
    bad.CopyInformation(labels)
    sitk.WriteImage(bad, str(label_path))
    with pytest.raises(LiverTumorSegError, match=r"values \[5\]"):
        open_msd(root)[0].load()


def test_msd_label_names_other_than_liver_are_refused(tmp_path, helpers):
    root = _write_msd(tmp_path / "Task08_HepaticVessel", helpers,
                      labels={"0": "background", "1": "Vessel", "2": "Tumour"})
    with pytest.raises(LiverTumorSegError, match="Vessel"):
        open_msd(root)


# ---------------------------------------------------------------------------------------------
# LiTS
# ---------------------------------------------------------------------------------------------

def _write_lits_case(folder: Path, number: int, ct: sitk.Image, labels: sitk.Image) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    sitk.WriteImage(ct, str(folder / f"volume-{number}.nii"))
    sitk.WriteImage(labels, str(folder / f"segmentation-{number}.nii"))


@pytest.fixture(scope="module")
def lits_root(tmp_path_factory, helpers) -> Path:
    root = tmp_path_factory.mktemp("lits") / "LiTS"
    ct = _ct(helpers, "RAS")
    _write_lits_case(root / "Training Batch 1", 2, ct, _labels_image(helpers, ct))
    ct = _ct(helpers, "oblique")
    _write_lits_case(root / "Training Batch 2", 10, ct, _labels_image(helpers, ct))
    _junk(root / "Training Batch 1" / "._volume-2.nii")
    sitk.WriteImage(_ct(helpers), str(root / "Training Batch 2" / "test-volume-3.nii"))  # unlabelled test case
    junk_dir = root / "__MACOSX" / "Training Batch 1"
    junk_dir.mkdir(parents=True)
    _junk(junk_dir / "._volume-4.nii")
    return root


def test_lits_cases_in_nested_batches_in_numeric_order(lits_root, helpers):
    assert detect_layout(lits_root) == LITS
    cases = open_dataset(lits_root)
    assert [c.case_id for c in cases] == ["volume-2", "volume-10"]
    assert cases[1].label_path == lits_root / "Training Batch 2" / "segmentation-10.nii"
    for case in cases:
        assert case.dataset == LITS
        _check_case(case, helpers)


def test_lits_volume_without_segmentation_is_named(tmp_path, helpers):
    root = tmp_path / "LiTS"
    ct = _ct(helpers)
    _write_lits_case(root / "Training Batch 1", 0, ct, _labels_image(helpers, ct))
    sitk.WriteImage(ct, str(root / "Training Batch 1" / "volume-1.nii"))
    with pytest.raises(LiverTumorSegError, match=r"volume-1\.nii has no segmentation-1\.nii"):
        open_lits(root)


def test_label_file_on_another_grid_is_resampled_by_position(tmp_path, helpers):
    """A label file covering part of the image on its own grid lands where it lies in the patient;
    one that differs only by header rounding is taken as it is."""
    root = tmp_path / "LiTS"
    ct = _ct(helpers)
    full = _labels_image(helpers, ct)
    cropped = full[4:28, 3:25, 2:10]  # keeps its physical position (origin moves with the crop)
    _write_lits_case(root, 0, ct, cropped)
    rounded = sitk.Image(full)
    rounded.SetOrigin(tuple(o + 1e-4 for o in full.GetOrigin()))
    _write_lits_case(root, 1, ct, rounded)
    image, labels = open_lits(root)[0].load()
    assert Geometry.of(labels) == Geometry.of(image)
    expected = np.zeros_like(sitk.GetArrayViewFromImage(full))
    expected[2:10, 3:25, 4:28] = sitk.GetArrayViewFromImage(full)[2:10, 3:25, 4:28]
    np.testing.assert_array_equal(sitk.GetArrayViewFromImage(labels), expected)
    _check_case(open_lits(root)[1], helpers)


def test_label_file_elsewhere_in_the_patient_is_refused(tmp_path, helpers):
    root = tmp_path / "LiTS"
    ct = _ct(helpers)
    far = _labels_image(helpers, ct)
    far.SetOrigin(tuple(o + 500.0 for o in far.GetOrigin()))
    _write_lits_case(root, 0, ct, far)
    with pytest.raises(LiverTumorSegError, match="do not overlap"):
        open_lits(root)[0].load()


# ---------------------------------------------------------------------------------------------
# HCC-TACE-Seg
# ---------------------------------------------------------------------------------------------

def _terms(name: str, category, kind):
    from LiverTumorSegLib.io.terminology import SegmentTerminology
    return SegmentTerminology(label=0, segment_id=name, name=name, color_rgb=(0.5, 0.5, 0.5), category=category,
                              type=kind)


ANATOMY = ("SCT", "123037004", "Anatomical Structure")
ALTERED = ("SCT", "49755003", "Morphologically Altered Structure")


def _write_series(helpers, folder: Path, ct: sitk.Image, patient: str, description: str, study_uid: str) -> str:
    """A CT series as TCIA ships it (patient ID in the headers, one series per folder)."""
    import pydicom

    helpers.write_dicom_series(folder, ct, series_description=description)
    series_uid = ""
    for path in folder.iterdir():
        ds = pydicom.dcmread(str(path))
        ds.PatientID, ds.PatientName, ds.StudyInstanceUID = patient, patient, study_uid
        for keyword in ("PatientBirthDate", "PatientSex", "AccessionNumber", "StudyID", "StudyDate", "StudyTime"):
            setattr(ds, keyword, "")
        ds.save_as(str(path))
        series_uid = ds.SeriesInstanceUID
    return series_uid


def _write_seg(folder: Path, series_folder: Path, grid: sitk.Image, named_masks) -> Path:
    """A DICOM SEG with the given segments, written with the library's writer (needs highdicom)."""
    pytest.importorskip("highdicom", reason="writing the test DICOM SEG needs highdicom (the 'dicom' extra)")
    from LiverTumorSegLib.io.dicom_seg import write_dicom_seg_masks

    folder.mkdir(parents=True)
    masks, terms = [], []
    for name, (array, category, kind) in named_masks.items():
        mask = sitk.GetImageFromArray(array.astype(np.uint8))
        mask.CopyInformation(grid)
        masks.append(mask)
        terms.append(_terms(name, category, kind))
    path = folder / "1-1.dcm"
    write_dicom_seg_masks(masks, terms, series_folder, path)
    return path


def _portal_vein(image: sitk.Image, labels: np.ndarray) -> np.ndarray:
    """A tube outside the liver (x = 30..40 mm LPS): a structure the reader must ignore."""
    vein = np.zeros(labels.shape, bool)
    for j in range(labels.shape[1]):
        for i in range(labels.shape[2]):
            x, y, _ = image.TransformIndexToPhysicalPoint((i, j, 0))
            vein[:, j, i] = 30 <= x <= 40 and -5 <= y <= 5
    return vein & (labels == 0)


@pytest.fixture(scope="module")
def hcc_root(tmp_path_factory, helpers) -> Path:
    """HCC_001: arterial + portal-venous phases, the SEG drawn on the portal-venous phase over its
    slices 2..9 only (Liver includes the mass); HCC_002: one phase, Liver excludes the "Tumor"."""
    pydicom = pytest.importorskip("pydicom")
    from pydicom.uid import generate_uid

    root = tmp_path_factory.mktemp("hcc") / "HCC-TACE-Seg"
    study = root / "HCC_001" / "01-01-2000-CT ABDOMEN-12345"
    study_uid = generate_uid()
    _write_series(helpers, study / "2.000000-ARTERIAL-111", _ct(helpers, size=(32, 28, 10)), "HCC_001",
                  "ARTERIAL", study_uid)
    pv = _ct(helpers, size=SIZE, spacing=(5.0, 5.0, 5.0))
    pv_folder = study / "3.000000-PORTAL VENOUS-222"
    _write_series(helpers, pv_folder, pv, "HCC_001", "PORTAL VENOUS", study_uid)
    _junk(pv_folder / "._1-01.dcm")
    pv_image = load_volume(pv_folder).image
    subset = tmp_path_factory.mktemp("hcc_subset")
    sub_image = pv_image[:, :, 2:10]
    for path in pv_folder.iterdir():  # the SEG references the slices 2..9 only
        if path.name.startswith("."):
            continue
        ds = pydicom.dcmread(str(path), stop_before_pixels=True)
        k = pv_image.TransformPhysicalPointToIndex(tuple(float(v) for v in ds.ImagePositionPatient))[2]
        if 2 <= k < 10:
            shutil.copy(path, subset / path.name)
    labels = helpers.analytic_labels_like(sub_image)
    _write_seg(study / "300.000000-Segmentation-333", subset, sub_image, {
        "Liver": (labels > 0, ANATOMY, ("SCT", "10200004", "Liver")),
        "Mass": (labels == 2, ALTERED, ("SCT", "4147007", "Mass")),
        "Portal vein": (_portal_vein(sub_image, labels), ANATOMY, ("SCT", "32764006", "Portal vein")),
    })

    study = root / "HCC_002" / "02-02-2000-CT ABDOMEN-54321"
    ct = _ct(helpers, "oblique")
    folder = study / "2.000000-PORTAL VENOUS-444"
    _write_series(helpers, folder, ct, "HCC_002", "PORTAL VENOUS", generate_uid())
    image = load_volume(folder).image
    labels = helpers.analytic_labels_like(image)
    _write_seg(study / "300.000000-Segmentation-555", folder, image, {
        "liver": (labels == 1, ANATOMY, ("SCT", "10200004", "Liver")),
        "Tumor": (labels == 2, ALTERED, ("SCT", "108369006", "Neoplasm")),
        "Abdominal aorta": (np.zeros(labels.shape, bool), ANATOMY, ("SCT", "7832008", "Abdominal aorta")),
    })
    (root / "HCC-TACE-Seg_clinical_data-V2.csv").write_text(
        "TCIA_ID,Age,Sex,TTP,Child-Pugh\nHCC_001,62,M,14.5,A\nHCC_002,71,F,,B\nHCC_003,55,M,3.2,A\n")
    return root


def test_hcc_cases_pick_the_referenced_phase_and_map_the_segments(hcc_root, helpers):
    assert detect_layout(hcc_root) == HCC_TACE_SEG
    cases = open_dataset(hcc_root)
    assert [c.case_id for c in cases] == ["HCC_001", "HCC_002"]
    first, second = cases
    assert first.dataset == HCC_TACE_SEG and "PORTAL VENOUS" in first.image_path.name
    image, labels = first.load()
    assert image.GetSize() == SIZE and image.GetSpacing() == (5.0, 5.0, 5.0)  # the referenced phase
    assert Geometry.of(labels) == Geometry.of(image)
    expected = helpers.analytic_labels_like(image)
    expected[:2] = 0  # the SEG covers slices 2..9 only
    expected[10:] = 0
    array = sitk.GetArrayViewFromImage(labels)
    np.testing.assert_array_equal(array, expected)  # portal vein ignored; liver = liver + mass; mass = tumor
    assert (array == TUMOR_LABEL).any()
    _check_case(second, helpers)  # liver segment without the tumor: the union is the liver


def test_hcc_clinical_values_by_tcia_id(hcc_root):
    cases = {c.case_id: c for c in open_hcc_tace_seg(hcc_root)}
    assert cases["HCC_001"].clinical == {"TCIA_ID": "HCC_001", "Age": 62, "Sex": "M", "TTP": 14.5, "Child-Pugh": "A"}
    assert cases["HCC_002"].clinical["TTP"] is None and cases["HCC_002"].clinical["Age"] == 71
    table = hcc_root / "HCC-TACE-Seg_clinical_data-V2.csv"
    moved = hcc_root.parent / "clinical.csv"
    shutil.copy(table, moved)
    assert open_hcc_tace_seg(hcc_root, clinical_table=moved)[0].clinical["Sex"] == "M"
    assert set(read_clinical_table(moved)) == {"HCC_001", "HCC_002", "HCC_003"}


def test_clinical_table_without_tcia_id_is_refused(tmp_path):
    table = tmp_path / "clinical.csv"
    table.write_text("Patient,Age\nHCC_001,62\n")
    with pytest.raises(LiverTumorSegError, match="TCIA_ID"):
        read_clinical_table(table)


def test_clinical_excel_table(tmp_path):
    path = tmp_path / "HCC-TACE-Seg_clinical_data-V2.xlsx"
    try:
        import openpyxl
    except ImportError:
        path.write_bytes(b"PK\x03\x04 not read without openpyxl")
        with pytest.raises(LiverTumorSegError, match="openpyxl"):
            read_clinical_table(path)
        return
    workbook = openpyxl.Workbook()
    sheet = workbook.active
    sheet.append(["TCIA_ID", "Age", "Sex"])
    sheet.append(["HCC_001", 62, "M"])
    workbook.save(str(path))
    assert read_clinical_table(path) == {"HCC_001": {"TCIA_ID": "HCC_001", "Age": 62, "Sex": "M"}}


def test_hcc_seg_referencing_a_series_that_is_absent_is_named(tmp_path, helpers):
    from pydicom.uid import generate_uid

    root = tmp_path / "HCC-TACE-Seg"
    study = root / "HCC_009" / "study"
    study_uid = generate_uid()
    arterial = _ct(helpers)
    drawn_on = study / "DELAYED"
    missing_uid = _write_series(helpers, drawn_on, arterial, "HCC_009", "DELAYED", study_uid)
    _write_series(helpers, study / "ARTERIAL", arterial, "HCC_009", "ARTERIAL", study_uid)
    labels = helpers.analytic_labels_like(arterial)
    _write_seg(study / "SEG", drawn_on, load_volume(drawn_on).image,
               {"Liver": (labels > 0, ANATOMY, ("SCT", "10200004", "Liver"))})
    shutil.rmtree(drawn_on)
    with pytest.raises(LiverTumorSegError, match=f"references the series {missing_uid}"):
        open_hcc_tace_seg(root)


def test_hcc_folder_without_seg_is_refused(tmp_path, helpers):
    from pydicom.uid import generate_uid

    root = tmp_path / "HCC-TACE-Seg"
    _write_series(helpers, root / "HCC_001" / "study" / "CT", _ct(helpers), "HCC_001", "CT", generate_uid())
    with pytest.raises(LiverTumorSegError, match="no DICOM SEG"):
        open_dataset(root)


def test_segment_roles():
    assert segment_role("Liver") == segment_role("LIVER") == LIVER_LABEL
    assert segment_role("Mass") == segment_role("tumor") == segment_role("Liver tumor") == TUMOR_LABEL
    assert segment_role("Portal vein") is None and segment_role("Abdominal aorta") is None


# ---------------------------------------------------------------------------------------------
# Unrecognised folders
# ---------------------------------------------------------------------------------------------

def test_unrecognised_folder_is_refused(tmp_path):
    (tmp_path / "notes.txt").write_text("not a dataset\n")
    _junk(tmp_path / "._volume-0.nii")
    with pytest.raises(LiverTumorSegError, match="not a recognised liver dataset"):
        open_dataset(tmp_path)
    with pytest.raises(LiverTumorSegError, match="does not exist"):
        open_dataset(tmp_path / "missing")
