"""Tests of LiverTumorSegLib.postprocess.cleanup."""

import numpy as np
import pytest

from LiverTumorSegLib import BACKGROUND_LABEL, LIVER_LABEL, TUMOR_LABEL
from LiverTumorSegLib.postprocess.cleanup import close_lesions, compose_labelmap, remove_small_lesions, tumor_inside_liver


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


def test_a_lesion_mostly_inside_the_liver_keeps_its_bulge_up_to_the_distance():
    """A surface lesion the liver mask cut keeps what bulges out, up to bulge_mm from the liver
    by physical distance (x spacing 2 mm); a lesion mostly outside keeps only its inside part."""
    liver = np.zeros((10, 12, 20), bool)
    liver[:, :, :10] = True
    tumor = np.zeros(liver.shape, np.uint8)
    tumor[2:5, 2:5, 4:14] = 1  # 6 of 10 columns inside: bulges 4 voxels (8 mm) out
    tumor[6:9, 7:10, 8:18] = 1  # 2 of 10 inside: a false lesion in a neighbour
    spacing = (1.0, 1.0, 2.0)
    kept = tumor_inside_liver(tumor, liver, spacing, bulge_mm=5.0)
    assert kept.dtype == np.uint8
    expected = (tumor.astype(bool) & liver).astype(np.uint8)
    expected[2:5, 2:5, 10:12] = 1  # 2 and 4 mm from the liver; 6 and 8 mm are cut
    np.testing.assert_array_equal(kept, expected)
    np.testing.assert_array_equal(tumor_inside_liver(tumor, liver, spacing, bulge_mm=0.0), tumor & liver)
    everything = tumor_inside_liver(tumor, liver, spacing, bulge_mm=20.0)
    np.testing.assert_array_equal(everything[2:5, 2:5, 4:14], 1)
    np.testing.assert_array_equal(everything[6:9, 7:10, 10:], 0)
    stricter = tumor_inside_liver(tumor, liver, spacing, bulge_mm=20.0, min_inside_fraction=0.65)
    np.testing.assert_array_equal(stricter, tumor & liver)
    looser = tumor_inside_liver(tumor, liver, spacing, bulge_mm=20.0, min_inside_fraction=0.15)
    np.testing.assert_array_equal(looser, tumor)
    with pytest.raises(ValueError, match="spacing"):
        tumor_inside_liver(tumor, liver, bulge_mm=5.0)


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


def fragmented_lesion(spacing=(2.0, 1.0, 1.0)):
    """A 30 mm ball lesion whose probability is 0.3 everywhere inside, with four confident pieces
    (the darker patches a model draws); beside it, a separate small confident lesion 5 mm away
    across parenchyma the model sees as such (probability 0.02)."""
    shape = (30, 80, 80)
    grids = np.ogrid[tuple(slice(0, s) for s in shape)]
    def ball(centre_mm, radius_mm):
        return sum(((g * s) - c) ** 2 for g, s, c in zip(grids, spacing, centre_mm)) <= radius_mm ** 2
    lesion = ball((30, 35, 35), 15)
    probability = np.full(shape, 0.02, np.float32)
    probability[lesion] = 0.3
    for centre in [(30, 26, 28), (30, 44, 29), (21, 35, 42), (39, 33, 42)]:
        probability[ball(centre, 6) & lesion] = 0.9
    neighbour = ball((30, 35, 60), 5)  # its edge is 5 mm from the lesion's
    probability[neighbour] = 0.9
    return probability, lesion, neighbour, spacing


def test_closing_completes_a_lesion_drawn_in_pieces_but_keeps_separate_lesions_apart():
    from LiverTumorSegLib.postprocess.components import label_lesions

    probability, lesion, neighbour, spacing = fragmented_lesion()
    drawn = (probability >= 0.5).astype(np.uint8)
    assert label_lesions(drawn)[1] == 5 and drawn[lesion].mean() < 0.3  # four pieces and the neighbour
    closed = close_lesions(drawn, probability, spacing, radius_mm=10.0, floor=0.1)
    assert closed.dtype == np.uint8 and np.all(closed[drawn > 0] == 1)  # nothing drawn is removed
    assert closed[lesion].sum() > 1.5 * drawn[lesion].sum()  # the gaps between the pieces filled ...
    assert label_lesions(closed)[1] == 2  # ... into one lesion, and the neighbour still one of its own
    assert not closed[(probability < 0.1)].any()  # nothing the models see as parenchyma is added
    without_floor = close_lesions(drawn, probability, spacing, radius_mm=10.0, floor=0.0)
    assert label_lesions(without_floor)[1] == 1  # what the floor prevents: the two lesions merged
    np.testing.assert_array_equal(close_lesions(drawn, probability, spacing, 0.0, 0.1), drawn)
    empty = np.zeros_like(drawn)
    assert not close_lesions(empty, probability, spacing, 10.0, 0.1).any()


