"""LiverTumorSeg: liver and liver-tumor segmentation of abdominal CT in 3D Slicer.

A thin shell: the Module, the Logic (a facade usable from the Python console) and the self-test.
The panel is ``LiverTumorSegModuleLib/widget.py``; the background process, the results in MRML and
the dependencies are the other files of ``LiverTumorSegModuleLib`` (tested headless on PyPI's
slicer-core); every computation is the library's (``LiverTumorSegLib``). Nothing here imports
PyTorch or MONAI, so the module loads before they are installed.
"""

import json
import logging
import os
import time
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional

import qt
import slicer
from slicer.ScriptedLoadableModule import ScriptedLoadableModule, ScriptedLoadableModuleLogic, ScriptedLoadableModuleTest

from LiverTumorSegModuleLib import dependencies, export, lesion, mrml, parameters
from LiverTumorSegModuleLib.process import CANCELLED, FAILED, SUCCEEDED, Launcher, SegmentOptions
from LiverTumorSegModuleLib.task import SegmentationTask
from LiverTumorSegModuleLib.widget import PanelWidget, removeStaleRuns, resourcePath, stopAllRuns

try:
    from slicer.parameterNodeWrapper import parameterNodeWrapper
except ImportError:  # Slicer before 5.2
    parameterNodeWrapper = None


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
<li>Correct a lesion with one click: <b>Add lesion</b> or <b>Remove lesion</b>, then click it in a
slice view (<b>Undo lesion edit</b> takes it back); or correct the segments in <b>Segment Editor</b>,
then <b>Recompute measurements</b>.</li>
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


#
# Parameter node
#

# The module's settings, saved with the scene: names, types and defaults from parameters.py (made
# from the library's settings schema).
LiverTumorSegParameterNode = (parameterNodeWrapper(parameters.wrapper_class(slicer))
                              if parameterNodeWrapper is not None else None)


#
# Widget
#


class LiverTumorSegWidget(PanelWidget):
    """The panel (LiverTumorSegModuleLib/widget.py) with this module's Logic."""

    def createLogic(self) -> "LiverTumorSegLogic":
        return LiverTumorSegLogic()


#
# Logic
#


class LiverTumorSegLogic(ScriptedLoadableModuleLogic):
    """Usable from the Python console without the widget, e.g.::

        logic = slicer.util.getModuleLogic("LiverTumorSeg")  # or LiverTumorSeg.LiverTumorSegLogic()
        task = logic.segment(slicer.util.getNode("CT*"), wait=True)
        task.segmentation_node, task.table_node
        logic.lesions.add(task.segmentation_node, task.volume_node, (12.0, -30.5, 41.0))  # a click, RAS mm

    ``launcher`` says how the background process starts (default: ``PythonSlicer -m
    LiverTumorSegLib``); tests give one that runs a fake command line.
    """

    launcher: Optional[Launcher] = None  # the default for every instance; tests set it

    def __init__(self, launcher: Optional[Launcher] = None) -> None:
        ScriptedLoadableModuleLogic.__init__(self)
        self.task: Optional[SegmentationTask] = None
        self.lesions = lesion.LesionEditing()  # one-click lesion edits, in this process, with undo
        if launcher is not None:
            self.launcher = launcher

    def getParameterNode(self):
        node = ScriptedLoadableModuleLogic.getParameterNode(self)
        if LiverTumorSegParameterNode is not None:
            return LiverTumorSegParameterNode(node)
        adapter = parameters.ParameterNodeAdapter(node)
        adapter.initialize_defaults()
        return adapter

    @staticmethod
    def optionsFromParameters(p) -> SegmentOptions:
        return parameters.segment_options(p)

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
        dependencies.install(action, slicer.util.pip_install, log or (lambda level, message: logging.info(message)),
                             dependencies.pytorch_extension_installer())

    # -- models -----------------------------------------------------------------------------
    @staticmethod
    def listModels() -> List[Dict[str, Any]]:
        """The model cards the library finds (read in this process; no PyTorch needed)."""
        from LiverTumorSegLib.models.registry import ModelRegistry

        return ModelRegistry.default().list_cards()

    @staticmethod
    def defaultModels() -> Dict[str, str]:
        """The models the library uses when none is chosen, by task."""
        from LiverTumorSegLib.settings_schema import DEFAULT_LIVER_MODEL, DEFAULT_TUMOR_MODEL

        return {"liver": DEFAULT_LIVER_MODEL, "tumor": DEFAULT_TUMOR_MODEL}

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
                                     tumor_members=tumorMembers, launcher=self.launcher, on_status=onStatus,
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

    @staticmethod
    def exportResults(segmentationNode, folder, name: Optional[str] = None, volumeNode=None, overwrite: bool = False,
                      dicomSeg: Optional[bool] = None, log: Optional[Callable[[str, str], None]] = None) -> Dict[str, Path]:
        """Export to ``folder``: .seg.nrrd, NIfTI labelmap, CSV, JSON, and DICOM SEG when the CT came
        from DICOM (``dicomSeg=None``) or when asked (``dicomSeg=True``); see export.py."""
        return export.export_results(slicer.mrmlScene, segmentationNode, Path(folder), name, volumeNode, overwrite,
                                     dicomSeg, log, dicom_database=lambda: slicer.dicomDatabase)


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

        tumor = mrml.segment_mask(segmentation, mrml.SEGMENTS[1], volume)
        if tumor.any():
            self.delayDisplay("Removing a lesion with one click (in this process), then undoing it")
            k, j, i = (int(axis[0]) for axis in tumor.nonzero())  # a tumor voxel
            pointRas = (mrml.ijk_to_ras_matrix(volume) @ [i, j, k, 1])[:3]
            logic.lesions.remove(segmentation, volume, mrml.local_to_world_ras(volume, pointRas))
            self.assertFalse(mrml.segment_mask(segmentation, mrml.SEGMENTS[1], volume)[k, j, i])
            logic.lesions.undo(segmentation)
            self.assertTrue((mrml.segment_mask(segmentation, mrml.SEGMENTS[1], volume) == tumor).all())

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
