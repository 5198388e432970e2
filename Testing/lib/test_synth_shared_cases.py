"""synth.shared_cases: the shared real CTs and the phantoms with a tumour kind, as the scripts use them."""

from __future__ import annotations

import numpy as np
import pytest
import SimpleITK as sitk

from LiverTumorSegLib.errors import LiverTumorSegError
from LiverTumorSegLib.geometry import Geometry
from LiverTumorSegLib.develop.synth.shared_cases import (SHARED_CASES, has_shared_case, load_shared_case,
                                                         phantom_with_tumor_kind, shared_data_dir)


@pytest.mark.parametrize("name", ["ts_upper_abdomen_3mm", "ts_dicom_upper_abdomen"])
def test_a_shared_case_loads_as_float_hu_with_its_liver_on_the_ct_grid(shared_data, name):
    data_dir = shared_data(SHARED_CASES[name].ct).parents[1]  # <data>/<case>/<file or dicom folder>
    assert has_shared_case(data_dir, name)
    ct, liver = load_shared_case(data_dir, name)
    assert ct.GetPixelID() == sitk.sitkFloat32 and liver.GetPixelID() == sitk.sitkUInt8
    assert Geometry.of(ct).matches(Geometry.of(liver))
    hu = sitk.GetArrayViewFromImage(ct)
    mask = sitk.GetArrayViewFromImage(liver)
    assert set(np.unique(mask)) == {0, 1}
    assert 300 < mask.sum() * np.prod(ct.GetSpacing()) / 1000.0 < 3000  # a liver's volume in mL
    assert 20 < np.median(hu[mask > 0]) < 200  # liver HU, not air or bone: mask and CT line up


def test_a_case_without_a_reference_and_unknown_names(shared_data):
    data_dir = shared_data("ts_abdomen_3mm/ct.nii.gz").parents[1]
    ct, liver = load_shared_case(data_dir, "ts_abdomen_3mm")
    assert liver is None and ct.GetDimension() == 3
    with pytest.raises(LiverTumorSegError, match="unknown shared case 'nope'"):
        load_shared_case(data_dir, "nope")
    assert not has_shared_case(data_dir / "missing", "ts_abdomen_3mm")


def test_the_shared_folder_lies_beside_the_checkout(tmp_path):
    assert shared_data_dir(tmp_path / "main") == (tmp_path / "shared" / "data").resolve()


def test_a_phantom_gets_tumours_of_the_asked_kind_in_its_liver():
    ct, labels, properties = phantom_with_tumor_kind(3, "metastases", spacing=(3.0, 3.0, 3.0),
                                                     size_mm=(240, 200, 150))
    lab = sitk.GetArrayViewFromImage(labels)
    assert (lab == 2).any() and (lab == 1).any()
    assert "liver_hu" in properties
    again = phantom_with_tumor_kind(3, "metastases", spacing=(3.0, 3.0, 3.0), size_mm=(240, 200, 150))[1]
    np.testing.assert_array_equal(sitk.GetArrayViewFromImage(again), lab)  # reproducible from the seed


def test_a_slab_is_cut_around_the_tumours_at_their_physical_height():
    from LiverTumorSegLib.develop.synth.shared_cases import slab_around_tumours
    from test_validate_liver_script import labelled_volume

    ct, labels = labelled_volume()
    slab_ct, slab_labels = slab_around_tumours(ct, labels, thickness_mm=20.0)
    assert slab_ct.GetSize() == (20, 20, 10)  # 20 mm of 2 mm slices
    array = sitk.GetArrayViewFromImage(slab_labels)
    assert (array == 2).sum() == (sitk.GetArrayViewFromImage(labels) == 2).sum()  # the whole tumour is in it
    assert slab_ct.GetOrigin()[2] == pytest.approx(100.0 + 2.0 * 35)  # slices 35-44 of the volume, in place
    np.testing.assert_array_equal(sitk.GetArrayViewFromImage(slab_ct), sitk.GetArrayViewFromImage(ct)[35:45])
