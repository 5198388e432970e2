"""LiverTumorSeg: liver and liver-tumor segmentation of abdominal CT in 3D Slicer.

The module is thin: the segmentation runs in the LiverTumorSegLib command line in a background
process, and everything MRML-facing lives in ``LiverTumorSegModuleLib`` (tested headless on
PyPI's slicer-core). Nothing here imports PyTorch or MONAI, so the module loads before they
are installed.
"""

import importlib
import json
import logging
import os
import sys
import time
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Tuple

import qt
import slicer
import vtk
from slicer.ScriptedLoadableModule import (ScriptedLoadableModule, ScriptedLoadableModuleLogic,
                                           ScriptedLoadableModuleTest, ScriptedLoadableModuleWidget)
from slicer.util import VTKObservationMixin

from LiverTumorSegModuleLib import dependencies, mrml, parameters, process
from LiverTumorSegModuleLib.presentation import (MODELS_LISTED, MODELS_LISTING, MODELS_UNKNOWN, RESULT_HEADERS,
                                                  card_summary_html, missing_model_message, model_combo_items,
                                                  results_display_rows)
from LiverTumorSegModuleLib.process import CANCELLED, FAILED, SUCCEEDED, SegmentOptions
from LiverTumorSegModuleLib.task import SegmentationTask

try:
    from slicer.parameterNodeWrapper import parameterNodeWrapper
except ImportError:  # Slicer before 5.2
    parameterNodeWrapper = None

MODULE_DIR = Path(__file__).resolve().parent
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


#
# Module
#


class LiverTumorSeg(ScriptedLoadableModule):
    """Module description shown in Slicer."""

    def __init__(self, parent):
        ScriptedLoadableModule.__init__(self, parent)
        self.parent.title = "Liver Tumor Segmentation"
        self.parent.categories = ["Segmentation"]
        self.parent.dependencies = ["Segmentations"]
        self.parent.contributors = ["LiverTumorSeg contributors"]
        self.parent.helpText = """
<p>Segments the <b>liver</b> and <b>liver tumors</b> of an abdominal CT, measures liver volume,
tumor volume, the tumor-to-liver volume ratio (TLVR) and a per-lesion table.</p>
<ol>
<li>Select the input CT and, optionally, a segmentation to write into.</li>
<li>Click <b>Segment</b>. It runs in the background: keep working, watch the stages, cancel any time.</li>
<li>Correct the segments in <b>Segment Editor</b>, then <b>Recompute measurements</b>.</li>
<li><b>Export</b> writes .seg.nrrd, a NIfTI labelmap, CSV tables and a JSON report
(and DICOM SEG when the CT came from DICOM).</li>
</ol>
<p style="color:#c62828"><b>Not for clinical use.</b> The embedded demo models were trained by this
project on synthetic tumors and public test data. They are research and demonstration models:
not validated, not a medical device, not for diagnosis or treatment decisions.</p>
"""
        self.parent.acknowledgementText = """
<p>The pipeline follows published methods for liver and liver-tumor segmentation of CT:</p>
<ul>
<li>a balanced Dice loss, greedy parameter averaging of checkpoints and inter-slice
post-processing;</li>
<li>a global-local pipeline with SegResNetVAE (liver on the whole CT, tumors in the liver crop),
knowledge-informed label smoothing and active-contour refinement of lesion boundaries;</li>
<li>V-Net with a generalized Dice + focal loss, weighted ensembles and test-time-augmentation
uncertainty;</li>
<li>mixed-label training on CT and MR.</li>
</ul>
<p>Networks and transforms come from MONAI; inference runs on PyTorch.</p>
"""
        try:
            self.parent.icon = qt.QIcon(resourcePath("Icons/LiverTumorSeg.png"))
        except FileNotFoundError:
            pass
        app = getattr(slicer, "app", None)
        if app is not None:
            # Runs outlive neither Slicer nor a crash: at quit every run this Slicer started (the
            # panel's and the Python console's) is killed; at start, what a crashed session left is removed.
            app.aboutToQuit.connect(stopAllRuns)
            removeStaleRuns()


def stopAllRuns() -> None:
    """Kill every segmentation process this Slicer started and remove its temporary folder."""
    stopped = process.stop_all_runs()
    if stopped:
        logging.info(f"LiverTumorSeg: stopped {stopped} segmentation run(s) and removed their temporary files")


