"""Tests of LiverTumorSegLib.pipeline with the tiny deterministic models: results on the input
grid for any orientation, progress and cancellation, switches, device fallback on GPU
out-of-memory, and the user errors it raises."""

from __future__ import annotations

import threading
from dataclasses import asdict, replace

import numpy as np
import pytest
import SimpleITK as sitk
from scipy import ndimage
import torch

from LiverTumorSegLib import pipeline as pipeline_module
from LiverTumorSegLib.errors import CancelledError, LiverTumorSegError
from LiverTumorSegLib.geometry import Geometry, lps_to_ras
from LiverTumorSegLib.models.card import EnsembleCard, EnsembleMember, write_card
from LiverTumorSegLib.models.registry import ModelRegistry
from LiverTumorSegLib.pipeline import PARTIAL_LIVER_WARNING, Pipeline, PipelineSettings
from LiverTumorSegLib.progress import Progress
from LiverTumorSegLib.stages.liver import limit_growth

STAGES = ("liver", "crop", "tumor", "postprocess", "measure")


def _pipeline(helpers, tiny_models, *extra_dirs, **settings) -> Pipeline:
    registry = ModelRegistry([*extra_dirs, tiny_models.directory])
    return Pipeline(helpers.tiny_pipeline_settings(**settings), registry=registry)


def _float_ct(helpers, **kwargs) -> sitk.Image:
    return sitk.Cast(helpers.phantom_ct(**kwargs), sitk.sitkFloat32)


@pytest.mark.parametrize("orientation", ["LPS", "RAS", "LPI", "permuted", "oblique"])
def test_result_is_on_the_input_grid_and_finds_the_phantom(helpers, tiny_pipeline, orientation):
    ct = _float_ct(helpers, size=(54, 44, 30), spacing=(3.0, 3.0, 3.5), direction=helpers.DIRECTIONS[orientation])
    result = tiny_pipeline.run(ct)

    labelmap = result.labelmap
    assert labelmap.GetPixelID() == sitk.sitkUInt8
    assert labelmap.GetSize() == ct.GetSize() and labelmap.GetSpacing() == ct.GetSpacing()
    assert labelmap.GetOrigin() == ct.GetOrigin() and labelmap.GetDirection() == ct.GetDirection()
    labels = sitk.GetArrayViewFromImage(labelmap)
    assert set(np.unique(labels)) == {0, 1, 2}
    expected = helpers.analytic_labels_like(ct)
    assert helpers.dice(labels > 0, expected > 0) > 0.95
    assert helpers.dice(labels == 2, expected == 2) > 0.4  # boundary refinement shrinks this small sphere

    m = result.measurements
    assert len(m.lesions) == 1
    expected_ras = lps_to_ras(helpers.LESION_CENTER_LPS)
    np.testing.assert_allclose(m.lesions[0].centroid_ras_mm, expected_ras, atol=2.0)
    assert m.liver_volume_ml == pytest.approx(np.count_nonzero(labels) * Geometry.of(ct).voxel_volume_ml)
    assert 160 < m.liver_volume_ml < 220  # the phantom liver is 191 mL
    assert m.tlvr == pytest.approx(m.tumor_volume_ml / m.liver_volume_ml)
    assert m.lesions[0].mean_hu == pytest.approx(helpers.LESION_HU, abs=40)

    assert result.device == "cpu" and result.warnings == []
    assert set(result.seconds_per_stage) == set(STAGES)
    assert result.settings == asdict(tiny_pipeline.settings)


def test_same_image_in_any_orientation_gives_the_same_labels(helpers, tiny_pipeline):
    base = _float_ct(helpers)
    reference = sitk.GetArrayFromImage(tiny_pipeline.run(base).labelmap)
    for code in ("RAS", "LPI", "RAI", "PSL", "SRA", "ILA"):
        result = tiny_pipeline.run(sitk.DICOMOrient(base, code))
        back = sitk.GetArrayFromImage(sitk.DICOMOrient(result.labelmap, "LPS"))
        mismatch = int(np.count_nonzero(back != reference))
        assert mismatch <= 0.001 * np.count_nonzero(reference), f"{code}: {mismatch} voxels differ"


def test_models_of_the_run_are_recorded(tiny_pipeline, tiny_models, tiny_registry):
    summaries = {m["name"]: m for m in tiny_pipeline.model_summaries}
    assert set(summaries) == {tiny_models.liver, tiny_models.tumor, *tiny_models.members}
    for name in (tiny_models.liver, *tiny_models.members):
        card = tiny_registry.resolve(name)
        assert summaries[name]["sha256"] == card.weights_sha256 and summaries[name]["version"] == card.version
    weights = {m["model"]: m["weight"] for m in summaries[tiny_models.tumor]["members"]}
    assert list(weights) == list(tiny_models.members)
    assert tiny_pipeline.tumor_weights == pytest.approx(list(tiny_models.member_weights))


