"""Tests of LiverTumorSegLib.stages: the liver stage, the crop (margin in mm, physical positions
kept) and the tumor ensemble (weighted average of the members' probabilities)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import SimpleITK as sitk
import torch

from LiverTumorSegLib.geometry import Geometry
from LiverTumorSegLib.inference import LoadedModel
from LiverTumorSegLib.models.card import ModelCard
from LiverTumorSegLib.stages.crop import crop_image, liver_box
from LiverTumorSegLib.stages.liver import (clean_liver, limit_growth, liver_cut_by_scan, probability_to_mask,
                                           refine_liver, segment_liver, tumor_search_region)
from LiverTumorSegLib.stages.tumor import ensemble_probability, member_stage_names, tumor_mask

CPU = torch.device("cpu")


# --- crop ------------------------------------------------------------------------------------

def test_liver_box_margin_is_in_millimetres_per_axis():
    liver = np.zeros((40, 60, 80), np.uint8)
    liver[10:20, 20:30, 30:50] = 1
    spacing_kji = (5.0, 1.0, 0.4)
    box = liver_box(liver, spacing_kji, margin_mm=10.0)
    # 10 mm = 2 slices of 5 mm, 10 rows of 1 mm, 25 columns of 0.4 mm
    assert box == (slice(8, 22), slice(10, 40), slice(5, 75))


def test_liver_box_rounds_the_margin_up_and_clips_at_the_edges():
    liver = np.zeros((10, 12, 14), np.uint8)
    liver[0:3, 5:7, 10:14] = 1
    box = liver_box(liver, (3.0, 3.0, 3.0), margin_mm=4.0)  # 4 mm -> 2 voxels of 3 mm
    assert box == (slice(0, 5), slice(3, 9), slice(8, 14))
    assert liver_box(liver, (3.0, 3.0, 3.0), margin_mm=0.0) == (slice(0, 3), slice(5, 7), slice(10, 14))


def test_liver_box_of_an_empty_mask_is_refused():
    with pytest.raises(ValueError, match="empty"):
        liver_box(np.zeros((4, 4, 4), np.uint8), (1.0, 1.0, 1.0), 5.0)


@pytest.mark.parametrize("orientation", ["RAS", "permuted", "oblique"])
def test_crop_image_keeps_physical_positions_and_values(helpers, orientation):
    ct = helpers.phantom_ct(size=(30, 26, 20), spacing=(2.0, 3.0, 4.0), direction=helpers.DIRECTIONS[orientation])
    box = (slice(3, 15), slice(5, 21), slice(2, 29))
    crop = crop_image(ct, box)
    assert crop.GetSize() == (27, 16, 12)
    assert crop.GetSpacing() == ct.GetSpacing() and crop.GetDirection() == ct.GetDirection()
    np.testing.assert_array_equal(sitk.GetArrayViewFromImage(crop), sitk.GetArrayViewFromImage(ct)[box])
    whole, part = Geometry.of(ct), Geometry.of(crop)
    for kji in [(0, 0, 0), (11, 15, 26), (4, 7, 9)]:
        inside = np.array(kji) + [3, 5, 2]
        np.testing.assert_allclose(part.index_to_lps(np.array(kji)), whole.index_to_lps(inside), atol=1e-9)


# --- liver stage -----------------------------------------------------------------------------

def test_probability_to_mask_thresholds_on_the_reference_grid(helpers):
    ct = helpers.phantom_ct(size=(30, 26, 20))
    probability = sitk.Image(ct.GetSize(), sitk.sitkFloat32)
    probability.CopyInformation(ct)
    array = np.zeros(sitk.GetArrayViewFromImage(ct).shape, np.float32)
    array[5, 6, 7], array[5, 6, 8], array[5, 6, 9] = 0.49, 0.5, 0.9
    prob = sitk.GetImageFromArray(array)
    prob.CopyInformation(ct)
    mask = probability_to_mask(prob, ct)
    assert mask.dtype == np.uint8
    assert mask.sum() == 2 and mask[5, 6, 8] == 1 and mask[5, 6, 9] == 1 and mask[5, 6, 7] == 0
    assert probability_to_mask(prob, ct, threshold=0.95).sum() == 0


@pytest.mark.parametrize("axial_axis", [0, 1, 2])
def test_liver_cut_by_scan_looks_at_the_first_and_last_axial_slices(axial_axis):
    mask = np.zeros((7, 8, 9), np.uint8)
    inside = [slice(2, 5)] * 3
    mask[tuple(inside)] = 1
    assert not liver_cut_by_scan(mask, axial_axis)
    for end in (0, -1):
        touching = mask.copy()
        index = [slice(2, 5)] * 3
        index[axial_axis] = end
        touching[tuple(index)] = 1
        assert liver_cut_by_scan(touching, axial_axis)
        other = (axial_axis + 1) % 3  # touching a side of the image is not a cut along the body axis
        sideways = mask.copy()
        index = [slice(2, 5)] * 3
        index[other] = end
        sideways[tuple(index)] = 1
        assert not liver_cut_by_scan(sideways, axial_axis)
    assert not liver_cut_by_scan(np.zeros_like(mask), axial_axis)


def test_clean_liver_keeps_the_largest_component_and_fills_holes():
    mask = np.zeros((20, 20, 20), np.uint8)
    mask[2:16, 2:16, 2:16] = 1
    mask[7:10, 7:10, 7:10] = 0          # an enclosed hole (a hypodense lesion)
    mask[18, 18, 18] = 1                # a separate speck
    cleaned = clean_liver(mask)
    assert cleaned.dtype == np.uint8
    assert cleaned[8, 8, 8] == 1 and cleaned[18, 18, 18] == 0 and cleaned.sum() == 14 ** 3
    untouched = clean_liver(mask, keep_largest=False, fill=False)
    np.testing.assert_array_equal(untouched, mask)


@pytest.mark.parametrize("axial_axis", [0, 1, 2])
def test_a_vessel_through_the_liver_stays_out_of_it_but_is_in_the_tumor_search_region(helpers, axial_axis):
    # The IVC runs through the liver along the body's axis: open at both ends in 3-D (not liver),
    # an enclosed hole in each axial slice (where a lesion the liver model left out would be).
    mask, vessel = helpers.pierced_cube(20, slice(2, 16), slice(4, 7), along=axial_axis)
    liver = clean_liver(mask)
    assert not liver[vessel].any() and liver.sum() == 14 ** 3 - 9 * 14
    region = tumor_search_region(liver, axial_axis)
    assert region.dtype == np.uint8 and region.sum() == 14 ** 3
    np.testing.assert_array_equal(region & liver, liver)


@pytest.mark.parametrize("orientation", ["LPS", "LPI", "permuted", "oblique"])
def test_segment_liver_finds_the_phantom_liver_on_the_ct_grid(helpers, tiny_registry, tiny_models, orientation):
    ct = sitk.Cast(helpers.phantom_ct(direction=helpers.DIRECTIONS[orientation]), sitk.sitkFloat32)
    model = LoadedModel.load(tiny_registry.resolve(tiny_models.liver))
    fractions = []
    mask = segment_liver(ct, model, CPU, overlap=0.25, on_progress=fractions.append)
    assert mask.shape == sitk.GetArrayViewFromImage(ct).shape and mask.dtype == np.uint8
    expected = helpers.analytic_labels_like(ct)
    assert helpers.dice(mask, expected > 0) > 0.95
    assert np.all(mask[expected == 2] == 1)  # the hypodense lesion is a filled hole of the liver
    assert fractions and fractions[-1] == 1.0


def _refine_model(helpers, tmp_path, channel: int, threshold: float) -> LoadedModel:
    from LiverTumorSegLib.models.registry import ModelRegistry

    helpers.write_refined_liver_models(tmp_path, channel, threshold)
    return LoadedModel.load(ModelRegistry([tmp_path]).resolve("tiny-liver-refine", task="liver_refine"))


@pytest.mark.parametrize("orientation", ["LPS", "RAS", "permuted", "oblique"])
def test_refine_liver_gets_the_prior_at_the_right_place(helpers, tmp_path, orientation):
    """A refinement model that copies its prior channel gives back the coarse mask, whatever it
    is (here a box that is not the liver): the prior reaches the model aligned with the CT."""
    ct = sitk.Cast(helpers.phantom_ct(direction=helpers.DIRECTIONS[orientation]), sitk.sitkFloat32)
    box = (slice(3, 25), slice(5, 30), slice(8, 40))
    ct_crop = crop_image(ct, box)
    coarse = np.zeros(sitk.GetArrayViewFromImage(ct_crop).shape, np.uint8)
    coarse[2:9, 3:12, 4:14] = 1  # far from the centre: any flip or shift would miss it
    fractions = []
    refined = refine_liver(ct_crop, coarse, _refine_model(helpers, tmp_path, channel=1, threshold=0.5), CPU,
                           on_progress=fractions.append)
    assert refined.shape == coarse.shape and refined.dtype == np.uint8
    assert helpers.dice(refined, coarse) > 0.9
    assert fractions[-1] == 1.0


def test_refine_liver_draws_the_liver_from_the_ct(helpers, tmp_path):
    """A refinement model that reads the CT (brighter than 100 HU) finds the phantom liver in the
    crop even from a poor prior."""
    ct = sitk.Cast(helpers.phantom_ct(), sitk.sitkFloat32)
    expected = helpers.analytic_labels_like(ct) > 0
    box = liver_box(expected, Geometry.of(ct).spacing[::-1], 10.0)
    ct_crop = crop_image(ct, box)
    poor_prior = np.zeros(expected[box].shape, np.uint8)
    poor_prior[2:6] = 1
    t = (100.0 - helpers.TINY_HU_WINDOW[0]) / (helpers.TINY_HU_WINDOW[1] - helpers.TINY_HU_WINDOW[0])
    refined = refine_liver(ct_crop, poor_prior, _refine_model(helpers, tmp_path, channel=0, threshold=t), CPU)
    assert helpers.dice(clean_liver(refined), expected[box]) > 0.95


def test_limit_growth_keeps_the_refinement_within_reach_of_the_coarse_mask():
    """The refinement may move the boundary out by the growth (per axis, in whole voxels) and take
    anything out; a tongue reaching further into a neighbour is cut at the growth."""
    coarse = np.zeros((20, 30, 40), np.uint8)
    coarse[5:15, 10:20, 10:20] = 1
    refined = np.zeros_like(coarse)
    refined[5:15, 10:20, 10:35] = 1  # a tongue 15 voxels past the coarse mask along i
    refined[8:10, 12:14, 12:14] = 0  # something the refinement took out of the coarse mask
    refined[0:3, 10:20, 10:20] = 1  # 2-5 voxels above it along k
    limited = limit_growth(refined, coarse, (1.0, 1.0, 1.0), 3.0)
    assert limited.dtype == np.uint8 and set(np.unique(limited)) <= {0, 1}
    expected = refined.copy()
    expected[:, :, 23:] = 0  # 3 voxels of growth along i: columns 20-22 kept
    expected[0:2] = 0  # along k: slice 2 is 3 voxels from slice 5
    np.testing.assert_array_equal(limited, expected)
    assert not limited[8:10, 12:14, 12:14].any()  # what the refinement removed stays out
    # 5 mm slices: thicker than the growth, so no growth along k; 0.6 mm in-plane: 5 voxels
    thick = limit_growth(refined, coarse, (5.0, 0.6, 0.6), 3.0)
    assert not thick[:5].any() and thick[5:15, 10:20, 20:25].all() and not thick[:, :, 25:].any()
    np.testing.assert_array_equal(limit_growth(refined, coarse, (1.0, 1.0, 1.0), 0.0), refined & coarse)
    with pytest.raises(ValueError, match="growth_mm"):
        limit_growth(refined, coarse, (1.0, 1.0, 1.0), -1.0)


def test_refine_liver_grows_at_most_max_growth_past_its_prior(helpers, tmp_path):
    """A refinement that reads the whole liver from the CT, given a prior of a few slices, draws
    the liver only within max_growth_mm of them."""
    ct = sitk.Cast(helpers.phantom_ct(), sitk.sitkFloat32)
    expected = helpers.analytic_labels_like(ct) > 0
    spacing_kji = Geometry.of(ct).spacing[::-1]
    box = liver_box(expected, spacing_kji, 10.0)
    ct_crop = crop_image(ct, box)
    prior = expected[box].astype(np.uint8)
    prior[:6] = 0
    prior[10:] = 0  # the prior: slices 6-9 of the liver only
    t = (100.0 - helpers.TINY_HU_WINDOW[0]) / (helpers.TINY_HU_WINDOW[1] - helpers.TINY_HU_WINDOW[0])
    model = _refine_model(helpers, tmp_path, channel=0, threshold=t)
    free = refine_liver(ct_crop, prior, model, CPU)
    grown = refine_liver(ct_crop, prior, model, CPU, max_growth_mm=2.0 * spacing_kji[0])
    assert free[:4].any() and free[12:].any()  # unlimited, it finds the liver beyond the prior
    assert grown[6:10].any() and not grown[:4].any() and not grown[12:].any()
    np.testing.assert_array_equal(grown, limit_growth(free, prior, spacing_kji, 2.0 * spacing_kji[0]))


def test_a_model_without_a_prior_channel_refuses_a_missing_prior(helpers, tmp_path):
    from LiverTumorSegLib.inference import predict_foreground

    model = _refine_model(helpers, tmp_path, channel=1, threshold=0.5)
    with pytest.raises(ValueError, match="needs a liver prior"):
        predict_foreground(model, np.zeros((8, 8, 8), np.float32), CPU)


# --- tumor ensemble --------------------------------------------------------------------------

class _ConstantLogits(torch.nn.Module):
    """Background logit 0 and foreground logit ``value`` everywhere: probability sigmoid(value)."""

    def __init__(self, value: float) -> None:
        super().__init__()
        self.value = value

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        foreground = torch.full_like(x[:, :1], self.value)
        return torch.cat([torch.zeros_like(foreground), foreground], dim=1)


def _constant_member(name: str, value: float, spacing=(4.0, 4.0, 4.0)) -> LoadedModel:
    card = ModelCard(name=name, version="1", task="tumor", architecture="UNet", architecture_args={},
                     spacing_mm=spacing, patch_size=(8, 8, 8), hu_window=(-100.0, 250.0),
                     weights_file="none", weights_sha256="none")
    return LoadedModel(card, _ConstantLogits(value))


def _sigmoid(v: float) -> float:
    return 1.0 / (1.0 + math.exp(-v))


@pytest.mark.parametrize("weights", [(3.0, 1.0), (0.2, 0.8), (1.0, 0.0)])
def test_ensemble_is_the_exact_weighted_mean_of_its_members(helpers, weights):
    ct = sitk.Cast(helpers.phantom_ct(size=(25, 22, 14), direction=helpers.DIRECTIONS["oblique"]), sitk.sitkFloat32)
    members = [_constant_member("a", 2.0), _constant_member("b", -1.0, spacing=(3.0, 5.0, 6.0))]
    calls = []
    probability, std = ensemble_probability(ct, members, weights, CPU, on_progress=lambda i, f: calls.append((i, f)))
    assert std is None
    assert probability.shape == sitk.GetArrayViewFromImage(ct).shape and probability.dtype == np.float32
    total = sum(weights)
    expected = (weights[0] * _sigmoid(2.0) + weights[1] * _sigmoid(-1.0)) / total
    np.testing.assert_allclose(probability, expected, atol=1e-6)
    assert calls == [(0, 0.0), (0, 1.0), (1, 0.0), (1, 1.0)]


def test_ensemble_with_tta_returns_a_weighted_std_on_the_crop_grid(helpers):
    ct = sitk.Cast(helpers.phantom_ct(size=(25, 22, 14)), sitk.sitkFloat32)
    members = [_constant_member("a", 1.0), _constant_member("b", 3.0)]
    probability, std = ensemble_probability(ct, members, (1.0, 1.0), CPU, tta=True)
    assert std is not None and std.shape == probability.shape
    np.testing.assert_allclose(std, 0.0, atol=1e-6)  # constant members agree with their flips
    np.testing.assert_allclose(probability, (_sigmoid(1.0) + _sigmoid(3.0)) / 2, atol=1e-6)


class _RampLogits(torch.nn.Module):
    """A foreground logit that rises along the array's last axis: its flip disagrees with it."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        ramp = torch.linspace(-3.0, 3.0, x.shape[-1]).expand_as(x[:, :1])
        return torch.cat([torch.zeros_like(ramp), ramp], dim=1)


