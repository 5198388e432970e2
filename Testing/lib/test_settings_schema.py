"""The settings and stage schema (LiverTumorSegLib.settings_schema) and what is made from it: the
``segment`` options, the pipeline's defaults, the command line a front end sends, the stage titles;
and the tuned numbers a tumor model card's ``postprocess`` gives."""

from __future__ import annotations

import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import pytest
import SimpleITK as sitk

from LiverTumorSegLib import settings_schema as schema
from LiverTumorSegLib.cli import SEGMENT_SETTINGS, _settings_from_args, build_parser
from LiverTumorSegLib.errors import LiverTumorSegError
from LiverTumorSegLib.geometry import Geometry
from LiverTumorSegLib.models.card import EnsembleCard, EnsembleMember, card_from_dict, read_card, write_card
from LiverTumorSegLib.models.registry import ModelRegistry
from LiverTumorSegLib.pipeline import Pipeline, PipelineSettings
from LiverTumorSegLib.stages.crop import liver_box

REPO_ROOT = Path(__file__).resolve().parents[2]


def _parse(*options: str):
    return build_parser().parse_args(["segment", "ct.nii.gz", "--output", "out", *options])


def _other_value(s: schema.Setting):
    """A value of ``s`` other than its default."""
    if s.kind is bool:
        return not s.default
    if s.choices:
        return next(c for c in s.choices if c != s.default)
    return "some-model" if s.kind is str else s.default + 0.25


# --- the schema ---------------------------------------------------------------------------------

def test_the_schema_imports_without_torch_or_numpy():
    """The Slicer module reads it (and model cards) in Slicer's own process."""
    script = ("import sys; import LiverTumorSegLib.settings_schema, LiverTumorSegLib.models.registry\n"
              "print(sorted(m for m in sys.modules if m.split('.')[0] in ('torch', 'monai', 'numpy', 'scipy')))")
    completed = subprocess.run([sys.executable, "-c", script], cwd=REPO_ROOT, capture_output=True, text=True,
                               timeout=120)
    assert completed.returncode == 0, completed.stderr
    assert completed.stdout.strip() == "[]"


def test_each_setting_is_declared_once_and_complete():
    names = [s.name for s in schema.SETTINGS]
    assert len(names) == len(set(names))
    flags = [s.flag for s in schema.SETTINGS if s.flag]
    assert len(flags) == len(set(flags))
    for s in schema.SETTINGS:
        assert s.help and s.kind in (bool, float, str)
        assert s.check(s.default) == s.default
        if s.parameter:  # in the Slicer module: a label, and combo items that hold the default
            assert s.label
            assert not s.shown or s.default in [value for _, value in s.shown]
    assert schema.TUNED == ("min_lesion_ml", "crop_margin_mm", "tumor_threshold", "min_lesion_confidence")
    assert [s.parameter for s in schema.MODULE_SETTINGS] == ["device", "quality", "liverModel", "tumorModel", "tta",
                                                              "liverRefine", "activeContour", "interslice"]


def test_values_are_checked_by_the_setting():
    with pytest.raises(schema.SettingError, match="unknown device 'tpu'; use auto, cpu or cuda"):
        schema.setting("device").check("tpu")
    with pytest.raises(ValueError, match="--min-lesion-ml must be 0 or more"):  # a SettingError is a ValueError too
        schema.setting("min_lesion_ml").check(-0.1)
    with pytest.raises(LiverTumorSegError, match="tumor_threshold must be 1 or less"):
        schema.setting("tumor_threshold").check(1.5)
    with pytest.raises(schema.SettingError, match="takes a number"):
        schema.setting("crop_margin_mm").check("wide")
    with pytest.raises(schema.SettingError, match="True or False"):
        schema.setting("tta").check("yes")
    with pytest.raises(schema.SettingError, match="unknown setting 'colour'"):
        schema.checked_values({"colour": "red"})
    assert schema.checked_values({"fast": True, "min_lesion_ml": None})["min_lesion_ml"] is None  # not given


def test_pipeline_settings_take_their_defaults_from_the_schema():
    settings = PipelineSettings()
    for s in schema.SETTINGS:
        owner, _, attribute = s.pipeline_field.rpartition(".")
        value = getattr(getattr(settings, owner) if owner else settings, attribute)
        assert value == s.default, s.name
        assert isinstance(value, schema.LibraryDefault) == s.tuned, s.name
    assert PipelineSettings.crop_margin_mm == 15.0  # as a class attribute too (training crops as the pipeline does)


# --- the command line ---------------------------------------------------------------------------

def test_segment_has_an_option_for_every_setting_with_a_flag(capsys):
    assert set(SEGMENT_SETTINGS) == {s.name for s in schema.SETTINGS if s.flag}
    assert _settings_from_args(_parse()) == PipelineSettings()
    with pytest.raises(SystemExit):
        build_parser().parse_args(["segment", "--help"])
    help_text = " ".join(capsys.readouterr().out.split())
    assert "skip the active-contour refinement of lesion boundaries" in help_text
    assert "--min-lesion-ml ML" in help_text and "--margin-mm MM" in help_text


@pytest.mark.parametrize("name", SEGMENT_SETTINGS)
def test_each_setting_round_trips_through_the_command_line(name):
    """What a front end sends (command_line) is what the parser reads and the pipeline gets."""
    s = schema.setting(name)
    value = _other_value(s)
    options = schema.command_line({name: value})
    assert options and options[0] == s.flag
    parsed = schema.values_from_args(_parse(*options), SEGMENT_SETTINGS)
    assert parsed[name] == value
    assert all(v == (None if schema.setting(n).tuned else schema.setting(n).default)
               for n, v in parsed.items() if n != name)
    settings = _settings_from_args(_parse(*options))
    owner, _, attribute = s.pipeline_field.rpartition(".")
    assert getattr(getattr(settings, owner) if owner else settings, attribute) == value
    assert schema.command_line({name: s.default}) == ([s.flag, repr(float(s.default))] if s.tuned else [])