def test_progress_reports_every_stage_in_order(helpers, tiny_pipeline, tiny_models):
    events = []
    tiny_pipeline.run(_float_ct(helpers), Progress(events.append))
    order = []
    for event in events:
        assert 0.0 <= event.fraction <= 1.0
        if not order or order[-1] != event.stage:
            order.append(event.stage)
    expected = ["liver", "crop", *[f"tumor:{m}" for m in tiny_models.members], "postprocess", "measure"]
    assert order == expected == tiny_pipeline.stage_names()
    for stage in expected:
        fractions = [e.fraction for e in events if e.stage == stage]
        assert fractions[0] == 0.0 and fractions[-1] == 1.0
        assert fractions == sorted(fractions), stage


def test_a_set_cancel_flag_stops_the_run(helpers, tiny_pipeline):
    progress = Progress()
    progress.cancel()
    with pytest.raises(CancelledError):
        tiny_pipeline.run(_float_ct(helpers), progress)


def test_cancel_during_the_tumor_stage_stops_the_run(helpers, tiny_pipeline, tiny_models):
    cancel = threading.Event()
    seen = []

    def on_event(event):
        seen.append(event.stage)
        if event.stage.startswith("tumor:"):
            cancel.set()

    with pytest.raises(CancelledError):
        tiny_pipeline.run(_float_ct(helpers), Progress(on_event, cancel))
    assert "postprocess" not in seen and "measure" not in seen


def test_no_liver_in_view_is_a_user_error(helpers, tiny_pipeline):
    ct = _float_ct(helpers, liver_hu=helpers.BODY_HU, lesion_hu=helpers.BODY_HU)
    with pytest.raises(LiverTumorSegError, match="no liver found in view"):
        tiny_pipeline.run(ct)


def test_no_liver_is_a_user_error_even_without_a_minimum_volume(helpers, tiny_models):
    pipeline = _pipeline(helpers, tiny_models, min_liver_ml=0.0)
    ct = _float_ct(helpers, liver_hu=helpers.BODY_HU, lesion_hu=helpers.BODY_HU)
    with pytest.raises(LiverTumorSegError, match="no liver found in view"):
        pipeline.run(ct)


def test_liver_below_the_minimum_volume_is_no_liver(helpers, tiny_models):
    pipeline = _pipeline(helpers, tiny_models, min_liver_ml=500.0)
    with pytest.raises(LiverTumorSegError, match="less than 500 mL"):
        pipeline.run(_float_ct(helpers))


@pytest.mark.parametrize("orientation", ["LPS", "permuted"])
def test_liver_cut_by_the_scan_gives_a_partial_view_warning(helpers, tiny_models, orientation):
    pipeline = _pipeline(helpers, tiny_models, min_liver_ml=10.0)
    ct = _float_ct(helpers, direction=helpers.DIRECTIONS[orientation])
    axial = Geometry.of(ct).axial_array_axis()  # array axis (k, j, i) along the patient's feet-head
    sitk_axis = 2 - axial
    size = list(ct.GetSize())
    index = [0, 0, 0]
    index[sitk_axis], size[sitk_axis] = size[sitk_axis] // 2 - 3, 6  # six slices through the liver's middle
    cut = sitk.RegionOfInterest(ct, size, index)
    result = pipeline.run(cut)
    assert PARTIAL_LIVER_WARNING in result.warnings
    assert PARTIAL_LIVER_WARNING not in pipeline.run(ct).warnings


def test_gpu_out_of_memory_reruns_on_the_cpu_with_a_warning(helpers, tiny_models, monkeypatch):
    pipeline = _pipeline(helpers, tiny_models)
    pipeline.device = torch.device("cuda")  # as if --device cuda had found a GPU
    original = Pipeline._run_on
    devices = []

    def run_on(self, ct, device, progress, warnings):
        devices.append(device.type)
        if device.type == "cuda":
            raise MemoryError("CUDA out of memory. Tried to allocate 8.00 GiB")
        return original(self, ct, device, progress, warnings)

    monkeypatch.setattr(Pipeline, "_run_on", run_on)
    result = pipeline.run(_float_ct(helpers))
    assert devices == ["cuda", "cpu"]
    assert result.device == "cpu"
    assert len(result.warnings) == 1 and "GPU ran out of memory" in result.warnings[0]
    assert np.count_nonzero(sitk.GetArrayViewFromImage(result.labelmap)) > 0