def removeStaleRuns() -> None:
    """Remove the temporary folders (and kill the processes) of runs whose Slicer session is gone."""
    try:
        removed = process.remove_stale_runs()
    except Exception as exc:  # never keep the module from loading
        logging.warning(f"LiverTumorSeg: could not look for runs left by an earlier session: {exc}")
        return
    for folder in removed:
        logging.info(f"LiverTumorSeg: removed {folder}, left by a Slicer session that ended without cleaning up")


#
# Parameter node
#

if parameterNodeWrapper is not None:

    @parameterNodeWrapper
    class LiverTumorSegParameterNode:
        """The module's settings, saved with the scene (names and defaults: parameters.py)."""

        inputVolume: slicer.vtkMRMLScalarVolumeNode
        outputSegmentation: slicer.vtkMRMLSegmentationNode
        liverModel: str = ""
        tumorModel: str = ""
        device: str = "auto"
        quality: str = "full"
        tta: bool = False
        liverRefine: bool = True
        activeContour: bool = True
        interslice: bool = True
        exportDirectory: str = ""

else:
    LiverTumorSegParameterNode = None


#
# Widget
#


class LiverTumorSegWidget(ScriptedLoadableModuleWidget, VTKObservationMixin):
    """The panel: settings, Segment/Cancel, staged progress, log, results, edit, export."""

    def __init__(self, parent=None) -> None:
        ScriptedLoadableModuleWidget.__init__(self, parent)
        VTKObservationMixin.__init__(self)
        self.logic: Optional[LiverTumorSegLogic] = None
        self._parameterNode = None
        self._updatingGUI = False
        self._task: Optional[SegmentationTask] = None
        self._cards: Dict[str, Dict[str, Any]] = {}
        self._modelsState = MODELS_LISTING  # until the library lists its models
        self._observedSegmentation = None
        self._editedSinceMeasured = False
        self._writingResults = False
        self._timer = qt.QTimer()
        self._timer.setInterval(100)
        self._timer.timeout.connect(self.onTimer)
        self._modelListing = None
        self._modelListingQuiet = True
        self._listingTimer = qt.QTimer()
        self._listingTimer.setInterval(200)
        self._listingTimer.timeout.connect(self.onListingTimer)

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

        self.logic = LiverTumorSegLogic()

        self.addObserver(slicer.mrmlScene, slicer.mrmlScene.StartCloseEvent, self.onSceneStartClose)
        self.addObserver(slicer.mrmlScene, slicer.mrmlScene.EndCloseEvent, self.onSceneEndClose)

        self.ui.inputVolumeSelector.currentNodeChanged.connect(self.updateParameterNodeFromGUI)
        self.ui.outputSegmentationSelector.currentNodeChanged.connect(self.updateParameterNodeFromGUI)
        self.ui.liverModelComboBox.currentIndexChanged.connect(self.updateParameterNodeFromGUI)
        self.ui.tumorModelComboBox.currentIndexChanged.connect(self.updateParameterNodeFromGUI)
        self.ui.deviceComboBox.currentIndexChanged.connect(self.updateParameterNodeFromGUI)
        self.ui.qualityComboBox.currentIndexChanged.connect(self.updateParameterNodeFromGUI)
        for checkBox in (self.ui.ttaCheckBox, self.ui.liverRefineCheckBox, self.ui.activeContourCheckBox,
                         self.ui.intersliceCheckBox):
            checkBox.toggled.connect(self.updateParameterNodeFromGUI)
        self.ui.exportDirectoryButton.directoryChanged.connect(self.updateParameterNodeFromGUI)

        self.ui.segmentButton.clicked.connect(self.onSegmentButton)
        self.ui.refreshModelsButton.clicked.connect(lambda: self.refreshModels(quiet=False))
        self.ui.installDependenciesButton.clicked.connect(self.onInstallDependencies)
        self.ui.recomputeButton.clicked.connect(self.onRecompute)
        self.ui.editButton.clicked.connect(self.onEdit)
        self.ui.exportButton.clicked.connect(self.onExport)
        self.ui.resultsTable.cellClicked.connect(self.onResultCellClicked)

        self.initializeParameterNode()
        self.refreshModels(quiet=True)

    def cleanup(self) -> None:
        """Called when the module is unloaded (application exit, reload): stop the panel's run and
        every run started from the Python console, so no process or temporary folder outlives it."""
        if self._task is not None and self._task.running:
            self._task.cancel()
        stopAllRuns()
        self._timer.stop()
        self._listingTimer.stop()
        if self._modelListing is not None:
            self._modelListing.cancel()
        self.removeObservers()

    def enter(self) -> None:
        self.initializeParameterNode()

    def exit(self) -> None:
        pass  # observers stay: a run keeps reporting while another module is shown

    def onSceneStartClose(self, caller, event) -> None:
        if self._task is not None and self._task.running:
            self._task.cancel()
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
            _selectComboText(self.ui.deviceComboBox, p.device)
            _selectComboText(self.ui.qualityComboBox, p.quality)
            self.ui.ttaCheckBox.checked = p.tta
            self.ui.liverRefineCheckBox.checked = p.liverRefine
            self.ui.activeContourCheckBox.checked = p.activeContour
            self.ui.intersliceCheckBox.checked = p.interslice
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
            p.liverModel = self.ui.liverModelComboBox.currentData or ""
            p.tumorModel = self.ui.tumorModelComboBox.currentData or ""
            p.device = self.ui.deviceComboBox.currentText
            p.quality = self.ui.qualityComboBox.currentText
            p.tta = self.ui.ttaCheckBox.checked
            p.liverRefine = self.ui.liverRefineCheckBox.checked
            p.activeContour = self.ui.activeContourCheckBox.checked
            p.interslice = self.ui.intersliceCheckBox.checked
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
        for widget in (self.ui.inputVolumeSelector, self.ui.outputSegmentationSelector, self.ui.liverModelComboBox,
                       self.ui.tumorModelComboBox, self.ui.deviceComboBox, self.ui.qualityComboBox,
                       self.ui.ttaCheckBox, self.ui.liverRefineCheckBox, self.ui.activeContourCheckBox,
                       self.ui.intersliceCheckBox,
                       self.ui.installDependenciesButton, self.ui.refreshModelsButton):
            widget.enabled = not running
        for button in (self.ui.recomputeButton, self.ui.editButton, self.ui.exportButton):
            button.enabled = hasResult and not running

    # -- models -----------------------------------------------------------------------------
    def refreshModels(self, quiet: bool = False) -> None:
        """Ask the library for its models in the background; the combo boxes fill when it answers."""
        if self._modelListing is not None:
            self._modelListing.cancel()
        self._modelListingQuiet = quiet
        self.ui.modelCardLabel.text = "Listing the installed models..."
        self._modelListing = self.logic.listModelsInBackground()
        self._listingTimer.start()

    def onListingTimer(self) -> None:
        listing = self._modelListing
        if listing is None or listing.poll():
            return
        self._listingTimer.stop()
        self._modelListing = None
        if listing.error:
            self.appendLog("warning", f"Could not list the models: {listing.error}")
            if not self._modelListingQuiet:
                slicer.util.warningDisplay(f"Could not list the models:\n{listing.error}\n\nInstall the "
                                           "dependencies (button 'Install dependencies') and try again.")
            self.setModelCards(None)
        else:
            self.setModelCards(listing.cards or [])

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
        """Show the listed models and the chosen ones (also while the list loads, and when a chosen
        model is not installed); called with ``_updatingGUI`` set, so nothing is written back."""
        p = self._parameterNode
        for comboBox, task, chosen in ((self.ui.liverModelComboBox, "liver", p.liverModel),
                                       (self.ui.tumorModelComboBox, "tumor", p.tumorModel)):
            items, index = model_combo_items(task, self._cards.values(), self._modelsState, chosen,
                                             parameters.DEFAULT_MODELS[task])
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
            name = comboBox.currentData or parameters.DEFAULT_MODELS[task]
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
                           + {"segment": "segmentation", "measure": "recomputing", "export": "export"}.get(action, action)
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
                self._editedSinceMeasured = mrml.was_edited(segmentationNode, volume)

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

    def onEdit(self) -> None:
        segmentation = self._parameterNode.outputSegmentation
        self.logic.openInSegmentEditor(segmentation, self.volumeFor(segmentation))

    def onExport(self) -> None:
        segmentation = self._parameterNode.outputSegmentation
        volume = self.volumeFor(segmentation)
        folder = Path(self.ui.exportDirectoryButton.directory)
        name = process.safe_file_stem(segmentation.GetName())
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