def test_closing_measures_its_radius_in_millimetres():
    probability, lesion, _, _ = fragmented_lesion(spacing=(1.0, 1.0, 1.0))
    drawn = (probability >= 0.5).astype(np.uint8)
    small = close_lesions(drawn, probability, (1.0, 1.0, 1.0), radius_mm=2.0, floor=0.1)
    large = close_lesions(drawn, probability, (1.0, 1.0, 1.0), radius_mm=10.0, floor=0.1)
    assert small[lesion].sum() < large[lesion].sum()
    with pytest.raises(ValueError, match="same shape"):
        close_lesions(drawn, probability[:-1], (1.0, 1.0, 1.0), 10.0, 0.1)
    with pytest.raises(ValueError, match="radius_mm"):
        close_lesions(drawn, probability, (1.0, 1.0, 1.0), -1.0, 0.1)


def test_the_closing_in_slabs_equals_the_closing_in_one_go():
    from LiverTumorSegLib.postprocess.cleanup import _closing

    rng = np.random.default_rng(3)
    mask = np.zeros((40, 30, 34), bool)
    for _ in range(12):
        k, j, i = rng.integers(0, 40), rng.integers(0, 30), rng.integers(0, 34)
        mask[k:k + 3, j:j + 4, i:i + 2] = True  # pieces, some at the array's edges
    spacing = (2.5, 0.8, 0.8)
    whole = _closing(mask, spacing, 6.0, max_voxels=10 ** 9)
    assert whole.sum() > mask.sum() and np.all(whole[mask])
    for max_voxels in (1, 5_000, 20_000):  # the smallest slabs (twice the halo), a few, two
        np.testing.assert_array_equal(_closing(mask, spacing, 6.0, max_voxels=max_voxels), whole)


def test_lesions_far_apart_are_closed_in_boxes_of_their_own_with_the_same_result():
    from LiverTumorSegLib.postprocess.cleanup import _boxes_of_groups, _closing
    from LiverTumorSegLib.postprocess.components import fill_holes

    from LiverTumorSegLib.postprocess.components import margin_in_voxels

    rng = np.random.default_rng(8)
    mask = np.zeros((36, 90, 90), bool)
    for _ in range(8):
        k, j, i = rng.integers(0, 34), rng.integers(0, 86), rng.integers(0, 86)
        mask[k:k + 2, j:j + 4, i:i + 3] = True  # scattered pieces: some groups, some alone
    probability = rng.random(mask.shape).astype(np.float32)
    spacing = (2.0, 0.8, 0.8)
    assert 1 < len(_boxes_of_groups(mask, margin_in_voxels(4.0, spacing))) < 8
    reference = _closing(mask, spacing, 4.0, max_voxels=10 ** 9)
    reference = mask | ((fill_holes(reference | mask) > 0) & (probability >= 0.3))
    np.testing.assert_array_equal(close_lesions(mask, probability, spacing, 4.0, 0.3) > 0, reference)

    apart = np.zeros((10, 40, 40), bool)
    apart[4, 2, 2] = apart[4, 37, 37] = True
    assert len(_boxes_of_groups(apart, (1, 3, 3))) == 2
    assert len(_boxes_of_groups(apart, (1, 20, 20))) == 1  # grown boxes that overlap merge
    chain = np.zeros((4, 4, 40), bool)
    chain[1, 1, [2, 12, 22, 32]] = True  # each overlaps the next only: one box for all
    assert _boxes_of_groups(chain, (0, 0, 5)) == [(slice(1, 2), slice(1, 2), slice(0, 38))]
