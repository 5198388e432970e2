"""The panel's one-click lesion edits, in the stand-in application (Testing/module/slicer_app_standin.py)
on a real scene: "Add lesion" / "Remove lesion" turn the next click (a markups point placed in
single place mode) into the edit, the segments and the results table change, "Undo lesion edit"
takes it back; clicks it cannot use, no results and a missing PyTorch give a message in the panel,
never a traceback or a dialog.

The CT is the test suite's phantom (a lesion of radius 10 mm in the liver); the tumor model is the
tiny test ensemble."""

from __future__ import annotations

import numpy as np
import pytest
import vtk

from LiverTumorSegModuleLib import lesion, mrml
from mrml_helpers import add_volume_from_image, paint
from slicer_app_standin import with_versions

from LiverTumorSegLib import edit
from LiverTumorSegLib.geometry import lps_to_ras
from LiverTumorSegLib.io.terminology import TUMOR
from LiverTumorSegLib.models.registry import ModelRegistry


@pytest.fixture(scope="module")
def tiny_editor(tiny_models_dir):
    return edit.LesionEditor(registry=ModelRegistry([tiny_models_dir]))


def ras(lps) -> tuple:
    return tuple(float(v) for v in lps_to_ras(np.asarray(lps, dtype=float)))


class Panel:
    """The panel with the phantom CT and a LiverTumorSeg result whose labels ``labels_from_truth`` gives."""

    def __init__(self, app, helpers, editor_factory, labels_from_truth=lambda truth: np.where(truth > 0, 1, 0)):
        self.app = app
        self.widget = app.create_widget()
        self.widget.logic.lesions = lesion.LesionEditing(editor_factory=editor_factory)
        ct = helpers.phantom_ct()
        self.truth = helpers.analytic_labels_like(ct)
        self.volume = add_volume_from_image(app.scene, ct)
        self.segmentation = mrml.import_labelmap(app.scene, self.volume,
                                                 labels_from_truth(self.truth).astype(np.uint8))
        mrml.recompute_measurements(app.scene, self.segmentation, self.volume)  # the table of the run
        self.widget._parameterNode.inputVolume = self.volume
        self.widget._parameterNode.outputSegmentation = self.segmentation
        self.ui = self.widget.ui

    def click(self, point_ras) -> None:
        """A click in a slice view while Slicer is in place mode: a point on the active point list."""
        _, selection = lesion.interaction_and_selection_nodes(self.app.scene)
        node = self.app.scene.GetNodeByID(selection.GetActivePlaceNodeID())
        assert node is not None and node.GetName().startswith(lesion.ClickPlacement.NODE_NAME)
        node.AddControlPointWorld(vtk.vtkVector3d(*point_ras))

    def tumor(self) -> np.ndarray:
        return mrml.segment_mask(self.segmentation, TUMOR, self.volume)

    def status(self) -> str:
        return self.ui.lesionStatusLabel.text

    def table_rows(self) -> list:
        return [self.ui.resultsTable.cells[(r, 0)].text for r in range(self.ui.resultsTable.rows)]


def assert_no_traceback_and_no_dialog(panel: Panel) -> None:
    assert "Traceback" not in panel.status() and "Traceback" not in "\n".join(panel.ui.logTextEdit.lines)
    assert panel.app.dialogs.shown == []


