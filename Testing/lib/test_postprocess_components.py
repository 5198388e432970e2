"""Tests of LiverTumorSegLib.postprocess.components on small synthetic masks."""

import numpy as np
import pytest

from LiverTumorSegLib.postprocess.components import (bounding_box, fill_holes, label_lesions,
                                                     labeled_components_in_box, largest_component,
                                                     margin_in_voxels, remove_small_components)


def _blobs():
    mask = np.zeros((12, 14, 16), np.uint8)
    mask[1:4, 1:4, 1:4] = 1          # 27 voxels
    mask[6:11, 6:12, 8:14] = 1       # 180 voxels
    mask[1, 12, 14] = 1              # 1 voxel
    return mask


def test_bounding_box_tight_and_with_margin_clipped():
    mask = np.zeros((10, 10, 10), bool)
    mask[2:5, 3, 7:9] = True
    assert bounding_box(mask) == (slice(2, 5), slice(3, 4), slice(7, 9))
    assert bounding_box(mask, (1, 4, 3)) == (slice(1, 6), slice(0, 8), slice(4, 10))
    assert bounding_box(np.zeros((3, 3, 3), np.uint8)) is None


def test_margin_in_voxels_rounds_up_per_axis():
    assert margin_in_voxels(5.0, (2.5, 0.7, 1.0)) == (2, 8, 5)
    assert margin_in_voxels(0.0, (2.5, 0.7, 1.0)) == (0, 0, 0)


def test_largest_component_keeps_only_the_biggest():
    mask = _blobs()
    result = largest_component(mask)
    assert result.dtype == np.uint8 and result.shape == mask.shape
    assert result.sum() == 180
    assert result[8, 8, 10] == 1 and result[2, 2, 2] == 0 and result[1, 12, 14] == 0


def test_largest_component_uses_26_connectivity():
    mask = np.zeros((5, 5, 5), np.uint8)
    mask[1, 1, 1] = mask[2, 2, 2] = mask[3, 3, 3] = 1  # corner-touching chain: one component
    mask[0, 4, 4] = mask[0, 4, 3] = 1                   # two voxels elsewhere
    assert largest_component(mask).sum() == 3


def test_largest_component_empty_in_empty_out():
    result = largest_component(np.zeros((4, 5, 6), bool))
    assert result.dtype == np.uint8 and result.shape == (4, 5, 6) and not result.any()


def test_largest_component_does_not_modify_input():
    mask = _blobs()
    before = mask.copy()
    largest_component(mask)
    np.testing.assert_array_equal(mask, before)


def test_label_lesions_orders_by_decreasing_size():
    labels, count = label_lesions(_blobs())
    assert count == 3 and labels.dtype == np.int32 and labels.shape == (12, 14, 16)
    assert (labels == 1).sum() == 180 and (labels == 2).sum() == 27 and (labels == 3).sum() == 1
    assert labels[8, 8, 10] == 1 and labels[2, 2, 2] == 2 and labels[1, 12, 14] == 3
    assert labels[0, 0, 0] == 0


def test_label_lesions_empty():
    labels, count = label_lesions(np.zeros((3, 4, 5), np.uint8))
    assert count == 0 and labels.shape == (3, 4, 5) and not labels.any()


def test_labeled_components_in_box_returns_box_coordinates():
    labels, count, box = labeled_components_in_box(_blobs(), margin=(1, 1, 1))
    assert count == 3
    assert box == (slice(0, 12), slice(0, 14), slice(0, 16))
    labels, count, box = labeled_components_in_box(_blobs()[5:, 5:, 5:])
    assert count == 1 and box == (slice(1, 6), slice(1, 7), slice(3, 9)) and labels.shape == (5, 6, 6)


def test_remove_small_components_threshold_is_inclusive():
    mask = _blobs()
    assert remove_small_components(mask, 27).sum() == 207
    assert remove_small_components(mask, 28).sum() == 180
    assert remove_small_components(mask, 1).sum() == 208
    assert remove_small_components(mask, 1000).sum() == 0
    assert remove_small_components(np.zeros((2, 2, 2), bool), 1).shape == (2, 2, 2)


def test_fill_holes_fills_a_3d_enclosed_cavity():
    mask = np.zeros((9, 9, 9), np.uint8)
    mask[1:8, 1:8, 1:8] = 1
    mask[3:6, 3:6, 3:6] = 0
    result = fill_holes(mask, axial_axis=0)
    assert result.dtype == np.uint8 and result.sum() == 7 ** 3


@pytest.mark.parametrize("axial_axis", [0, 1, 2])
def test_fill_holes_fills_a_channel_open_in_3d_but_closed_in_each_axial_slice(helpers, axial_axis):
    # A cube pierced by a tunnel along the axial axis: not a 3-D hole (it opens to the outside
    # at both ends), but each axial slice shows it as an enclosed hole.
    mask, _ = helpers.pierced_cube(9, slice(1, 8), slice(3, 6), along=axial_axis)
    result = fill_holes(mask, axial_axis)
    assert result.sum() == 7 ** 3


@pytest.mark.parametrize("axial_axis", [0, 1, 2])
def test_fill_holes_without_an_axis_fills_only_3d_cavities(helpers, axial_axis):
    # The same tunnel (the IVC through the liver) stays open when only 3-D holes are filled,
    # while an enclosed cavity beside it is filled.
    mask, tunnel = helpers.pierced_cube(11, slice(1, 10), slice(2, 4), along=axial_axis)
    mask[6:8, 6:8, 6:8] = 0
    result = fill_holes(mask)
    assert result.sum() == 9 ** 3 - 2 * 2 * 9
    assert not result[tunnel].any() and result[6:8, 6:8, 6:8].all()


@pytest.mark.parametrize("axial_axis", [0, 1, 2])
def test_fill_holes_leaves_a_notch_open_to_the_side(helpers, axial_axis):
    # A tunnel perpendicular to the axial axis opens to the outside within each axial slice.
    mask, _ = helpers.pierced_cube(9, slice(1, 8), slice(3, 6), along=(axial_axis + 1) % 3)
    result = fill_holes(mask, axial_axis)
    np.testing.assert_array_equal(result, mask)


def test_fill_holes_fills_on_the_first_and_last_slices_of_the_volume():
    mask = np.zeros((3, 7, 7), np.uint8)
    mask[:, 1:6, 1:6] = 1
    mask[0, 3, 3] = mask[2, 3, 3] = 0
    assert fill_holes(mask, axial_axis=0).sum() == 3 * 25


def test_fill_holes_rejects_a_bad_axis_and_handles_empty():
    with pytest.raises(ValueError):
        fill_holes(np.zeros((3, 3, 3), np.uint8), axial_axis=3)
    assert not fill_holes(np.zeros((3, 3, 3), np.uint8), axial_axis=0).any()


def test_rejects_non_3d_masks():
    with pytest.raises(ValueError):
        largest_component(np.zeros((4, 4), np.uint8))
