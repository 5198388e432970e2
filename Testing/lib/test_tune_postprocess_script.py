"""The post-processing tuning script: its evidence cache (a key per thing the evidence depends on) and its variants."""

from __future__ import annotations

import shutil

import numpy as np
import pytest
import SimpleITK as sitk

from LiverTumorSegLib.develop.scripts.tune_postprocess import evidence_key
from LiverTumorSegLib.models.card import read_card, write_card
from LiverTumorSegLib.models.registry import ModelRegistry
from LiverTumorSegLib.pipeline import Pipeline, PipelineSettings


def equal_weight_copy(tiny_models, folder):
    """A copy of the tiny models in ``folder`` whose tumour ensemble weighs its members equally
    (the fixture's weighs them 3:1)."""
    shutil.copytree(tiny_models.directory, folder)
    card = read_card(folder / f"{tiny_models.tumor}.json")
    for member in card.members:
        member.weight = 1.0
    write_card(card, folder / f"{tiny_models.tumor}.json")
    return folder


def test_the_evidence_key_changes_with_the_ensemble_weights_the_model_run_and_the_case(tmp_path, tiny_models):
    """A re-weighted ensemble of the same members is other evidence (a cache that ignored the
    weights once returned one ensemble's numbers for another), and so is a case of the same name
    whose CT was drawn anew (the synthesis changed)."""
    ct = sitk.GetImageFromArray(np.zeros((4, 5, 6), dtype=np.int16))
    redrawn = sitk.GetImageFromArray(np.ones((4, 5, 6), dtype=np.int16))
    moved = sitk.Image(ct)
    moved.SetOrigin((0.0, 0.0, 10.0))
    reweighted = equal_weight_copy(tiny_models, tmp_path / "reweighted")
    card = read_card(reweighted / f"{tiny_models.tumor}.json")

    def key(directory, case="case-a", image=ct, **settings) -> str:
        return evidence_key(Pipeline(PipelineSettings(**settings), ModelRegistry([directory])), case, image)

    windowed = tmp_path / "windowed"  # the same weights, run in larger sliding windows
    shutil.copytree(tiny_models.directory, windowed)
    member = read_card(windowed / f"{card.members[0].model}.json")
    member.inference_patch_size = tuple(2 * v for v in member.patch_size)
    write_card(member, windowed / f"{card.members[0].model}.json")

    base = key(tiny_models.directory)
    assert base == key(tiny_models.directory)  # stable
    assert base != key(reweighted)
    assert base != key(windowed)
    assert base != key(tiny_models.directory, case="case-b")
    assert base != key(tiny_models.directory, image=redrawn)
    assert base != key(tiny_models.directory, image=moved)
    assert base != key(tiny_models.directory, fast=True)
    assert base != key(tiny_models.directory, tta=False)
    assert base != key(tiny_models.directory, crop_margin_mm=30.0)
    assert base != key(tiny_models.directory, window_overlap=0.5)
    assert base != key(tiny_models.directory, refine_growth_mm=None)


def test_validation_uses_both_training_livers_and_nothing_held_out(monkeypatch):
    """Every case comes from a training liver or a validation phantom, under seeds that neither
    training (below 9000) nor the held-out evaluation (9000-9999, phantoms 10000+) draws."""
    from LiverTumorSegLib.develop.scripts import tune_postprocess

    loaded, seeds = [], []

    def load(shared, name):
        loaded.append(name)
        return f"ct:{name}", f"liver:{name}"

    def insert(ct, liver, seed, kind):
        seeds.append(seed)
        return f"{ct}+{kind}", f"labels:{seed}", {}

    def perfusion(ct, liver, seed):
        seeds.append(seed)
        return f"{ct}+perfusion", {"pattern": "wedge"}

    def phantom(seed, kind, spacing):
        seeds.append(seed)
        return "ct", "labels", {}

    monkeypatch.setattr(tune_postprocess, "has_shared_case", lambda shared, name: True)
    monkeypatch.setattr(tune_postprocess, "load_shared_case", load)
    monkeypatch.setattr(tune_postprocess, "insert_tumor_kind", insert)
    monkeypatch.setattr(tune_postprocess, "add_perfusion_variation", perfusion)
    monkeypatch.setattr(tune_postprocess, "phantom_with_tumor_kind", phantom)
    cases = tune_postprocess.validation_cases(3, ["classic", "surface"])
    assert set(loaded) == {"ts_upper_abdomen_3mm", "chaos_ct_1"}
    assert all(5002 <= s < 9000 or s >= 20000 for s in seeds) and not any(9000 <= s < 20000 for s in seeds)
    names = [case[0] for case in cases]
    assert {"ts_upper+classic-20000", "chaos+surface-20001", "ts_upper (tumour-free)",
            "chaos+perfusion+surface-21004", "ts_upper+perfusion+classic-21005"} <= set(names)
    assert len(names) == len(set(names))


