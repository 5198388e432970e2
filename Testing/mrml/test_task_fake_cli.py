"""A whole segmentation task on a real MRML scene with the fake command line
(Testing/module/fake_livertumorseg.py): start, staged progress, import, cancel, failure, edits; and
with a process object that is not a subprocess at all (the process is injected through a Launcher)."""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import slicer

from LiverTumorSegModuleLib import mrml
from LiverTumorSegModuleLib.process import CANCELLED, FAILED, SUCCEEDED, Launcher, RunOutcome, SegmentOptions
from LiverTumorSegModuleLib.task import SegmentationTask
from mrml_helpers import SHAPE_KJI, add_ct_volume, paint, volume_fingerprint

FAKE_PREFIX = [sys.executable, str(Path(__file__).resolve().parents[1] / "module" / "fake_livertumorseg.py")]


def fake_env(mode: str) -> dict:
    env = dict(os.environ)
    env["FAKE_CLI_MODE"] = mode
    return env


class Events:
    def __init__(self) -> None:
        self.status = []
        self.logs = []
        self.finished = []

    def task(self, scene, volume, mode, **kwargs) -> SegmentationTask:
        return SegmentationTask(scene, volume, kwargs.pop("options", SegmentOptions(device="cpu")),
                                launcher=Launcher(FAKE_PREFIX, fake_env(mode)), tumor_members=2,
                                on_status=lambda f, t: self.status.append((f, t)),
                                on_log=lambda level, m: self.logs.append((level, m)),
                                on_finished=self.finished.append, **kwargs)


def node_counts(scene) -> tuple:
    return tuple(scene.GetNumberOfNodesByClass(c) for c in ("vtkMRMLSegmentationNode", "vtkMRMLTableNode",
                                                            "vtkMRMLLabelMapVolumeNode"))


def test_task_imports_the_result_and_reports_staged_progress():
    scene = slicer.vtkMRMLScene()
    volume, _ = add_ct_volume(scene, "CT 7")
    before = volume_fingerprint(volume)
    events = Events()
    task = events.task(scene, volume, "ok").start()
    temp_dir = task.temp_dir
    assert task.wait(timeout=60) == SUCCEEDED, events.logs
    assert events.finished == [task]
    assert not temp_dir.exists()
    assert volume_fingerprint(volume) == before

    fractions = [f for f, _ in events.status]
    assert fractions == sorted(fractions) and fractions[-1] == pytest.approx(1.0)
    titles = list(dict.fromkeys(t for _, t in events.status))
    assert titles[:3] == ["Loading the CT", "Liver (global view)", "Cropping to the liver"]
    assert "Tumor model fake-a (1/2)" in titles and "Tumor model fake-b (2/2)" in titles
    assert titles[-1] == "Importing into the scene"
    assert ("warning", "fake warning: demo models are non-clinical") in events.logs

    node, table = task.segmentation_node, task.table_node
    assert node.GetName() == "CT_7 liver segmentation"
    labels = mrml.segmentation_labelmap(node, volume)
    assert set(np.unique(labels)) == {0, 1, 2}
    assert mrml.table_rows(table)[2][mrml.COLUMN_STRUCTURE] == "Lesion 1"
    assert not mrml.was_edited(node, volume)


def test_cancel_leaves_no_node_and_no_temporary_files():
    scene = slicer.vtkMRMLScene()
    volume, _ = add_ct_volume(scene)
    counts = node_counts(scene)
    events = Events()
    task = events.task(scene, volume, "hang").start()
    deadline = time.monotonic() + 30
    while not any(m.startswith("child pid") for _, m in events.logs) and time.monotonic() < deadline:
        assert task.poll()
        time.sleep(0.05)
    task.cancel()
    assert task.status == CANCELLED and events.finished == [task]
    assert not task.temp_dir.exists()
    assert node_counts(scene) == counts
    assert not task.poll()


def test_failure_reaches_the_user_as_a_message():
    scene = slicer.vtkMRMLScene()
    volume, _ = add_ct_volume(scene)
    counts = node_counts(scene)
    events = Events()
    task = events.task(scene, volume, "error").start()
    assert task.wait(timeout=60) == FAILED
    assert task.error_message == "the input is not a CT (its values look like MR); give a CT volume"
    assert ("error", task.error_message) in events.logs
    assert not task.temp_dir.exists() and node_counts(scene) == counts