def test_add_lesion_then_a_click_draws_it_updates_the_table_and_undo_takes_it_back(app, helpers, tiny_editor):
    panel = Panel(app, helpers, lambda: tiny_editor)
    ui = panel.ui
    assert ui.addLesionButton.enabled and ui.removeLesionButton.enabled and not ui.undoLesionButton.enabled
    assert panel.table_rows() == ["Liver (tumor included)", "Liver tumor (all lesions)"]

    ui.addLesionButton.click()
    assert ui.addLesionButton.text == "Cancel (Esc)" and ui.removeLesionButton.text == "Remove lesion"
    assert "Click inside the lesion to add in a slice view" in panel.status()
    interaction, _ = lesion.interaction_and_selection_nodes(app.scene)
    assert interaction.GetCurrentInteractionMode() == interaction.Place

    panel.click(ras(helpers.LESION_CENTER_LPS))
    assert helpers.dice(panel.tumor(), panel.truth == 2) > 0.8
    assert panel.status().startswith("Added ") and "tumor model" in panel.status()
    assert panel.table_rows() == ["Liver (tumor included)", "Liver tumor (all lesions)", "Lesion 1"]
    assert "lesion edit" in ui.resultsSourceLabel.text and "edited since" not in ui.resultsSourceLabel.text
    assert ui.undoLesionButton.enabled and "add lesion at R,A,S" in ui.undoLesionButton.toolTip
    assert ui.addLesionButton.text == "Add lesion"
    assert interaction.GetCurrentInteractionMode() == interaction.ViewTransform
    assert app.scene.GetFirstNodeByName(lesion.ClickPlacement.NODE_NAME) is None  # the click's point list is gone
    assert any(line.startswith("Added ") for line in ui.logTextEdit.lines)
    assert mrml.needs_overwrite_confirmation(panel.segmentation, panel.volume)  # Segment will ask first
    assert_no_traceback_and_no_dialog(panel)

    ui.undoLesionButton.click()
    assert not panel.tumor().any()
    assert panel.status().startswith("Undone: add lesion at R,A,S")
    assert panel.table_rows() == ["Liver (tumor included)", "Liver tumor (all lesions)"]
    assert not ui.undoLesionButton.enabled
    assert_no_traceback_and_no_dialog(panel)


def test_remove_lesion_then_a_click_removes_it(app, helpers, tiny_editor):
    panel = Panel(app, helpers, lambda: tiny_editor, labels_from_truth=lambda truth: truth.copy())
    assert panel.table_rows()[-1] == "Lesion 1"
    panel.ui.removeLesionButton.click()
    assert "Click on the lesion to remove" in panel.status()
    panel.click(ras(helpers.LESION_CENTER_LPS))
    assert not panel.tumor().any()
    assert panel.status().startswith("Removed a lesion")
    assert panel.table_rows() == ["Liver (tumor included)", "Liver tumor (all lesions)"]
    assert_no_traceback_and_no_dialog(panel)


@pytest.mark.parametrize("button, point_lps, message", [
    ("addLesionButton", (76.0, 0.0, 0.0), "is on background outside the body (air)"),
    ("addLesionButton", (40.0, 30.0, 0.0), "is on background outside the liver"),
    ("removeLesionButton", (-15.0, 0.0, -20.0), "is on the liver, not on a tumor"),
])
def test_a_click_it_cannot_use_says_why_in_the_panel(app, helpers, tiny_editor, button, point_lps, message):
    panel = Panel(app, helpers, lambda: tiny_editor)
    before = panel.tumor()
    getattr(panel.ui, button).click()
    panel.click(ras(point_lps))
    assert message in panel.status() and "color:#c62828" in panel.status()  # in red
    assert np.array_equal(panel.tumor(), before) and not panel.ui.undoLesionButton.enabled
    assert getattr(panel.ui, button).text in lesion.ACTION_TITLES.values()  # ready for the next try
    assert_no_traceback_and_no_dialog(panel)


def test_escape_or_the_button_again_cancels_the_click(app, helpers, tiny_editor):
    panel = Panel(app, helpers, lambda: tiny_editor)
    interaction, _ = lesion.interaction_and_selection_nodes(app.scene)
    panel.ui.addLesionButton.click()
    interaction.SetCurrentInteractionMode(interaction.ViewTransform)  # Escape in the view
    assert panel.status() == "Add lesion: cancelled, no point was clicked."
    assert panel.ui.addLesionButton.text == "Add lesion"

    panel.ui.removeLesionButton.click()
    panel.ui.removeLesionButton.click()  # now "Cancel (Esc)"
    assert panel.status() == "Remove lesion: cancelled."
    assert interaction.GetCurrentInteractionMode() == interaction.ViewTransform
    assert app.scene.GetFirstNodeByName(lesion.ClickPlacement.NODE_NAME) is None

    panel.ui.removeLesionButton.click()
    panel.ui.addLesionButton.click()  # the other button switches to the other edit
    assert "Click inside the lesion to add" in panel.status() and panel.ui.removeLesionButton.text == "Remove lesion"
    panel.click(ras(helpers.LESION_CENTER_LPS))
    assert panel.tumor().any()
    assert_no_traceback_and_no_dialog(panel)


