"""PNG overlays for readers: the slices shown must go through the lesions where prediction and
reference disagree, and the picture must follow the patient, not the array."""

import numpy as np
import SimpleITK as sitk

from LiverTumorSegLib.develop.render import PRED_COLORS, REF_COLORS, axial_overlay, overlay_slices


def _labels() -> np.ndarray:
    labels = np.zeros((60, 32, 32), dtype=np.uint8)
    labels[5:55, 4:28, 4:28] = 1  # the liver over 50 slices
    return labels


def test_slices_go_through_a_missed_and_a_false_lesion():
    ref, pred = _labels(), _labels()
    ref[40:43, 10:16, 10:16] = 2  # a lesion the prediction missed, 3 slices thick
    pred[12:14, 20:24, 20:24] = 2  # a false lesion
    picks = overlay_slices(pred, ref, 4)
    assert len(picks) == 4 and list(picks) == sorted(set(picks))
    assert any(40 <= k < 43 for k in picks) and any(12 <= k < 14 for k in picks)


def test_without_tumours_the_slices_spread_over_the_liver():
    labels = _labels()
    picks = overlay_slices(labels, labels, 4)
    np.testing.assert_array_equal(picks, np.linspace(5, 54, 6)[1:-1].round().astype(int))


def test_the_overlay_shows_the_lesion_in_radiological_convention():
    """A lesion on the patient's right (LPS x smallest) appears on the image's left, whatever
    the array's axis order; its slice is among the tiles."""
    ref = _labels()
    ref[30, 8:12, 6:10] = 2  # x index 6-10 of 32: patient right in an LPS array
    ct = sitk.GetImageFromArray(np.full(ref.shape, 50, dtype=np.int16))
    ref_image = sitk.GetImageFromArray(ref)
    pred_image = sitk.GetImageFromArray(_labels())
    for image in (ct, ref_image, pred_image):
        image.SetSpacing((1.0, 1.0, 2.0))
    flipped = [sitk.Flip(image, [True, False, False]) for image in (ct, ref_image, pred_image)]
    for ct_i, ref_i, pred_i in ((ct, ref_image, pred_image), flipped):
        rgb = axial_overlay(ct_i, pred_i, ref_i, n_slices=4, scale=1)
        tiles = np.split(rgb, 4, axis=1)
        magenta = [np.all(tile == REF_COLORS[2], axis=-1) for tile in tiles]
        with_lesion = [m for m in magenta if m.any()]
        assert len(with_lesion) == 1
        assert np.flatnonzero(with_lesion[0].any(axis=0)).max() < 16  # image left half
        assert any(np.all(tile == PRED_COLORS[1], axis=-1).any() for tile in tiles)


def test_without_tumours_a_slice_goes_through_the_liver_spill():
    """A liver-only comparison (the liver validation) shows where the predicted liver spills."""
    ref, pred = _labels(), _labels()
    pred[47, 28:32, 4:28] = 1  # a neighbour taken in on one slice, far from the spread slices
    picks = overlay_slices(pred, ref, 4)
    assert 47 in picks and len(picks) == 4