def test_cpu_out_of_memory_is_a_user_error_about_memory(helpers, tiny_models, monkeypatch):
    pipeline = _pipeline(helpers, tiny_models)

    def exhausted(*args, **kwargs):
        raise RuntimeError("[enforce fail at alloc_cpu.cpp:117] DefaultCPUAllocator: can't allocate memory: "
                           "you tried to allocate 123456789 bytes")

    monkeypatch.setattr(pipeline.liver_model.network, "forward", exhausted)
    with pytest.raises(LiverTumorSegError, match="out of memory") as info:
        pipeline.run(_float_ct(helpers))
    assert "--fast" in str(info.value)


def test_switched_off_steps_are_not_run(helpers, tiny_models, monkeypatch):
    calls = {"refine_lesions": 0, "interslice_consistency": 0}
    for name in calls:
        original = getattr(pipeline_module, name)

        def counting(*args, _name=name, _original=original, **kwargs):
            calls[_name] += 1
            return _original(*args, **kwargs)

        monkeypatch.setattr(pipeline_module, name, counting)
    ct = _float_ct(helpers)
    _pipeline(helpers, tiny_models).run(ct)
    assert calls == {"refine_lesions": 1, "interslice_consistency": 1}
    without = _pipeline(helpers, tiny_models, active_contour=False, interslice=False, tumor_inside_liver=False,
                        min_lesion_ml=0.0).run(ct)
    assert calls == {"refine_lesions": 1, "interslice_consistency": 1}
    # Without 'tumor inside liver', dark voxels outside the liver crop stay tumor.
    labels = sitk.GetArrayViewFromImage(without.labelmap)
    expected = helpers.analytic_labels_like(ct)
    assert np.count_nonzero((labels == 2) & (expected == 0)) > 0


def _with_vertical_tunnels(ct: sitk.Image, tunnels) -> sitk.Image:
    """``ct`` with cylinders along S through the whole scan: ((x, y) LPS mm, radius mm, HU) each."""
    hu = sitk.GetArrayFromImage(ct)
    size = ct.GetSize()
    index = np.indices(hu.shape)[::-1].reshape(3, -1).T  # (i, j, k) per voxel
    x, y, _ = np.array([ct.TransformContinuousIndexToPhysicalPoint(p) for p in index.tolist()]).T
    for (cx, cy), radius, value in tunnels:
        inside = ((x - cx) ** 2 + (y - cy) ** 2 <= radius ** 2).reshape(size[::-1])
        hu[inside] = value
    out = sitk.GetImageFromArray(hu)
    out.CopyInformation(ct)
    return out