def test_no_results_loaded_says_so(app, helpers, tiny_editor):
    panel = Panel(app, helpers, lambda: tiny_editor)
    panel.ui.addLesionButton.click()
    # the results go away before the click: the segments were removed in Segment Editor
    segmentation = panel.segmentation.GetSegmentation()
    for index in reversed(range(segmentation.GetNumberOfSegments())):
        segmentation.RemoveSegment(segmentation.GetNthSegmentID(index))
    panel.click(ras(helpers.LESION_CENTER_LPS))
    assert "No results loaded" in panel.status() and "has no 'Liver' segment" in panel.status()
    assert_no_traceback_and_no_dialog(panel)

    panel.widget._parameterNode.outputSegmentation = None
    assert not panel.ui.addLesionButton.enabled and not panel.ui.removeLesionButton.enabled
    panel.widget.onLesionButton(lesion.ADD)  # called anyway (e.g. from the Python console)
    assert panel.status().startswith('<span style="color:#c62828">No results loaded: click Segment first')


def test_undo_asks_before_overwriting_later_edits(app, helpers, tiny_editor):
    panel = Panel(app, helpers, lambda: tiny_editor)
    panel.ui.addLesionButton.click()
    panel.click(ras(helpers.LESION_CENTER_LPS))
    drawn = panel.tumor()
    extra = np.zeros_like(drawn)
    k, j, i = np.argwhere(drawn).min(axis=0)
    extra[k, j, i - 1] = True  # the user paints next to the lesion
    paint(panel.segmentation, mrml.find_segment_id(panel.segmentation, TUMOR), panel.volume, extra)
    painted = panel.tumor()

    app.dialogs.answers["confirmYesNo"] = False
    panel.ui.undoLesionButton.click()
    asked = app.dialogs.texts("confirmYesNo")
    assert len(asked) == 1 and "edited in the region of the last lesion edit" in asked[0]
    assert np.array_equal(panel.tumor(), painted) and panel.ui.undoLesionButton.enabled
    assert panel.status() == "Undo cancelled: the segmentation is unchanged."

    app.dialogs.answers["confirmYesNo"] = True
    panel.ui.undoLesionButton.click()
    assert not panel.tumor().any() and not panel.ui.undoLesionButton.enabled


def test_without_pytorch_lesions_are_grown_from_the_ct_and_the_panel_says_so(app, helpers, monkeypatch):
    class NoTorchEditor(edit.LesionEditor):
        def __init__(self, *args, use_model: bool = True, **kwargs):
            if use_model:
                raise ImportError("No module named 'torch'")
            super().__init__(*args, use_model=False, **kwargs)

    monkeypatch.setattr(edit, "LesionEditor", NoTorchEditor)
    panel = Panel(app, helpers, None)
    panel.ui.addLesionButton.click()
    assert "PyTorch or MONAI is not installed in Slicer" in panel.status()
    assert "Install dependencies" in panel.status()
    panel.click(ras(helpers.LESION_CENTER_LPS))
    assert helpers.dice(panel.tumor(), panel.truth == 2) > 0.8
    assert "grown from the CT around the click (no tumor model)" in panel.status()
    assert_no_traceback_and_no_dialog(panel)


def test_the_lesion_edit_asks_for_scikit_image_but_not_for_pytorch(app, helpers, tiny_editor, monkeypatch):
    with_versions(monkeypatch, missing=("torch", "monai", "skimage"))
    panel = Panel(app, helpers, lambda: tiny_editor)
    app.dialogs.answers["confirmOkCancel"] = False
    panel.ui.addLesionButton.click()
    asked = app.dialogs.texts("confirmOkCancel")
    assert len(asked) == 1 and "scikit-image" in asked[0] and "torch" not in asked[0] and "monai" not in asked[0]
    assert "the lesion edit needs them" in panel.ui.logTextEdit.lines[-1]
    assert panel.ui.addLesionButton.text == "Add lesion"  # no click is awaited