def test_a_bad_value_on_the_command_line_is_one_error_line(cli_main, capsys, tmp_path):
    ct = tmp_path / "ct.nii.gz"
    ct.write_bytes(b"")
    assert cli_main(["segment", str(ct), "--output", str(tmp_path / "out"), "--margin-mm", "-2"]) == 1
    assert capsys.readouterr().err.strip() == "error: --margin-mm must be 0 or more"


# --- stages -------------------------------------------------------------------------------------

def test_stage_titles():
    assert schema.stage_title("liver") == "Liver (global view)"
    assert schema.stage_title(schema.member_stage("tumor-a"), 2, 3) == "Tumor model tumor-a (2/3)"
    assert schema.split_stage("tumor:tumor-a") == ("tumor", "tumor-a")
    assert schema.split_stage("liver_refine") == ("liver_refine", None)
    assert schema.stage_title("something-new") == "something-new"
    names = [s.name for s in schema.STAGES]
    assert len(names) == len(set(names)) and all(s.weight > 0 for s in schema.STAGES)


def test_every_stage_the_pipeline_reports_has_a_title(tiny_pipeline):
    declared = {s.name for s in schema.STAGES}
    for stage in ["load", *tiny_pipeline.stage_names(), "liver_refine", "write"]:
        assert schema.split_stage(stage)[0] in declared, stage


# --- tuned numbers in the tumor model card ------------------------------------------------------

def _ensemble(tiny_models, **extra) -> dict:
    card = EnsembleCard(name="tuned-ensemble", version="1", task="tumor",
                        members=[EnsembleMember(n, w) for n, w in zip(tiny_models.members, tiny_models.member_weights)])
    return dict(card.to_dict(), **extra)


def test_cards_carry_postprocess_only_when_they_have_it(tiny_models, tmp_path):
    plain = _ensemble(tiny_models)
    assert "postprocess" not in plain and card_from_dict(plain).postprocess == {}  # cards as before
    tuned = card_from_dict(_ensemble(tiny_models, postprocess={"tumor_threshold": 0.4, "min_lesion_ml": 1}))
    assert tuned.postprocess == {"tumor_threshold": 0.4, "min_lesion_ml": 1.0}
    write_card(tuned, tmp_path / "tuned.json")
    assert read_card(tmp_path / "tuned.json").postprocess == tuned.postprocess


@pytest.mark.parametrize("postprocess, fragment", [
    ({"liver_threshold": 0.4}, "may tune min_lesion_ml, crop_margin_mm, tumor_threshold, min_lesion_confidence"),
    ({"tumor_threshold": 2}, "tumor_threshold must be 1 or less"),
    ({"crop_margin_mm": -5}, "--margin-mm must be 0 or more"),
    ({"min_lesion_ml": "small"}, "takes a number"),
    ([0.5], "postprocess must be an object"),
])
def test_a_bad_postprocess_names_the_card_and_the_number(tiny_models, postprocess, fragment):
    with pytest.raises(LiverTumorSegError, match=fragment) as caught:
        card_from_dict(_ensemble(tiny_models, postprocess=postprocess), "tuned.json")
    assert "tuned.json" in str(caught.value)


def test_only_tumor_cards_have_postprocess(tiny_registry, tiny_models):
    liver = dict(tiny_registry.resolve(tiny_models.liver).to_dict(), postprocess={"min_lesion_ml": 1.0})
    with pytest.raises(LiverTumorSegError, match="only a tumor model's card"):
        card_from_dict(liver, "liver.json")


def test_the_pipeline_uses_the_cards_numbers_unless_the_user_gives_them(helpers, tiny_models, tiny_pipeline, tmp_path):
    assert tiny_pipeline.tumor_postprocess == {} and tiny_pipeline.settings == helpers.tiny_pipeline_settings()
    # A minimum lesion larger than the phantom's lesion: the card's number, when used, drops it.
    card = card_from_dict(_ensemble(tiny_models, postprocess={"min_lesion_ml": 1000.0, "crop_margin_mm": 9.0}))
    write_card(card, tmp_path / "tuned-ensemble.json")
    registry = ModelRegistry([tmp_path, tiny_models.directory])
    ct = sitk.Cast(helpers.phantom_ct(), sitk.sitkFloat32)

    tuned = Pipeline(helpers.tiny_pipeline_settings(tumor_model="tuned-ensemble"), registry)
    assert (tuned.settings.min_lesion_ml, tuned.settings.crop_margin_mm, tuned.settings.tumor_threshold) == \
        (1000.0, 9.0, 0.5)
    evidence = tuned.tumor_evidence(ct)
    assert evidence.box == liver_box(evidence.liver, Geometry.of(ct).spacing[::-1], 9.0)
    result = tuned.finish(ct, evidence)
    assert result.measurements.lesions == [] and result.settings["min_lesion_ml"] == 1000.0
    assert tuned.finish(ct, evidence, PipelineSettings(device="cpu")).measurements.lesions == []

    # The user's value wins, also one equal to the library's default (given on the command line).
    given = _settings_from_args(_parse("--tumor-model", "tuned-ensemble", "--min-lesion-ml", "0.05"))
    user = Pipeline(replace(given, device="cpu", active_contour_iterations=4), registry)
    assert (user.settings.min_lesion_ml, user.settings.crop_margin_mm) == (0.05, 9.0)
    assert len(user.finish(ct, evidence).measurements.lesions) == 1
    assert len(tuned.finish(ct, evidence, replace(tuned.settings, min_lesion_ml=0.0)).measurements.lesions) == 1