def test_a_member_without_the_flip_runs_once_and_leaves_the_uncertainty_to_the_others(helpers, monkeypatch):
    from LiverTumorSegLib.stages import tumor as tumor_stage

    ct = sitk.Cast(helpers.phantom_ct(size=(25, 22, 14)), sitk.sitkFloat32)
    ramp = LoadedModel(_constant_member("ramp", 0.0).card, _RampLogits())
    members = [ramp, _constant_member("flat", 1.0)]
    calls = helpers.record_predictions(monkeypatch, tumor_stage, lambda model, kw: (model.card.name, kw["tta"]))
    alone_probability, alone_std = ensemble_probability(ct, [ramp], (1.0,), CPU, tta=True)
    calls.clear()
    probability, std = ensemble_probability(ct, members, (1.0, 3.0), CPU, tta=True, member_tta=(True, False))
    assert calls == [("ramp", True), ("flat", False)]
    assert float(alone_std.max()) > 0.1  # the ramp's flip disagrees with it
    np.testing.assert_allclose(std, alone_std, atol=1e-6)  # the flipped member's own spread, not a quarter of it
    np.testing.assert_allclose(probability, 0.25 * alone_probability + 0.75 * _sigmoid(1.0), atol=1e-6)
    _, no_spread = ensemble_probability(ct, members, (1.0, 1.0), CPU, tta=True, member_tta=(False, False))
    assert no_spread is None
    with pytest.raises(ValueError, match="one TTA switch per ensemble member"):
        ensemble_probability(ct, members, (1.0, 1.0), CPU, tta=True, member_tta=(True,))


