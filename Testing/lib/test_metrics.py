"""Overlap metrics, comparison by physical position, and lesion-wise detection."""

from __future__ import annotations

import math

import numpy as np
import pytest
import SimpleITK as sitk

from LiverTumorSegLib.metrics import (dice, equivalent_diameter_mm, leak_beyond_ml, lesion_detection, on_grid_of,
                                      overlap_metrics, variation_coefficient)


def test_dice_and_overlap_metrics():
    a = np.zeros((4, 4, 4), bool)
    b = np.zeros((4, 4, 4), bool)
    a[:2] = True  # 32 voxels
    b[1:3] = True  # 32 voxels, 16 shared
    assert dice(a, b) == pytest.approx(0.5)
    m = overlap_metrics(a, b)
    assert m["iou"] == pytest.approx(16 / 48) and m["sensitivity"] == pytest.approx(0.5)
    assert m["precision"] == pytest.approx(0.5)
    assert dice(np.zeros(3), np.zeros(3)) == 1.0 and dice(a, np.zeros_like(a)) == 0.0
    assert math.isnan(overlap_metrics(a, np.zeros_like(a))["sensitivity"])


def test_on_grid_of_compares_by_physical_position():
    image = sitk.Image(10, 8, 6, sitk.sitkUInt8)
    image.SetSpacing((2.0, 2.0, 2.0))
    mask = np.zeros((6, 8, 10), np.uint8)
    mask[2, 3, 4] = 1
    reference = sitk.GetImageFromArray(mask[:, :, ::-1].copy())  # the same voxels, i axis flipped ...
    reference.SetSpacing((2.0, 2.0, 2.0))
    reference.SetDirection((-1, 0, 0, 0, 1, 0, 0, 0, 1))  # ... and so is the direction
    reference.SetOrigin((18.0, 0.0, 0.0))
    assert np.array_equal(on_grid_of(reference, image), mask)


def test_leak_beyond_a_margin_counts_spill_into_a_neighbour_not_a_wide_boundary():
    reference = np.zeros((20, 20, 40), bool)
    reference[5:15, 5:15, 5:15] = True
    wide = np.zeros_like(reference)
    wide[4:16, 4:16, 4:16] = True  # one 2 mm voxel too wide all round: within 3 mm
    spill = wide.copy()
    spill[8:12, 8:12, 15:30] = True  # a 4x4 tongue running 15 voxels out along the last axis
    spacing = (2.0, 2.0, 2.0)  # mm, 8 uL per voxel
    assert leak_beyond_ml(wide, reference, spacing, 3.5) == 0.0  # corners 3.46 mm out
    assert leak_beyond_ml(spill, reference, spacing, 3.5) == pytest.approx(14 * 16 * 0.008)  # 2 mm slice spared
    # by physical distance: at 1 mm along that axis the first three slices lie within 3.5 mm
    assert leak_beyond_ml(spill, reference, (2.0, 2.0, 1.0), 3.5) == pytest.approx(12 * 16 * 0.004)
    assert leak_beyond_ml(reference, reference, spacing, 0.0) == 0.0
    assert leak_beyond_ml(wide, np.zeros_like(reference), spacing, 3.0) == pytest.approx(wide.sum() * 0.008)


def test_lesion_detection_by_lesion_and_false_positives():
    reference = np.zeros((20, 20, 20), bool)
    reference[2:6, 2:6, 2:6] = True  # 64 voxels, found
    reference[10:12, 10:12, 10:12] = True  # 8 voxels, missed
    prediction = np.zeros_like(reference)
    prediction[4:8, 4:8, 4:8] = True  # overlaps the first
    prediction[15:17, 2:4, 15:17] = True  # touches nothing: a false positive
    result = lesion_detection(prediction, reference, voxel_volume_mm3=8.0)
    assert [lesion["detected"] for lesion in result["reference"]] == [True, False]
    assert result["reference"][0]["diameter_mm"] == pytest.approx(equivalent_diameter_mm(64, 8.0), abs=0.1)
    assert result["false_positives"] == 1
    assert [lesion["true_positive"] for lesion in result["predicted"]] == [True, False]
    assert result["predicted"][1]["diameter_mm"] == pytest.approx(equivalent_diameter_mm(8, 8.0), abs=0.1)
    assert equivalent_diameter_mm(1, 4.0 / 3.0 * np.pi) == pytest.approx(2.0)
    empty = lesion_detection(np.zeros_like(reference), np.zeros_like(reference), 1.0)
    assert empty == {"reference": [], "predicted": [], "false_positives": 0}


def test_variation_coefficient_by_hand():
    mean = np.array([0.5, 0.2, 0.04, 0.0], np.float32)
    std = np.array([0.25, 0.1, 0.02, 0.0], np.float32)
    np.testing.assert_allclose(variation_coefficient(mean, std), [0.5, 0.5, 0.0, 0.0])  # 0 below mean 0.05