def test_lesion_closing_variants_parse_into_pipeline_settings():
    from LiverTumorSegLib.develop.scripts.tune_postprocess import parse_closing

    assert parse_closing("10/0.1") == dict(lesion_closing_mm=10.0, lesion_closing_floor=0.1)
    assert parse_closing("0/0") == dict(lesion_closing_mm=0.0, lesion_closing_floor=0.0)
    for bad in ("10", "a/b", "1/2/3"):
        with pytest.raises(SystemExit, match="radius_mm/floor"):
            parse_closing(bad)


def test_slab_cases_cut_every_tumour_case_and_mark_its_kind(monkeypatch):
    import numpy as np
    import SimpleITK as sitk

    from LiverTumorSegLib.develop.scripts.tune_postprocess import slab_cases

    labels_array = np.zeros((50, 8, 8), np.uint8)
    labels_array[5:45, 2:6, 2:6] = 1
    labels_array[30:34, 3:5, 3:5] = 2
    labels = sitk.GetImageFromArray(labels_array)
    ct = sitk.GetImageFromArray(labels_array.astype(np.float32) * 50.0)
    for image in (ct, labels):
        image.SetSpacing((1.0, 1.0, 2.0))
    cases = [("a", "classic", ct, labels), ("free", "none", ct, labels), ("b", "surface on perfusion", ct, labels)]
    slabs = slab_cases(cases)
    assert [(name, kind) for name, kind, _, _ in slabs] == [("a 40 mm slab", "classic (40 mm slab)"),
                                                           ("b 40 mm slab", "surface on perfusion (40 mm slab)")]
    assert all(c.GetSize()[2] == 20 and (sitk.GetArrayViewFromImage(l) == 2).sum() == 16 for _, _, c, l in slabs)


def test_score_counts_lesions_found_apart_above_and_below_10_mm_and_false_tumour_on_free_livers():
    from types import SimpleNamespace

    import numpy as np
    import SimpleITK as sitk

    from LiverTumorSegLib.develop.scripts.tune_postprocess import score

    def image(array: np.ndarray) -> sitk.Image:
        result = sitk.GetImageFromArray(array.astype(np.uint8))
        result.SetSpacing((1.0, 1.0, 1.0))
        return result

    labels = np.zeros((40, 40, 40), np.uint8)
    labels[2:38, 2:38, 2:38] = 1
    labels[5:20, 5:20, 5:20] = 2  # 15 mm cube: 18.6 mm equivalent sphere
    labels[30:34, 30:34, 30:34] = 2  # 4 mm cube: 5 mm
    labels[30:34, 5:9, 30:34] = 2  # another 5 mm lesion
    found = labels.copy()
    found[30:34, 30:34, 30:34] = 1  # the big lesion and one small one are found
    found[31:33, 31:33, 31:33] = 2
    found[30:34, 5:9, 30:34] = 1
    free = labels.copy()
    free[labels == 2] = 1
    outputs = {"tumour": found, "free": free.copy()}
    outputs["free"][10:12, 10:12, 10:12] = 2  # 8 voxels of false tumour on a tumour-free liver

    pipeline = SimpleNamespace(finish=lambda ct, evidence, settings: SimpleNamespace(labelmap=image(outputs[evidence])))
    cases = [(("case", "metastases", image(labels), image(labels)), "tumour"),
             (("free liver", "none", image(free), image(free)), "free")]
    result = score(pipeline, cases, PipelineSettings())
    assert result["lesions_ge_10mm_found"] == "1/1"
    assert result["lesions_under_10mm_found"] == "1/2"
    assert result["false_positive_lesions"] == 0
    assert result["tumor_ml_on_tumour_free_livers"] == {"free liver": 0.01}
    assert result["per_kind"]["metastases"] == pytest.approx(2 * (3375 + 8) / ((3375 + 8) + (3375 + 128)), abs=1e-3)
    assert "per_case" not in result
    each = score(pipeline, cases, PipelineSettings(), per_case=True)["per_case"]
    assert each == {"case": [round(result["per_kind"]["metastases"], 3), 0.0]}  # tumour cases only
    outputs["spill"] = found.copy()
    outputs["spill"][0:2, 0:10, 0:10] = 2  # 200 voxels of tumour outside the reference liver
    spilled = score(pipeline, [(cases[0][0], "spill")], PipelineSettings(), per_case=True)
    assert spilled["per_case"]["case"][1] == 0.2 and spilled["tumor_ml_outside_reference_liver"] == 0.2


