"""One-click lesion edits on a real vtkMRMLSegmentationNode (PyPI slicer-core): the module's
LesionEditing (LiverTumorSegModuleLib/lesion.py) adds and removes lesions in the "Liver" and
"Liver tumor" segments, touches no other segment and nothing outside the lesion, undoes exactly,
refuses clicks it cannot use with a clear message, updates the table without giving up the
overwrite protection; and ClickPlacement takes the next click as Slicer places a markups point.

The CT is the test suite's phantom (a -60 HU lesion of radius 10 mm in a 160 HU liver) as a volume
node; the tumor model is the tiny test ensemble (voxels darker than 25-35 HU are tumor)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
import slicer
import vtk

from LiverTumorSegModuleLib import lesion, mrml
from mrml_helpers import add_volume_from_image, paint

from LiverTumorSegLib.edit import LesionEditor
from LiverTumorSegLib.geometry import lps_to_ras
from LiverTumorSegLib.io.terminology import LIVER, TUMOR
from LiverTumorSegLib.models.registry import ModelRegistry

OTHER_NAME = "Portal vein (mine)"


@pytest.fixture(scope="module")
def tiny_editor(tiny_models_dir):
    return LesionEditor(registry=ModelRegistry([tiny_models_dir]))


@pytest.fixture
def editing(tiny_editor):
    return lesion.LesionEditing(editor_factory=lambda: tiny_editor)


def ras(lps) -> tuple:
    return tuple(float(v) for v in lps_to_ras(np.asarray(lps, dtype=float)))


class Case:
    """A scene with the phantom CT and a segmentation node made by the module from ``labels``,
    plus a segment of the user's own ("Portal vein (mine)") that shares a layer with ours."""

    def __init__(self, helpers, labels_from_truth, other_mask=None, direction="LPS"):
        self.scene = slicer.vtkMRMLScene()
        self.ct = helpers.phantom_ct(direction=helpers.DIRECTIONS[direction])
        self.truth = helpers.analytic_labels_like(self.ct)
        self.volume = add_volume_from_image(self.scene, self.ct)
        self.node = mrml.import_labelmap(self.scene, self.volume, labels_from_truth(self.truth))
        self.other_id = None
        if other_mask is not None:
            segmentation = self.node.GetSegmentation()
            self.other_id = segmentation.AddEmptySegment("mine", OTHER_NAME, (0.0, 0.0, 1.0))
            paint(self.node, self.other_id, self.volume, other_mask(self.truth), mode="replace")
            segmentation.CollapseBinaryLabelmaps(False)  # as a saved and reloaded segmentation has it

    def masks(self) -> dict:
        masks = {"liver": mrml.segment_mask(self.node, LIVER, self.volume),
                 "tumor": mrml.segment_mask(self.node, TUMOR, self.volume)}
        if self.other_id is not None:
            masks["other"] = self.other_mask()
        return masks

    def other_mask(self) -> np.ndarray:
        merged = slicer.vtkOrientedImageData()
        reference = mrml._reference_geometry_image(self.volume)
        ids = vtk.vtkStringArray()
        ids.InsertNextValue(self.other_id)
        assert self.node.GenerateMergedLabelmapForAllSegments(merged, slicer.vtkSegmentation.EXTENT_REFERENCE_GEOMETRY,
                                                              reference, ids)
        resampled = slicer.vtkOrientedImageData()
        slicer.vtkOrientedImageDataResample.ResampleOrientedImageToReferenceOrientedImage(merged, reference, resampled)
        from vtk.util import numpy_support

        i, j, k = self.volume.GetImageData().GetDimensions()
        out = np.zeros((k, j, i), bool)
        e = resampled.GetExtent()
        out[e[4]:e[5] + 1, e[2]:e[3] + 1, e[0]:e[1] + 1] = numpy_support.vtk_to_numpy(
            resampled.GetPointData().GetScalars()).reshape(e[5] - e[4] + 1, e[3] - e[2] + 1, e[1] - e[0] + 1) > 0
        return out

    def shares_layer(self, term) -> bool:
        segmentation = self.node.GetSegmentation()
        return segmentation.GetLayerIndex(self.other_id) == segmentation.GetLayerIndex(mrml.find_segment_id(self.node, term))


