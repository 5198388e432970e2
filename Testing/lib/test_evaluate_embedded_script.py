"""The held-out evaluation's per-case figures: compared by physical position, the liver leak
split into a wide boundary and a spill into a neighbour (no models run here)."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest
import SimpleITK as sitk

from LiverTumorSegLib.develop.scripts import evaluate_embedded
from LiverTumorSegLib.measure import Measurements


def _image(array: np.ndarray, spacing=(2.0, 2.0, 2.0), origin=(0.0, 0.0, 0.0)) -> sitk.Image:
    image = sitk.GetImageFromArray(array)
    image.SetSpacing(spacing)
    image.SetOrigin(origin)
    return image


class _FixedPipeline:
    """Answers every CT with one labelmap, as Pipeline.run would."""

    def __init__(self, labelmap: sitk.Image):
        self.labelmap = labelmap

    def run(self, ct):
        return SimpleNamespace(labelmap=self.labelmap, measurements=Measurements(0.0, 0.0, None, []))


def test_a_case_row_separates_a_spill_into_a_neighbour_from_a_wide_boundary():
    reference = np.zeros((20, 20, 40), np.uint8)
    reference[5:15, 5:15, 5:15] = 1
    predicted = np.zeros_like(reference)
    predicted[4:16, 4:16, 4:16] = 1  # one voxel (2 mm) too wide
    predicted[8:12, 8:12, 16:30] = 1  # and a tongue 4-30 mm out: 14 x 16 voxels
    ct = _image(np.zeros(reference.shape, np.int16))
    row = evaluate_embedded.evaluate_case(_FixedPipeline(_image(predicted)), "case", ct, _image(reference), [],
                                          "held-out phantom", None, "classic", {"stomach_touches_liver": True})
    assert row["liver_leak_ml"] == pytest.approx((12 ** 3 - 10 ** 3 + 14 * 16) * 0.008, abs=0.06)
    # the tongue, and the wide box's 8 corners (3.46 mm out); rows round to 0.1 mL
    assert row["liver_leak_beyond_3mm_ml"] == pytest.approx((14 * 16 + 8) * 0.008, abs=0.06)
    summary = evaluate_embedded.summarize([row])
    assert summary["liver_leak_beyond_3mm_ml_phantoms_stomach_against_liver"] == {"case": row["liver_leak_beyond_3mm_ml"]}


def test_tumour_in_a_neighbour_is_told_apart_from_a_surface_lesion_drawn_a_voxel_wide():
    reference = np.zeros((20, 20, 40), np.uint8)
    reference[5:15, 5:15, 5:15] = 1
    reference[8:12, 12:15, 8:12] = 2  # a lesion at the liver's surface
    predicted = reference.copy()
    predicted[8:12, 15, 8:12] = 2  # drawn one voxel (2 mm) beyond the surface
    predicted[8:12, 8:12, 20:25] = 2  # and tumour 10-20 mm outside the liver: 4 x 4 x 5 voxels
    ct = _image(np.zeros(reference.shape, np.int16))
    row = evaluate_embedded.evaluate_case(_FixedPipeline(_image(predicted)), "case", ct, _image(reference), [],
                                          "held-out phantom", None, "surface")
    assert row["tumor_outside_liver_ml"] == pytest.approx((16 + 80) * 0.008, abs=0.006)
    assert row["tumor_outside_liver_beyond_3mm_ml"] == pytest.approx(80 * 0.008, abs=0.006)
    summary = evaluate_embedded.summarize([row])
    assert summary["by_tumor_kind"]["held-out phantom / surface"]["tumor_outside_liver_beyond_3mm_ml"] == \
        row["tumor_outside_liver_beyond_3mm_ml"]


def test_the_reference_is_compared_where_it_lies_not_by_array_index():
    reference = np.zeros((20, 20, 40), np.uint8)
    reference[5:15, 5:15, 5:15] = 1
    ct = _image(np.zeros(reference.shape, np.int16))
    # the same mask, stored on a grid shifted by 10 voxels (20 mm) along x: it lies 20 mm away
    shifted_reference = _image(reference, origin=(20.0, 0.0, 0.0))
    row = evaluate_embedded.evaluate_case(_FixedPipeline(_image(reference)), "case", ct, shifted_reference, [],
                                          "held-out phantom")
    assert row["liver_dice"] == 0.0
    assert row["liver_leak_beyond_3mm_ml"] == pytest.approx(1000 * 0.008 - 100 * 0.008, abs=0.01)
