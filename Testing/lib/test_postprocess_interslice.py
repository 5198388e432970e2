"""Tests of LiverTumorSegLib.postprocess.interslice on small synthetic masks, for every axial axis."""

import numpy as np
import pytest

from LiverTumorSegLib.postprocess.interslice import (bridge_one_slice_gaps, drop_single_slice_components,
                                                     interslice_consistency)

AXES = [0, 1, 2]


def _on_axis(mask_z_first: np.ndarray, axial_axis: int) -> np.ndarray:
    """Move a mask built with the axial axis first to have it on ``axial_axis``."""
    return np.ascontiguousarray(np.moveaxis(mask_z_first, 0, axial_axis))


def _lesion_with_gap():
    mask = np.zeros((9, 10, 11), np.uint8)
    mask[2, 3:7, 3:7] = 1
    mask[4, 4:8, 4:8] = 1   # slice 3 is missing; footprints of 2 and 4 overlap on [4:7, 4:7]
    mask[5, 4:8, 4:8] = 1
    return mask


@pytest.mark.parametrize("axial_axis", AXES)
def test_bridge_fills_only_the_overlap_of_the_neighbouring_footprints(axial_axis):
    mask = _lesion_with_gap()
    result = bridge_one_slice_gaps(_on_axis(mask, axial_axis), axial_axis)
    expected = mask.copy()
    expected[3, 4:7, 4:7] = 1
    np.testing.assert_array_equal(result, _on_axis(expected, axial_axis))
    assert result.dtype == np.uint8


@pytest.mark.parametrize("axial_axis", AXES)
def test_bridge_leaves_two_slice_gaps_open(axial_axis):
    mask = np.zeros((8, 6, 6), np.uint8)
    mask[1, 2:4, 2:4] = 1
    mask[4, 2:4, 2:4] = 1
    np.testing.assert_array_equal(bridge_one_slice_gaps(_on_axis(mask, axial_axis), axial_axis),
                                  _on_axis(mask, axial_axis))


@pytest.mark.parametrize("axial_axis", AXES)
def test_bridge_does_not_cascade_across_consecutive_gaps(axial_axis):
    # Set on 0, 2, 4: slices 1 and 3 are each a one-slice gap and both get bridged from the input.
    mask = np.zeros((6, 4, 4), np.uint8)
    mask[[0, 2, 4], 1, 1] = 1
    result = bridge_one_slice_gaps(_on_axis(mask, axial_axis), axial_axis)
    expected = np.zeros_like(mask)
    expected[0:5, 1, 1] = 1
    np.testing.assert_array_equal(result, _on_axis(expected, axial_axis))


@pytest.mark.parametrize("axial_axis", AXES)
def test_drop_single_slice_components(axial_axis):
    mask = np.zeros((8, 9, 10), np.uint8)
    mask[2, 1:5, 1:5] = 1          # a wide speck on one slice
    mask[4:6, 6:8, 6:8] = 1        # a two-slice lesion
    mask[7, 8, 9] = 1              # a one-voxel speck
    result = drop_single_slice_components(_on_axis(mask, axial_axis), axial_axis)
    expected = np.zeros_like(mask)
    expected[4:6, 6:8, 6:8] = 1
    np.testing.assert_array_equal(result, _on_axis(expected, axial_axis))


@pytest.mark.parametrize("axial_axis", AXES)
def test_single_slice_means_axial_extent_not_thickness_elsewhere(axial_axis):
    # A component thin along another axis but spanning several axial slices is kept.
    mask = np.zeros((6, 6, 6), np.uint8)
    mask[1:5, 2, 1:5] = 1
    result = drop_single_slice_components(_on_axis(mask, axial_axis), axial_axis)
    assert result.sum() == 16


@pytest.mark.parametrize("axial_axis", AXES)
def test_consistency_bridges_before_dropping(axial_axis):
    # A fragment on slice 2 overlapping the lesion on slice 4 joins it through the bridge on 3;
    # an unrelated speck on slice 6 (no overlap) is dropped.
    mask = np.zeros((9, 10, 10), np.uint8)
    mask[2, 3:5, 3:5] = 1
    mask[4:6, 3:7, 3:7] = 1
    mask[8, 0, 0] = 1
    result = interslice_consistency(_on_axis(mask, axial_axis), axial_axis)
    expected = mask.copy()
    expected[3, 3:5, 3:5] = 1
    expected[8, 0, 0] = 0
    np.testing.assert_array_equal(result, _on_axis(expected, axial_axis))


@pytest.mark.parametrize("axial_axis", AXES)
def test_consistency_switches(axial_axis):
    mask = np.zeros((7, 6, 6), np.uint8)
    mask[1, 2:4, 2:4] = 1
    mask[3, 2:4, 2:4] = 1
    mask[5, 0, 0] = 1
    on_axis = _on_axis(mask, axial_axis)
    np.testing.assert_array_equal(interslice_consistency(on_axis, axial_axis, False, False), on_axis)
    only_drop = interslice_consistency(on_axis, axial_axis, bridge_gaps=False)
    assert only_drop.sum() == 0  # every component is on one slice
    only_bridge = interslice_consistency(on_axis, axial_axis, drop_single_slice=False)
    assert only_bridge.sum() == 13
    both = interslice_consistency(on_axis, axial_axis)
    assert both.sum() == 12 and both[_index_on_axis((5, 0, 0), axial_axis)] == 0


def _index_on_axis(index_z_first, axial_axis):
    index = list(index_z_first[1:])
    index.insert(axial_axis, index_z_first[0])
    return tuple(index)


def test_consistency_handles_empty_and_thin_volumes_and_keeps_input():
    assert not interslice_consistency(np.zeros((5, 5, 5), np.uint8), 0).any()
    thin = np.zeros((2, 4, 4), np.uint8)
    thin[:, 1:3, 1:3] = 1
    np.testing.assert_array_equal(interslice_consistency(thin, 0), thin)
    before = _lesion_with_gap()
    copy = before.copy()
    interslice_consistency(before, 0)
    np.testing.assert_array_equal(before, copy)


def test_consistency_rejects_a_bad_axis():
    with pytest.raises(ValueError):
        interslice_consistency(np.zeros((3, 3, 3), np.uint8), axial_axis=-1)