def missed_lesion(truth):
    """The module's result that missed the lesion: all liver."""
    return np.where(truth > 0, 1, 0).astype(np.uint8)


def near_lesion_liver(truth):
    """Liver voxels 12-16 mm from the lesion centre along one axis: inside the edit's box, not the lesion."""
    mask = np.zeros(truth.shape, bool)
    lesion_voxels = np.argwhere(truth == 2)
    k, j, i = lesion_voxels.mean(axis=0).round().astype(int)
    mask[k, j, i + 4:i + 6] = True  # 3 mm voxels: 12-15 mm off centre, outside the 10 mm lesion
    return mask & (truth == 1)


def near_lesion_background(truth):
    """Background voxels (in the body or not) up to 35 mm from the lesion centre: inside the edit's box,
    outside the liver, so on the liver's layer (and on the empty tumor segment's)."""
    k, j, i = np.argwhere(truth == 2).mean(axis=0)
    kk, jj, ii = np.ogrid[tuple(slice(0, n) for n in truth.shape)]
    distance = np.sqrt(((kk - k) * 3.5) ** 2 + ((jj - j) * 3.0) ** 2 + ((ii - i) * 3.0) ** 2)
    return (truth == 0) & (distance < 35.0)


def assert_equal_masks(after: dict, before: dict, keys) -> None:
    for key in keys:
        assert np.array_equal(after[key], before[key]), f"the {key} segment changed"


def test_add_draws_the_missed_lesion_and_undo_restores_exactly(helpers, editing):
    case = Case(helpers, missed_lesion, other_mask=near_lesion_background)
    assert case.shares_layer(TUMOR) and case.shares_layer(LIVER)  # the empty tumor shares the liver's layer
    before = case.masks()
    assert not before["tumor"].any() and before["other"].any()

    result = editing.add(case.node, case.volume, ras(helpers.LESION_CENTER_LPS))

    after = case.masks()
    drawn = after["tumor"]
    assert helpers.dice(drawn, case.truth == 2) > 0.8
    # exactly the library's edit, nothing outside it: the tumor is what it drew, the liver includes it
    new_labels = sitk.GetArrayFromImage(result.edit.labelmap)
    assert np.array_equal(drawn, new_labels == 2)
    assert np.array_equal(after["liver"], before["liver"] | drawn)
    assert_equal_masks(after, before, ["other"])
    assert result.edit.method == "model" and result.step is not None
    assert "Added" in result.message() and "tumor model" in result.message()
    # the edit is the user's: a new Segment run into this node asks first
    assert mrml.was_edited(case.node, case.volume) and mrml.needs_overwrite_confirmation(case.node, case.volume)
    assert editing.can_undo(case.node)
    assert "add lesion at R,A,S" in editing.undo_description(case.node)

    editing.undo(case.node)
    assert_equal_masks(case.masks(), before, ["liver", "tumor", "other"])
    assert not editing.can_undo(case.node)


def test_remove_takes_exactly_the_clicked_lesion_and_undo_restores_it(helpers, editing):
    second = (slice(20, 22), slice(18, 20), slice(14, 16))  # a second lesion, far from the first

    def with_two_lesions(truth):
        labels = truth.copy()
        labels[second] = 2
        return labels

    case = Case(helpers, with_two_lesions, other_mask=near_lesion_liver)
    assert case.shares_layer(TUMOR)
    before = case.masks()
    result = editing.remove(case.node, case.volume, ras(helpers.LESION_CENTER_LPS))

    after = case.masks()
    expected_tumor = np.zeros_like(before["tumor"])
    expected_tumor[second] = True
    assert np.array_equal(after["tumor"], expected_tumor), "not exactly the clicked lesion was removed"
    assert_equal_masks(after, before, ["liver", "other"])  # the liver already held the lesion
    assert result.edit.voxels_changed == int((case.truth == 2).sum())
    assert "Removed a lesion" in result.message()

    editing.undo(case.node)
    assert_equal_masks(case.masks(), before, ["liver", "tumor", "other"])


