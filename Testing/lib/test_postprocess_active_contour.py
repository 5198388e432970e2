"""Tests of LiverTumorSegLib.postprocess.active_contour on small synthetic CTs."""

import numpy as np
import pytest

from LiverTumorSegLib.errors import CancelledError
from LiverTumorSegLib.postprocess.active_contour import refine_lesions, thick_slice_axis
from LiverTumorSegLib.progress import Progress

SHAPE = (32, 40, 40)
LIVER_HU, TUMOR_HU = 110.0, 40.0


def _ball(center, radius, shape=SHAPE, spacing=(1.0, 1.0, 1.0)):
    grid = np.indices(shape, dtype=np.float32)
    distance2 = sum(((g - c) * s) ** 2 for g, c, s in zip(grid, center, spacing))
    return distance2 <= radius ** 2


def _scene(tumors, seed=0, shape=SHAPE):
    """A liver filling the volume but a 3-voxel rim (fat, -100 HU), with dark tumors."""
    rng = np.random.default_rng(seed)
    liver = np.zeros(shape, bool)
    liver[3:-3, 3:-3, 3:-3] = True
    ct = np.full(shape, -100.0, np.float32)
    ct[liver] = LIVER_HU
    for tumor in tumors:
        ct[tumor & liver] = TUMOR_HU
    ct += rng.normal(0, 8, shape).astype(np.float32)
    return ct.astype(np.int16), liver


def _dice(a, b):
    return 2 * np.count_nonzero(a & b) / (np.count_nonzero(a) + np.count_nonzero(b))


def test_refines_an_undersegmented_lesion_towards_its_edge():
    truth = _ball((16, 20, 20), 6)
    ct, liver = _scene([truth])
    start = _ball((16, 20, 20), 5)
    refined = refine_lesions(ct, start, liver, (1.0, 1.0, 1.0), iterations=10)
    assert refined.dtype == np.uint8 and refined.shape == SHAPE
    assert _dice(refined.astype(bool), truth) > _dice(start, truth) + 0.05
    assert _dice(refined.astype(bool), truth) > 0.9


def test_refines_an_oversegmented_lesion_towards_its_edge():
    truth = _ball((16, 20, 20), 6)
    ct, liver = _scene([truth])
    start = _ball((16, 20, 20), 7)
    refined = refine_lesions(ct, start, liver, (1.0, 1.0, 1.0), iterations=10).astype(bool)
    assert _dice(refined, truth) > _dice(start, truth) + 0.05


def test_leak_guard_keeps_the_original_when_the_contour_grows_too_much():
    dark_region = _ball((16, 20, 20), 9)
    ct, liver = _scene([dark_region])
    start = _ball((16, 20, 20), 2)
    refined = refine_lesions(ct, start, liver, (1.0, 1.0, 1.0), iterations=15)
    np.testing.assert_array_equal(refined, start.astype(np.uint8))


def test_leak_guard_keeps_the_original_when_the_contour_shrinks_too_much():
    dark_spot = _ball((16, 20, 20), 2)
    ct, liver = _scene([dark_spot])
    start = _ball((16, 20, 20), 7)
    refined = refine_lesions(ct, start, liver, (1.0, 1.0, 1.0), iterations=15)
    np.testing.assert_array_equal(refined, start.astype(np.uint8))


def test_result_stays_in_the_liver_next_to_dark_fat():
    # A tumor cut by the liver's edge, with fat (darker than the tumor) outside the liver: the
    # contour must refine the tumor's edge inside the liver and not spill into the fat.
    truth = _ball((16, 20, 6), 6)
    ct, liver = _scene([truth])
    truth_in_liver = truth & liver
    start = _ball((16, 20, 6), 5) & liver
    refined = refine_lesions(ct, start, liver, (1.0, 1.0, 1.0), iterations=10).astype(bool)
    assert not np.any(refined & ~liver)
    assert _dice(refined, truth_in_liver) > _dice(start, truth_in_liver) + 0.1


