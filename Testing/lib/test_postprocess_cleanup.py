"""Tests of LiverTumorSegLib.postprocess.cleanup."""

import numpy as np
import pytest

from LiverTumorSegLib import BACKGROUND_LABEL, LIVER_LABEL, TUMOR_LABEL
from LiverTumorSegLib.postprocess.cleanup import compose_labelmap, remove_small_lesions, tumor_inside_liver


def test_tumor_inside_liver_cuts_what_lies_outside():
    liver = np.zeros((6, 6, 6), bool)
    liver[:, :, :3] = True
    tumor = np.zeros((6, 6, 6), np.uint8)
    tumor[2:4, 2:4, 1:5] = 1
    result = tumor_inside_liver(tumor, liver)
    assert result.dtype == np.uint8
    expected = np.zeros_like(tumor)
    expected[2:4, 2:4, 1:3] = 1
    np.testing.assert_array_equal(result, expected)
    assert tumor.sum() == 16  # input untouched


def test_tumor_inside_liver_checks_shapes():
    with pytest.raises(ValueError, match="same shape"):
        tumor_inside_liver(np.zeros((2, 2, 2)), np.zeros((2, 2, 3)))


def test_remove_small_lesions_by_volume():
    tumor = np.zeros((10, 10, 10), np.uint8)
    tumor[0:2, 0:2, 0:2] = 1      # 8 voxels
    tumor[5:9, 5:9, 5:9] = 1      # 64 voxels
    voxel_ml = 0.5 * 0.5 * 2.0 / 1000.0   # 0.0005 mL
    # 8 voxels = 0.004 mL, 64 voxels = 0.032 mL
    assert remove_small_lesions(tumor, voxel_ml, 0.004).sum() == 72   # exactly the minimum is kept
    assert remove_small_lesions(tumor, voxel_ml, 0.0041).sum() == 64
    assert remove_small_lesions(tumor, voxel_ml, 0.04).sum() == 0
    assert remove_small_lesions(tumor, voxel_ml, 0.0).sum() == 72
    assert remove_small_lesions(tumor, voxel_ml, 0.004).dtype == np.uint8


def test_remove_small_lesions_rejects_bad_voxel_volume():
    with pytest.raises(ValueError):
        remove_small_lesions(np.zeros((2, 2, 2)), 0.0, 0.1)


def test_compose_labelmap_tumor_wins():
    liver = np.zeros((3, 4, 5), np.uint8)
    liver[:, :2] = 1
    tumor = np.zeros((3, 4, 5), bool)
    tumor[1, 1:3, 2] = True  # half inside the liver, half outside
    labelmap = compose_labelmap(liver, tumor)
    assert labelmap.dtype == np.uint8
    assert labelmap[1, 1, 2] == TUMOR_LABEL and labelmap[1, 2, 2] == TUMOR_LABEL
    assert labelmap[0, 0, 0] == LIVER_LABEL and labelmap[0, 3, 0] == BACKGROUND_LABEL
    assert (labelmap == LIVER_LABEL).sum() == 3 * 2 * 5 - 1
    assert (labelmap == TUMOR_LABEL).sum() == 2
    assert set(np.unique(labelmap)) == {0, 1, 2}


def test_compose_labelmap_checks_shapes():
    with pytest.raises(ValueError):
        compose_labelmap(np.zeros((2, 2, 2)), np.zeros((2, 2, 1)))