def test_add_under_a_transform_and_without_a_tumor_segment(helpers, editing):
    case = Case(helpers, missed_lesion)
    case.node.GetSegmentation().RemoveSegment(mrml.find_segment_id(case.node, TUMOR))
    transform = case.scene.AddNewNodeByClass("vtkMRMLLinearTransformNode")
    shift = vtk.vtkMatrix4x4()
    shift.SetElement(0, 3, 40.0)
    shift.SetElement(2, 3, -25.0)
    transform.SetMatrixTransformToParent(shift)
    for node in (case.volume, case.node):
        node.SetAndObserveTransformNodeID(transform.GetID())
    before = case.masks()
    local = np.asarray(ras(helpers.LESION_CENTER_LPS))
    clicked_world = tuple(local + np.array([40.0, 0.0, -25.0]))  # the click is in world coordinates

    result = editing.add(case.node, case.volume, clicked_world)

    tumor_id = mrml.find_segment_id(case.node, TUMOR)
    assert tumor_id is not None and case.node.GetSegmentation().GetSegment(tumor_id).GetName() == TUMOR.name
    assert mrml.segment_terminology_string(case.node.GetSegmentation().GetSegment(tumor_id)) == TUMOR.slicer_string()
    assert helpers.dice(case.masks()["tumor"], case.truth == 2) > 0.8
    assert result.edit.point_ras_mm == pytest.approx(tuple(local))

    editing.undo(case.node)  # the segment the edit made goes again
    assert mrml.find_segment_id(case.node, TUMOR) is None
    assert_equal_masks(case.masks(), before, ["liver", "tumor"])


def test_scene_undo_takes_back_an_edit_where_the_application_turned_it_on(helpers, editing):
    case = Case(helpers, missed_lesion)
    case.scene.SetUndoOn()
    case.node.SetUndoEnabled(True)
    before = case.masks()
    editing.add(case.node, case.volume, ras(helpers.LESION_CENTER_LPS))
    assert case.masks()["tumor"].any()
    case.scene.Undo()
    assert_equal_masks(case.masks(), before, ["liver", "tumor"])


