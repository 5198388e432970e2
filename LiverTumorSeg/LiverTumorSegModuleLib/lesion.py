"""One-click lesion edits on a segmentation node: the library's lesion editor
(``LiverTumorSegLib.edit``) run in this process on the "Liver" and "Liver tumor" segments, as an
undoable edit, and the click in a view that says where.

- :class:`LesionEditing`: add or remove the lesion at a point (world RAS) of a segmentation node
  on its CT volume node. Only the voxels the edit changed are written, into our two segments:
  other segments, and everything outside the edit's box, stay as they were. Each edit keeps both
  segments' voxels in its box, so :meth:`LesionEditing.undo` restores them exactly; it refuses
  (unless forced) when they were edited since. The tumor model is loaded once; without PyTorch
  (or the model) lesions are grown from the CT alone and :attr:`LesionEditing.model_note` says so.
- :class:`ClickPlacement`: the next click in a view, taken the way Slicer places a markups point
  (a temporary point list in single place mode).

Uses only what PyPI's ``slicer-core`` offers (tested against a real scene) and no Qt. Errors meant
for the user are :class:`LesionEditError`, with a message that says what to do.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

import numpy as np
import slicer
import vtk
from vtk.util import numpy_support

from . import mrml

from LiverTumorSegLib import LIVER_LABEL, TUMOR_LABEL  # noqa: E402  (mrml made the library importable)
from LiverTumorSegLib.errors import LiverTumorSegError  # noqa: E402
from LiverTumorSegLib.io.terminology import LIVER, TUMOR  # noqa: E402

ADD, REMOVE = "add", "remove"
ACTION_TITLES = {ADD: "Add lesion", REMOVE: "Remove lesion"}
UNDO_LEVELS = 10
METHOD_TEXTS = {"model": "tumor model", "hu_region": "grown from the CT around the click",
                "component": "the connected tumor under the click"}

Box = Tuple[slice, slice, slice]  # (k, j, i) index slices of the volume's grid
Point = Tuple[float, float, float]


class LesionEditError(RuntimeError):
    """An edit that cannot be made; the message tells the user what is wrong and what to do."""


class UndoConflictError(LesionEditError):
    """Undoing would overwrite edits made since in the lesion's region (``undo(force=True)`` does it anyway)."""


@dataclass
class UndoStep:
    """Our two segments' voxels inside ``box`` before and after one edit (boolean, the box's shape)."""

    description: str
    segmentation_id: str
    volume_id: str
    box: Box
    liver_before: np.ndarray
    tumor_before: np.ndarray
    liver_after: np.ndarray
    tumor_after: np.ndarray
    created_tumor_segment: bool = False


@dataclass
class LesionEditResult:
    """One applied edit: the library's :class:`~LiverTumorSegLib.edit.LesionEdit`, its undo step
    (None when nothing changed) and the seconds from the click to the segments written."""

    action: str
    edit: Any
    step: Optional[UndoStep]
    seconds: float
    model_note: str = ""

    def message(self) -> str:
        lesion = self.edit.lesion
        size = f"{lesion.volume_ml:.1f} mL, {lesion.longest_axial_diameter_mm:.0f} mm across"
        method = METHOD_TEXTS.get(self.edit.method, self.edit.method)
        if self.edit.method == "hu_region" and self.model_note:
            method += " (no tumor model)"
        if self.step is None:
            return f"The lesion at the point is already in the '{TUMOR.name}' segment ({size}); nothing changed."
        if self.action == ADD:
            text = (f"Added {self.edit.volume_changed_ml:.1f} mL of lesion; the lesion is {size} ({method}); "
                    f"{self.seconds:.2f} s.")
        else:
            text = f"Removed a lesion of {size}: its voxels are liver now; {self.seconds:.2f} s."
        return text + " 'Undo lesion edit' takes it back."


# ----------------------------------------------------------------------------------------------
# Segments <-> arrays