def test_ensemble_needs_one_weight_per_member(helpers):
    ct = sitk.Cast(helpers.phantom_ct(size=(25, 22, 14)), sitk.sitkFloat32)
    with pytest.raises(ValueError, match="one weight per ensemble member"):
        ensemble_probability(ct, [_constant_member("a", 1.0)], (0.5, 0.5), CPU)
    with pytest.raises(ValueError):
        ensemble_probability(ct, [], (), CPU)


def test_tiny_ensemble_finds_the_hypodense_lesion(helpers, tiny_registry, tiny_models):
    ct = sitk.Cast(helpers.phantom_ct(), sitk.sitkFloat32)
    card = tiny_registry.resolve(tiny_models.tumor)
    members = [LoadedModel.load(c) for c in tiny_registry.ensemble_members(card)]
    probability, _ = ensemble_probability(ct, members, card.normalized_weights(), CPU)
    labels = helpers.analytic_labels_like(ct)
    mask = tumor_mask(probability)
    inside_liver = mask.astype(bool) & (labels > 0)
    assert helpers.dice(inside_liver, labels == 2) > 0.8
    assert member_stage_names(members) == [f"tumor:{name}" for name in tiny_models.members]


def test_tumor_mask_threshold():
    probability = np.array([[[0.2, 0.5, 0.7]]], np.float32)
    np.testing.assert_array_equal(tumor_mask(probability), [[[0, 1, 1]]])
    np.testing.assert_array_equal(tumor_mask(probability, 0.6), [[[0, 0, 1]]])
    assert tumor_mask(probability).dtype == np.uint8


def test_tumor_mask_hysteresis_grows_confident_lesions_only():
    # two blobs: one with a confident core and a faint rim, one only faint
    probability = np.zeros((1, 1, 12), np.float32)
    probability[0, 0, 1:6] = [0.35, 0.45, 0.8, 0.45, 0.3]
    probability[0, 0, 8:11] = [0.4, 0.45, 0.4]
    np.testing.assert_array_equal(tumor_mask(probability, 0.5), (probability >= 0.5).astype(np.uint8))
    grown = tumor_mask(probability, 0.5, grow_threshold=0.3)
    np.testing.assert_array_equal(grown[0, 0], [0, 1, 1, 1, 1, 1, 0, 0, 0, 0, 0, 0])
    assert grown.dtype == np.uint8
    # 'at least' on both thresholds; a grow threshold at or above the seed threshold is plain thresholding
    np.testing.assert_array_equal(tumor_mask(probability, 0.8, grow_threshold=0.45)[0, 0, 1:6], [0, 1, 1, 1, 0])
    np.testing.assert_array_equal(tumor_mask(probability, 0.5, grow_threshold=0.6), tumor_mask(probability, 0.5))
