"""Tests of LiverTumorSegLib.io.volume: every supported format, pixel type and orientation keeps
its geometry exactly; every kind of bad input ends in a LiverTumorSegError that says what is wrong."""

from __future__ import annotations

import logging

import numpy as np
import pytest
import SimpleITK as sitk

from LiverTumorSegLib.errors import LiverTumorSegError
from LiverTumorSegLib.io.volume import is_supported_input, load_volume, output_name


def _geometry(image: sitk.Image):
    return image.GetSize(), image.GetSpacing(), image.GetOrigin(), image.GetDirection()


def _assert_geometry_close(image: sitk.Image, reference: sitk.Image, tol: float = 1e-5) -> None:
    assert image.GetSize() == reference.GetSize()
    np.testing.assert_allclose(image.GetSpacing(), reference.GetSpacing(), atol=tol)
    np.testing.assert_allclose(image.GetOrigin(), reference.GetOrigin(), atol=tol)
    np.testing.assert_allclose(image.GetDirection(), reference.GetDirection(), atol=tol)


@pytest.mark.parametrize("suffix, dtype, orientation", [
    (".nii", np.int16, "LPS"),
    (".nii.gz", np.int16, "RAS"),
    (".nii.gz", np.int32, "oblique"),
    (".nrrd", np.int32, "LPI"),
    (".nrrd", np.float32, "permuted"),
    (".mha", np.float32, "oblique"),
    (".mha", np.int16, "LPI"),
    (".mhd", np.int16, "permuted"),
    (".mhd", np.float32, "RAS"),
])
def test_files_load_with_exact_geometry_and_hounsfield_values(tmp_path, helpers, suffix, dtype, orientation):
    written = helpers.phantom_ct(size=(48, 40, 24), spacing=(3.5, 3.5, 4.0),
                                 direction=helpers.DIRECTIONS[orientation], dtype=dtype)
    path = tmp_path / f"case_{orientation}{suffix}"
    sitk.WriteImage(written, str(path))

    volume = load_volume(path)

    assert volume.source == "file" and volume.name == f"case_{orientation}" and volume.path == path
    assert volume.image.GetPixelID() == sitk.sitkFloat32
    # Exactly what the file holds (the loader never alters geometry) ...
    assert _geometry(volume.image) == _geometry(sitk.ReadImage(str(path)))
    # ... which is what was written (NIfTI stores geometry as float32).
    _assert_geometry_close(volume.image, written)
    np.testing.assert_array_equal(sitk.GetArrayViewFromImage(volume.image),
                                  sitk.GetArrayViewFromImage(written).astype(np.float32))


def test_uint16_nifti_with_rescale_offset_becomes_hounsfield(tmp_path, helpers):
    """A NIfTI stored as uint16 with scl_inter = -1024 (as many scanners export) loads in HU,
    with the nibabel RAS affine turned into the same LPS geometry."""
    nib = pytest.importorskip("nibabel")
    written = helpers.phantom_ct(size=(48, 40, 24), spacing=(3.5, 3.5, 4.0), direction=helpers.DIRECTIONS["oblique"])
    hu = sitk.GetArrayFromImage(written)                      # (k, j, i)
    stored = (hu.astype(np.int32) + 1024).astype(np.uint16).transpose(2, 1, 0)  # nibabel is (i, j, k)
    d = np.asarray(written.GetDirection()).reshape(3, 3)
    affine_lps = np.eye(4)
    affine_lps[:3, :3] = d * np.asarray(written.GetSpacing())[None, :]
    affine_lps[:3, 3] = written.GetOrigin()
    affine_ras = np.diag([-1.0, -1.0, 1.0, 1.0]) @ affine_lps
    image = nib.Nifti1Image(stored, affine_ras)
    image.header.set_data_dtype(np.uint16)
    image.header.set_slope_inter(1.0, -1024.0)
    image.header.set_qform(affine_ras, code=1)
    image.header.set_sform(affine_ras, code=1)
    path = tmp_path / "scanner_export.nii.gz"
    nib.save(image, str(path))

    volume = load_volume(path)

    _assert_geometry_close(volume.image, written, tol=1e-4)
    np.testing.assert_array_equal(sitk.GetArrayViewFromImage(volume.image), hu.astype(np.float32))


