"""The module's panel: settings, Segment/Cancel, staged progress, log, results, lesion edits, edit, export.

GUI only: every action calls the module's Logic (``LiverTumorSeg.py``), which calls this
package's helpers and the library. ``LiverTumorSeg.py`` subclasses :class:`PanelWidget` as
``LiverTumorSegWidget`` and gives it its Logic (:meth:`PanelWidget.createLogic`).
"""

import html
import logging
from pathlib import Path
from typing import Any, Dict, List, Optional, Tuple

import qt
import slicer
import vtk
from slicer.ScriptedLoadableModule import ScriptedLoadableModuleWidget
from slicer.util import VTKObservationMixin

from . import dependencies, lesion, mrml, parameters, runs
from .presentation import (MODELS_LISTED, MODELS_UNKNOWN, RESULT_HEADERS, card_summary_html, missing_model_message,
                           model_combo_items, results_display_rows)
from .process import CANCELLED, SUCCEEDED, safe_file_stem
from .task import SegmentationTask

MODULE_DIR = Path(__file__).resolve().parents[1]
# Voxels of a segment changed (Slicer 5.2 renamed "master" to "source").
SOURCE_MODIFIED_EVENT = getattr(slicer.vtkSegmentation, "SourceRepresentationModified",
                                getattr(slicer.vtkSegmentation, "MasterRepresentationModified", None))


def resourcePath(relativePath: str) -> str:
    """A file of the extension's Resources folder: beside the module when installed, at the
    repository root in a source checkout."""
    for base in (MODULE_DIR / "Resources", MODULE_DIR.parent / "Resources"):
        candidate = base / relativePath
        if candidate.exists():
            return str(candidate)
    raise FileNotFoundError(f"LiverTumorSeg resource {relativePath} is missing; reinstall the extension")


def stopAllRuns() -> None:
    """Kill every segmentation process this Slicer started and remove its temporary folder."""
    stopped = runs.stop_all_runs()
    if stopped:
        logging.info(f"LiverTumorSeg: stopped {stopped} segmentation run(s) and removed their temporary files")


def removeStaleRuns() -> None:
    """Remove the temporary folders (and kill the processes) of runs whose Slicer session is gone."""
    try:
        removed = runs.remove_stale_runs()
    except Exception as exc:  # never keep the module from loading
        logging.warning(f"LiverTumorSeg: could not look for runs left by an earlier session: {exc}")
        return
    for folder in removed:
        logging.info(f"LiverTumorSeg: removed {folder}, left by a Slicer session that ended without cleaning up")


