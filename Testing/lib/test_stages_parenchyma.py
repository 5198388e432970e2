"""Tests of LiverTumorSegLib.stages.parenchyma: the scan's own parenchyma HU, the hypodensity
map, its candidates and their combination with the tumor model's probability, on small
synthetic livers (100 HU parenchyma with CT-like noise, bright vessels, fat around)."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest
from scipy import ndimage

from LiverTumorSegLib.stages.parenchyma import (ParenchymaCandidates, ParenchymaPrior, _parenchyma_steps,
                                                apply_parenchyma_prior, combine_with_model, hypodense_candidates,
                                                hypodensity_map, parenchyma_candidates, parenchyma_statistics)

SPACING = (1.5, 1.5, 1.5)
SHAPE = (56, 64, 64)
PRIOR = ParenchymaPrior()
UNIT = (1.0, 1.0, 1.0)  # the spacing of the small arrays the combination tests build by hand


def _ball(center, radius_mm, shape=SHAPE, spacing=SPACING) -> np.ndarray:
    grids = np.meshgrid(*[(np.arange(n) - c) * s for n, c, s in zip(shape, center, spacing)], indexing="ij")
    return sum(g ** 2 for g in grids) <= radius_mm ** 2


def _tube(axis_point_kj, radius_mm, shape=SHAPE, spacing=SPACING) -> np.ndarray:
    """A vessel along the i axis through (k, j)."""
    kk, jj = np.meshgrid((np.arange(shape[0]) - axis_point_kj[0]) * spacing[0],
                         (np.arange(shape[1]) - axis_point_kj[1]) * spacing[1], indexing="ij")
    return np.broadcast_to(((kk ** 2 + jj ** 2) <= radius_mm ** 2)[:, :, None], shape)


def make_liver(seed: int = 0, lesion=None, lesion_delta: float = -20.0, vessels: bool = True,
               noise_hu: float = 15.0):
    """(hu float32, liver mask uint8, lesion mask): a 100 HU block in -100 HU fat, partial volume
    at its edge (the image is blurred by one voxel before the noise), bright vessels, and a
    ``lesion`` (boolean mask) ``lesion_delta`` HU from the parenchyma."""
    rng = np.random.default_rng(seed)
    liver = np.zeros(SHAPE, bool)
    liver[6:50, 6:58, 6:58] = True
    clean = np.where(liver, 100.0, -100.0).astype(np.float32)
    if vessels:
        for kj in ((20, 20), (34, 44)):
            clean[_tube(kj, 2.5) & liver] = 170.0
    if lesion is not None:
        clean[lesion] = 100.0 + lesion_delta
    clean = ndimage.gaussian_filter(clean, 0.8)  # partial volume at every edge
    hu = (clean + rng.normal(0.0, noise_hu, SHAPE)).astype(np.float32)
    mask = ndimage.binary_dilation(liver, iterations=1)  # a liver mask that takes the partial-volume rim
    return hu, mask.astype(np.uint8), lesion


def candidates_of(hu, mask, prior=PRIOR):
    stats = parenchyma_statistics(hu, mask, SPACING, prior)
    hypo = hypodensity_map(hu, mask, SPACING, stats, prior)
    labels, cands = hypodense_candidates(hypo, SPACING, hu, stats, prior, liver_mask=mask)
    return stats, hypo, labels, cands


def test_statistics_find_the_parenchyma_despite_vessels_and_a_lesion():
    hu, mask, _ = make_liver(lesion=_ball((28, 32, 32), 12.0))
    stats = parenchyma_statistics(hu, mask, SPACING)
    assert abs(stats.median_hu - 100.0) < 3.0
    assert 0.5 < stats.spread_hu < 6.0  # 15 HU voxel noise, much less after 2.5 mm smoothing
    assert 110.0 < stats.vessel_hu < 160.0  # vessels (170 HU) lie above it, the parenchyma below


def test_statistics_follow_the_scan_and_refuse_an_empty_liver():
    hu, mask, _ = make_liver()
    assert abs(parenchyma_statistics(hu + 40.0, mask, SPACING).median_hu - 140.0) < 3.0
    with pytest.raises(ValueError, match="empty"):
        parenchyma_statistics(hu, np.zeros_like(mask), SPACING)


def test_a_20_hu_darker_sphere_is_found_and_vessels_are_not():
    lesion = _ball((28, 32, 32), 9.0)  # 18 mm
    hu, mask, _ = make_liver(lesion=lesion)
    _, hypo, labels, cands = candidates_of(hu, mask)
    kept = [c for c in cands if c.kept]
    assert len(kept) == 1
    found = labels > 0
    overlap = 2.0 * (found & lesion).sum() / (found.sum() + lesion.sum())
    assert overlap > 0.8
    assert 12.0 < kept[0].mean_delta_hu < 28.0
    assert hypo[28, 32, 32] > 0.9
    vessels = (_tube((20, 20), 2.5) | _tube((34, 44), 2.5)) & (mask > 0)
    assert hypo[vessels].max() < 0.1
    assert not (found & vessels).any()


def test_pure_noise_gives_nothing():
    hu, mask, _ = make_liver(seed=3, vessels=False)
    _, hypo, labels, cands = candidates_of(hu, mask)
    assert not any(c.kept for c in cands)
    assert not labels.any()
    assert hypo.max() < 0.5


def test_surface_partial_volume_and_fissure_fat_give_nothing():
    hu, mask, _ = make_liver(seed=4)
    # a mask that overshoots the liver by two voxels into the fat, and a fat-filled fissure in it
    mask = ndimage.binary_dilation(mask, iterations=1)
    hu[20:40, 30:32, 10:40] = -80.0
    _, hypo, labels, cands = candidates_of(hu, mask.astype(np.uint8))
    assert not labels.any(), [c for c in cands if c.kept]
    # without the shell rule the partial-volume rim would be taken for a lesion
    _, _, labels_no_shell, _ = candidates_of(hu, mask.astype(np.uint8), replace(PRIOR, shell_mm=0.0))
    assert labels_no_shell.any()


def test_a_lesion_at_the_surface_is_found_including_its_shell_part():
    lesion = _ball((28, 32, 8), 12.0) & _ball((28, 32, 8), 100.0)  # centred 3 mm under the surface
    lesion &= np.pad(np.ones((44, 52, 52), bool), 6)  # the inside part (a bulge would be tumour too)
    hu, mask, _ = make_liver(lesion=lesion, lesion_delta=-25.0)
    _, _, labels, _ = candidates_of(hu, mask)
    found = labels > 0
    assert 2.0 * (found & lesion).sum() / (found.sum() + lesion.sum()) > 0.7
    shell = lesion[:, :, 6:9]  # its first 3 mm under the surface
    assert found[:, :, 6:9][shell].mean() > 0.5


def test_a_dark_lesion_is_drawn_at_its_own_half_contrast_not_as_wide_as_the_smoothing_blurs_it():
    lesion = _ball((28, 32, 32), 9.0)
    hu, mask, _ = make_liver(lesion=lesion, lesion_delta=-80.0)
    _, _, labels, _ = candidates_of(hu, mask)
    _, _, blurred, _ = candidates_of(hu, mask, replace(PRIOR, half_contrast=0.0))
    assert 0.8 < (labels > 0).sum() / lesion.sum() < 1.2
    assert (blurred > 0).sum() > 1.5 * lesion.sum()  # the fixed threshold: half again too large


def test_small_specks_are_not_candidates():
    lesion = _ball((28, 32, 32), 3.0)  # 6 mm: below the 10 mm minimum
    hu, mask, _ = make_liver(lesion=lesion, lesion_delta=-60.0, noise_hu=5.0)
    _, hypo, labels, cands = candidates_of(hu, mask)
    assert hypo[28, 32, 32] > 0.5  # dark enough ...
    assert not labels.any() and not any(c.kept for c in cands)  # ... but too small


def test_combine_raises_supported_candidates_only():
    hypo = np.zeros((10, 10, 10), np.float32)
    hypo[1:4, 1:4, 1:4] = 0.9
    hypo[6:9, 6:9, 6:9] = 0.8
    labels = np.zeros(hypo.shape, np.int32)
    labels[1:4, 1:4, 1:4] = 1
    labels[6:9, 6:9, 6:9] = 2
    p = np.full(hypo.shape, 0.05, np.float32)
    p[2, 2, 2] = 0.3  # some model evidence in candidate 1 only
    out = combine_with_model(p, hypo, labels, replace(PRIOR, model_floor=0.2, min_support_fraction=0.0, weight=1.0),
                             spacing_kji=UNIT)
    assert np.allclose(out[1:4, 1:4, 1:4], 0.9)
    assert np.allclose(out[6:9, 6:9, 6:9], 0.05)  # no evidence: unchanged
    assert out[0, 0, 0] == pytest.approx(0.05)
    assert out.dtype == np.float32 and p[1, 1, 1] == pytest.approx(0.05)  # input untouched
    with pytest.raises(ValueError, match="grid"):
        combine_with_model(p, hypo[:5], labels, PRIOR)


def test_support_fraction_and_reach_limit_what_the_map_may_add():
    hypo = np.zeros((10, 10, 30), np.float32)
    hypo[2:8, 2:8, 2:28] = 0.9
    labels = (hypo > 0).astype(np.int32)  # one candidate of 936 voxels
    p = np.zeros(hypo.shape, np.float32)
    p[4:6, 4:6, 4:6] = 0.8  # the model is sure of 8 of its voxels (< 1 %)
    base = replace(PRIOR, model_floor=0.5, min_support_fraction=0.0)
    assert (combine_with_model(p, hypo, labels, base, spacing_kji=UNIT) >= 0.5).sum() == labels.sum()
    strict = combine_with_model(p, hypo, labels, replace(base, min_support_fraction=0.05), spacing_kji=UNIT)
    assert np.array_equal(strict, p)
    near = combine_with_model(p, hypo, labels, replace(base, reach_mm=3.0), spacing_kji=UNIT)
    raised = near >= 0.5
    assert raised[4:6, 4:6, 4:6].all() and raised[4, 4, 8] and not raised[4, 4, 10] and not raised[4, 4, 20]
    with pytest.raises(ValueError, match="reach_mm or reach_factor > 0 needs spacing"):
        combine_with_model(p, hypo, labels, replace(base, reach_mm=3.0, min_support_ml=0.0))


def test_a_large_candidate_is_supported_by_enough_millilitres_of_evidence_whatever_its_fraction():
    """8 mm3 of evidence in a 936 mm3 candidate (< 1 %): too little a fraction, yet with
    min_support_ml up to 0.008 mL it is enough; at 2 mm spacing the same voxels are 64 mm3."""
    hypo = np.zeros((10, 10, 30), np.float32)
    hypo[2:8, 2:8, 2:28] = 0.9
    labels = (hypo > 0).astype(np.int32)
    p = np.zeros(hypo.shape, np.float32)
    p[4:6, 4:6, 4:6] = 0.8
    strict = replace(PRIOR, model_floor=0.5, min_support_fraction=0.05)
    assert np.array_equal(combine_with_model(p, hypo, labels, strict, spacing_kji=UNIT), p)
    for ml, spacing, raised in ((0.007, (1.0, 1.0, 1.0), True), (0.01, (1.0, 1.0, 1.0), False),
                                (0.05, (2.0, 2.0, 2.0), True), (0.07, (2.0, 2.0, 2.0), False)):
        out = combine_with_model(p, hypo, labels, replace(strict, min_support_ml=ml), spacing_kji=spacing)
        assert bool((out >= 0.5).sum() == labels.sum()) == raised, (ml, spacing)
    with pytest.raises(ValueError, match="spacing_kji"):
        combine_with_model(p, hypo, labels, replace(strict, min_support_ml=1.0))


def test_reach_factor_lets_each_piece_of_evidence_grow_by_about_its_own_size():
    """A large lesion the model saw in its middle grows to its whole extent; a small one found
    whole, in the same darker region, grows only by about its own radius, not into the region."""
    hypo = np.zeros((12, 12, 60), np.float32)
    hypo[1:11, 1:11, 1:59] = 0.9  # one long candidate: a broad darker region
    labels = (hypo > 0).astype(np.int32)
    p = np.zeros(hypo.shape, np.float32)
    p[3:9, 3:9, 5:11] = 0.8  # a large piece of evidence (216 voxels, radius ~3.7 mm) ...
    p[5:7, 5:7, 45:47] = 0.8  # ... and a small one (8 voxels, radius ~1.2 mm)
    base = replace(PRIOR, model_floor=0.5, min_support_fraction=0.0, reach_factor=2.0)
    raised = combine_with_model(p, hypo, labels, base, spacing_kji=UNIT) >= 0.5
    assert raised[5, 5, 1] and raised[5, 5, 16] and not raised[5, 5, 20]  # up to ~7.4 mm beyond the large piece
    assert raised[5, 5, 48] and not raised[5, 5, 50] and not raised[5, 5, 30]  # ~2.5 mm beyond the small one
    capped = combine_with_model(p, hypo, labels, replace(base, reach_mm=2.0), spacing_kji=UNIT) >= 0.5
    assert capped[5, 5, 12] and not capped[5, 5, 14]  # reach_mm caps it
    with pytest.raises(ValueError, match="reach_mm or reach_factor > 0 needs spacing"):
        combine_with_model(p, hypo, labels, replace(base, min_support_ml=0.0))


def test_anchor_fraction_completes_a_lesion_where_it_is_as_dark_as_what_the_model_found():
    """One candidate joins a dark lesion (40 HU below the parenchyma) to a broad mild darkening
    (12 HU): the model found part of the lesion; anchored at half its darkness, the lesion is
    completed and the darkening stays out. A candidate whose evidence is not darker than the
    parenchyma is not raised at all."""
    hypo = np.zeros((10, 10, 40), np.float32)
    hypo[1:9, 1:9, 1:39] = 0.9
    labels = (hypo > 0).astype(np.int32)
    darkness = np.zeros(hypo.shape, np.float32)
    darkness[1:9, 1:9, 1:39] = 12.0  # the broad darkening ...
    darkness[1:9, 1:9, 2:12] = 40.0  # ... joined to a dark lesion
    p = np.zeros(hypo.shape, np.float32)
    p[3:7, 3:7, 4:8] = 0.8  # the part of the lesion the model is sure of
    base = replace(PRIOR, model_floor=0.5, min_support_fraction=0.0)
    assert (combine_with_model(p, hypo, labels, base, spacing_kji=UNIT) >= 0.5).sum() == labels.sum()  # unanchored
    anchored = combine_with_model(p, hypo, labels, replace(base, anchor_fraction=0.5), darkness=darkness,
                                  spacing_kji=UNIT) >= 0.5
    assert anchored[1:9, 1:9, 2:12].all() and not anchored[:, :, 12:].any()
    mild = combine_with_model(p, hypo, labels, replace(base, anchor_fraction=0.25), darkness=darkness,
                                  spacing_kji=UNIT) >= 0.5
    assert mild[1:9, 1:9, 1:39].all()  # 12 HU >= a quarter of 40: the darkening is as dark as asked
    bright = np.where(p > 0, -30.0, darkness).astype(np.float32)  # evidence brighter than the parenchyma
    assert np.array_equal(combine_with_model(p, hypo, labels, replace(base, anchor_fraction=0.5), darkness=bright,
                                             spacing_kji=UNIT), p)
    with pytest.raises(ValueError, match="darkness"):
        combine_with_model(p, hypo, labels, replace(base, anchor_fraction=0.5))


def test_apply_is_a_no_op_when_disabled_and_completes_a_lesion_the_model_found_in_part():
    lesion = _ball((28, 32, 32), 12.0)
    hu, mask, _ = make_liver(lesion=lesion, lesion_delta=-20.0)
    p = np.where(lesion, 0.25, 0.0).astype(np.float32)  # an under-confident model ...
    p[_ball((28, 32, 32), 6.0)] = 0.6  # ... sure of the lesion's core only
    off = apply_parenchyma_prior(p, hu, mask, SPACING, replace(PRIOR, enabled=False))
    assert np.array_equal(off, p)
    on = apply_parenchyma_prior(p, hu, mask, SPACING, PRIOR)
    found = on >= 0.5
    assert 2.0 * (found & lesion).sum() / (found.sum() + lesion.sum()) > 0.8
    assert (p >= 0.5).sum() < 0.2 * lesion.sum()
    unsure = np.where(lesion, 0.25, 0.0).astype(np.float32)
    assert np.array_equal(apply_parenchyma_prior(unsure, hu, mask, SPACING, PRIOR), unsure)  # no evidence: as is


def test_fine_in_plane_voxels_are_worked_on_a_coarser_grid_and_answered_on_their_own():
    lesion = _ball((28, 32, 32), 9.0)
    hu, mask, _ = make_liver(lesion=lesion)
    fine = [np.repeat(np.repeat(a, 2, axis=1), 2, axis=2)[:, :-1, :-1] for a in (hu, mask, lesion)]
    spacing = (1.5, 0.75, 0.75)
    hypo, label_sets, stats, cands = parenchyma_candidates(fine[0], fine[1], spacing,
                                                           replace(PRIOR, coarse_smoothing_mm=6.0))
    assert len(label_sets) == 2  # the fine and the coarse scale
    assert all(labels.shape == hypo.shape == fine[0].shape for labels in label_sets)
    assert abs(stats.median_hu - 100.0) < 3.0
    found = label_sets[0] > 0  # the fine scale draws it
    assert 2.0 * (found & fine[2]).sum() / (found.sum() + fine[2].sum()) > 0.75
    near = ndimage.binary_dilation(fine[2], iterations=3)
    assert not any(((labels > 0) & ~near).any() for labels in label_sets)  # no scale finds anything else


def test_candidates_computed_once_serve_every_prior_that_differs_only_in_how_it_combines():
    lesion = _ball((28, 32, 32), 12.0)
    hu, mask, _ = make_liver(lesion=lesion, lesion_delta=-20.0)
    p = np.where(lesion, 0.25, 0.0).astype(np.float32)
    p[_ball((28, 32, 32), 6.0)] = 0.6
    base = replace(PRIOR, fit_without_evidence=False)  # statistics that do not depend on the model
    computed = ParenchymaCandidates.of(hu, mask, SPACING, base)
    for variant in (base, replace(base, reach_factor=1.5), replace(base, min_support_fraction=0.1, weight=0.8)):
        assert computed.fits(variant)
        np.testing.assert_array_equal(apply_parenchyma_prior(p, hu, mask, SPACING, variant, computed),
                                      apply_parenchyma_prior(p, hu, mask, SPACING, variant))
    other = replace(base, min_delta_hu=25.0)  # another map: recomputed, not reused
    assert not computed.fits(other)
    np.testing.assert_array_equal(apply_parenchyma_prior(p, hu, mask, SPACING, other, computed),
                                  apply_parenchyma_prior(p, hu, mask, SPACING, other))


def test_anchored_prior_keeps_a_lesion_and_leaves_out_the_milder_darkening_it_touches():
    """On a synthetic liver: a 35 HU lesion inside a broad 12 HU darkening of a third of the
    liver, the model sure of the lesion's core only. The unanchored prior draws the darkening as tumour;
    anchored at half the lesion's darkness it draws the lesion. Candidates computed for another
    prior without the darkness map are not reused for the anchored one."""
    lesion = _ball((28, 32, 16), 9.0)
    hu, mask, _ = make_liver(lesion=None, noise_hu=8.0)
    broad = np.zeros(SHAPE, bool)
    broad[:, :, :24] = True  # a third of the liver: the rest stays the parenchyma
    hu = np.where(mask.astype(bool) & broad, hu - 12.0, hu)
    hu = np.where(lesion, hu - 23.0, hu).astype(np.float32)  # 35 HU below the parenchyma in all
    p = np.zeros(SHAPE, np.float32)
    p[_ball((28, 32, 16), 5.0)] = 0.8
    # one HU for the liver (no trend), several lesions supporting the candidate together
    supported = replace(PRIOR, min_support_fraction=0.0, trend_order=0, fit_without_evidence=False)
    loose = apply_parenchyma_prior(p, hu, mask, SPACING, supported) >= 0.5
    anchored_prior = replace(supported, anchor_fraction=0.5)
    anchored = apply_parenchyma_prior(p, hu, mask, SPACING, anchored_prior) >= 0.5
    assert (loose & broad & ~ndimage.binary_dilation(lesion, iterations=3)).sum() > lesion.sum()
    assert 2.0 * (anchored & lesion).sum() / (anchored.sum() + lesion.sum()) > 0.75
    computed = ParenchymaCandidates.of(hu, mask, SPACING, supported)
    assert computed.darkness is None and not computed.fits(anchored_prior)
    with_darkness = ParenchymaCandidates.of(hu, mask, SPACING, anchored_prior)
    assert with_darkness.fits(anchored_prior)
    np.testing.assert_array_equal(apply_parenchyma_prior(p, hu, mask, SPACING, anchored_prior, computed),
                                  apply_parenchyma_prior(p, hu, mask, SPACING, anchored_prior, with_darkness))


def test_a_trend_follows_a_liver_darker_at_its_back_and_still_finds_the_lesion():
    """A liver whose HU falls 30 HU from front to back (as dependent contrast or beam hardening
    make it) holding one 30 HU lesion: one HU for the whole liver reads its back as a broad
    hypodense region; a linear or quadratic trend follows the fall and leaves the lesion alone
    as a candidate."""
    lesion = _ball((28, 20, 32), 8.0)
    hu, mask, _ = make_liver(lesion=None, vessels=False, noise_hu=8.0)
    depth = np.clip((np.arange(SHAPE[1], dtype=np.float32) - 6.0) / 52.0, 0.0, 1.0)
    fall = 30.0 * depth ** 2  # even at the front, 30 HU darker at the back
    hu = np.where(mask.astype(bool), hu - fall[None, :, None], hu)
    hu = np.where(lesion, hu - 30.0, hu).astype(np.float32)
    near = ndimage.binary_dilation(lesion, iterations=3)
    flat = parenchyma_candidates(hu, mask, SPACING, replace(PRIOR, trend_order=0))[1][0] > 0
    assert (flat & ~near).sum() > 2 * lesion.sum()  # the back of the liver taken for a lesion
    for order in (1, 2):
        prior = replace(PRIOR, trend_order=order)
        stats = parenchyma_statistics(hu, mask, SPACING, prior)
        background = stats.background(SHAPE, SPACING)
        interior = ndimage.binary_erosion(mask, iterations=4) & ~near
        expected = 100.0 - fall[None, :, None] * np.ones(SHAPE, np.float32)
        found = parenchyma_candidates(hu, mask, SPACING, prior)[1][0] > 0
        assert not (found & ~near).any()
        assert 2.0 * (found & lesion).sum() / (found.sum() + lesion.sum()) > 0.7


def test_trend_numbers_are_checked():
    hu, mask, _ = make_liver()
    flat = parenchyma_statistics(hu, mask, SPACING, replace(PRIOR, trend_order=0))
    assert flat.trend == () and flat.background(SHAPE, SPACING) == flat.median_hu  # no trend: one HU
    assert len(parenchyma_statistics(hu, mask, SPACING, replace(PRIOR, trend_order=1)).trend) == 3
    assert len(parenchyma_statistics(hu, mask, SPACING, replace(PRIOR, trend_order=2)).trend) == 9
    slab = mask.copy()
    slab[:20], slab[44:] = 0, 0  # 36 mm along k: too short to tell a trend from a lesion along it
    terms = parenchyma_statistics(hu, slab, SPACING, replace(PRIOR, trend_order=2)).trend
    assert [terms[t] for t in (0, 3, 6, 7)] == [0.0] * 4 and any(terms[t] != 0.0 for t in (1, 2, 4, 5, 8))
    with pytest.raises(ValueError, match="trend_order"):
        parenchyma_statistics(hu, mask, SPACING, replace(PRIOR, trend_order=3))


def test_the_trend_fitted_without_the_models_tumour_bends_less_into_a_large_lesion():
    """A mild (15 HU) lesion filling a third of a liver pulls a quadratic trend towards it. Fitted
    without what the model already calls tumour, the trend stays nearer the parenchyma, and the
    prior draws more of the lesion; candidates computed without the evidence are not reused."""
    lesion = _ball((28, 32, 20), 21.0) & (make_liver(vessels=False)[1] > 0)
    hu, mask, _ = make_liver(lesion=lesion, lesion_delta=-15.0, vessels=False, noise_hu=8.0)
    p = np.zeros(SHAPE, np.float32)
    p[_ball((28, 32, 20), 12.0)] = 0.8  # the model is sure of the lesion's middle
    plain = replace(PRIOR, trend_order=2, trend_drop_spreads=0.0, fit_without_evidence=False)
    without = replace(plain, fit_without_evidence=True)  # the default
    bent = parenchyma_statistics(hu, mask, SPACING, plain).background(SHAPE, SPACING)
    exclude = p >= without.model_floor
    _, _, stats, _ = parenchyma_candidates(hu, mask, SPACING, without)  # no evidence given: as plain
    assert np.allclose(stats.background(SHAPE, SPACING), bent)
    straight = _parenchyma_steps(hu, mask, SPACING, without, exclude)[2].background(SHAPE, SPACING)
    assert np.median(np.abs(straight - 100.0)[lesion]) < 0.9 * np.median(np.abs(bent - 100.0)[lesion])
    drawn_plain = apply_parenchyma_prior(p, hu, mask, SPACING, plain) >= 0.5
    drawn_without = apply_parenchyma_prior(p, hu, mask, SPACING, without) >= 0.5
    assert (drawn_without & lesion).sum() >= (drawn_plain & lesion).sum()
    computed = ParenchymaCandidates.of(hu, mask, SPACING, without)
    assert not computed.without_evidence and not computed.fits(without)
    given = ParenchymaCandidates.of(hu, mask, SPACING, without, exclude)
    assert given.without_evidence and given.fits(without) and not given.fits(plain)


def test_a_trend_that_drops_voxels_far_below_it_bends_less_into_a_large_lesion():
    """A mild (15 HU) lesion filling a third of a liver, none of it known to the model: voxels far
    below the fit weigh nothing with trend_drop_spreads, a smaller trend_low_weight weighs them
    less; either way the trend stays nearer the parenchyma inside the lesion. Bad numbers are
    refused."""
    lesion = _ball((28, 32, 20), 21.0) & (make_liver(vessels=False)[1] > 0)
    hu, mask, _ = make_liver(lesion=lesion, lesion_delta=-15.0, vessels=False, noise_hu=8.0)
    base = replace(PRIOR, trend_order=2, trend_drop_spreads=0.0)

    def bend(prior: ParenchymaPrior) -> float:
        background = parenchyma_statistics(hu, mask, SPACING, prior).background(SHAPE, SPACING)
        return float(np.median(np.abs(background - 100.0)[lesion]))

    bent = bend(base)
    assert bend(replace(base, trend_drop_spreads=2.0)) < 0.8 * bent
    assert bend(replace(base, trend_low_weight=0.02)) < bent
    for wrong in ({"trend_low_weight": 0.0}, {"trend_low_weight": 0.7}, {"trend_drop_spreads": -1.0}):
        with pytest.raises(ValueError, match="trend_low_weight"):
            parenchyma_statistics(hu, mask, SPACING, replace(base, **wrong))


def test_opening_cuts_a_thin_dark_band_off_the_lesion_it_touches():
    """A 40 HU dark band (6 x 7.5 mm) running 48 mm from an 18 mm lesion: one candidate with the
    band; opened by a 3 mm ball, the band (too thin for the ball) is cut off and the lesion kept."""
    lesion = _ball((28, 32, 24), 9.0)
    band = np.zeros(SHAPE, bool)
    band[26:30, 30:35, 24:56] = True
    hu, mask, _ = make_liver(lesion=lesion | band, lesion_delta=-40.0, vessels=False, noise_hu=8.0)
    far = band.copy()
    far[:, :, :40] = False  # the band's far end, away from the lesion
    found = {}
    for radius in (0.0, 3.0):
        labels, candidates = candidates_of(hu, mask, replace(PRIOR, opening_mm=radius))[2:]
        assert len([c for c in candidates if c.kept]) == 1
        found[radius] = labels > 0
    assert (found[0.0] & far).sum() > 0.25 * far.sum()
    assert not (found[3.0] & far).any()
    assert (found[3.0] & lesion).sum() > 0.9 * (found[0.0] & lesion).sum() > 0.7 * lesion.sum()


def test_the_fit_may_leave_out_the_models_weaker_evidence_too():
    """The model sure of a large mild lesion's middle (0.8) and unsure of the rest (0.3): left out
    from 0.2 up, the whole lesion is out of the fit and bends the trend less than when only the
    sure middle is. What left voxels out is part of what the candidates were computed with."""
    lesion = _ball((28, 32, 20), 21.0) & (make_liver(vessels=False)[1] > 0)
    hu, mask, _ = make_liver(lesion=lesion, lesion_delta=-15.0, vessels=False, noise_hu=8.0)
    p = np.where(lesion, 0.3, 0.0).astype(np.float32)
    p[_ball((28, 32, 20), 12.0)] = 0.8
    sure = replace(PRIOR, trend_order=2, trend_drop_spreads=0.0, fit_exclude_probability=0.0)
    weak = replace(sure, fit_exclude_probability=0.2)

    def bend(prior: ParenchymaPrior) -> float:
        exclude = p >= prior.fit_exclude_floor
        background = _parenchyma_steps(hu, mask, SPACING, prior, exclude)[2].background(SHAPE, SPACING)
        return float(np.median(np.abs(background - 100.0)[lesion]))

    assert bend(weak) < 0.8 * bend(sure)
    computed = ParenchymaCandidates.of(hu, mask, SPACING, sure, p >= sure.model_floor)
    assert computed.fits(sure) and computed.fits(replace(sure, weight=0.9))
    assert not computed.fits(replace(sure, model_floor=0.3))  # it chose the voxels left out
    assert not computed.fits(weak)
    exact = apply_parenchyma_prior(p, hu, mask, SPACING, weak)
    np.testing.assert_array_equal(apply_parenchyma_prior(p, hu, mask, SPACING, weak, computed), exact)
