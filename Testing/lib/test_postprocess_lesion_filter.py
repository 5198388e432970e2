"""The lesion-candidate filter: a lesion stays when its most confident tenth is probable enough."""

from __future__ import annotations

import numpy as np
import pytest

from LiverTumorSegLib.postprocess.lesion_filter import drop_unconfident_lesions, lesion_confidences


def two_lesions():
    """A confident lesion (core 0.95, rim 0.55) and a faint one (0.55 throughout)."""
    tumor = np.zeros((20, 20, 40), np.uint8)
    probability = np.zeros(tumor.shape, np.float32)
    tumor[5:15, 5:15, 3:13] = 1
    probability[5:15, 5:15, 3:13] = 0.55
    probability[7:12, 7:12, 5:11] = 0.95  # 150 of 1000 voxels: its confident core
    probability[9:11, 9:11, 7:9] = 0.99
    tumor[5:10, 5:10, 25:30] = 1
    probability[5:10, 5:10, 25:30] = 0.55
    return tumor, probability


def test_a_lesion_with_a_confident_core_is_kept_and_a_faint_one_dropped():
    tumor, probability = two_lesions()
    before = tumor.copy()
    confidences = lesion_confidences(tumor, probability)
    assert len(confidences) == 2
    assert confidences[0] == pytest.approx(0.95) and confidences[1] == pytest.approx(0.55)
    filtered = drop_unconfident_lesions(tumor, probability, 0.7)
    np.testing.assert_array_equal(tumor, before)  # input untouched
    assert filtered.dtype == np.uint8
    assert filtered[5:15, 5:15, 3:13].all() and not filtered[:, :, 20:].any()
    # the whole confident lesion stays, its faint rim included (its mean is 0.61)
    assert filtered.sum() == 1000


def test_zero_keeps_everything_and_a_cutoff_above_every_lesion_drops_everything():
    tumor, probability = two_lesions()
    np.testing.assert_array_equal(drop_unconfident_lesions(tumor, probability, 0.0), tumor)
    np.testing.assert_array_equal(drop_unconfident_lesions(tumor, probability, 0.55), tumor)
    assert not drop_unconfident_lesions(tumor, probability, 0.999).any()
    empty = np.zeros_like(tumor)
    assert not drop_unconfident_lesions(empty, probability, 0.5).any()
    assert lesion_confidences(empty, probability) == []


def test_lesions_touching_at_a_corner_are_one_lesion():
    tumor = np.zeros((6, 6, 6), np.uint8)
    probability = np.zeros(tumor.shape, np.float32)
    tumor[1, 1, 1] = tumor[2, 2, 2] = 1
    probability[1, 1, 1], probability[2, 2, 2] = 0.9, 0.5
    assert len(lesion_confidences(tumor, probability)) == 1


def test_a_probability_of_another_shape_is_refused():
    tumor, probability = two_lesions()
    with pytest.raises(ValueError, match="differ in shape"):
        drop_unconfident_lesions(tumor, probability[:, :, :10], 0.5)