def test_a_vessel_through_the_liver_is_not_liver_but_a_lesion_in_such_a_hole_is_tumor(helpers, tiny_models,
                                                                                     tmp_path):
    # Two cylinders run through the liver along S, open in 3-D at both ends and enclosed in each
    # axial slice: one at body HU (the IVC: neither liver nor tumor to the tiny models), one dark
    # (a lesion the liver model leaves out of the liver, which the tumor models find).
    ivc, lesion = (-30.0, -12.0), (0.0, -8.0)
    ct = _with_vertical_tunnels(_float_ct(helpers), [(ivc, 8.0, helpers.BODY_HU), (lesion, 8.0, helpers.LESION_HU)])
    expected = helpers.analytic_labels_like(ct)

    def core(center):  # voxels within 4 mm of the cylinder's axis, in the liver's middle 35 mm
        only = sitk.GetArrayFromImage(_with_vertical_tunnels(ct * 0, [(center, 4.0, 1)])) == 1
        middle = np.zeros_like(only)
        middle[len(only) // 2 - 5:len(only) // 2 + 5] = True  # LPS grid: k runs along S, 3.5 mm apart
        return only & middle & (expected > 0)

    # The tiny liver model on the CT's own grid, so that thin liver walls are kept.
    helpers.write_model(tmp_path, "tiny-liver-fine", "liver", helpers.threshold_unet_state(100.0, True),
                        helpers.THRESHOLD_UNET_ARGS, spacing=ct.GetSpacing())
    labels = sitk.GetArrayFromImage(_pipeline(helpers, tiny_models, tmp_path, liver_model="tiny-liver-fine")
                                    .run(ct).labelmap)
    assert core(ivc).sum() > 30 and core(lesion).sum() > 30
    assert not labels[core(ivc)].any()  # the vessel stays background (not filled into the liver)
    assert np.mean(labels[core(lesion)] == 2) > 0.9  # the lesion is tumor, so part of the liver
    unfilled = sitk.GetArrayFromImage(_pipeline(helpers, tiny_models, tmp_path, liver_model="tiny-liver-fine",
                                                fill_liver_holes=False).run(ct).labelmap)
    assert not unfilled[core(lesion)].any()  # without hole filling, tumors stay inside the liver mask


def test_tta_gives_an_uncertainty_map_on_the_liver_crop(helpers, tiny_models):
    ct = _float_ct(helpers, direction=helpers.DIRECTIONS["RAS"])
    result = _pipeline(helpers, tiny_models, tta=True).run(ct)
    uncertainty = result.tumor_uncertainty
    assert uncertainty is not None
    assert uncertainty.GetSpacing() == ct.GetSpacing() and uncertainty.GetDirection() == ct.GetDirection()
    assert all(u <= c for u, c in zip(uncertainty.GetSize(), ct.GetSize()))
    # The crop's origin is a voxel centre of the CT grid.
    index = ct.TransformPhysicalPointToContinuousIndex(uncertainty.GetOrigin())
    np.testing.assert_allclose(index, np.round(index), atol=1e-6)
    mean = result.tumor_probability  # the ensemble's TTA mean, on the same crop grid
    assert mean.GetSize() == uncertainty.GetSize() and mean.GetOrigin() == uncertainty.GetOrigin()
    assert 0.0 <= float(sitk.GetArrayViewFromImage(mean).min()) and float(sitk.GetArrayViewFromImage(mean).max()) <= 1.0
    assert _pipeline(helpers, tiny_models, tta=True, fast=True).run(ct).tumor_uncertainty is None


@pytest.mark.parametrize("tta, fast, flipped", [(True, False, True), (False, False, False), (True, True, False)])
def test_tta_flips_the_liver_models_too(helpers, tiny_models, monkeypatch, tmp_path, tta, fast, flipped):
    from LiverTumorSegLib.stages import liver as liver_stage

    liver_name = helpers.write_refined_liver_models(tmp_path, refine_channel=1, refine_threshold=0.5)

    calls = helpers.record_predictions(monkeypatch, liver_stage, lambda model, kw: (model.card.task, kw.get("tta")))
    _pipeline(helpers, tiny_models, tmp_path, liver_model=liver_name, tta=tta, fast=fast).run(_float_ct(helpers))
    assert calls == [("liver", flipped), ("liver_refine", flipped)]


@pytest.mark.parametrize("window_overlap", [0.25, 0.5])
def test_every_model_runs_at_the_settings_window_overlap(helpers, tiny_models, monkeypatch, tmp_path, window_overlap):
    """The liver model, its refinement and each tumour member slide their windows at the
    settings' overlap (what validation at 0.5 relies on)."""
    from LiverTumorSegLib.stages import liver as liver_stage
    from LiverTumorSegLib.stages import tumor as tumor_stage

    liver_name = helpers.write_refined_liver_models(tmp_path, refine_channel=1, refine_threshold=0.5)
    calls = []
    for stage in (liver_stage, tumor_stage):
        helpers.record_predictions(monkeypatch, stage, lambda model, kw: (model.card.task, kw.get("overlap")), calls)
    _pipeline(helpers, tiny_models, tmp_path, liver_model=liver_name,
              window_overlap=window_overlap).run(_float_ct(helpers))
    assert [task for task, _ in calls][:2] == ["liver", "liver_refine"]
    assert [task for task, _ in calls][2:] == ["tumor"] * len(tiny_models.members)
    assert {overlap for _, overlap in calls} == {window_overlap}


@pytest.mark.parametrize("growth", [3.0, None])
def test_the_refinement_gets_the_settings_growth_limit(helpers, tiny_models, monkeypatch, tmp_path, growth):
    from LiverTumorSegLib import pipeline as pipeline_module

    liver_name = helpers.write_refined_liver_models(tmp_path, refine_channel=1, refine_threshold=0.5)
    seen = []
    real = pipeline_module.refine_liver

    def recording(*args, **kw):
        seen.append(kw.get("max_growth_mm", "not given"))
        return real(*args, **kw)

    monkeypatch.setattr(pipeline_module, "refine_liver", recording)
    _pipeline(helpers, tiny_models, tmp_path, liver_model=liver_name, refine_growth_mm=growth).run(_float_ct(helpers))
    assert seen == [growth]
    assert PipelineSettings().refine_growth_mm == 3.0


def test_settings_fast_and_tta():
    assert PipelineSettings().overlap == 0.25 and PipelineSettings(fast=True).overlap == 0.0
    assert PipelineSettings(window_overlap=0.5).overlap == 0.5
    assert PipelineSettings(window_overlap=0.5, fast=True).overlap == 0.0
    assert not PipelineSettings(tta=True, fast=True).use_tta and PipelineSettings(tta=True).use_tta


def test_unknown_or_wrong_task_models_fail_at_construction(helpers, tiny_models, tmp_path):
    with pytest.raises(LiverTumorSegError, match="not found"):
        _pipeline(helpers, tiny_models, liver_model="no-such-liver")
    with pytest.raises(LiverTumorSegError, match="is a tumor model"):
        _pipeline(helpers, tiny_models, liver_model=tiny_models.members[0])
    with pytest.raises(LiverTumorSegError, match="is a liver model"):
        _pipeline(helpers, tiny_models, tumor_model=tiny_models.liver)
    write_card(EnsembleCard(name="liver-pair", version="1", task="liver",
                            members=[EnsembleMember(tiny_models.liver, 1.0), EnsembleMember(tiny_models.liver, 1.0)]),
               tmp_path / "liver-pair.json")
    with pytest.raises(LiverTumorSegError, match="must be a single model"):
        _pipeline(helpers, tiny_models, tmp_path, liver_model="liver-pair")


def test_a_single_tumor_model_works_as_a_one_member_ensemble(helpers, tiny_models):
    pipeline = _pipeline(helpers, tiny_models, tumor_model=tiny_models.members[0])
    assert pipeline.tumor_weights == [1.0] and len(pipeline.tumor_members) == 1
    result = pipeline.run(_float_ct(helpers))
    assert len(result.measurements.lesions) == 1


@pytest.mark.parametrize("tta", [True, False])
def test_an_ensemble_member_marked_without_tta_runs_once_under_tta(helpers, tiny_models, monkeypatch, tmp_path, tta):
    from LiverTumorSegLib.stages import tumor as tumor_stage

    first, *rest = tiny_models.members
    write_card(EnsembleCard(name="tumor-part-flipped", version="1", task="tumor",
                            members=[EnsembleMember(first, 1.0, tta=False)] + [EnsembleMember(n, 1.0) for n in rest]),
               tmp_path / "tumor-part-flipped.json")
    calls = helpers.record_predictions(monkeypatch, tumor_stage, lambda model, kw: (model.card.name, kw["tta"]))
    pipeline = _pipeline(helpers, tiny_models, tmp_path, tumor_model="tumor-part-flipped", tta=tta)
    assert pipeline.tumor_member_tta == [False] + [True] * len(rest)
    result = pipeline.run(_float_ct(helpers))
    assert calls == [(first, False)] + [(n, tta) for n in rest]
    assert (result.tumor_uncertainty is not None) == (tta and bool(rest))
    summary = next(s for s in result.models if s["name"] == "tumor-part-flipped")
    assert summary["members"][0] == {"model": first, "weight": 1.0, "tta": False}


# --- liver refinement (a liver card that names a liver_refine model) -------------------------

def test_liver_refinement_runs_on_the_crop_after_the_liver_stage(helpers, tiny_models, tmp_path):
    """The refinement model here calls all body (> -50 HU) liver: free to grow, the result is the
    body inside the liver stage's crop (liver box + margin), so the refined mask visibly replaced
    the coarse one; under the default growth limit it stays within 3 mm of the coarse mask."""
    t = (-50.0 - helpers.TINY_HU_WINDOW[0]) / (helpers.TINY_HU_WINDOW[1] - helpers.TINY_HU_WINDOW[0])
    liver_name = helpers.write_refined_liver_models(tmp_path, refine_channel=0, refine_threshold=t)
    pipeline = _pipeline(helpers, tiny_models, tmp_path, liver_model=liver_name, crop_margin_mm=9.0,
                         refine_growth_mm=None)
    assert pipeline.stage_names() == ["liver", "crop", "liver_refine", *[f"tumor:{m}" for m in tiny_models.members],
                                      "postprocess", "measure"]
    assert "tiny-liver-refine" in {m["name"] for m in pipeline.model_summaries}
    ct = _float_ct(helpers)
    events = []
    result = pipeline.run(ct, Progress(events.append))
    assert [e.stage for e in events if e.stage == "liver_refine"][-1] == "liver_refine"
    assert "liver_refine" in result.seconds_per_stage

    unrefined = _pipeline(helpers, tiny_models, tmp_path, liver_model=liver_name, refine_liver=False)
    assert "liver_refine" not in unrefined.stage_names()
    coarse = sitk.GetArrayFromImage(unrefined.run(ct).labelmap) > 0
    expected = helpers.analytic_labels_like(ct) > 0
    assert helpers.dice(coarse, expected) > 0.95

    liver = sitk.GetArrayViewFromImage(result.labelmap) > 0
    inside_box = np.zeros_like(liver)
    inside_box[pipeline_module.liver_box(coarse, Geometry.of(ct).spacing[::-1], 9.0)] = True
    body = sitk.GetArrayViewFromImage(ct) > -50
    assert np.count_nonzero(liver & ~inside_box) == 0
    assert helpers.dice(liver, body & inside_box) > 0.95
    assert np.count_nonzero(liver) > 1.5 * np.count_nonzero(expected)

    limited = _pipeline(helpers, tiny_models, tmp_path, liver_model=liver_name, crop_margin_mm=9.0).run(ct)
    limited_liver = sitk.GetArrayViewFromImage(limited.labelmap) > 0
    reach = limit_growth(np.ones_like(coarse, np.uint8), coarse.astype(np.uint8), Geometry.of(ct).spacing[::-1], 3.0)
    assert np.count_nonzero(limited_liver & ~(reach > 0)) == 0
    assert np.count_nonzero(coarse) < np.count_nonzero(limited_liver) < np.count_nonzero(liver)


def test_a_refinement_that_finds_no_liver_keeps_the_liver_stage_mask(helpers, tiny_models, tmp_path):
    liver_name = helpers.write_refined_liver_models(tmp_path, refine_channel=1, refine_threshold=2.0)  # never
    ct = _float_ct(helpers)
    refined = _pipeline(helpers, tiny_models, tmp_path, liver_model=liver_name).run(ct)
    plain = _pipeline(helpers, tiny_models, tmp_path, liver_model=liver_name, refine_liver=False).run(ct)
    np.testing.assert_array_equal(sitk.GetArrayViewFromImage(refined.labelmap),
                                  sitk.GetArrayViewFromImage(plain.labelmap))


def test_a_missing_or_wrong_refinement_model_fails_at_construction(helpers, tiny_models, tmp_path):
    liver_name = helpers.write_refined_liver_models(tmp_path, refine_channel=1, refine_threshold=0.5)
    (tmp_path / "tiny-liver-refine.json").unlink()
    with pytest.raises(LiverTumorSegError, match="'tiny-liver-refine' not found"):
        _pipeline(helpers, tiny_models, tmp_path, liver_model=liver_name)
    helpers.write_model(tmp_path, "liver-refined-by-tumor", "liver",
                        helpers.threshold_unet_state(100.0, brighter_is_foreground=True), helpers.THRESHOLD_UNET_ARGS,
                        spacing=(5.0, 5.0, 5.0), refine_model=tiny_models.members[0])
    with pytest.raises(LiverTumorSegError, match="is a tumor model"):
        _pipeline(helpers, tiny_models, tmp_path, liver_model="liver-refined-by-tumor")


def test_finish_on_saved_evidence_equals_a_full_run_and_takes_other_postprocessing(helpers, tiny_pipeline):
    ct = _float_ct(helpers, size=(54, 44, 30), spacing=(3.0, 3.0, 3.5))
    full = tiny_pipeline.run(ct)
    evidence = tiny_pipeline.tumor_evidence(ct)
    again = tiny_pipeline.finish(ct, evidence)
    np.testing.assert_array_equal(sitk.GetArrayViewFromImage(again.labelmap), sitk.GetArrayViewFromImage(full.labelmap))
    stricter = replace(tiny_pipeline.settings, tumor_threshold=1.01)  # no voxel is that probable
    none = tiny_pipeline.finish(ct, evidence, stricter)
    assert not (sitk.GetArrayViewFromImage(none.labelmap) == 2).any()
    assert none.measurements.liver_volume_ml == pytest.approx(full.measurements.liver_volume_ml)


def test_the_liver_stages_alone_give_the_liver_of_a_full_run(helpers, tiny_pipeline):
    ct = _float_ct(helpers, size=(54, 44, 30), spacing=(3.0, 3.0, 3.5))
    liver = tiny_pipeline.liver_mask(ct)
    assert liver.any()
    np.testing.assert_array_equal(liver, tiny_pipeline.tumor_evidence(ct).liver)  # the liver the tumor stage searched


def test_grow_threshold_only_adds_to_the_lesions_found(helpers, tiny_pipeline):
    ct = _float_ct(helpers, size=(54, 44, 30), spacing=(3.0, 3.0, 3.5))
    evidence = tiny_pipeline.tumor_evidence(ct)
    plain = replace(tiny_pipeline.settings, active_contour=False)
    grown = replace(plain, tumor_grow_threshold=0.05)
    base = sitk.GetArrayFromImage(tiny_pipeline.finish(ct, evidence, plain).labelmap) == 2
    more = sitk.GetArrayFromImage(tiny_pipeline.finish(ct, evidence, grown).labelmap) == 2
    assert base.any() and more.sum() > base.sum() and not (base & ~more).any()


def test_a_lesion_at_the_liver_surface_keeps_its_bulge_and_the_liver_takes_it_in(helpers, tiny_pipeline):
    """Evidence of a lesion half outside the liver mask: with tumor_bulge_mm it is kept whole
    (tumour label, so the liver volume includes it); with 0 it is cut at the mask."""
    ct = _float_ct(helpers, size=(54, 44, 30), spacing=(3.0, 3.0, 3.5))
    evidence = tiny_pipeline.tumor_evidence(ct)
    region = evidence.region.astype(bool)
    spacing_kji = np.array(ct.GetSpacing()[::-1])
    k0, j0, _ = (int(round(c)) for c in ndimage.center_of_mass(region))
    centre = np.array([k0, j0, np.flatnonzero(region[k0, j0]).max()])  # the liver's edge along i
    grid = np.indices(region.shape).transpose(1, 2, 3, 0)
    ball = np.linalg.norm((grid - centre) * spacing_kji, axis=-1) <= 8.0
    assert (ball & region).sum() >= 0.5 * ball.sum() and (ball & ~region).any()
    probability = np.where(ball, 0.95, 0.0).astype(np.float32)
    evidence = replace(evidence, probability=probability)
    plain = replace(tiny_pipeline.settings, active_contour=False, parenchyma=replace(tiny_pipeline.settings.parenchyma,
                                                                                     enabled=False))
    cut = sitk.GetArrayFromImage(tiny_pipeline.finish(ct, evidence, replace(plain, tumor_bulge_mm=0.0)).labelmap)
    kept = tiny_pipeline.finish(ct, evidence, replace(plain, tumor_bulge_mm=10.0))
    kept_labels = sitk.GetArrayFromImage(kept.labelmap)
    box = evidence.box
    assert not ((cut[box] == 2) & ~region).any()
    bulge = (kept_labels[box] == 2) & ~region
    assert bulge.any() and not (bulge & ~ball).any()
    assert kept.measurements.liver_volume_ml > \
        tiny_pipeline.finish(ct, evidence, replace(plain, tumor_bulge_mm=0.0)).measurements.liver_volume_ml


def test_the_lesion_confidence_filter_drops_lesions_by_the_ensembles_probability(helpers, tiny_pipeline):
    """Each lesion's confidence is read from the ensemble's probability: a cut-off under the
    weakest lesion's keeps them all, one over the strongest's drops them all, one between the
    two drops exactly the lesions below it."""
    from LiverTumorSegLib.postprocess.lesion_filter import lesion_confidences

    ct = _float_ct(helpers, size=(54, 44, 30), spacing=(3.0, 3.0, 3.5))
    evidence = tiny_pipeline.tumor_evidence(ct)
    plain = replace(tiny_pipeline.settings, active_contour=False)
    base = tiny_pipeline.finish(ct, evidence, plain)
    base_tumor = sitk.GetArrayViewFromImage(base.labelmap)[evidence.box] == 2
    confidences = lesion_confidences(base_tumor, evidence.probability)
    assert confidences and min(confidences) > 0
    kept_all = tiny_pipeline.finish(ct, evidence, replace(plain, min_lesion_confidence=min(confidences) - 1e-3))
    np.testing.assert_array_equal(sitk.GetArrayViewFromImage(kept_all.labelmap),
                                  sitk.GetArrayViewFromImage(base.labelmap))
    dropped = tiny_pipeline.finish(ct, evidence, replace(plain, min_lesion_confidence=max(confidences) + 1e-3))
    assert not (sitk.GetArrayViewFromImage(dropped.labelmap) == 2).any()
    assert dropped.measurements.liver_volume_ml == pytest.approx(base.measurements.liver_volume_ml)
    assert dropped.settings["min_lesion_confidence"] == pytest.approx(max(confidences) + 1e-3)


def test_the_parenchyma_prior_shapes_the_probability_the_tumor_mask_is_drawn_from(helpers, tiny_pipeline,
                                                                                  monkeypatch):
    import LiverTumorSegLib.pipeline as pipeline_module

    ct = _float_ct(helpers, size=(54, 44, 30), spacing=(3.0, 3.0, 3.5))
    evidence = tiny_pipeline.tumor_evidence(ct)
    seen = []

    def no_tumor_anywhere(probability, hu, region, spacing, prior, computed=None):
        seen.append(prior)
        return np.zeros_like(probability)

    monkeypatch.setattr(pipeline_module, "apply_parenchyma_prior", no_tumor_anywhere)
    result = tiny_pipeline.finish(ct, evidence)
    assert seen == [tiny_pipeline.settings.parenchyma]
    assert not (sitk.GetArrayViewFromImage(result.labelmap) == 2).any()
    assert evidence.probability.max() > 0.5  # the saved evidence itself is untouched
    assert result.settings["parenchyma"]["enabled"] is tiny_pipeline.settings.parenchyma.enabled


# --- tumor members that take the parenchyma map as a second channel -------------------------

def test_a_member_with_the_parenchyma_map_channel_gets_the_map_of_the_liver_crop(helpers, tiny_models, tmp_path,
                                                                               monkeypatch):
    """This member calls tumor wherever the map (channel 1) is above 0.5 and ignores the CT: it
    finds the phantom's lesion (50 HU below its liver) only if the pipeline computed the map of
    the liver crop and handed it to the member on the member's grid."""
    member = helpers.write_map_member(tmp_path)
    from LiverTumorSegLib.stages import parenchyma

    calls = []
    real = parenchyma._parenchyma_steps
    monkeypatch.setattr(parenchyma, "_parenchyma_steps", lambda *a, **k: calls.append(1) or real(*a, **k))
    ct = _float_ct(helpers, lesion_hu=110)
    result = _pipeline(helpers, tiny_models, tmp_path, tumor_model=member).run(ct)
    # the map for the member, then the prior's statistics again without the model's tumour
    assert len(calls) == 2 and PipelineSettings().parenchyma.fit_without_evidence
    assert result.seconds_per_stage["parenchyma_map"] >= 0  # and timed on its own
    tumor = sitk.GetArrayViewFromImage(result.labelmap) == 2
    assert helpers.dice(tumor, helpers.analytic_labels_like(ct) == 2) > 0.8
    calls.clear()
    independent = replace(PipelineSettings().parenchyma, fit_without_evidence=False)
    _pipeline(helpers, tiny_models, tmp_path, tumor_model=member, parenchyma=independent).run(ct)
    assert len(calls) == 1  # statistics that do not depend on the model: the member's map serves the prior
    calls.clear()
    _pipeline(helpers, tiny_models).run(ct)  # members without the channel: computed once, for the prior
    assert len(calls) == 1
    calls.clear()
    _pipeline(helpers, tiny_models, parenchyma=replace(PipelineSettings().parenchyma, enabled=False)).run(ct)
    assert calls == []  # nor the prior: not at all


def test_lesion_closing_runs_with_its_settings_and_only_adds(helpers, tiny_pipeline, monkeypatch):
    calls = []
    original = pipeline_module.close_lesions

    def recording(tumor, probability, spacing_kji, radius_mm, floor):
        calls.append((radius_mm, floor, tuple(spacing_kji), probability.shape == tumor.shape))
        return original(tumor, probability, spacing_kji, radius_mm, floor)

    monkeypatch.setattr(pipeline_module, "close_lesions", recording)
    ct = _float_ct(helpers, size=(54, 44, 30), spacing=(3.0, 3.0, 3.5))
    evidence = tiny_pipeline.tumor_evidence(ct)
    plain = replace(tiny_pipeline.settings, active_contour=False, lesion_closing_mm=0.0)
    base = sitk.GetArrayFromImage(tiny_pipeline.finish(ct, evidence, plain).labelmap) == 2
    assert calls == []  # 0 mm: off
    closing = replace(plain, lesion_closing_mm=12.0, lesion_closing_floor=0.0)
    closed = sitk.GetArrayFromImage(tiny_pipeline.finish(ct, evidence, closing).labelmap) == 2
    assert calls == [(12.0, 0.0, (3.5, 3.0, 3.0), True)]
    assert base.any() and not (base & ~closed).any()
    assert PipelineSettings().lesion_closing_mm == 10.0 and PipelineSettings().lesion_closing_floor == 0.1