def test_an_ensemble_from_its_members_cached_evidence_equals_the_ensemble_run(tmp_path, tiny_models, helpers):
    """--ensembles averages each member's own evidence; the pipeline running the equal-weight
    ensemble must give the same probability, uncertainty and liver stages."""
    import numpy as np
    import SimpleITK as sitk

    from LiverTumorSegLib.develop.scripts.tune_postprocess import cached_evidence, combined_evidence

    registry = ModelRegistry([equal_weight_copy(tiny_models, tmp_path / "equal")])
    ct = sitk.Cast(helpers.phantom_ct(), sitk.sitkFloat32)
    case = ("case", "classic", ct, None)
    cache = tmp_path / "cache"
    parts = [cached_evidence(Pipeline(PipelineSettings(tumor_model=name), registry), case, cache)
             for name in tiny_models.members]
    assert len(list(cache.glob("*.pkl"))) == len(parts)  # one cached evidence per member
    assert not np.array_equal(parts[0].probability, parts[1].probability)  # the members differ
    combined = combined_evidence(parts)
    whole = Pipeline(PipelineSettings(), registry).tumor_evidence(ct)
    assert combined.box == whole.box and np.array_equal(combined.liver, whole.liver)
    np.testing.assert_allclose(combined.probability, whole.probability, atol=1e-5)
    assert whole.uncertainty is not None  # flip TTA: the spread is averaged too
    np.testing.assert_allclose(combined.uncertainty, whole.uncertainty, atol=1e-5)

    weighted = combined_evidence(parts, [3.0, 1.0])  # a weighted member counts that many times over
    np.testing.assert_allclose(weighted.probability, 0.75 * parts[0].probability + 0.25 * parts[1].probability,
                               atol=1e-6)
    np.testing.assert_allclose(weighted.uncertainty, 0.75 * parts[0].uncertainty + 0.25 * parts[1].uncertainty,
                               atol=1e-6)

    other = parts[1]
    other.box = tuple(slice(s.start + 1, s.stop) for s in other.box)
    with pytest.raises(ValueError, match="different liver stages"):
        combined_evidence([parts[0], other])


def test_ensembles_parse_into_their_members():
    from LiverTumorSegLib.develop.scripts.tune_postprocess import parse_ensembles

    assert parse_ensembles("a+b; a + b + c;c") == {
        "a+b": [("a", 1.0), ("b", 1.0)], "a+b+c": [("a", 1.0), ("b", 1.0), ("c", 1.0)], "c": [("c", 1.0)]}
    assert parse_ensembles("a+b*2.5") == {"a+b*2.5": [("a", 1.0), ("b", 2.5)]}
    with pytest.raises(SystemExit, match="empty ensemble"):
        parse_ensembles("a+b;;c")
    with pytest.raises(SystemExit, match="NAME or NAME"):
        parse_ensembles("a+b*x")
    with pytest.raises(SystemExit, match="must be > 0"):
        parse_ensembles("a+b*0")
