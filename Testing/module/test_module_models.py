"""The model combo boxes in the stand-in application (Testing/module/slicer_app_standin.py): the
models are listed in Slicer's own process (reading cards needs no PyTorch); a model chosen in a
saved scene is kept, also when the models cannot be listed, and one that is not installed is shown
as such and refused by Segment instead of being shown as "default" and passed on."""

from __future__ import annotations

import pytest

from LiverTumorSegModuleLib import presentation, runs
from slicer_app_standin import SlicerApp, with_versions

CARDS = [{"name": "liver-demo", "task": "liver", "version": "1", "non_clinical": True},
         {"name": "other-liver", "task": "liver", "version": "1", "non_clinical": True},
         {"name": "tumor-demo-ensemble", "task": "tumor", "version": "1", "non_clinical": True,
          "members": [{"model": "a", "weight": 1.0}]}]


def saved_scene_choice(app: SlicerApp, liver: str = "my-liver", tumor: str = "my-tumor"):
    """The settings of a scene saved with these models chosen (loaded before the panel opens)."""
    node = app.module.LiverTumorSegLogic().getParameterNode()
    node.liverModel, node.tumorModel = liver, tumor
    return node


def test_a_saved_model_choice_is_shown_and_kept(app, monkeypatch):
    with_versions(monkeypatch)
    saved = saved_scene_choice(app)
    widget = app.create_widget(CARDS + [{"name": "my-liver", "task": "liver"}, {"name": "my-tumor", "task": "tumor"}])
    assert widget.ui.liverModelComboBox.currentText == "my-liver"
    assert widget.ui.tumorModelComboBox.currentText == "my-tumor"
    widget.ui.ttaCheckBox.checked = False  # the user changes other settings
    widget.ui.deviceComboBox.choose("CPU")
    widget.ui.inputVolumeSelector.setCurrentNode(app.add_ct_volume())
    assert (saved.tta, saved.device) == (False, "CPU")
    assert (saved.liverModel, saved.tumorModel) == ("my-liver", "my-tumor")
    assert app.module.LiverTumorSegLogic.optionsFromParameters(saved).liver_model == "my-liver"


def test_a_saved_model_choice_survives_a_failed_listing(app, monkeypatch):
    with_versions(monkeypatch)
    saved = saved_scene_choice(app)
    app.list_models(error="the model folder cannot be read")
    widget = app.create_widget()
    assert widget.ui.liverModelComboBox.currentText == "my-liver (not verified)"
    assert any("Could not list the models: the model folder cannot be read" in line
               for line in widget.ui.logTextEdit.lines)
    widget.ui.ttaCheckBox.checked = False
    assert (saved.liverModel, saved.tumorModel) == ("my-liver", "my-tumor")

    app.list_models(CARDS + [{"name": "my-liver", "task": "liver"}, {"name": "my-tumor", "task": "tumor"}])
    widget.ui.refreshModelsButton.click()
    assert widget.ui.liverModelComboBox.currentText == "my-liver"
    assert app.dialogs.texts("warning") == []


def test_the_library_s_own_models_are_listed_in_process(app, monkeypatch):
    """The real listing: the embedded models, read in this process, and the library's defaults."""
    with_versions(monkeypatch)
    widget = app.create_widget()
    liver = [text for text, _, _ in widget.ui.liverModelComboBox.items]
    tumor = [text for text, _, _ in widget.ui.tumorModelComboBox.items]
    assert liver[0] == "default (liver-demo)" and "liver-demo" in liver
    assert tumor[0] == "default (tumor-demo-ensemble)" and "tumor-demo-ensemble" in tumor
    assert "Not for clinical use" in widget.ui.modelCardLabel.text and widget.ui.nonClinicalBadgeLabel.visible


def test_a_saved_model_that_is_not_installed_is_shown_missing_and_not_used(app, monkeypatch):
    with_versions(monkeypatch)
    app.use_fake_cli("hang")
    saved = saved_scene_choice(app, tumor="")
    widget = app.create_widget(CARDS)
    saved.inputVolume = app.add_ct_volume()
    combo = widget.ui.liverModelComboBox
    assert combo.currentText == "my-liver (not installed)"
    assert "not installed" in combo.toolTip
    assert [item[0] for item in combo.items] == ["default (liver-demo)", "liver-demo", "other-liver",
                                                 "my-liver (not installed)"]
    assert widget.ui.tumorModelComboBox.currentText == "default (tumor-demo-ensemble)"
    assert any("'my-liver'" in line and "not installed" in line for line in widget.ui.logTextEdit.lines)

    widget.ui.segmentButton.click()
    errors = app.dialogs.texts("error")
    assert len(errors) == 1 and "liver model 'my-liver'" in errors[0] and "not installed" in errors[0]
    assert widget._task is None and runs.active_runs() == []

    combo.choose("other-liver")  # the user picks an installed one: now it is used
    assert saved.liverModel == "other-liver"
    widget.ui.segmentButton.click()
    try:
        assert widget._task is not None and widget._task.running
        assert widget._task.options.liver_model == "other-liver"
    finally:
        widget.cleanup()


@pytest.mark.parametrize("state, text, installed", [
    (presentation.MODELS_UNKNOWN, "x (not verified)", True),
    (presentation.MODELS_LISTED, "x (not installed)", False)])
def test_model_combo_items_keep_the_chosen_model_in_every_state(state, text, installed):
    items, index = presentation.model_combo_items("liver", CARDS, state, "x", "liver-demo")
    assert (items[index].text, items[index].name, items[index].installed) == (text, "x", installed)
    assert items[0].name == "" and items[0].text == "default (liver-demo)"
    items, index = presentation.model_combo_items("liver", CARDS, state, "", "liver-demo")
    assert index == 0
    listed = [i.text for i in presentation.model_combo_items("liver", CARDS, presentation.MODELS_LISTED, "", "d")[0]]
    assert listed == ["default (d)", "liver-demo", "other-liver"]
