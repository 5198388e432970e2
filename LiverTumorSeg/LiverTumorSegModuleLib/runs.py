"""One segmentation run in a private temporary folder, and the runs that outlive their owner.

:class:`BackgroundSegmentation` owns a folder ``<temp>/LiverTumorSeg-XXXX`` that holds the input
volume, the process's output files and the results, and a record of who owns it (this Python's
pid) and which process runs in it. Every run of this Python is registered until it is cleaned up,
so module unload and application quit stop them all (:func:`stop_all_runs`), also those started
from the Python console; at the next start, :func:`remove_stale_runs` removes the folders of
sessions that ended without cleaning up (a crash, a kill) and kills their processes.

No Qt and no MRML here.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any, Dict, List, Optional

from .process import (Launcher, LogCallback, ProcessProtocol, ProgressCallback, RunOutcome, SegmentOptions,
                      kill_process_tree, safe_file_stem, segment_command)

TEMP_PREFIX = "LiverTumorSeg-"  # each run's private temporary folder: <temp>/LiverTumorSeg-XXXX
OWNER_FILE = "owner.json"  # in it: the pid of the Python that owns the run, and of the run's process
UNMARKED_STALE_SECONDS = 24 * 3600.0  # a folder without OWNER_FILE (older versions) this old is stale


class BackgroundSegmentation:
    """A segmentation in a private temporary folder: the caller writes the input volume to
    :attr:`input_path`, calls :meth:`start`, polls, and calls :meth:`cleanup` once it has read the
    outputs. Cancel and failure remove the folder at once, so nothing is left behind."""

    def __init__(self, options: SegmentOptions, input_name: str = "input", launcher: Optional[Launcher] = None,
                 on_progress: Optional[ProgressCallback] = None, on_log: Optional[LogCallback] = None,
                 temp_parent: Optional[Path] = None) -> None:
        self.options = options
        self.launcher = launcher or Launcher()
        self.temp_dir = Path(tempfile.mkdtemp(prefix=TEMP_PREFIX, dir=None if temp_parent is None
                                              else str(temp_parent)))
        self.input_path = self.temp_dir / f"{safe_file_stem(input_name)}.nrrd"
        self.output_dir = self.temp_dir / "output"
        self.on_progress = on_progress
        self.on_log = on_log
        self.process: Optional[ProcessProtocol] = None
        _write_owner_record(self.temp_dir)
        with _RUNS_LOCK:
            _RUNS.add(self)

    @property
    def command(self) -> List[str]:
        return segment_command(self.launcher.command_prefix(), self.input_path, self.output_dir, self.options)

    def start(self) -> None:
        if not self.input_path.is_file():
            self.cleanup()
            raise RuntimeError(f"the input volume was not written to {self.input_path}")
        try:
            self.process = self.launcher.start(self.command, on_progress=self.on_progress, on_log=self.on_log,
                                               output_dir=self.temp_dir)
        except Exception:  # cannot start (no PythonSlicer, no such program): nothing is left behind
            self.cleanup()
            raise
        _write_owner_record(self.temp_dir, self.process.pid)

    def poll(self) -> bool:
        assert self.process is not None, "start() was not called"
        running = self.process.poll()
        if not running and not self.process.outcome.succeeded:
            self.cleanup()
        return running

    def wait(self, timeout: Optional[float] = None) -> RunOutcome:
        assert self.process is not None, "start() was not called"
        outcome = self.process.wait(timeout=timeout)
        if not outcome.succeeded:
            self.cleanup()
        return outcome

    def cancel(self) -> None:
        if self.process is not None:
            self.process.cancel()
            self.process.wait()
        self.cleanup()

    @property
    def outcome(self) -> Optional[RunOutcome]:
        return None if self.process is None else self.process.outcome

    def outputs(self) -> Dict[str, Path]:
        """The result's files by key; raises RuntimeError when the run did not succeed or a file is missing."""
        outcome = self.outcome
        if outcome is None or not outcome.succeeded or outcome.result is None:
            raise RuntimeError("the segmentation has no result")
        reported = outcome.result.get("outputs") or {}
        paths = {key: Path(value) for key, value in reported.items()}
        for key in ("labelmap", "report"):
            if key not in paths or not paths[key].is_file():
                raise RuntimeError(f"the segmentation reported no readable '{key}' output")
        return paths

    def cleanup(self) -> None:
        shutil.rmtree(self.temp_dir, ignore_errors=True)
        with _RUNS_LOCK:
            _RUNS.discard(self)


# ----------------------------------------------------------------------------------------------
# Runs that outlive their owner: stop them on unload/quit, remove their leftovers at the next start


_RUNS: "set[BackgroundSegmentation]" = set()  # started here and not cleaned up yet
_RUNS_LOCK = threading.Lock()


def active_runs() -> List[BackgroundSegmentation]:
    """The runs of this Python that have not been cleaned up (running, or finished and unread)."""
    with _RUNS_LOCK:
        return list(_RUNS)


def stop_all_runs() -> int:
    """Kill the process tree of every run this Python started (the panel's and the Python
    console's, e.g. ``segment(wait=False)``) and remove their temporary folders; for module
    unload and application quit. Returns how many runs were stopped."""
    runs = active_runs()
    for run in runs:
        try:
            run.cancel()
        except Exception:  # never let one run keep the others alive
            run.cleanup()
    return len(runs)