def segment_masks(segmentation_node, volume_node) -> Tuple[np.ndarray, np.ndarray]:
    """The "Liver" and "Liver tumor" segments as boolean (k, j, i) masks on the volume's grid."""
    return (mrml.segment_mask(segmentation_node, LIVER, volume_node),
            mrml.segment_mask(segmentation_node, TUMOR, volume_node))


def _box_image(mask_box: np.ndarray, box: Box, volume_node) -> "slicer.vtkOrientedImageData":
    """A 0/1 image of ``mask_box`` placed at ``box`` of the volume's grid."""
    image = slicer.vtkOrientedImageData()
    (k0, k1), (j0, j1), (i0, i1) = ((s.start, s.stop - 1) for s in box)
    image.SetExtent(i0, i1, j0, j1, k0, k1)
    image.AllocateScalars(vtk.VTK_UNSIGNED_CHAR, 1)
    numpy_support.vtk_to_numpy(image.GetPointData().GetScalars())[:] = \
        np.ascontiguousarray(mask_box, dtype=np.uint8).ravel()
    matrix = vtk.vtkMatrix4x4()
    volume_node.GetIJKToRASMatrix(matrix)
    image.SetImageToWorldMatrix(matrix)
    return image


def write_segment_box(segmentation_node, segment_id: str, volume_node, box: Box, before: np.ndarray,
                      after: np.ndarray) -> None:
    """Change one segment's voxels inside ``box`` from ``before`` to ``after`` and nothing else.
    Voxels to set are merged in as Segment Editor's Add does (another segment is never overwritten:
    an overlapping one makes the edited segment move to its own layer); voxels to clear are taken
    out with a minimum merge, which leaves the other segments of a shared layer as they were."""
    logic = slicer.vtkSlicerSegmentationsModuleLogic
    to_clear = before & ~after
    to_set = after & ~before
    if to_clear.any():
        keep = _box_image(~to_clear, box, volume_node)
        if not logic.SetBinaryLabelmapToSegment(keep, segmentation_node, segment_id, logic.MODE_MERGE_MIN,
                                                keep.GetExtent()):
            raise RuntimeError(f"could not erase voxels of segment '{segment_id}'")
    if to_set.any():
        image = _box_image(to_set, box, volume_node)
        if not logic.SetBinaryLabelmapToSegment(image, segmentation_node, segment_id, logic.MODE_MERGE_MASK,
                                                image.GetExtent()):
            raise RuntimeError(f"could not set voxels of segment '{segment_id}'")


def _add_tumor_segment(segmentation_node) -> str:
    segmentation = segmentation_node.GetSegmentation()
    segment_id = segmentation.AddEmptySegment(TUMOR.segment_id, TUMOR.name, TUMOR.color_rgb)
    mrml.set_segment_terminology(segmentation.GetSegment(segment_id), TUMOR)
    return segment_id


def _sentence(message: str) -> str:
    """A library error message ("the point ... ; click ...") as a sentence for the panel."""
    message = message.strip()
    if message.startswith("error: "):
        message = message[len("error: "):]
    message = message[:1].upper() + message[1:]
    return message if message.endswith(".") else message + "."


# ----------------------------------------------------------------------------------------------
# Edits