def test_each_lesion_is_refined_and_the_union_returned():
    truth_a, truth_b = _ball((10, 12, 12), 5), _ball((22, 28, 28), 5)
    ct, liver = _scene([truth_a, truth_b], seed=1)
    start = _ball((10, 12, 12), 4) | _ball((22, 28, 28), 4)
    refined = refine_lesions(ct, start, liver, (1.0, 1.0, 1.0), iterations=10).astype(bool)
    for truth, centre in ((truth_a, (10, 12, 12)), (truth_b, (22, 28, 28))):
        near = _ball(centre, 8)
        assert _dice(refined & near, truth) > _dice(start & near, truth)


def test_thick_slices_refine_slice_by_slice_without_growing_across_slices():
    spacing = (5.0, 0.8, 0.8)
    shape = (9, 48, 48)
    truth = _ball((4, 24, 24), 6.0, shape, spacing) | _ball((3, 24, 24), 6.0, shape, spacing)
    ct, liver = _scene([truth], shape=shape)
    start = _ball((4, 24, 24), 4.5, shape, spacing) | _ball((3, 24, 24), 4.5, shape, spacing)
    refined = refine_lesions(ct, start, liver, spacing, iterations=10).astype(bool)
    assert _dice(refined, truth) > _dice(start, truth) + 0.05
    assert not refined[[0, 1, 2, 5, 6, 7, 8]].any()


def test_thick_slice_axis():
    assert thick_slice_axis((5.0, 0.8, 0.8)) == 0
    assert thick_slice_axis((0.8, 0.7, 3.0)) == 2
    assert thick_slice_axis((1.5, 0.8, 0.8)) is None
    assert thick_slice_axis((1.0, 1.0, 1.0)) is None


def test_progress_is_reported_per_lesion_and_cancel_stops():
    ct, liver = _scene([_ball((10, 12, 12), 4), _ball((22, 28, 28), 4)])
    start = _ball((10, 12, 12), 4) | _ball((22, 28, 28), 4)
    events = []
    refine_lesions(ct, start, liver, (1.0, 1.0, 1.0), iterations=2, progress=Progress(events.append))
    assert [e.stage for e in events] == ["postprocess"] * 3
    assert [e.fraction for e in events] == [0.0, 0.5, 1.0]
    assert "1 of 2" in events[0].message
    progress = Progress()
    progress.cancel()
    with pytest.raises(CancelledError):
        refine_lesions(ct, start, liver, (1.0, 1.0, 1.0), progress=progress)


def test_empty_tumor_zero_iterations_and_untouched_inputs():
    ct, liver = _scene([])
    empty = np.zeros(SHAPE, np.uint8)
    assert not refine_lesions(ct, empty, liver, (1.0, 1.0, 1.0)).any()
    start = _ball((16, 20, 20), 5).astype(np.uint8)
    copy = start.copy()
    np.testing.assert_array_equal(refine_lesions(ct, start, liver, (1.0, 1.0, 1.0), iterations=0), start)
    np.testing.assert_array_equal(start, copy)


def test_a_lesion_touching_the_volume_edge_with_no_margin_room():
    ct, liver = _scene([])
    liver[:] = True
    start = np.zeros(SHAPE, np.uint8)
    start[0, 0:2, 0:2] = 1  # one slice thick, at the corner: too thin for the contour
    np.testing.assert_array_equal(refine_lesions(ct, start, liver, (1.0, 1.0, 1.0), margin_mm=0.0), start)


def test_rejects_mismatched_grids_and_bad_spacing():
    with pytest.raises(ValueError, match="one grid"):
        refine_lesions(np.zeros((4, 4, 4)), np.zeros((4, 4, 5)), np.zeros((4, 4, 4)), (1, 1, 1))
    with pytest.raises(ValueError, match="spacing"):
        refine_lesions(np.zeros((4, 4, 4)), np.zeros((4, 4, 4)), np.zeros((4, 4, 4)), (1, 0, 1))
