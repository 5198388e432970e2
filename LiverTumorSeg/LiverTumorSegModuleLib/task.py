"""One segmentation, from a volume node to imported nodes: write the input to a private temporary
folder, run the library's command line in the background, follow its progress, import the result,
clean up. Qt-free (the widget polls it from a QTimer) and runs on ``slicer-core``.

The rule about user edits: a target segmentation whose liver/tumor segments were edited (or not
made by LiverTumorSeg) is only replaced when the caller says so (``overwrite_edited``); if it is
edited while the run is going on, the result goes into a new segmentation node instead.
"""

from __future__ import annotations

import time
from typing import Any, Callable, Dict, Optional

from . import mrml
from .process import CANCELLED, FAILED, SUCCEEDED, Launcher, RunOutcome, SegmentOptions, StagedProgress
from .runs import BackgroundSegmentation

StatusCallback = Callable[[float, str], None]  # (overall fraction 0..1, stage title)
LogCallback = Callable[[str, str], None]  # (level, message)
FinishedCallback = Callable[["SegmentationTask"], None]


class SegmentationTask:
    """Segments ``volume_node`` into ``segmentation_node`` (a new node when None), in a background
    process started by ``launcher`` (default: the library's command line in PythonSlicer)."""

    def __init__(self, scene, volume_node, options: Optional[SegmentOptions] = None, segmentation_node=None,
                 overwrite_edited: bool = False, tumor_members: Optional[int] = None,
                 launcher: Optional[Launcher] = None, on_status: Optional[StatusCallback] = None, on_log: Optional[LogCallback] = None,
                 on_finished: Optional[FinishedCallback] = None) -> None:
        if volume_node is None or volume_node.GetImageData() is None:
            raise ValueError("select an input CT volume that has image data")
        if segmentation_node is not None and not overwrite_edited and \
                mrml.needs_overwrite_confirmation(segmentation_node, volume_node):
            raise mrml.EditedSegmentationError(
                f"'{segmentation_node.GetName()}' holds liver/tumor segments that were edited or not made by "
                "LiverTumorSeg; confirm overwriting them or choose 'Create new segmentation'")
        self.scene = scene
        self.volume_node = volume_node
        self.target_node = segmentation_node
        self.options = options or SegmentOptions()
        self.on_status = on_status
        self.on_log = on_log
        self.on_finished = on_finished
        self.progress = StagedProgress(tumor_members=tumor_members)
        self.segmentation_node = None
        self.table_node = None
        self.error_message = ""
        self.status = ""  # "" while running, then SUCCEEDED, FAILED or CANCELLED
        self.started_at = 0.0
        self.seconds = 0.0
        self._target_hash = None if segmentation_node is None else mrml.content_hash(segmentation_node, volume_node)
        self._launcher = launcher
        self._run: Optional[BackgroundSegmentation] = None

    # -- lifecycle --------------------------------------------------------------------------
    def start(self) -> "SegmentationTask":
        """Write the input and start the process; on a failure to start, the task ends FAILED."""
        if self._run is not None:
            raise RuntimeError("this task was already started")
        self.started_at = time.monotonic()
        self._status("load", 0.0)
        try:
            self._run = BackgroundSegmentation(self.options, input_name=self.volume_node.GetName(),
                                               launcher=self._launcher, on_progress=self._on_progress,
                                               on_log=self._log)
            mrml.write_volume_file(self.volume_node, self._run.input_path)
            self._run.start()
        except Exception as exc:
            if self._run is not None:
                self._run.cleanup()
            self._finish(FAILED, f"could not start the segmentation: {exc}")
            return self
        self._log("info", f"Started: {' '.join(self._run.command)}")
        return self

    @property
    def running(self) -> bool:
        """True from :meth:`start` until the task has ended."""
        return self._run is not None and self.status == ""

    def poll(self) -> bool:
        """Forward progress; once the process ended, import the result. True while running."""
        if not self.running:
            return False
        if self._run.poll():
            return True
        self._complete(self._run.outcome)
        return False

    def wait(self, timeout: Optional[float] = None, interval: float = 0.1) -> str:
        """Block until done (the Python-console path); returns the final status."""
        deadline = None if timeout is None else time.monotonic() + timeout
        while self.poll():
            if deadline is not None and time.monotonic() > deadline:
                self.cancel()
                break
            time.sleep(interval)
        return self.status

    def cancel(self) -> None:
        """Kill the process tree, remove the temporary folder; nothing is added to the scene."""
        if not self.running:
            return
        self._run.cancel()
        self._finish(CANCELLED, "the segmentation was cancelled")

    # -- internals --------------------------------------------------------------------------
    def _on_progress(self, stage: str, fraction: float, message: str) -> None:
        self._status(stage, fraction, "" if stage == "load" else message)  # "load" names our temp file

    def _status(self, stage: str, fraction: float, message: str = "") -> None:
        overall, title = self.progress.update(stage, fraction)
        if message:
            title = f"{title}: {message}"
        if self.on_status:
            self.on_status(overall, title)

    def _log(self, level: str, message: str) -> None:
        if self.on_log:
            self.on_log(level, message)

    def _complete(self, outcome: Optional[RunOutcome]) -> None:
        if outcome is None or outcome.status != SUCCEEDED:
            if outcome is not None and outcome.status == FAILED and outcome.details:
                self._log("error", outcome.details)  # the process's stderr, for the log
            self._finish(outcome.status if outcome else FAILED,
                         outcome.error_message if outcome else "the segmentation did not run")
            return
        try:
            self._status("import", 0.0)
            target = self.target_node
            if target is not None and target.GetScene() is None:
                target = None  # deleted while running
            if target is not None and mrml.content_hash(target, self.volume_node) != self._target_hash:
                self._log("warning", f"'{target.GetName()}' was edited during the run; the result goes into "
                                     "a new segmentation instead of replacing it")
                target = None
            outputs = self._run.outputs()
            name = str((outcome.result or {}).get("name") or self.volume_node.GetName())
            self.segmentation_node, self.table_node = mrml.import_results(
                self.scene, self.volume_node, outputs, target, name=f"{name} liver segmentation")
            self._status("import", 1.0)
        except Exception as exc:  # a broken result file must not leave half-imported nodes silently
            self._finish(FAILED, f"could not import the result: {exc}")
            return
        finally:
            self._run.cleanup()
        self._finish(SUCCEEDED, "")

    def _finish(self, status: str, message: str) -> None:
        self.status = status
        self.error_message = message
        self.seconds = time.monotonic() - self.started_at if self.started_at else 0.0
        if message:
            self._log("error" if status == FAILED else "info", message)
        if self.on_finished:
            self.on_finished(self)

    @property
    def temp_dir(self):
        """The private temporary folder (None before start); gone once the task has ended."""
        return None if self._run is None else self._run.temp_dir

    def summary(self) -> Dict[str, Any]:
        return {"status": self.status, "error": self.error_message, "seconds": round(self.seconds, 1),
                "segmentation": None if self.segmentation_node is None else self.segmentation_node.GetName()}