class LesionEditing:
    """Adds and removes lesions at clicked points of segmentation nodes, with an undo stack per node.

    ``editor_factory`` makes the library's :class:`~LiverTumorSegLib.edit.LesionEditor` (default:
    :meth:`configure`'s tumor model on its device, or the CT alone when PyTorch or the model is
    unavailable). Usable from the Python console::

        logic.lesions.add(segmentationNode, volumeNode, (12.0, -30.5, 41.0))  # world RAS mm
        logic.lesions.undo(segmentationNode)
    """

    def __init__(self, editor_factory: Optional[Callable[[], Any]] = None, undo_levels: int = UNDO_LEVELS) -> None:
        self._editor_factory = editor_factory
        self._editor = None
        self.model_note = ""  # why lesions are grown without the tumor model ("" when it is used)
        self.tumor_model: Optional[str] = None
        self.device = "cpu"
        self.undo_levels = int(undo_levels)
        self._undo: Dict[str, List[UndoStep]] = {}
        self._ct: Optional[Tuple[tuple, Any]] = None  # (key, SimpleITK image) of the last CT

    # -- the editor and the CT ----------------------------------------------------------------
    def configure(self, tumor_model: Optional[str] = None, device: str = "cpu") -> None:
        """The module's tumor model (None: the library's default) and device (cpu, cuda, auto); a
        change loads the model again on the next edit."""
        if (tumor_model or None, device) != (self.tumor_model, self.device):
            self.tumor_model, self.device = tumor_model or None, device
            self._editor = None

    def editor(self):
        """The library's lesion editor, made on first use and kept (its models stay loaded)."""
        if self._editor is None:
            self._editor = self._make_editor()
        return self._editor

    def _make_editor(self):
        from LiverTumorSegLib.edit import LesionEditor

        self.model_note = ""
        if self._editor_factory is not None:
            editor = self._editor_factory()
            if not editor.uses_model:
                self.model_note = "Lesions are grown from the CT around the click (no tumor model)."
            return editor
        try:
            return LesionEditor(tumor_model=self.tumor_model, device=self.device)
        except ImportError as exc:
            self.model_note = (f"PyTorch or MONAI is not installed in Slicer ({exc}): lesions are grown from the CT "
                               "around the click, without the tumor model. Click 'Install dependencies' to use it.")
        except LiverTumorSegError as exc:
            self.model_note = (f"The tumor model could not be loaded ({exc}): lesions are grown from the CT around "
                               "the click, without it.")
        logging.warning(f"LiverTumorSeg: {self.model_note}")
        return LesionEditor(use_model=False)

    def ct_image(self, volume_node):
        """The volume as a SimpleITK image (LPS), converted once per volume and voxel content."""
        from LiverTumorSegLib.geometry import array_to_image

        image = volume_node.GetImageData()
        key = (volume_node.GetID(), image.GetMTime(), tuple(mrml.ijk_to_ras_matrix(volume_node).ravel()))
        if self._ct is None or self._ct[0] != key:
            self._ct = None  # free the previous CT before converting the next
            self._ct = (key, array_to_image(mrml.array_from_volume(volume_node), mrml.geometry_of_volume(volume_node)))
        return self._ct[1]

    def prepare(self, volume_node) -> None:
        """Load the tumor model and convert the CT before the click (so the click is quick)."""
        self.editor()
        self.ct_image(volume_node)

    # -- applying an edit -----------------------------------------------------------------------
    @staticmethod
    def check_ready(segmentation_node, volume_node) -> None:
        """Raise :class:`LesionEditError` unless there are results to edit on a CT."""
        if segmentation_node is None:
            raise LesionEditError("No results loaded: click Segment first, or select a segmentation with a "
                                  f"'{LIVER.name}' segment as output.")
        if mrml.find_segment_id(segmentation_node, LIVER) is None:
            raise LesionEditError(f"No results loaded: '{segmentation_node.GetName()}' has no '{LIVER.name}' segment. "
                                  "Click Segment first, or select the segmentation LiverTumorSeg made.")
        if volume_node is None or volume_node.GetImageData() is None:
            raise LesionEditError("Select the CT the segmentation belongs to as input volume.")

    def add(self, segmentation_node, volume_node, point_world_ras: Sequence[float]) -> LesionEditResult:
        """Draw the lesion at the point (world RAS mm) into "Liver tumor" (and "Liver")."""
        return self.apply(ADD, segmentation_node, volume_node, point_world_ras)

    def remove(self, segmentation_node, volume_node, point_world_ras: Sequence[float]) -> LesionEditResult:
        """Turn the tumor under the point (world RAS mm) into liver."""
        return self.apply(REMOVE, segmentation_node, volume_node, point_world_ras)

    def apply(self, action: str, segmentation_node, volume_node, point_world_ras: Sequence[float]) -> LesionEditResult:
        """Run the library's edit on the segments' voxels and write back the voxels it changed."""
        from LiverTumorSegLib.edit import remove_lesion
        from LiverTumorSegLib.geometry import array_to_image

        if action not in ACTION_TITLES:
            raise ValueError(f"unknown lesion action {action!r}; one of {', '.join(ACTION_TITLES)}")
        start = time.perf_counter()
        self.check_ready(segmentation_node, volume_node)
        liver, tumor = segment_masks(segmentation_node, volume_node)
        if not liver.any():
            raise LesionEditError(f"No results loaded: the '{LIVER.name}' segment of '{segmentation_node.GetName()}' "
                                  "is empty. Click Segment first.")
        labels = np.zeros(liver.shape, np.uint8)  # uint8 from the start: np.where would go through int64
        labels[liver] = LIVER_LABEL
        labels[tumor] = TUMOR_LABEL
        labelmap = array_to_image(labels, mrml.geometry_of_volume(volume_node))
        point = mrml.world_to_local_ras(volume_node, point_world_ras)
        try:
            if action == ADD:
                edit = self.editor().add(self.ct_image(volume_node), labelmap, point)
            else:
                edit = remove_lesion(self.ct_image(volume_node), labelmap, point)
        except LiverTumorSegError as exc:
            raise LesionEditError(_sentence(str(exc))) from None
        step = self._write(action, segmentation_node, volume_node, edit, liver, tumor)
        return LesionEditResult(action, edit, step, time.perf_counter() - start,
                                self.model_note if action == ADD else "")

    def _write(self, action: str, segmentation_node, volume_node, edit, liver: np.ndarray,
               tumor: np.ndarray) -> Optional[UndoStep]:
        box, changed = tuple(edit.box), edit.changed
        if not changed.any():
            return None
        liver_before, tumor_before = liver[box].copy(), tumor[box].copy()
        liver_after = liver_before | changed  # the liver includes its tumors, and a removed tumor becomes liver
        tumor_after = tumor_before | changed if action == ADD else tumor_before & ~changed
        scene = segmentation_node.GetScene()
        if scene is not None:
            scene.SaveStateForUndo()  # for the scene's own undo, where the application turned it on
        tumor_id = mrml.find_segment_id(segmentation_node, TUMOR)
        created = tumor_id is None
        if created:
            tumor_id = _add_tumor_segment(segmentation_node)
        write_segment_box(segmentation_node, mrml.find_segment_id(segmentation_node, LIVER), volume_node, box,
                          liver_before, liver_after)
        write_segment_box(segmentation_node, tumor_id, volume_node, box, tumor_before, tumor_after)
        where = ", ".join(f"{v:.1f}" for v in edit.point_ras_mm)
        step = UndoStep(f"{ACTION_TITLES[action].lower()} at R,A,S = ({where}) mm", segmentation_node.GetID(),
                        volume_node.GetID(), box, liver_before, tumor_before, liver_after, tumor_after, created)
        steps = self._undo.setdefault(segmentation_node.GetID(), [])
        steps.append(step)
        del steps[:-self.undo_levels]
        return step

    # -- measurements -----------------------------------------------------------------------------
    @staticmethod
    def update_measurements(segmentation_node, volume_node):
        """Measure the segmentation as it is now and update its table (source "lesion edit"). The
        segmentation stays marked as edited: a new Segment run asks before overwriting it."""
        measurements = mrml.measure_segmentation(segmentation_node, volume_node)
        mrml.set_measurements(segmentation_node.GetScene(), segmentation_node, measurements.to_dict(), "lesion edit",
                              volume_node)
        return measurements

    # -- undo ---------------------------------------------------------------------------------
    def can_undo(self, segmentation_node) -> bool:
        return segmentation_node is not None and bool(self._undo.get(segmentation_node.GetID()))

    def undo_description(self, segmentation_node) -> str:
        """What :meth:`undo` would take back ("" when nothing)."""
        steps = self._undo.get(segmentation_node.GetID()) if segmentation_node is not None else None
        return steps[-1].description if steps else ""

    def forget(self, segmentation_node=None) -> None:
        """Drop the undo steps of one node (its segments were replaced), or of every node (scene closed)."""
        if segmentation_node is None:
            self._undo.clear()
            self._ct = None
        else:
            self._undo.pop(segmentation_node.GetID(), None)

    def undo(self, segmentation_node, force: bool = False) -> UndoStep:
        """Restore our two segments' voxels in the last edit's box as they were before it. Raises
        :class:`UndoConflictError` when they were changed since (``force`` restores them anyway)."""
        steps = self._undo.get(segmentation_node.GetID()) if segmentation_node is not None else None
        if not steps:
            raise LesionEditError("There is no lesion edit to undo in this segmentation.")
        step = steps[-1]
        scene = segmentation_node.GetScene()
        volume_node = scene.GetNodeByID(step.volume_id) if scene is not None else None
        liver_id = mrml.find_segment_id(segmentation_node, LIVER)
        tumor_id = mrml.find_segment_id(segmentation_node, TUMOR)
        if volume_node is None or volume_node.GetImageData() is None or liver_id is None or tumor_id is None:
            steps.clear()
            raise LesionEditError(f"The CT or the '{LIVER.name}'/'{TUMOR.name}' segments of the lesion edit are gone; "
                                  "it cannot be undone.")
        liver, tumor = segment_masks(segmentation_node, volume_node)
        liver_now, tumor_now = liver[step.box], tumor[step.box]
        if not force and not (np.array_equal(liver_now, step.liver_after) and np.array_equal(tumor_now, step.tumor_after)):
            raise UndoConflictError(f"The segmentation was edited in the region of the last lesion edit ({step.description}) "
                                    "since; undoing it would also take back those edits.")
        scene.SaveStateForUndo()
        write_segment_box(segmentation_node, liver_id, volume_node, step.box, liver_now, step.liver_before)
        write_segment_box(segmentation_node, tumor_id, volume_node, step.box, tumor_now, step.tumor_before)
        tumor_left = int(tumor.sum()) - int(tumor_now.sum()) + int(step.tumor_before.sum())
        if step.created_tumor_segment and tumor_left == 0:
            segmentation_node.GetSegmentation().RemoveSegment(tumor_id)  # the edit made it: as before the edit
        steps.pop()
        return step