#
# Logic
#


class LiverTumorSegLogic(ScriptedLoadableModuleLogic):
    """Usable from the Python console without the widget, e.g.::

        logic = slicer.util.getModuleLogic("LiverTumorSeg")  # or LiverTumorSeg.LiverTumorSegLogic()
        task = logic.segment(slicer.util.getNode("CT*"), wait=True)
        task.segmentation_node, task.table_node
    """

    def __init__(self) -> None:
        ScriptedLoadableModuleLogic.__init__(self)
        self.task: Optional[SegmentationTask] = None

    def getParameterNode(self):
        node = ScriptedLoadableModuleLogic.getParameterNode(self)
        if LiverTumorSegParameterNode is not None:
            return LiverTumorSegParameterNode(node)
        adapter = parameters.ParameterNodeAdapter(node)
        adapter.initialize_defaults()
        return adapter

    @staticmethod
    def optionsFromParameters(p) -> SegmentOptions:
        return SegmentOptions(device=parameters.DEVICE_TO_CLI.get(p.device, "auto"), fast=p.quality == "fast",
                              tta=p.tta, liver_refine=p.liverRefine, active_contour=p.activeContour,
                              interslice=p.interslice,
                              liver_model=p.liverModel or None, tumor_model=p.tumorModel or None)

    # -- dependencies -----------------------------------------------------------------------
    @staticmethod
    def dependencyProblems(action: str = dependencies.SEGMENT) -> List[dependencies.Problem]:
        """What ``action`` ("segment", "measure", "export") needs that is missing or of a version outside
        ``pyproject.toml``'s requirement; PyTorch first."""
        return dependencies.requirement_problems(action)

    @classmethod
    def missingDependencies(cls, action: str = dependencies.SEGMENT) -> List[str]:
        """Pip requirements of :meth:`dependencyProblems`."""
        return [problem.requirement for problem in cls.dependencyProblems(action)]

    def installDependencies(self, log: Optional[Callable[[str, str], None]] = None,
                            action: str = dependencies.SEGMENT) -> None:
        """Install or upgrade what ``action`` needs: PyTorch through the PyTorch extension when present
        (it picks the wheel for the GPU), the rest with pip. Raises RuntimeError on failure."""
        log = log or (lambda level, message: logging.info(message))
        problems = self.dependencyProblems(action)
        torchProblem = next((problem for problem in problems if problem.is_torch), None)
        if torchProblem is not None:
            _, torchSpecifier = dependencies.split_requirement(dependencies.TORCH_REQUIREMENT)
            try:
                import PyTorchUtils
            except ImportError:
                PyTorchUtils = None
            if PyTorchUtils is not None:
                log("info", f"Installing PyTorch ({torchSpecifier}) with the PyTorch extension...")
                torchLogic = PyTorchUtils.PyTorchUtilsLogic()
                try:
                    torch = torchLogic.installTorch(askConfirmation=False, torchVersionRequirement=torchSpecifier)
                except TypeError:  # older PyTorchUtils without the version argument
                    torch = torchLogic.installTorch(askConfirmation=False)
                if torch is None:
                    raise RuntimeError("the PyTorch extension could not install PyTorch")
            else:
                log("info", f"Installing {dependencies.TORCH_REQUIREMENT} with pip (install the PyTorch "
                            "extension to get a GPU build matched to your driver)...")
                slicer.util.pip_install([dependencies.TORCH_REQUIREMENT])
        others = [problem.requirement for problem in problems if not problem.is_torch]
        if others:
            log("info", f"Installing {', '.join(others)} with pip...")
            slicer.util.pip_install(others)
        importlib.invalidate_caches()  # make freshly installed packages importable
        still = self.dependencyProblems(action)
        if still:
            raise RuntimeError("still missing or of another version after installation: "
                               + ", ".join(problem.describe() for problem in still))
        loaded = [problem.import_name for problem in problems if not problem.missing
                  and problem.import_name in sys.modules]
        if loaded:
            log("warning", f"Restart Slicer to use the new version of {', '.join(loaded)} in Slicer itself "
                           "(the segmentation process uses it already).")
        log("info", "Dependencies installed.")

    # -- models -----------------------------------------------------------------------------
    @staticmethod
    def listModels() -> List[Dict[str, Any]]:
        """The model cards the library knows (blocks for a few seconds)."""
        return process.list_models()

    @staticmethod
    def listModelsInBackground() -> "process.ModelListing":
        """A started :class:`ModelListing`; poll it until it is done."""
        return process.ModelListing().start()

    # -- segmentation -----------------------------------------------------------------------
    def segment(self, inputVolume, outputSegmentation=None, options: Optional[SegmentOptions] = None,
                wait: bool = False, overwriteEdited: bool = False, tumorMembers: Optional[int] = None,
                onStatus=None, onLog=None, onFinished=None, timeout: Optional[float] = None) -> SegmentationTask:
        """Segment ``inputVolume`` in a background process.

        ``wait=False`` returns the running task; poll it (``task.poll()``, e.g. from a QTimer) to
        get progress and the import. ``wait=True`` blocks (keeping the GUI responsive) and raises
        RuntimeError when the segmentation fails.
        """
        if self.task is not None and self.task.running:
            raise RuntimeError("a segmentation is already running; cancel it first")
        self.task = SegmentationTask(slicer.mrmlScene, inputVolume, options or SegmentOptions(),
                                     segmentation_node=outputSegmentation, overwrite_edited=overwriteEdited,
                                     tumor_members=tumorMembers, on_status=onStatus,
                                     on_log=onLog or (lambda level, message: logging.info(message)),
                                     on_finished=onFinished)
        self.task.start()
        if wait:
            deadline = None if timeout is None else time.monotonic() + timeout
            while self.task.poll():
                slicer.app.processEvents()
                if deadline is not None and time.monotonic() > deadline:
                    self.task.cancel()
                time.sleep(0.05)
            if self.task.status == FAILED:
                raise RuntimeError(self.task.error_message)
        return self.task

    def cancel(self) -> None:
        if self.task is not None:
            self.task.cancel()

    # -- results ----------------------------------------------------------------------------
    @staticmethod
    def recomputeMeasurements(segmentationNode, volumeNode=None):
        volumeNode = volumeNode or mrml.input_volume_node(segmentationNode)
        if volumeNode is None:
            raise ValueError("the segmentation does not say which CT it belongs to; give the volume node")
        measurements, _ = mrml.recompute_measurements(slicer.mrmlScene, segmentationNode, volumeNode)
        return measurements

    @staticmethod
    def jumpToPoint(pointRas) -> None:
        """Center the slice views on a world RAS point."""
        x, y, z = (float(v) for v in pointRas)
        markupsLogic = getattr(slicer.modules, "markups", None)
        if markupsLogic is not None and hasattr(markupsLogic.logic(), "JumpSlicesToLocation"):
            markupsLogic.logic().JumpSlicesToLocation(x, y, z, True)
        else:
            slicer.vtkMRMLSliceNode.JumpAllSlices(slicer.mrmlScene, x, y, z, slicer.vtkMRMLSliceNode.CenteredJumpSlice)

    @staticmethod
    def openInSegmentEditor(segmentationNode, volumeNode=None) -> None:
        slicer.util.selectModule("SegmentEditor")
        editor = slicer.modules.segmenteditor.widgetRepresentation().self().editor
        editor.setSegmentationNode(segmentationNode)
        if volumeNode is not None:
            if hasattr(editor, "setSourceVolumeNode"):
                editor.setSourceVolumeNode(volumeNode)
            else:  # Slicer before 5.2
                editor.setMasterVolumeNode(volumeNode)
        tumorId = mrml.find_segment_id(segmentationNode, mrml.SEGMENTS[1])
        if tumorId:
            editor.setCurrentSegmentID(tumorId)

    def exportResults(self, segmentationNode, folder, name: Optional[str] = None, volumeNode=None,
                      overwrite: bool = False, dicomSeg: Optional[bool] = None,
                      log: Optional[Callable[[str, str], None]] = None) -> Dict[str, Path]:
        """Export to ``folder``: .seg.nrrd, NIfTI labelmap, CSV, JSON, and DICOM SEG when the CT came
        from DICOM (``dicomSeg=None``) or when asked (``dicomSeg=True``)."""
        log = log or (lambda level, message: logging.info(message))
        volumeNode = volumeNode or mrml.input_volume_node(segmentationNode)
        if volumeNode is None:
            raise ValueError("the segmentation does not say which CT it belongs to; give the volume node")
        name = name or process.safe_file_stem(segmentationNode.GetName())
        paths = mrml.export_results(segmentationNode, volumeNode, Path(folder), name, overwrite=overwrite)
        if dicomSeg is None:
            dicomSeg = mrml.is_from_dicom(volumeNode)
        if dicomSeg:
            try:
                paths["dicom_seg"] = self.exportDicomSeg(segmentationNode, volumeNode, paths["labelmap"],
                                                         Path(folder), name, overwrite)
            except Exception as exc:
                log("warning", f"DICOM SEG export failed: {exc}")
        return paths

    def exportDicomSeg(self, segmentationNode, volumeNode, labelmapPath: Path, folder: Path, name: str,
                       overwrite: bool = False) -> Path:
        """DICOM SEG ``NAME_seg.dcm`` with the library's writer (highdicom) from the DICOM database's
        files of the CT; without highdicom, through Slicer's DICOMSegmentationPlugin
        (QuantitativeReporting) into the folder ``NAME_DICOM_SEG``."""
        try:
            import highdicom  # noqa: F401
        except ImportError:
            pluginFolder = folder / f"{name}_DICOM_SEG"
            self.exportDicomSegWithPlugin(segmentationNode, pluginFolder)
            return pluginFolder
        segPath = folder / f"{name}_seg.dcm"
        if segPath.exists() and not overwrite:
            raise FileExistsError(f"{segPath} already exists; choose another folder or allow overwriting")
        files = mrml.dicom_instance_files(volumeNode, slicer.dicomDatabase)
        return mrml.write_dicom_seg_file(labelmapPath, files, segPath)

    @staticmethod
    def exportDicomSegWithPlugin(segmentationNode, folder: Path) -> None:
        """DICOM SEG through Slicer's DICOMSegmentationPlugin (QuantitativeReporting extension)."""
        try:
            import DICOMSegmentationPlugin
        except ImportError:
            raise RuntimeError("DICOM SEG export needs highdicom (pip install highdicom in Slicer's Python "
                               "console: slicer.util.pip_install('highdicom')) or the QuantitativeReporting "
                               "extension (Extensions Manager)") from None
        hierarchy = slicer.vtkMRMLSubjectHierarchyNode.GetSubjectHierarchyNode(slicer.mrmlScene)
        item = hierarchy.GetItemByDataNode(segmentationNode)
        exporter = DICOMSegmentationPlugin.DICOMSegmentationPluginClass()
        exportables = exporter.examineForExport(item)
        if not exportables:
            raise RuntimeError("the segmentation is not exportable as DICOM SEG: it must sit in the study of a CT "
                               "loaded from DICOM (subject hierarchy)")
        Path(folder).mkdir(parents=True, exist_ok=True)
        for exportable in exportables:
            exportable.directory = str(folder)
        message = exporter.export(exportables)
        if message:
            raise RuntimeError(message)