def test_edited_target_needs_consent_and_edits_during_the_run_are_kept():
    scene = slicer.vtkMRMLScene()
    volume, _ = add_ct_volume(scene)
    first = Events().task(scene, volume, "ok").start()
    assert first.wait(timeout=60) == SUCCEEDED
    target = first.segmentation_node

    # unedited: may be replaced without asking
    second = Events().task(scene, volume, "ok", segmentation_node=target).start()
    assert second.wait(timeout=60) == SUCCEEDED and second.segmentation_node is target

    # edited: refused without consent
    blob = np.zeros(SHAPE_KJI, dtype=np.uint8)
    blob[1, 1:3, 1:3] = 1
    paint(target, "Liver_tumor", volume, blob)
    with pytest.raises(mrml.EditedSegmentationError):
        Events().task(scene, volume, "ok", segmentation_node=target)
    edited_labels = mrml.segmentation_labelmap(target, volume)

    # with consent it starts; an edit made while it runs sends the result to a new node
    events = Events()
    third = events.task(scene, volume, "ok", segmentation_node=target, overwrite_edited=True).start()
    blob2 = np.zeros(SHAPE_KJI, dtype=np.uint8)
    blob2[1, 5:7, 5:7] = 1
    paint(target, "Liver_tumor", volume, blob2)
    edited_labels[blob2 > 0] = 2
    assert third.wait(timeout=60) == SUCCEEDED
    assert third.segmentation_node is not target
    assert np.array_equal(mrml.segmentation_labelmap(target, volume), edited_labels)
    assert any(level == "warning" and "edited during the run" in m for level, m in events.logs)


def test_task_refuses_a_volume_without_image_data():
    scene = slicer.vtkMRMLScene()
    empty = scene.AddNewNodeByClass("vtkMRMLScalarVolumeNode", "empty")
    with pytest.raises(ValueError, match="image data"):
        SegmentationTask(scene, empty, launcher=Launcher(FAKE_PREFIX))


def test_a_task_that_cannot_start_ends_failed_without_leftovers(tmp_path):
    scene = slicer.vtkMRMLScene()
    volume, _ = add_ct_volume(scene)
    events = Events()
    task = SegmentationTask(scene, volume, launcher=Launcher([str(tmp_path / "no-such-python")]),
                            on_log=lambda level, m: events.logs.append((level, m)), on_finished=events.finished.append)
    assert task.temp_dir is None and not task.running  # nothing is created before start
    task.start()
    assert task.status == FAILED and events.finished == [task]
    assert "could not start" in task.error_message and "no-such-python" in task.error_message
    assert not task.temp_dir.exists()
    assert not task.poll()


class ScriptedProcess:
    """A :class:`ProcessProtocol` without a subprocess: each poll delivers the next stage of a run,
    then the fake command line's outputs (written in this process) as the result."""

    STAGES = ("load", "liver", "crop", "tumor:a", "tumor:b", "postprocess", "measure", "write")

    def __init__(self, command, env=None, on_progress=None, on_log=None, on_result=None, output_dir=None) -> None:
        self.command, self.on_progress, self.on_log = list(command), on_progress, on_log
        self.outcome = None
        self._next = 0

    @property
    def pid(self):
        return None

    def start(self) -> None:
        assert self.command[1] == "segment" and "--progress" in self.command

    def poll(self) -> bool:
        if self.outcome is not None:
            return False
        if self._next < len(self.STAGES):
            self.on_progress(self.STAGES[self._next], 1.0, "")
            self._next += 1
            return True
        sys.path.insert(0, str(Path(FAKE_PREFIX[1]).parent))
        from fake_livertumorseg import write_outputs

        outputs = write_outputs(Path(self.command[2]), Path(self.command[self.command.index("--output") + 1]))
        self.outcome = RunOutcome(SUCCEEDED, 0, {"event": "result", "name": "scripted", "outputs": outputs})
        return False

    def wait(self, timeout=None) -> RunOutcome:
        while self.poll():
            pass
        return self.outcome

    def cancel(self) -> None:
        self.outcome = self.outcome or RunOutcome(CANCELLED, None, error_message="cancelled")


def test_any_process_object_can_run_the_task():
    scene = slicer.vtkMRMLScene()
    volume, _ = add_ct_volume(scene)
    events = Events()
    task = SegmentationTask(scene, volume, launcher=Launcher(["fake"], process_class=ScriptedProcess),
                            tumor_members=2, on_status=lambda f, t: events.status.append((f, t)))
    temp_dir = task.start().temp_dir
    assert task.wait(timeout=60) == SUCCEEDED, task.error_message
    assert task.segmentation_node.GetName() == "scripted liver segmentation"
    assert [t for _, t in events.status][-1] == "Importing into the scene"
    assert "Tumor model b (2/2)" in [t for _, t in events.status]
    assert not temp_dir.exists()
