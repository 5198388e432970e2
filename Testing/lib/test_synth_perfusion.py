"""synth.perfusion: a broad tumour-free darkening of part of the liver (a hard negative)."""

from __future__ import annotations

import numpy as np
import pytest
import SimpleITK as sitk

from LiverTumorSegLib.errors import LiverTumorSegError
from LiverTumorSegLib.develop.synth.perfusion import (DARKENING_HU, FRACTION, add_perfusion_variation,
                                                      darkened_region)


def _uniform_liver(helpers):
    """The test phantom with its lesion filled in: a uniform liver (160 HU) in a body (40 HU)."""
    ct = helpers.phantom_ct(size=(60, 50, 36), spacing=(2.5, 2.5, 3.0), lesion_hu=160)
    liver = sitk.GetImageFromArray((helpers.analytic_labels_like(ct) > 0).astype(np.uint8))
    liver.CopyInformation(ct)
    return ct, liver


@pytest.mark.parametrize("seed", [0, 1, 2, 3, 4, 5])
def test_part_of_the_liver_gets_darker_and_nothing_else_changes(helpers, seed):
    ct, liver = _uniform_liver(helpers)
    before = sitk.GetArrayFromImage(ct).copy()
    out, info = add_perfusion_variation(ct, liver, seed)
    after = sitk.GetArrayFromImage(out).astype(np.float32)
    mask = sitk.GetArrayViewFromImage(liver) > 0
    np.testing.assert_array_equal(sitk.GetArrayFromImage(ct), before)  # the input is not modified
    assert out.GetSpacing() == ct.GetSpacing() and out.GetOrigin() == ct.GetOrigin()
    assert sitk.GetArrayViewFromImage(out).dtype == before.dtype
    np.testing.assert_array_equal(after[~mask], before[~mask])  # only the liver changes ...
    darker = before[mask] - after[mask]
    assert darker.min() >= 0  # ... and only gets darker
    assert info["pattern"] in ("dependent", "wedge")
    assert DARKENING_HU[0] <= info["darkening_hu"] <= DARKENING_HU[1]
    # the region: darker by at least half its darkening over roughly the drawn fraction of the liver
    region = np.mean(darker >= 0.5 * info["darkening_hu"])
    assert 0.5 * FRACTION[0] <= region <= 1.6 * FRACTION[1], (region, info)
    assert darker.max() <= 1.7 * info["darkening_hu"]  # texture modulates it, up to 1.6x


def test_the_darkened_region_is_where_the_liver_got_darker(helpers):
    ct, liver = _uniform_liver(helpers)
    out, info = add_perfusion_variation(ct, liver, 3)
    region = darkened_region(ct, out)
    drop = sitk.GetArrayFromImage(ct).astype(np.float32) - sitk.GetArrayFromImage(out)
    mask = sitk.GetArrayViewFromImage(region) > 0
    assert region.GetOrigin() == ct.GetOrigin() and region.GetSpacing() == ct.GetSpacing()
    np.testing.assert_array_equal(mask, drop >= 5.0)
    assert mask.any() and not (mask & (sitk.GetArrayViewFromImage(liver) == 0)).any()
    assert not sitk.GetArrayFromImage(darkened_region(ct, ct)).any()


def test_a_dependent_region_lies_posterior(helpers):
    ct, liver = _uniform_liver(helpers)
    mask = sitk.GetArrayViewFromImage(liver) > 0
    found = 0
    for seed in range(30):
        out, info = add_perfusion_variation(ct, liver, seed)
        if info["pattern"] != "dependent":
            continue
        found += 1
        darker = sitk.GetArrayFromImage(ct).astype(np.float32) - sitk.GetArrayFromImage(out)
        j = np.nonzero(mask)[1]  # LPS grid: array axis 1 runs along y, anterior to posterior
        weights = darker[mask]
        assert np.average(j, weights=weights) > j.mean() + 2  # the darkened part's centre is posterior
    assert found >= 5


def test_same_seed_same_variation_other_seed_other(helpers):
    ct, liver = _uniform_liver(helpers)
    a, b, c = (sitk.GetArrayFromImage(add_perfusion_variation(ct, liver, s)[0]) for s in (7, 7, 8))
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, c)


def test_no_liver_changes_nothing_and_another_grid_is_refused(helpers):
    ct, liver = _uniform_liver(helpers)
    empty = sitk.Image(liver.GetSize(), sitk.sitkUInt8)
    empty.CopyInformation(liver)
    out, info = add_perfusion_variation(ct, empty, 0)
    np.testing.assert_array_equal(sitk.GetArrayFromImage(out), sitk.GetArrayFromImage(ct))
    assert info == {"pattern": "none"}
    with pytest.raises(LiverTumorSegError, match="must share one grid"):
        add_perfusion_variation(ct, sitk.Image([4, 4, 4], sitk.sitkUInt8), 0)