#
# Test
#


class LiverTumorSegTest(ScriptedLoadableModuleTest):
    """The whole workflow on a real CT inside Slicer (needs the dependencies and the models).

    Set the environment variable ``LIVERTUMORSEG_TEST_CT`` to a CT file to use it instead of the
    SampleData CT. Without the dependencies, or without a CT (no network for SampleData and no
    ``LIVERTUMORSEG_TEST_CT``), the workflow test is skipped and says why.
    """

    def setUp(self) -> None:
        slicer.mrmlScene.Clear()

    def runTest(self) -> None:
        """Run every test (Reload and Test, Test). A skipped test says why and the run goes on:
        Slicer's Reload and Test reports any exception, unittest.SkipTest too, as a failure."""
        import unittest

        self.skipped = []
        for test in (self.test_ModuleLoads, self.test_SegmentRecomputeExport):
            self.setUp()
            try:
                test()
            except unittest.SkipTest as skip:
                message = f"LiverTumorSeg self-test: {test.__name__} skipped: {skip}"
                self.skipped.append((test.__name__, str(skip)))
                logging.warning(message)
                self.delayDisplay(message)

    def test_ModuleLoads(self) -> None:
        self.delayDisplay("Checking the module and its resources")
        self.assertTrue(Path(resourcePath("UI/LiverTumorSeg.ui")).is_file())
        logic = LiverTumorSegLogic()
        parameterNode = logic.getParameterNode()
        parameterNode.device = "CPU"
        self.assertEqual(logic.getParameterNode().device, "CPU")
        self.assertEqual(logic.optionsFromParameters(parameterNode).device, "cpu")

    def loadCT(self):
        path = os.environ.get("LIVERTUMORSEG_TEST_CT")
        if path:
            return slicer.util.loadVolume(path)
        try:
            import SampleData
        except ImportError:
            self.skipTest("no test CT: the SampleData module is not available; set LIVERTUMORSEG_TEST_CT "
                          "to a CT file")
        for name in ("CTLiver", "CTACardio", "CTChest"):
            try:
                volume = SampleData.downloadSample(name)
            except Exception as exc:  # not in this Slicer's sample list, or offline
                logging.info(f"SampleData {name} not available: {exc}")
                continue
            if volume is not None:
                return volume
        self.skipTest("no test CT: SampleData could not download one (offline?); set LIVERTUMORSEG_TEST_CT "
                      "to a CT file")

    def test_SegmentRecomputeExport(self) -> None:
        logic = LiverTumorSegLogic()
        missing = logic.missingDependencies()
        if missing:
            self.skipTest(f"dependencies not installed: {', '.join(missing)}")
        self.delayDisplay("Loading a CT")
        volume = self.loadCT()
        before = slicer.util.arrayFromVolume(volume).copy()

        self.delayDisplay("Segmenting (background process, waiting)")
        statuses = []
        task = logic.segment(volume, options=SegmentOptions(device="auto", fast=True), wait=True,
                             onStatus=lambda f, t: statuses.append((f, t)))
        self.assertEqual(task.status, SUCCEEDED, task.error_message)
        self.assertTrue((slicer.util.arrayFromVolume(volume) == before).all(), "the input volume was modified")
        fractions = [f for f, _ in statuses]
        self.assertEqual(fractions, sorted(fractions))
        self.assertIn("Liver (global view)", [t for _, t in statuses])

        segmentation, table = task.segmentation_node, task.table_node
        names = [segmentation.GetSegmentation().GetNthSegment(i).GetName()
                 for i in range(segmentation.GetSegmentation().GetNumberOfSegments())]
        self.assertEqual(sorted(names), ["Liver", "Liver tumor"])
        rows = mrml.table_rows(table)
        self.assertEqual(rows[0][mrml.COLUMN_STRUCTURE], mrml.LIVER_ROW)
        self.assertGreater(rows[0][mrml.COLUMN_VOLUME], 100.0)  # a liver, in mL
        self.assertFalse(mrml.was_edited(segmentation, volume))

        self.delayDisplay("Recomputing and exporting")
        measurements = logic.recomputeMeasurements(segmentation, volume)
        self.assertAlmostEqual(measurements.liver_volume_ml, rows[0][mrml.COLUMN_VOLUME], delta=0.5)
        folder = Path(slicer.app.temporaryPath) / "LiverTumorSegSelfTest"
        paths = logic.exportResults(segmentation, folder, name="selftest", volumeNode=volume, overwrite=True,
                                    dicomSeg=False)
        for path in paths.values():
            self.assertTrue(Path(path).exists(), path)
        report = json.loads(Path(paths["report"]).read_text())
        self.assertIn("tlvr", report)

        self.delayDisplay("Cancelling a second run")
        second = logic.segment(volume, options=SegmentOptions(device="cpu"))
        count = slicer.mrmlScene.GetNumberOfNodesByClass("vtkMRMLSegmentationNode")
        for _ in range(20):
            second.poll()
            slicer.app.processEvents()
            time.sleep(0.05)
        second.cancel()
        self.assertEqual(second.status, CANCELLED)
        self.assertFalse(second.temp_dir.exists())
        self.assertEqual(slicer.mrmlScene.GetNumberOfNodesByClass("vtkMRMLSegmentationNode"), count)
        self.delayDisplay("Test passed")
