"""The model combo boxes in the stand-in application (Testing/module/slicer_app_standin.py): a model
chosen in a saved scene is kept while the model list loads, and one that is not installed is shown
as such and refused by Segment instead of being shown as "default" and passed on."""

from __future__ import annotations

import pytest

from LiverTumorSegModuleLib import presentation, process
from slicer_app_standin import SlicerApp, fire, with_versions

CARDS = [{"name": "liver-demo", "task": "liver", "version": "1", "non_clinical": True},
         {"name": "other-liver", "task": "liver", "version": "1", "non_clinical": True},
         {"name": "tumor-demo-ensemble", "task": "tumor", "version": "1", "non_clinical": True,
          "members": [{"model": "a", "weight": 1.0}]}]


def saved_scene_choice(app: SlicerApp, liver: str = "my-liver", tumor: str = "my-tumor"):
    """The settings of a scene saved with these models chosen (loaded before the panel opens)."""
    node = app.module.LiverTumorSegLogic().getParameterNode()
    node.liverModel, node.tumorModel = liver, tumor
    return node


def test_a_saved_model_choice_survives_while_the_model_list_loads(app, monkeypatch):
    with_versions(monkeypatch)
    saved = saved_scene_choice(app)
    widget = app.create_widget()
    assert widget.listing.poll()  # still listing
    assert widget.ui.liverModelComboBox.currentText == "my-liver (checking...)"
    widget.ui.ttaCheckBox.checked = True  # the user changes other settings meanwhile
    widget.ui.deviceComboBox.choose("CPU")
    widget.ui.inputVolumeSelector.setCurrentNode(app.add_ct_volume())
    assert (saved.tta, saved.device) == (True, "CPU")
    assert (saved.liverModel, saved.tumorModel) == ("my-liver", "my-tumor")
    assert app.module.LiverTumorSegLogic.optionsFromParameters(saved).liver_model == "my-liver"

    widget.listing.answer(CARDS + [{"name": "my-liver", "task": "liver"}, {"name": "my-tumor", "task": "tumor"}])
    fire(widget._listingTimer)
    assert widget.ui.liverModelComboBox.currentText == "my-liver"
    assert widget.ui.tumorModelComboBox.currentText == "my-tumor"
    assert (saved.liverModel, saved.tumorModel) == ("my-liver", "my-tumor")


def test_a_saved_model_that_is_not_installed_is_shown_missing_and_not_used(app, monkeypatch):
    with_versions(monkeypatch)
    app.use_fake_cli("hang")
    saved = saved_scene_choice(app, tumor="")
    widget = app.create_widget()
    saved.inputVolume = app.add_ct_volume()
    widget.listing.answer(CARDS)
    fire(widget._listingTimer)
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
    assert widget._task is None and process.active_runs() == []

    combo.choose("other-liver")  # the user picks an installed one: now it is used
    assert saved.liverModel == "other-liver"
    widget.ui.segmentButton.click()
    try:
        assert widget._task is not None and widget._task.running
        assert widget._task.options.liver_model == "other-liver"
    finally:
        widget.cleanup()


@pytest.mark.parametrize("state, text, installed", [
    (presentation.MODELS_LISTING, "x (checking...)", True),
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