@pytest.mark.parametrize("slope, intercept, signed, orientation", [
    (1.0, -1024.0, False, "LPS"),
    (1.0, 0.0, True, "oblique"),
    (2.0, -2048.0, False, "RAS"),
])
def test_synthetic_dicom_series_loads_in_hu_with_its_geometry(tmp_path, helpers, slope, intercept, signed,
                                                              orientation):
    written = helpers.phantom_ct(size=(40, 34, 14), spacing=(4.0, 4.0, 3.0),
                                 direction=helpers.DIRECTIONS[orientation])
    folder = helpers.write_dicom_series(tmp_path / "study" / "series_ct", written, slope=slope,
                                        intercept=intercept, signed=signed)

    volume = load_volume(folder)

    assert volume.source == "dicom" and volume.modality == "CT" and volume.name == "series_ct"
    assert volume.series_instance_uid
    _assert_geometry_close(volume.image, written, tol=1e-4)
    np.testing.assert_array_equal(sitk.GetArrayViewFromImage(volume.image),
                                  sitk.GetArrayViewFromImage(written).astype(np.float32))


def test_dicom_folder_with_two_series_uses_the_largest_and_says_so(tmp_path, helpers, caplog):
    folder = tmp_path / "mixed"
    helpers.write_dicom_series(folder / "a", helpers.phantom_ct(size=(40, 34, 14), spacing=(4.0, 4.0, 3.0)))
    helpers.write_dicom_series(folder / "b", helpers.phantom_ct(size=(40, 34, 10), spacing=(4.0, 4.0, 3.0)))
    for sub in ("a", "b"):
        for f in (folder / sub).iterdir():
            f.rename(folder / f"{sub}_{f.name}")
    with caplog.at_level(logging.WARNING):
        volume = load_volume(folder)
    assert volume.image.GetSize()[2] == 14
    assert "2 DICOM series" in caplog.text


def test_real_dicom_series_loads_on_the_reference_grid(shared_data):
    folder = shared_data("ts_dicom_upper_abdomen/dicom")
    reference = sitk.ReadImage(str(shared_data("ts_dicom_upper_abdomen/liver_reference.nii.gz")))
    volume = load_volume(folder)
    assert volume.source == "dicom" and volume.modality == "CT" and volume.name == "dicom"
    assert volume.image.GetSize() == (512, 512, 20)
    _assert_geometry_close(volume.image, reference, tol=1e-3)
    hu = sitk.GetArrayViewFromImage(volume.image)
    assert hu.min() <= -900 and hu.max() >= 200  # air and bone/contrast in HU (rescale applied)


def test_real_nifti_ct_keeps_its_geometry(shared_data):
    path = shared_data("ts_upper_abdomen_3mm/ct.nii.gz")
    volume = load_volume(path)
    raw = sitk.ReadImage(str(path))
    assert _geometry(volume.image) == _geometry(raw)
    assert raw.GetDirection() != (1, 0, 0, 0, 1, 0, 0, 0, 1)  # this case is stored RAS-flipped
    np.testing.assert_array_equal(sitk.GetArrayViewFromImage(volume.image),
                                  sitk.GetArrayViewFromImage(raw).astype(np.float32))


# --- bad inputs ------------------------------------------------------------------------------

BAD_LOAD_CASES = ("missing", "empty_file", "truncated_nii_gz", "truncated_nii", "text_file", "text_named_nifti",
                  "two_d", "single_slice", "four_d", "rgb", "tiny", "nan", "mr_file", "mr_dicom", "empty_folder",
                  "non_dicom_folder")


@pytest.mark.parametrize("case", BAD_LOAD_CASES)
def test_bad_input_gives_a_clear_error(bad_inputs, case):
    bad = bad_inputs[case]
    with pytest.raises(LiverTumorSegError) as info:
        load_volume(bad.path)
    message = str(info.value)
    assert bad.path.name in message, "the message names the input"
    for fragment in bad.expect:
        assert fragment in message.lower(), f"'{fragment}' missing from: {message}"


def test_the_bad_input_list_covers_every_load_case(helpers):
    assert set(BAD_LOAD_CASES) == set(helpers.LOAD_ERROR_CASES)