def test_undo_refuses_to_overwrite_later_edits_in_the_lesion_region_unless_forced(helpers, editing):
    case = Case(helpers, missed_lesion)
    before = case.masks()
    result = editing.add(case.node, case.volume, ras(helpers.LESION_CENTER_LPS))
    after_edit = case.masks()
    # the user paints more tumor next to the lesion, inside the edit's box
    box = result.step.box
    painted = np.zeros_like(before["tumor"])
    centre = [int((s.start + s.stop) // 2) for s in box]
    painted[centre[0], centre[1], box[2].start:box[2].start + 2] = True
    paint(case.node, mrml.find_segment_id(case.node, TUMOR), case.volume, painted)
    painted_state = case.masks()
    assert not np.array_equal(painted_state["tumor"], after_edit["tumor"])

    with pytest.raises(lesion.UndoConflictError, match="edited in the region of the last lesion edit"):
        editing.undo(case.node)
    assert_equal_masks(case.masks(), painted_state, ["liver", "tumor"])  # nothing was overwritten
    assert editing.can_undo(case.node)

    editing.undo(case.node, force=True)
    assert_equal_masks(case.masks(), before, ["liver", "tumor"])


def test_the_table_is_updated_and_the_edit_stays_protected(helpers, editing):
    case = Case(helpers, missed_lesion)
    mrml.recompute_measurements(case.scene, case.node, case.volume)
    assert len(mrml.table_rows(mrml.measurements_table_node(case.node))) == 2  # liver, tumor: no lesion
    editing.add(case.node, case.volume, ras(helpers.LESION_CENTER_LPS))
    assert mrml.measurements_outdated(case.node, case.volume)

    measurements = editing.update_measurements(case.node, case.volume)
    rows = mrml.table_rows(mrml.measurements_table_node(case.node))
    assert len(rows) == 3 and rows[2][mrml.COLUMN_STRUCTURE] == "Lesion 1"
    lesion_ml = 4.0 / 3.0 * np.pi * helpers.LESION_RADIUS_MM ** 3 / 1000.0
    assert rows[2][mrml.COLUMN_VOLUME] == pytest.approx(lesion_ml, rel=0.35)
    assert measurements.tumor_volume_ml == pytest.approx(rows[1][mrml.COLUMN_VOLUME])
    assert case.node.GetAttribute(mrml.ATTRIBUTE_MEASUREMENTS_SOURCE) == "lesion edit"
    assert not mrml.measurements_outdated(case.node, case.volume)
    assert mrml.needs_overwrite_confirmation(case.node, case.volume)  # still the user's edit

    blob = np.zeros(case.truth.shape, bool)
    blob[5, 20, 20] = True
    paint(case.node, mrml.find_segment_id(case.node, TUMOR), case.volume, blob)
    assert mrml.measurements_outdated(case.node, case.volume)


@pytest.mark.parametrize("action, point_lps, message", [
    ("add", (76.0, 0.0, 0.0), "outside the body (air)"),  # beside the body
    ("add", (40.0, 30.0, 0.0), "outside the liver"),  # in the body, not the liver
    ("add", (400.0, 0.0, 0.0), "outside the image"),
    ("remove", (-15.0, 0.0, -20.0), "is on the liver, not on a tumor"),
    ("remove", (40.0, 30.0, 0.0), "on background (outside the liver)"),
])
def test_clicks_it_cannot_use_are_refused_with_a_message_and_change_nothing(helpers, editing, action, point_lps,
                                                                            message):
    case = Case(helpers, lambda truth: truth.copy(), other_mask=near_lesion_liver)
    before = case.masks()
    with pytest.raises(lesion.LesionEditError, match=message.replace("(", r"\(").replace(")", r"\)")) as raised:
        editing.apply(action, case.node, case.volume, ras(point_lps))
    text = str(raised.value)
    assert text[0].isupper() and text.endswith(".") and "Traceback" not in text
    assert_equal_masks(case.masks(), before, ["liver", "tumor", "other"])
    assert not editing.can_undo(case.node)


def test_no_results_loaded_is_refused_with_a_message(helpers, editing):
    case = Case(helpers, missed_lesion)
    point = ras(helpers.LESION_CENTER_LPS)
    with pytest.raises(lesion.LesionEditError, match="No results loaded: click Segment first"):
        editing.add(None, case.volume, point)
    mine = case.scene.AddNewNodeByClass("vtkMRMLSegmentationNode", "vessels")
    mine.GetSegmentation().AddEmptySegment("vein", "Portal vein", (0.0, 0.0, 1.0))
    with pytest.raises(lesion.LesionEditError, match="has no 'Liver' segment"):
        editing.add(mine, case.volume, point)
    empty = mrml.import_labelmap(case.scene, case.volume, np.zeros(case.truth.shape, np.uint8))
    with pytest.raises(lesion.LesionEditError, match="'Liver' segment of .* is empty"):
        editing.remove(empty, case.volume, point)
    with pytest.raises(lesion.LesionEditError, match="Select the CT"):
        editing.add(case.node, None, point)
    with pytest.raises(lesion.LesionEditError, match="no lesion edit to undo"):
        editing.undo(case.node)


def test_a_lesion_already_drawn_changes_nothing(helpers, editing):
    from scipy import ndimage

    def drawn_generously(truth):
        labels = truth.copy()
        labels[ndimage.binary_dilation(truth == 2, iterations=2) & (truth > 0)] = 2
        return labels

    case = Case(helpers, drawn_generously)
    before = case.masks()
    result = editing.add(case.node, case.volume, ras(helpers.LESION_CENTER_LPS))
    assert result.step is None and "nothing changed" in result.message()
    assert_equal_masks(case.masks(), before, ["liver", "tumor"])
    assert not editing.can_undo(case.node)


def test_the_undo_stack_keeps_the_last_edits(helpers, editing):
    case = Case(helpers, missed_lesion)
    editing.undo_levels = 2
    states = [case.masks()]
    point = ras(helpers.LESION_CENTER_LPS)
    for action in ("add", "remove", "add"):
        editing.apply(action, case.node, case.volume, point)
        states.append(case.masks())
    editing.undo(case.node)
    assert_equal_masks(case.masks(), states[2], ["liver", "tumor"])
    editing.undo(case.node)
    assert_equal_masks(case.masks(), states[1], ["liver", "tumor"])
    assert not editing.can_undo(case.node)


def test_without_a_tumor_model_lesions_are_grown_from_the_ct(helpers):
    editing = lesion.LesionEditing(editor_factory=lambda: LesionEditor(use_model=False))
    case = Case(helpers, missed_lesion)
    result = editing.add(case.node, case.volume, ras(helpers.LESION_CENTER_LPS))
    assert result.edit.method == "hu_region"
    assert helpers.dice(case.masks()["tumor"], case.truth == 2) > 0.8
    assert "no tumor model" in result.message() and editing.model_note


def test_without_pytorch_the_module_edits_lesions_from_the_ct_and_says_so(tmp_path, helpers):
    """In a fresh Python where PyTorch, MONAI and the export-only packages fail to import, the
    default LesionEditing falls back to the model-free path and says what to install."""
    prologue = helpers.import_blocker(["torch", "monai", "safetensors", "slicerio", "tqdm"],
                                      Path(__file__).resolve().parents[2] / "LiverTumorSeg")
    script = prologue + """
import numpy as np, slicer, vtk
from vtk.util import numpy_support
from LiverTumorSegModuleLib import lesion, mrml
scene = slicer.vtkMRMLScene()
k, j, i = 30, 40, 40
hu = np.full((k, j, i), 40, np.int16)
zz, yy, xx = np.mgrid[:k, :j, :i]
liver = ((zz - 15) / 12.0) ** 2 + ((yy - 20) / 16.0) ** 2 + ((xx - 20) / 16.0) ** 2 <= 1
lesion_mask = (zz - 15) ** 2 + (yy - 20) ** 2 + (xx - 22) ** 2 <= 16
hu[liver] = 160
hu[lesion_mask] = -20
image = vtk.vtkImageData(); image.SetDimensions(i, j, k); image.AllocateScalars(vtk.VTK_SHORT, 1)
numpy_support.vtk_to_numpy(image.GetPointData().GetScalars())[:] = hu.ravel()
volume = scene.AddNewNodeByClass("vtkMRMLScalarVolumeNode", "CT"); volume.SetAndObserveImageData(image)
matrix = vtk.vtkMatrix4x4()
for axis in range(3):
    matrix.SetElement(axis, axis, 2.5)
volume.SetIJKToRASMatrix(matrix)
node = mrml.import_labelmap(scene, volume, liver.astype(np.uint8))
editing = lesion.LesionEditing()
result = editing.add(node, volume, (22 * 2.5, 20 * 2.5, 15 * 2.5))
drawn = mrml.segment_mask(node, mrml.SEGMENTS[1], volume)
dice = 2 * (drawn & lesion_mask).sum() / (drawn.sum() + lesion_mask.sum())
assert "torch" not in sys.modules and "monai" not in sys.modules
print(result.edit.method, round(float(dice), 2))
print(editing.model_note)
"""
    completed = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300)
    assert completed.returncode == 0, completed.stderr[-3000:]
    method, dice = completed.stdout.splitlines()[0].split()
    assert method == "hu_region" and float(dice) > 0.7
    assert "PyTorch or MONAI is not installed" in completed.stdout and "Install dependencies" in completed.stdout


# ----------------------------------------------------------------------------------------------
# The click


def place(node, point) -> None:
    """What the markups widget does on a click in place mode: a point at the clicked position."""
    node.AddControlPointWorld(vtk.vtkVector3d(*point))


def test_the_next_click_is_taken_as_a_markups_point_and_then_cleared():
    scene = slicer.vtkMRMLScene()
    interaction, selection = lesion.interaction_and_selection_nodes(scene)
    mine = scene.AddNewNodeByClass("vtkMRMLMarkupsFiducialNode", "my points")
    selection.SetReferenceActivePlaceNodeClassName("vtkMRMLMarkupsFiducialNode")
    selection.SetActivePlaceNodeID(mine.GetID())
    points, cancels = [], []
    click = lesion.ClickPlacement(scene)
    click.start(points.append, lambda: cancels.append(True))

    node = click.node
    assert click.active and node.GetScene() is scene and not node.GetSaveWithScene()
    assert interaction.GetCurrentInteractionMode() == interaction.Place
    assert not interaction.GetPlaceModePersistence()
    assert selection.GetActivePlaceNodeID() == node.GetID()

    place(node, (10.0, -20.0, 30.5))
    assert points == [(10.0, -20.0, 30.5)] and cancels == []
    assert not click.active and node.GetScene() is None  # the temporary point list is gone
    assert interaction.GetCurrentInteractionMode() == interaction.ViewTransform
    assert selection.GetActivePlaceNodeID() == mine.GetID()  # the user's point list is active again
    assert mine.GetNumberOfControlPoints() == 0


def test_leaving_place_mode_without_a_click_cancels():
    scene = slicer.vtkMRMLScene()
    interaction, selection = lesion.interaction_and_selection_nodes(scene)
    points, cancels = [], []
    click = lesion.ClickPlacement(scene)
    click.start(points.append, lambda: cancels.append(True))
    node = click.node
    interaction.SetCurrentInteractionMode(interaction.ViewTransform)  # Escape
    assert cancels == [True] and points == [] and not click.active and node.GetScene() is None

    click.start(points.append, lambda: cancels.append(True))
    other = scene.AddNewNodeByClass("vtkMRMLMarkupsFiducialNode", "another list")
    selection.SetActivePlaceNodeID(other.GetID())  # the user picked another point list to place
    assert cancels == [True, True] and not click.active

    click.start(points.append, lambda: cancels.append(True))
    click.stop()  # stopped by the panel: no call back
    assert cancels == [True, True] and points == [] and not click.active
    assert interaction.GetCurrentInteractionMode() == interaction.ViewTransform


def test_a_deferred_click_is_delivered_whatever_the_order_of_the_events():
    """In Slicer the point list is removed after the view handled the click (the callbacks are
    deferred); a single place mode may end before or after the point is defined."""
    scene = slicer.vtkMRMLScene()
    interaction, _ = lesion.interaction_and_selection_nodes(scene)
    pending = []
    points, cancels = [], []
    click = lesion.ClickPlacement(scene, defer=pending.append)
    click.start(points.append, lambda: cancels.append(True))
    pending.clear()
    node = click.node
    interaction.SetCurrentInteractionMode(interaction.ViewTransform)  # the mode switch comes first ...
    place(node, (1.0, 2.0, 3.0))  # ... then the point
    assert node.GetScene() is scene and points == []  # nothing removed while the view is busy
    while pending:
        pending.pop(0)()
    assert points == [(1.0, 2.0, 3.0)] and cancels == [] and node.GetScene() is None