# ----------------------------------------------------------------------------------------------
# The click


def interaction_and_selection_nodes(scene) -> Tuple[Any, Any]:
    """The scene's interaction and selection nodes (Slicer's application logic makes them; a bare
    scene gets them here)."""
    interaction = scene.GetNodeByID("vtkMRMLInteractionNodeSingleton") or \
        scene.GetFirstNodeByClass("vtkMRMLInteractionNode") or scene.AddNewNodeByClass("vtkMRMLInteractionNode")
    selection = scene.GetNodeByID("vtkMRMLSelectionNodeSingleton") or \
        scene.GetFirstNodeByClass("vtkMRMLSelectionNode") or scene.AddNewNodeByClass("vtkMRMLSelectionNode")
    return interaction, selection


class ClickPlacement:
    """The next click in a view, placed as Slicer places a markups point: a temporary point list
    becomes the active place node and the interaction node enters single place mode.

    ``on_point(point)`` gets the click in world RAS; ``on_cancel()`` is called when place mode is
    left without a click (Escape, right click, another mouse mode or point list). ``defer(callback)``
    runs the callback once the current event is handled (in Slicer ``qt.QTimer.singleShot(0, ...)``),
    so the point list is not removed while the view still handles its click; default: at once."""

    NODE_NAME = "LiverTumorSeg click"

    def __init__(self, scene, defer: Optional[Callable[[Callable[[], None]], None]] = None) -> None:
        self.scene = scene
        self._defer = defer or (lambda callback: callback())
        self._node = None
        self._observations: List[Tuple[Any, int]] = []
        self._previous_place: Tuple[str, str] = ("", "")
        self._on_point: Optional[Callable[[Point], None]] = None
        self._on_cancel: Optional[Callable[[], None]] = None
        self._settling = False

    @property
    def active(self) -> bool:
        return self._node is not None

    @property
    def node(self):
        """The temporary point list while waiting for the click (None otherwise)."""
        return self._node

    def start(self, on_point: Callable[[Point], None], on_cancel: Optional[Callable[[], None]] = None) -> None:
        """Wait for the next click (a click already awaited is dropped without calling back)."""
        self.stop()
        interaction, selection = interaction_and_selection_nodes(self.scene)
        node = self.scene.AddNewNodeByClass("vtkMRMLMarkupsFiducialNode", self.scene.GenerateUniqueName(self.NODE_NAME))
        node.SetSaveWithScene(False)
        node.CreateDefaultDisplayNodes()
        display = node.GetDisplayNode()
        if display is not None and hasattr(display, "SetPointLabelsVisibility"):
            display.SetPointLabelsVisibility(False)
        self._previous_place = (selection.GetActivePlaceNodeClassName() or "", selection.GetActivePlaceNodeID() or "")
        selection.SetReferenceActivePlaceNodeClassName("vtkMRMLMarkupsFiducialNode")
        selection.SetActivePlaceNodeID(node.GetID())
        interaction.SetPlaceModePersistence(0)
        interaction.SetCurrentInteractionMode(interaction.Place)
        self._node, self._on_point, self._on_cancel = node, on_point, on_cancel
        for caller, event in ((node, slicer.vtkMRMLMarkupsNode.PointPositionDefinedEvent),
                              (interaction, interaction.InteractionModeChangedEvent),
                              (selection, selection.ActivePlaceNodeIDChangedEvent)):
            self._observations.append((caller, caller.AddObserver(event, self._onEvent)))

    def stop(self) -> None:
        """Stop waiting without calling back: leave place mode, remove the point list."""
        node, self._node = self._node, None
        if node is None:
            return
        for caller, tag in self._observations:
            caller.RemoveObserver(tag)
        self._observations = []
        interaction, selection = interaction_and_selection_nodes(self.scene)
        if selection.GetActivePlaceNodeID() == node.GetID():
            if interaction.GetCurrentInteractionMode() == interaction.Place:
                interaction.SetCurrentInteractionMode(interaction.ViewTransform)
            previous_class, previous_id = self._previous_place
            if previous_class:
                selection.SetReferenceActivePlaceNodeClassName(previous_class)
            selection.SetActivePlaceNodeID(previous_id if self.scene.GetNodeByID(previous_id) else None)
        if node.GetScene() is not None:
            self.scene.RemoveNode(node)

    def _onEvent(self, caller=None, event=None) -> None:
        if self._node is not None and not self._settling:
            self._settling = True
            self._defer(self._settle)

    def _settle(self) -> None:
        """After a point was defined or place mode changed: deliver the point, or cancel when place
        mode was left without one, or keep waiting."""
        self._settling = False
        if self._node is None:
            return
        point = self._last_defined_point()
        if point is None and self._placing():
            return
        on_point, on_cancel = self._on_point, self._on_cancel
        self.stop()
        if point is not None:
            on_point(point)
        elif on_cancel is not None:
            on_cancel()

    def _placing(self) -> bool:
        interaction, selection = interaction_and_selection_nodes(self.scene)
        return (interaction.GetCurrentInteractionMode() == interaction.Place
                and selection.GetActivePlaceNodeID() == self._node.GetID())

    def _last_defined_point(self) -> Optional[Point]:
        node = self._node
        for index in reversed(range(node.GetNumberOfControlPoints())):
            if node.GetNthControlPointPositionStatus(index) == node.PositionDefined:
                position = [0.0, 0.0, 0.0]
                node.GetNthControlPointPositionWorld(index, position)
                return (float(position[0]), float(position[1]), float(position[2]))
        return None