def test_first_half_of_a_real_nifti_is_refused(tmp_path, shared_data):
    data = shared_data("ts_upper_abdomen_3mm/ct.nii.gz").read_bytes()
    truncated = tmp_path / "ct.nii.gz"
    truncated.write_bytes(data[: len(data) // 2])
    with pytest.raises(LiverTumorSegError, match="truncated"):
        load_volume(truncated)


def test_truncated_nrrd_and_mha_are_refused(tmp_path, helpers):
    image = helpers.phantom_ct(size=(40, 36, 24))
    for suffix in (".nrrd", ".mha"):
        whole = tmp_path / f"whole{suffix}"
        sitk.WriteImage(image, str(whole), useCompression=True)
        data = whole.read_bytes()
        cut = tmp_path / f"cut{suffix}"
        cut.write_bytes(data[: len(data) // 2])
        with pytest.raises(LiverTumorSegError, match="truncated"):
            load_volume(cut)


def test_real_mr_volume_is_refused_as_ct(shared_data):
    with pytest.raises(LiverTumorSegError, match="MR"):
        load_volume(shared_data("ts_mr_3mm/mr.nii.gz"))


def test_partly_nan_and_blank_images_are_refused(tmp_path, helpers):
    hu = sitk.GetArrayFromImage(helpers.phantom_ct(size=(40, 36, 24), dtype=np.float32))
    hu[3, 4, 5] = np.nan
    partly = sitk.GetImageFromArray(hu)
    partly.SetSpacing((3.0, 3.0, 3.0))
    sitk.WriteImage(partly, str(tmp_path / "partly.nrrd"))
    with pytest.raises(LiverTumorSegError, match="1 NaN"):
        load_volume(tmp_path / "partly.nrrd")
    blank = sitk.GetImageFromArray(np.full((24, 36, 40), -1000, np.int16))
    blank.SetSpacing((3.0, 3.0, 3.0))
    sitk.WriteImage(blank, str(tmp_path / "blank.nrrd"))
    with pytest.raises(LiverTumorSegError, match="blank"):
        load_volume(tmp_path / "blank.nrrd")


def test_image_without_air_is_not_taken_for_ct(tmp_path, helpers):
    shifted = sitk.Cast(helpers.phantom_ct(size=(40, 36, 24)), sitk.sitkInt32) + 1024  # 0-based, not HU
    sitk.WriteImage(shifted, str(tmp_path / "unscaled.mha"))
    with pytest.raises(LiverTumorSegError, match="Hounsfield"):
        load_volume(tmp_path / "unscaled.mha")


def test_thin_slab_is_too_small(tmp_path, helpers):
    slab = helpers.phantom_ct(size=(60, 50, 8), spacing=(3.0, 3.0, 1.0))  # 8 slices but 8 mm thick
    sitk.WriteImage(slab, str(tmp_path / "slab.nii.gz"))
    with pytest.raises(LiverTumorSegError, match="too small"):
        load_volume(tmp_path / "slab.nii.gz")


# --- names -----------------------------------------------------------------------------------

def test_output_name_strips_every_extension(tmp_path):
    assert output_name(tmp_path / "patient.01.nii.gz") == "patient.01"
    assert output_name(tmp_path / "CASE.NII") == "CASE"
    assert output_name(tmp_path / "a.nrrd") == "a"
    assert output_name(tmp_path / "a.seg.nrrd") == "a"
    assert output_name(tmp_path / "scan.mhd") == "scan"
    folder = tmp_path / "series_42"
    folder.mkdir()
    assert output_name(folder) == "series_42"
    assert output_name(folder / ".." / "series_42") == "series_42"


def test_supported_inputs(tmp_path):
    assert is_supported_input(tmp_path)
    for name in ("a.nii", "a.nii.gz", "a.NRRD", "a.nhdr", "a.mha", "a.mhd", "a.dcm"):
        assert is_supported_input(tmp_path / name), name
    for name in ("a.png", "a.txt", "a.gz"):
        assert not is_supported_input(tmp_path / name), name


def test_read_labelmap_accepts_0_1_2_and_refuses_anything_else(tmp_path):
    from LiverTumorSegLib.io.volume import read_labelmap

    good = np.zeros((4, 5, 6), np.uint8)
    good[1, 2, 3], good[2, 2, 3] = 1, 2
    sitk.WriteImage(sitk.GetImageFromArray(good), str(tmp_path / "good.nii.gz"))
    np.testing.assert_array_equal(sitk.GetArrayFromImage(read_labelmap(tmp_path / "good.nii.gz")), good)
    bad = good.copy()
    bad[0, 0, 0] = 3
    sitk.WriteImage(sitk.GetImageFromArray(bad), str(tmp_path / "bad.nii.gz"))
    with pytest.raises(LiverTumorSegError, match="other than 0"):
        read_labelmap(tmp_path / "bad.nii.gz")
    sitk.WriteImage(sitk.GetImageFromArray(np.zeros((5, 6), np.uint8)), str(tmp_path / "flat.nii.gz"))
    with pytest.raises(LiverTumorSegError, match="3-D"):
        read_labelmap(tmp_path / "flat.nii.gz")
    with pytest.raises(LiverTumorSegError, match="does not exist"):
        read_labelmap(tmp_path / "missing.nii.gz")