class PanelWidget(ScriptedLoadableModuleWidget, VTKObservationMixin):
    """The panel; a subclass gives it its Logic (:meth:`createLogic`)."""

    def __init__(self, parent=None) -> None:
        ScriptedLoadableModuleWidget.__init__(self, parent)
        VTKObservationMixin.__init__(self)
        self.logic = None
        self._parameterNode = None
        self._updatingGUI = False
        self._task: Optional[SegmentationTask] = None
        self._cards: Dict[str, Dict[str, Any]] = {}
        self._defaultModels: Dict[str, str] = {}
        self._modelsState = MODELS_UNKNOWN  # until the library lists its models
        self._observedSegmentation = None
        self._editedSinceMeasured = False
        self._writingResults = False
        self._lesionClick: Optional[lesion.ClickPlacement] = None
        self._lesionAction = ""  # the lesion edit waiting for its click
        self._timer = qt.QTimer()
        self._timer.setInterval(100)
        self._timer.timeout.connect(self.onTimer)

    def createLogic(self):
        raise NotImplementedError("LiverTumorSegWidget gives the panel its Logic")

    # -- setup ------------------------------------------------------------------------------
    def setup(self) -> None:
        ScriptedLoadableModuleWidget.setup(self)
        uiWidget = slicer.util.loadUI(resourcePath("UI/LiverTumorSeg.ui"))
        self.layout.addWidget(uiWidget)
        self.ui = slicer.util.childWidgetVariables(uiWidget)
        uiWidget.setMRMLScene(slicer.mrmlScene)
        for selector in (self.ui.inputVolumeSelector, self.ui.outputSegmentationSelector):
            selector.setMRMLScene(slicer.mrmlScene)
        self.ui.exportDirectoryButton.directory = qt.QDir.homePath()
        self.ui.nonClinicalBadgeLabel.setVisible(False)
        self.ui.progressBar.setValue(0)
        self.ui.resultsTable.setColumnCount(len(RESULT_HEADERS))
        self.ui.resultsTable.setHorizontalHeaderLabels(RESULT_HEADERS)
        self.ui.resultsTable.verticalHeader().setVisible(False)

        self.setupSettingWidgets()

        self.logic = self.createLogic()
        # the click of a lesion edit is handled once the view has handled it
        self._lesionClick = lesion.ClickPlacement(slicer.mrmlScene, defer=lambda callback: qt.QTimer.singleShot(0, callback))

        self.addObserver(slicer.mrmlScene, slicer.mrmlScene.StartCloseEvent, self.onSceneStartClose)
        self.addObserver(slicer.mrmlScene, slicer.mrmlScene.EndCloseEvent, self.onSceneEndClose)

        self.ui.inputVolumeSelector.currentNodeChanged.connect(self.updateParameterNodeFromGUI)
        self.ui.outputSegmentationSelector.currentNodeChanged.connect(self.updateParameterNodeFromGUI)
        for setting in parameters.MODULE_SETTINGS:
            widget = self.settingWidget(setting)
            signal = widget.toggled if parameters.is_check_box(setting) else widget.currentIndexChanged
            signal.connect(self.updateParameterNodeFromGUI)
        self.ui.exportDirectoryButton.directoryChanged.connect(self.updateParameterNodeFromGUI)

        self.ui.segmentButton.clicked.connect(self.onSegmentButton)
        self.ui.refreshModelsButton.clicked.connect(lambda: self.refreshModels(quiet=False))
        self.ui.installDependenciesButton.clicked.connect(self.onInstallDependencies)
        self.ui.recomputeButton.clicked.connect(self.onRecompute)
        self.ui.editButton.clicked.connect(self.onEdit)
        self.ui.addLesionButton.clicked.connect(lambda: self.onLesionButton(lesion.ADD))
        self.ui.removeLesionButton.clicked.connect(lambda: self.onLesionButton(lesion.REMOVE))
        self.ui.undoLesionButton.clicked.connect(self.onUndoLesion)
        self.ui.exportButton.clicked.connect(self.onExport)
        self.ui.resultsTable.cellClicked.connect(self.onResultCellClicked)

        self.initializeParameterNode()
        self.refreshModels(quiet=True)

    def setupSettingWidgets(self) -> None:
        """Labels, tooltips and combo box items of the run's settings, from the library's settings schema."""
        for setting in parameters.MODULE_SETTINGS:
            widget = self.settingWidget(setting)
            widget.toolTip = setting.help[:1].upper() + setting.help[1:] + "."
            if parameters.is_check_box(setting):
                widget.text = setting.label
                continue
            getattr(self.ui, setting.parameter + "Label").text = setting.label + ":"
            for text, _ in setting.shown:  # the model combo boxes list the installed models instead
                widget.addItem(text)

    def settingWidget(self, setting):
        """The check box or combo box of one of the run's settings."""
        return getattr(self.ui, parameters.widget_name(setting))

    def cleanup(self) -> None:
        """Called when the module is unloaded (application exit, reload): stop the panel's run and
        every run started from the Python console, so no process or temporary folder outlives it."""
        if self._task is not None and self._task.running:
            self._task.cancel()
        stopAllRuns()
        self.stopLesionClick()
        self._timer.stop()
        self.removeObservers()

    def enter(self) -> None:
        self.initializeParameterNode()

    def exit(self) -> None:
        pass  # observers stay: a run keeps reporting while another module is shown

    def onSceneStartClose(self, caller, event) -> None:
        if self._task is not None and self._task.running:
            self._task.cancel()
        self.stopLesionClick()
        self.logic.lesions.forget()
        self.setParameterNode(None)

    def onSceneEndClose(self, caller, event) -> None:
        if self.parent.isEntered:
            self.initializeParameterNode()

    # -- parameter node <-> GUI -------------------------------------------------------------
    def initializeParameterNode(self) -> None:
        self.setParameterNode(self.logic.getParameterNode())
        if self._parameterNode.inputVolume is None:
            firstVolume = slicer.mrmlScene.GetFirstNodeByClass("vtkMRMLScalarVolumeNode")
            if firstVolume is not None and not firstVolume.IsA("vtkMRMLLabelMapVolumeNode"):
                self._parameterNode.inputVolume = firstVolume

    def setParameterNode(self, parameterNode) -> None:
        if self._parameterNode is not None:
            self.removeObserver(self._mrmlNode(self._parameterNode), vtk.vtkCommand.ModifiedEvent,
                                self.updateGUIFromParameterNode)
        self._parameterNode = parameterNode
        if self._parameterNode is not None:
            self.addObserver(self._mrmlNode(self._parameterNode), vtk.vtkCommand.ModifiedEvent,
                             self.updateGUIFromParameterNode)
        self.updateGUIFromParameterNode()

    @staticmethod
    def _mrmlNode(wrapped):
        return wrapped.parameterNode

    def updateGUIFromParameterNode(self, caller=None, event=None) -> None:
        if self._parameterNode is None or self._updatingGUI:
            return
        self._updatingGUI = True
        try:
            p = self._parameterNode
            self.ui.inputVolumeSelector.setCurrentNode(p.inputVolume)
            self.ui.outputSegmentationSelector.setCurrentNode(p.outputSegmentation)
            self.updateModelComboBoxes()
            for setting in parameters.MODULE_SETTINGS:
                widget, value = self.settingWidget(setting), getattr(p, setting.parameter)
                if parameters.is_check_box(setting):
                    widget.checked = value
                elif setting.shown:
                    _selectComboText(widget, value)
            if p.exportDirectory:
                self.ui.exportDirectoryButton.directory = p.exportDirectory
        finally:
            self._updatingGUI = False
        self.updateModelCard()
        self.observeSegmentation(self._parameterNode.outputSegmentation)
        self.updateResults()
        self.updateButtonStates()

    def updateParameterNodeFromGUI(self, *args) -> None:
        if self._parameterNode is None or self._updatingGUI:
            return
        mrmlNode = self._mrmlNode(self._parameterNode)
        wasModifying = mrmlNode.StartModify()
        try:
            p = self._parameterNode
            p.inputVolume = self.ui.inputVolumeSelector.currentNode()
            p.outputSegmentation = self.ui.outputSegmentationSelector.currentNode()
            for setting in parameters.MODULE_SETTINGS:
                widget = self.settingWidget(setting)
                if parameters.is_check_box(setting):
                    value = widget.checked
                elif setting.shown:
                    value = widget.currentText
                else:  # a model combo box: the model's name, "" for the library's default
                    value = widget.currentData or ""
                setattr(p, setting.parameter, value)
            p.exportDirectory = self.ui.exportDirectoryButton.directory
        finally:
            mrmlNode.EndModify(wasModifying)

    def updateButtonStates(self) -> None:
        running = self._task is not None and self._task.running
        p = self._parameterNode
        hasInput = p is not None and p.inputVolume is not None
        segmentation = None if p is None else p.outputSegmentation
        hasResult = segmentation is not None and any(True for _ in mrml.iter_our_segments(segmentation))
        self.ui.segmentButton.text = "Cancel" if running else "Segment"
        self.ui.segmentButton.enabled = running or hasInput
        self.ui.segmentButton.toolTip = ("Stop the segmentation; nothing is added to the scene" if running else
                                         "Segment the liver and liver tumors in the background")
        for widget in (self.ui.inputVolumeSelector, self.ui.outputSegmentationSelector,
                       self.ui.installDependenciesButton, self.ui.refreshModelsButton,
                       *(self.settingWidget(setting) for setting in parameters.MODULE_SETTINGS)):
            widget.enabled = not running
        for button in (self.ui.recomputeButton, self.ui.editButton, self.ui.exportButton):
            button.enabled = hasResult and not running
        waiting = self._lesionClick is not None and self._lesionClick.active
        for action, button in ((lesion.ADD, self.ui.addLesionButton), (lesion.REMOVE, self.ui.removeLesionButton)):
            button.enabled = hasResult and not running
            button.text = "Cancel (Esc)" if waiting and action == self._lesionAction else lesion.ACTION_TITLES[action]
        undo = "" if running else self.logic.lesions.undo_description(segmentation)
        self.ui.undoLesionButton.enabled = bool(undo)
        self.ui.undoLesionButton.toolTip = f"Undo the last lesion edit: {undo}" if undo else "No lesion edit to undo"

    # -- models -----------------------------------------------------------------------------
    def refreshModels(self, quiet: bool = False) -> None:
        """Read the library's model cards (in this process: reading cards needs no PyTorch)."""
        try:
            self._defaultModels = self.logic.defaultModels()
            cards = self.logic.listModels()
        except Exception as exc:  # a broken installation: the chosen models are then "not verified"
            self.appendLog("warning", f"Could not list the models: {exc}")
            if not quiet:
                slicer.util.warningDisplay(f"Could not list the models:\n{exc}")
            cards = None
        self.setModelCards(cards)

    def setModelCards(self, cards: Optional[List[Dict[str, Any]]]) -> None:
        """The library's model cards (None: listing failed; a list listed earlier is kept)."""
        if cards is not None:
            self._cards = {card.get("name", ""): card for card in cards}
            self._modelsState = MODELS_LISTED
        elif self._modelsState != MODELS_LISTED:
            self._modelsState = MODELS_UNKNOWN
        self.updateGUIFromParameterNode()
        for task, name in self.missingModelChoices():
            self.appendLog("warning", missing_model_message(task, name))

    def updateModelComboBoxes(self) -> None:
        """Show the listed models and the chosen ones (also when the models could not be listed, and
        when a chosen model is not installed); called with ``_updatingGUI`` set, so nothing is written back."""
        p = self._parameterNode
        for comboBox, task, chosen in ((self.ui.liverModelComboBox, "liver", p.liverModel),
                                       (self.ui.tumorModelComboBox, "tumor", p.tumorModel)):
            items, index = model_combo_items(task, self._cards.values(), self._modelsState, chosen,
                                             self._defaultModels.get(task, "?"))
            shown = [(comboBox.itemText(i), comboBox.itemData(i)) for i in range(comboBox.count)]
            if shown != [(item.text, item.name) for item in items]:
                comboBox.clear()
                for i, item in enumerate(items):
                    comboBox.addItem(item.text, item.name)
                    comboBox.setItemData(i, item.tooltip, qt.Qt.ToolTipRole)
            comboBox.setCurrentIndex(index)
            comboBox.toolTip = items[index].tooltip

    def missingModelChoices(self) -> List[Tuple[str, str]]:
        """(task, name) of the chosen models that the library's model list does not have."""
        p = self._parameterNode
        if p is None or self._modelsState != MODELS_LISTED:
            return []
        missing = []
        for task, name in (("liver", p.liverModel), ("tumor", p.tumorModel)):
            if name and not name.endswith(".json") and not any(
                    card.get("name") == name and card.get("task") == task for card in self._cards.values()):
                missing.append((task, name))
        return missing

    def selectedCards(self) -> List[Dict[str, Any]]:
        """The cards of the chosen liver and tumor models ("default" = the library's default model)."""
        chosen = []
        for comboBox, task in ((self.ui.liverModelComboBox, "liver"), (self.ui.tumorModelComboBox, "tumor")):
            name = comboBox.currentData or self._defaultModels.get(task)
            if name in self._cards:
                chosen.append(self._cards[name])
        return chosen

    def updateModelCard(self) -> None:
        cards = self.selectedCards()
        if not cards:
            self.ui.modelCardLabel.text = ("Model details appear here once the library lists its models "
                                           "(needs the Python dependencies).")
            self.ui.nonClinicalBadgeLabel.setVisible(False)
            return
        self.ui.modelCardLabel.text = "<br/>".join(card_summary_html(card) for card in cards)
        self.ui.nonClinicalBadgeLabel.setVisible(any(card.get("non_clinical", True) for card in cards))

    def tumorMemberCount(self) -> Optional[int]:
        for card in self.selectedCards():
            if card.get("task") == "tumor":
                members = card.get("members")
                return len(members) if members else 1
        return None

    # -- dependencies -----------------------------------------------------------------------
    def onInstallDependencies(self) -> None:
        if not self.logic.missingDependencies():
            slicer.util.infoDisplay("All Python dependencies of LiverTumorSeg are installed, in the versions it needs.")
            return
        self.ensureDependencies(dependencies.SEGMENT)

    def ensureDependencies(self, action: str = dependencies.SEGMENT) -> bool:
        """True when what ``action`` ("segment", "measure", "export") needs is installed in a suitable
        version (after asking and installing or upgrading if needed). Only Segment needs PyTorch and MONAI."""
        problems = self.logic.dependencyProblems(action)
        if not problems:
            return True
        upgrade = any(not problem.missing for problem in problems)
        text = ("LiverTumorSeg needs these Python packages"
                + (" (missing, or in another version than the installed one)" if upgrade else
                   ", which are not installed yet")
                + ":\n\n  " + "\n  ".join(problem.describe() for problem in problems)
                + ("\n\nInstall or upgrade them now?" if upgrade else "\n\nInstall them now?"))
        if any(problem.is_torch for problem in problems):
            text += " This downloads several hundred MB (PyTorch) and can take a few minutes."
        if not slicer.util.confirmOkCancelDisplay(text, windowTitle="LiverTumorSeg: install dependencies"):
            self.appendLog("warning", "Dependencies not installed; "
                           + {"segment": "segmentation", "measure": "recomputing", "export": "export",
                              "lesion": "the lesion edit"}.get(action, action)
                           + " needs them.")
            return False
        try:
            with slicer.util.WaitCursor():
                self.logic.installDependencies(log=self.appendLog, action=action)
        except Exception as exc:
            slicer.util.errorDisplay(
                f"Installing the dependencies failed: {exc}\n\nCheck the network connection and the Python "
                "console for pip's message, then click 'Install dependencies' again. Without a network, install "
                "the wheels with slicer.util.pip_install('/path/to/wheel.whl').",
                windowTitle="LiverTumorSeg")
            return False
        self.refreshModels(quiet=True)
        return True

    # -- segmentation -----------------------------------------------------------------------
    def onSegmentButton(self) -> None:
        if self._task is not None and self._task.running:
            self._task.cancel()
            return
        p = self._parameterNode
        if p is None or p.inputVolume is None:
            slicer.util.errorDisplay("Select an input CT volume first.")
            return
        missingModels = self.missingModelChoices()
        if missingModels:
            slicer.util.errorDisplay("\n\n".join(missing_model_message(task, name) for task, name in missingModels),
                                     windowTitle="LiverTumorSeg")
            return
        if not self.ensureDependencies(dependencies.SEGMENT):
            return
        self.stopLesionClick()
        overwrite = False
        target = p.outputSegmentation
        if target is not None and mrml.needs_overwrite_confirmation(target, p.inputVolume):
            if not slicer.util.confirmYesNoDisplay(
                    f"'{target.GetName()}' has liver/tumor segments that were edited or not made by LiverTumorSeg.\n\n"
                    "Replace its 'Liver' and 'Liver tumor' segments with the new result? (Other segments are kept.)\n"
                    "Choose No and select 'Create new segmentation' to keep them.",
                    windowTitle="LiverTumorSeg: replace edited segmentation?"):
                return
            overwrite = True
        self.ui.logTextEdit.clear()
        self.ui.progressBar.setValue(0)
        try:
            self._task = self.logic.segment(
                p.inputVolume, target, options=self.logic.optionsFromParameters(p), wait=False,
                overwriteEdited=overwrite, tumorMembers=self.tumorMemberCount(),
                onStatus=self.onStatus, onLog=self.appendLog, onFinished=self.onFinished)
        except Exception as exc:
            slicer.util.errorDisplay(f"Could not start the segmentation: {exc}")
            return
        if self._task.running:
            self._timer.start()
        self.updateButtonStates()

    def onTimer(self) -> None:
        self._writingResults = True  # the import at the end of a run is not a user edit
        try:
            if self._task is None or not self._task.poll():
                self._timer.stop()
        finally:
            self._writingResults = False

    def onStatus(self, fraction: float, title: str) -> None:
        self.ui.progressBar.setValue(int(round(1000 * fraction)))
        self.ui.stageLabel.text = title

    def appendLog(self, level: str, message: str) -> None:
        prefix = "" if level == "info" else f"{level.upper()}: "
        self.ui.logTextEdit.appendPlainText(prefix + message)
        (logging.warning if level in ("warning", "error") else logging.info)(f"LiverTumorSeg: {message}")

    def onFinished(self, task: SegmentationTask) -> None:
        self._timer.stop()
        if task.status == SUCCEEDED:
            self._editedSinceMeasured = False
            self.logic.lesions.forget(task.segmentation_node)  # its segments were replaced
            self.ui.stageLabel.text = f"Done in {task.seconds:.0f} s"
            self.ui.progressBar.setValue(1000)
            self._parameterNode.outputSegmentation = task.segmentation_node
            slicer.util.setSliceViewerLayers(background=self._parameterNode.inputVolume)
        elif task.status == CANCELLED:
            self.ui.stageLabel.text = "Cancelled; nothing was added to the scene"
            self.ui.progressBar.setValue(0)
        else:
            self.ui.stageLabel.text = "Failed"
            self.ui.logCollapsibleButton.collapsed = False
            slicer.util.errorDisplay(f"The segmentation failed: {task.error_message}",
                                     windowTitle="LiverTumorSeg", detailedText=self.ui.logTextEdit.toPlainText())
        self.updateButtonStates()
        self.updateResults()

    # -- results ----------------------------------------------------------------------------
    def observeSegmentation(self, segmentationNode) -> None:
        """Follow voxel edits of the shown segmentation, to flag out-of-date measurements."""
        if segmentationNode is self._observedSegmentation:
            return
        if self._observedSegmentation is not None:
            self.removeObserver(self._observedSegmentation.GetSegmentation(), SOURCE_MODIFIED_EVENT,
                                self.onSegmentationEdited)
        self._observedSegmentation = segmentationNode
        self._editedSinceMeasured = False
        if segmentationNode is not None:
            self.addObserver(segmentationNode.GetSegmentation(), SOURCE_MODIFIED_EVENT, self.onSegmentationEdited)
            volume = self.volumeFor(segmentationNode)
            if volume is not None and mrml.measurements_table_node(segmentationNode) is not None:
                self._editedSinceMeasured = mrml.measurements_outdated(segmentationNode, volume)

    def onSegmentationEdited(self, caller=None, event=None) -> None:
        if self._writingResults:
            return  # our own import or recompute
        if not self._editedSinceMeasured:
            self._editedSinceMeasured = True
            self.updateResultsSource()

    def updateResultsSource(self) -> None:
        segmentation = None if self._parameterNode is None else self._parameterNode.outputSegmentation
        table = None if segmentation is None else mrml.measurements_table_node(segmentation)
        if table is None:
            self.ui.resultsSourceLabel.text = "No results for the selected segmentation."
            return
        source = segmentation.GetAttribute(mrml.ATTRIBUTE_MEASUREMENTS_SOURCE) or "segmentation run"
        text = f"Measurements from the {source}."
        if self._editedSinceMeasured:
            text += " <b>The segmentation was edited since: click 'Recompute measurements'.</b>"
        self.ui.resultsSourceLabel.text = text

    def updateResults(self) -> None:
        self.updateResultsSource()
        segmentation = None if self._parameterNode is None else self._parameterNode.outputSegmentation
        table = None if segmentation is None else mrml.measurements_table_node(segmentation)
        rows = [] if table is None else results_display_rows(mrml.table_rows(table))
        self.ui.resultsTable.setRowCount(len(rows))
        for r, cells in enumerate(rows):
            for c, text in enumerate(cells):
                item = qt.QTableWidgetItem(text)
                if c > 0:
                    item.setTextAlignment(qt.Qt.AlignRight | qt.Qt.AlignVCenter)
                self.ui.resultsTable.setItem(r, c, item)
        self.ui.resultsTable.resizeColumnsToContents()

    def volumeFor(self, segmentationNode):
        volume = mrml.input_volume_node(segmentationNode)
        return volume if volume is not None else self._parameterNode.inputVolume

    def onResultCellClicked(self, row: int, column: int) -> None:
        segmentation = self._parameterNode.outputSegmentation
        table = None if segmentation is None else mrml.measurements_table_node(segmentation)
        if table is None:
            return
        centroid = mrml.lesion_centroid_ras(table, row)
        if centroid is None:
            return
        self.logic.jumpToPoint(mrml.local_to_world_ras(segmentation, centroid))

    def onRecompute(self) -> None:
        segmentation = self._parameterNode.outputSegmentation
        volume = self.volumeFor(segmentation)
        if volume is None:
            slicer.util.errorDisplay("Select the CT the segmentation belongs to as input volume.")
            return
        if not self.ensureDependencies(dependencies.MEASURE):
            return
        self._writingResults = True
        try:
            with slicer.util.WaitCursor():
                measurements = self.logic.recomputeMeasurements(segmentation, volume)
        except Exception as exc:
            slicer.util.errorDisplay(f"Could not recompute the measurements: {exc}")
            return
        finally:
            self._writingResults = False
        self._editedSinceMeasured = False
        tlvr = "n/a" if measurements.tlvr is None else f"{100 * measurements.tlvr:.2f} %"
        self.appendLog("info", f"Recomputed: liver {measurements.liver_volume_ml:.1f} mL, tumor "
                               f"{measurements.tumor_volume_ml:.1f} mL, TLVR {tlvr}, {len(measurements.lesions)} lesion(s)")
        self.updateResults()

    # -- lesion edits -------------------------------------------------------------------------
    def lesionTargets(self) -> Tuple[Any, Any]:
        """(segmentation, its CT) the lesion edits work on."""
        segmentation = None if self._parameterNode is None else self._parameterNode.outputSegmentation
        return segmentation, (None if segmentation is None else self.volumeFor(segmentation))

    def setLesionStatus(self, text: str, error: bool = False, log: bool = True) -> None:
        """A message under the lesion buttons (errors in red), and in the log."""
        escaped = html.escape(text, quote=False)
        self.ui.lesionStatusLabel.text = f'<span style="color:#c62828">{escaped}</span>' if error else escaped
        if log:
            self.appendLog("warning" if error else "info", text)

    def onLesionButton(self, action: str) -> None:
        """Turn the next click in a view into adding (removing) the lesion there; clicking the
        button again while it waits cancels."""
        if self._lesionClick.active:
            waiting = self._lesionAction
            self.stopLesionClick()
            if waiting == action:
                self.setLesionStatus(f"{lesion.ACTION_TITLES[action]}: cancelled.", log=False)
                return
        segmentation, volume = self.lesionTargets()
        try:
            self.logic.lesions.check_ready(segmentation, volume)
        except lesion.LesionEditError as exc:
            self.setLesionStatus(str(exc), error=True)
            return
        if not self.ensureDependencies(dependencies.LESION):
            return
        p = self._parameterNode
        self.logic.lesions.configure(parameters.run_setting(p, "tumor_model"), parameters.run_setting(p, "device"))
        try:
            with slicer.util.WaitCursor():
                self.logic.lesions.prepare(volume)  # the model loads now, not after the click
        except Exception as exc:  # a broken installation: say so, the traceback goes to the Python console
            logging.exception("LiverTumorSeg: preparing the lesion edit failed")
            self.setLesionStatus(f"{lesion.ACTION_TITLES[action]} is not available: {exc}", error=True)
            return
        self._lesionAction = action
        self._lesionClick.start(lambda point: self.applyLesionEdit(action, point), self.onLesionClickCancelled)
        where = "inside the lesion to add" if action == lesion.ADD else "on the lesion to remove"
        note = f" {self.logic.lesions.model_note}" if action == lesion.ADD and self.logic.lesions.model_note else ""
        self.setLesionStatus(f"Click {where} in a slice view (Escape cancels).{note}", log=False)
        self.updateButtonStates()

    def stopLesionClick(self) -> None:
        if self._lesionClick is not None and self._lesionClick.active:
            self._lesionClick.stop()
        self._lesionAction = ""
        self.updateButtonStates()

    def onLesionClickCancelled(self) -> None:
        title = lesion.ACTION_TITLES.get(self._lesionAction, "Lesion edit")
        self._lesionAction = ""
        self.setLesionStatus(f"{title}: cancelled, no point was clicked.", log=False)
        self.updateButtonStates()

    def applyLesionEdit(self, action: str, pointRas) -> None:
        """The click arrived: edit the segments in this process, then update the table."""
        self._lesionAction = ""
        segmentation, volume = self.lesionTargets()
        self._writingResults = True  # our own edit; the table is updated below
        try:
            with slicer.util.WaitCursor():
                result = self.logic.lesions.apply(action, segmentation, volume, pointRas)
        except lesion.LesionEditError as exc:
            self.setLesionStatus(f"{lesion.ACTION_TITLES[action]}: {exc}", error=True)
            return
        except Exception as exc:  # a bug or a broken installation: the message here, the traceback in the console
            logging.exception("LiverTumorSeg: the lesion edit failed")
            self.setLesionStatus(f"{lesion.ACTION_TITLES[action]} failed: {exc}", error=True)
            return
        finally:
            self._writingResults = False
            self.updateButtonStates()
        self.setLesionStatus(result.message())
        if result.step is not None:  # the lesion is drawn first, then measured
            qt.QTimer.singleShot(0, lambda: self.updateLesionMeasurements(segmentation, volume))

    def onUndoLesion(self) -> None:
        segmentation, volume = self.lesionTargets()
        self.stopLesionClick()
        self._writingResults = True
        try:
            try:
                step = self.logic.lesions.undo(segmentation)
            except lesion.UndoConflictError as exc:
                if not slicer.util.confirmYesNoDisplay(f"{exc}\n\nUndo the lesion edit anyway?",
                                                       windowTitle="LiverTumorSeg: undo lesion edit"):
                    self.setLesionStatus("Undo cancelled: the segmentation is unchanged.", log=False)
                    return
                step = self.logic.lesions.undo(segmentation, force=True)
        except lesion.LesionEditError as exc:
            self.setLesionStatus(str(exc), error=True)
            return
        finally:
            self._writingResults = False
            self.updateButtonStates()
        self.setLesionStatus(f"Undone: {step.description}.")
        if volume is not None:
            qt.QTimer.singleShot(0, lambda: self.updateLesionMeasurements(segmentation, volume))

    def updateLesionMeasurements(self, segmentation, volume) -> None:
        """The table after a lesion edit (the module's own measurements of the segmentation as it is now)."""
        try:
            self.logic.lesions.update_measurements(segmentation, volume)
        except Exception as exc:
            self._editedSinceMeasured = True
            self.appendLog("warning", f"Could not update the measurements after the lesion edit: {exc}")
        else:
            self._editedSinceMeasured = False
        self.updateResults()

    def onEdit(self) -> None:
        segmentation = self._parameterNode.outputSegmentation
        self.logic.openInSegmentEditor(segmentation, self.volumeFor(segmentation))

    def onExport(self) -> None:
        segmentation = self._parameterNode.outputSegmentation
        volume = self.volumeFor(segmentation)
        folder = Path(self.ui.exportDirectoryButton.directory)
        name = safe_file_stem(segmentation.GetName())
        overwrite = False
        existing = mrml.existing_exports(folder, name)
        if existing:
            if not slicer.util.confirmYesNoDisplay(f"{existing[0]} and related files exist. Overwrite them?"):
                return
            overwrite = True
        if not self.ensureDependencies(dependencies.EXPORT):
            return
        try:
            with slicer.util.WaitCursor():
                paths = self.logic.exportResults(segmentation, folder, name=name, volumeNode=volume,
                                                 overwrite=overwrite, log=self.appendLog)
        except Exception as exc:
            slicer.util.errorDisplay(f"Export failed: {exc}")
            return
        listing = "\n".join(str(p) for p in paths.values())
        self.appendLog("info", f"Exported:\n{listing}")
        slicer.util.infoDisplay(f"Exported to {folder}:\n\n{listing}", windowTitle="LiverTumorSeg")


def _selectComboText(comboBox, value: str) -> None:
    index = comboBox.findText(value)
    comboBox.setCurrentIndex(index if index >= 0 else 0)