def _write_owner_record(folder: Path, process_pid: Optional[int] = None) -> None:
    owner = os.getpid()
    record = {"owner_pid": owner, "owner_started": process_start_time(owner), "process_pid": process_pid}
    try:
        (folder / OWNER_FILE).write_text(json.dumps(record), encoding="utf-8")
    except OSError:
        pass  # a folder without a record is only removed once it is old


def _read_owner_record(folder: Path) -> Optional[Dict[str, Any]]:
    try:
        record = json.loads((folder / OWNER_FILE).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return record if isinstance(record, dict) else None


def _psutil():
    try:
        import psutil
    except ImportError:
        return None
    return psutil


def process_start_time(pid: int) -> Optional[float]:
    """When process ``pid`` started (seconds since the epoch), None when unknown; tells a process
    from a later one that got the same pid."""
    psutil = _psutil()
    if psutil is not None:
        try:
            return float(psutil.Process(pid).create_time())
        except psutil.Error:
            return None
    if not sys.platform.startswith("linux"):
        return None
    try:
        ticks = int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[19])
        boot = next(float(line.split()[1]) for line in Path("/proc/stat").read_text().splitlines()
                    if line.startswith("btime "))
        return boot + ticks / os.sysconf("SC_CLK_TCK")
    except (OSError, ValueError, IndexError, StopIteration):
        return None


def pid_alive(pid: int) -> bool:
    """True while process ``pid`` runs (a zombie counts as gone)."""
    if not isinstance(pid, int) or pid <= 0:
        return False
    psutil = _psutil()
    if psutil is not None:
        try:
            return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
        except psutil.Error:
            return False
    if os.name == "nt":
        return _windows_pid_alive(pid)
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    except OSError:
        return False
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return True
    return state not in ("Z", "X")


def _windows_pid_alive(pid: int) -> bool:
    import ctypes

    kernel32 = ctypes.windll.kernel32  # type: ignore[attr-defined]
    handle = kernel32.OpenProcess(0x1000, False, pid)  # PROCESS_QUERY_LIMITED_INFORMATION
    if not handle:
        return kernel32.GetLastError() == 5  # access denied: it exists
    try:
        code = ctypes.c_ulong()
        if not kernel32.GetExitCodeProcess(handle, ctypes.byref(code)):
            return True
        return code.value == 259  # STILL_ACTIVE
    finally:
        kernel32.CloseHandle(handle)


def _command_line(pid: int) -> Optional[str]:
    psutil = _psutil()
    if psutil is not None:
        try:
            return " ".join(psutil.Process(pid).cmdline())
        except psutil.Error:
            return None
    if sys.platform.startswith("linux"):
        try:
            return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode("utf-8", "replace")
        except OSError:
            return None
    if os.name != "nt":
        try:
            completed = subprocess.run(["ps", "-o", "args=", "-p", str(pid)], capture_output=True, text=True,
                                       timeout=10)
        except (OSError, subprocess.SubprocessError):
            return None
        return completed.stdout.strip() or None
    return None


def _kill_stale_process(record: Dict[str, Any], folder: Path) -> None:
    """Kill the process tree of a stale run, if it still runs and is that run (its command line
    names the run's folder: the pid may belong to another program by now)."""
    pid = record.get("process_pid")
    if not isinstance(pid, int) or not pid_alive(pid):
        return
    command = _command_line(pid)
    if command is None or str(folder) not in command:
        return
    kill_process_tree(pid)


def _owner_alive(record: Dict[str, Any]) -> bool:
    pid = record.get("owner_pid")
    if not isinstance(pid, int) or not pid_alive(pid):
        return False
    started = record.get("owner_started")
    if isinstance(started, (int, float)):
        now_started = process_start_time(pid)
        if now_started is not None and abs(now_started - float(started)) > 2.0:
            return False  # another process got the pid
    return True


def remove_stale_runs(temp_parent: Optional[Path] = None) -> List[Path]:
    """Clean up after sessions that ended without doing it (a crash, a kill): for every
    ``LiverTumorSeg-*`` folder in ``temp_parent`` (default: the system's temporary folder) whose
    owning process is gone, kill the run's process tree if it still runs, then remove the folder.
    Folders of live sessions (this one, another Slicer) are kept; a folder without an owner record
    (older versions) only once it is a day old. Returns the removed folders."""
    parent = Path(tempfile.gettempdir() if temp_parent is None else temp_parent)
    removed: List[Path] = []
    try:
        folders = sorted(p for p in parent.glob(TEMP_PREFIX + "*") if p.is_dir() and not p.is_symlink())
    except OSError:
        return removed
    for folder in folders:
        record = _read_owner_record(folder)
        if record is None:
            try:
                age = time.time() - folder.stat().st_mtime
            except OSError:
                continue
            if age < UNMARKED_STALE_SECONDS:
                continue  # being created right now, or too recent to judge
        elif _owner_alive(record):
            continue
        else:
            _kill_stale_process(record, folder)
        shutil.rmtree(folder, ignore_errors=True)
        if not folder.exists():
            removed.append(folder)
    return removed
