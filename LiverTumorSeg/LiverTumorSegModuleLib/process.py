"""Run the LiverTumorSegLib command line in a background process and follow its JSON-lines protocol.

No Qt and no MRML here. A process is an object with the small interface of
:class:`ProcessProtocol` (start, poll, wait, cancel, outcome, pid), as SlicerNNUNet's
``ProcessProtocol``; :class:`Launcher` says how processes start (which Python, which environment,
which process class) and is what a caller or a test injects. Callbacks are only ever called from
``poll``/``wait``, i.e. on the caller's thread (the widget polls from a QTimer).

:class:`CliProcess` writes the process's output to files that ``poll`` reads: no reader threads,
no queue, and no pipe that a process left behind can hold open. It does not use QProcess: the
process tree kill and the cleanup after a crash (``runs.py``) need the process to lead its own
session (POSIX) or process group (Windows), which PythonQt's QProcess cannot ask for, and the
Python-console path (``segment(wait=True)``) and the headless tests have no Qt event loop.

The protocol (stdout, one JSON object per line):
``{"event": "progress", "stage": ..., "fraction": 0..1, "message": ...}``,
``{"event": "log", "level": "info"|"warning", "message": ...}``, finally
``{"event": "result", "name": ..., "outputs": {...}}``. Exit code 0 on success; a user error
exits non-zero with one ``error: <message>`` line on stderr.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Protocol, Sequence, Tuple, Union

from LiverTumorSegLib import settings_schema  # the settings and stages (no PyTorch); on sys.path: see __init__.py
from LiverTumorSegLib.settings_schema import Stage

from . import library_root

SUCCEEDED = "succeeded"
FAILED = "failed"
CANCELLED = "cancelled"

STDERR_TAIL_LINES = 40
OUTPUT_FOLDER_PREFIX = "livertumorseg_process_"  # a process's own output folder, when it is given none

ProgressCallback = Callable[[str, float, str], None]  # (stage, fraction, message)
LogCallback = Callable[[str, str], None]  # (level, message)
ResultCallback = Callable[[Dict[str, Any]], None]


@dataclass
class RunOutcome:
    """How a background run ended: ``status`` is one of SUCCEEDED, FAILED, CANCELLED."""

    status: str
    returncode: Optional[int]
    result: Optional[Dict[str, Any]] = None
    error_message: str = ""
    details: str = ""  # stderr tail, for the log

    @property
    def succeeded(self) -> bool:
        return self.status == SUCCEEDED


# ----------------------------------------------------------------------------------------------
# Command line


class SegmentOptions:
    """What a background ``segment`` run is asked for: settings of ``LiverTumorSegLib.settings_schema``
    by name (``SegmentOptions(device="cpu", fast=True)``; unknown names and values it does not allow
    raise ValueError here, before any process starts; ``None`` or left out: the library's default)
    and ``force``, to overwrite existing outputs."""

    def __init__(self, force: bool = False, **settings: Any) -> None:
        self.settings = settings_schema.checked_values(settings)
        self.force = bool(force)

    def __getattr__(self, name: str) -> Any:
        settings = self.__dict__.get("settings", {})
        if name not in settings:
            raise AttributeError(name)
        return settings[name]

    def __eq__(self, other: object) -> bool:
        return isinstance(other, SegmentOptions) and (self.settings, self.force) == (other.settings, other.force)

    def __repr__(self) -> str:
        changed = [f"{name}={value!r}" for name, value in self.settings.items()
                   if value is not None and value != settings_schema.BY_NAME[name].default]
        return f"SegmentOptions({', '.join(changed + (['force=True'] if self.force else []))})"

    def to_args(self) -> List[str]:
        """The ``segment`` options for these settings (none for a default)."""
        return settings_schema.command_line(self.settings) + (["--force"] if self.force else [])


def running_in_slicer() -> bool:
    """True inside the 3D Slicer application (not with PyPI's slicer-core, which has no ``slicer.app``)."""
    slicer_module = sys.modules.get("slicer")
    return slicer_module is not None and hasattr(slicer_module, "app")


def python_executable() -> str:
    """The Python that runs the library: Slicer's ``PythonSlicer`` inside Slicer, else this Python."""
    if not running_in_slicer():
        return sys.executable
    found = shutil.which("PythonSlicer")
    if found:
        return found
    suffix = ".exe" if os.name == "nt" else ""
    beside = Path(sys.executable).resolve().with_name("PythonSlicer" + suffix)
    if beside.is_file():
        return str(beside)
    raise FileNotFoundError("PythonSlicer was not found on PATH or beside the Slicer executable; "
                            "reinstall 3D Slicer")


def library_environment(base: Optional[Dict[str, str]] = None) -> Dict[str, str]:
    """``base`` (default: this process's environment) with the library importable and unbuffered output."""
    env = dict(os.environ if base is None else base)
    root = str(library_root())
    existing = env.get("PYTHONPATH", "")
    env["PYTHONPATH"] = root + (os.pathsep + existing if existing else "")
    env["PYTHONUNBUFFERED"] = "1"
    env.setdefault("PYTHONIOENCODING", "utf-8")
    return env


def cli_prefix(python: Optional[str] = None) -> List[str]:
    """The command that runs the library's command line: ``<python> -m LiverTumorSegLib``."""
    return [python or python_executable(), "-m", "LiverTumorSegLib"]


def segment_command(prefix: Sequence[str], input_path: Path, output_dir: Path,
                    options: SegmentOptions) -> List[str]:
    return list(prefix) + ["segment", str(input_path), "--output", str(output_dir),
                           "--progress", "json"] + options.to_args()


def safe_file_stem(name: str) -> str:
    """A file-name-safe version of a node name (ASCII letters, digits, ``-`` and ``_`` kept)."""
    cleaned = "".join(c if (c.isascii() and c.isalnum()) or c in "-_" else "_" for c in name).strip("_")
    return cleaned[:100] or "input"


# ----------------------------------------------------------------------------------------------
# Protocol parsing


def parse_event_line(line: str) -> Dict[str, Any]:
    """One stdout line as an event; a line that is not a protocol object becomes an info log event."""
    text = line.rstrip("\r\n")
    try:
        obj = json.loads(text)
    except ValueError:
        obj = None
    if isinstance(obj, dict) and obj.get("event") in ("progress", "log", "result"):
        if obj["event"] == "progress":
            try:
                fraction = float(obj.get("fraction", 0.0))
            except (TypeError, ValueError):
                fraction = 0.0
            return {"event": "progress", "stage": str(obj.get("stage", "")),
                    "fraction": min(1.0, max(0.0, fraction)), "message": str(obj.get("message", ""))}
        if obj["event"] == "log":
            return {"event": "log", "level": str(obj.get("level", "info")), "message": str(obj.get("message", ""))}
        return obj
    return {"event": "log", "level": "info", "message": text}


def error_message_from_stderr(stderr: str, returncode: Optional[int]) -> str:
    """The library's ``error: ...`` line (last one wins), else a generic sentence with the exit code."""
    for line in reversed(stderr.splitlines()):
        if line.startswith("error: "):
            return line[len("error: "):].strip()
    last = next((ln.strip() for ln in reversed(stderr.splitlines()) if ln.strip()), "")
    detail = f" ({last})" if last else ""
    return f"the LiverTumorSegLib process stopped with exit code {returncode}{detail}; see the log for details"


# ----------------------------------------------------------------------------------------------
# Process tree


def _popen_platform_kwargs(new_group: bool = True) -> Dict[str, Any]:
    if os.name == "nt":
        flags = getattr(subprocess, "CREATE_NO_WINDOW", 0)
        if new_group:
            flags |= getattr(subprocess, "CREATE_NEW_PROCESS_GROUP", 0)
        return {"creationflags": flags}
    return {"start_new_session": new_group}


def kill_process_tree(process: Union[subprocess.Popen, int], use_psutil: bool = True) -> None:
    """Kill a process and every process it started: a process started here (a ``Popen``, also after
    it exited) leads its own session (POSIX) or process group (Windows), which is killed whole; a
    pid is killed with its group when it leads one. psutil, when installed, also finds children
    that left the group."""
    pid = process.pid if isinstance(process, subprocess.Popen) else int(process)
    if os.name == "nt":
        subprocess.run(["taskkill", "/F", "/T", "/PID", str(pid)], capture_output=True,
                       **_popen_platform_kwargs(new_group=False))
    else:
        descendants = []
        if use_psutil:
            try:
                import psutil

                descendants = psutil.Process(pid).children(recursive=True)
            except Exception:  # no psutil, or the process is gone
                descendants = []
        try:
            if isinstance(process, subprocess.Popen) or os.getpgid(pid) == pid:
                os.killpg(pid, signal.SIGKILL)  # start_new_session=True: the group id is the pid
            else:
                os.kill(pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass
        for child in descendants:
            try:
                child.kill()
            except Exception:  # already gone
                pass
    if isinstance(process, subprocess.Popen) and process.poll() is None:
        process.kill()


def _kill_leftovers(process: subprocess.Popen) -> None:
    """Kill what an exited process left running in its session (POSIX). Not on Windows: there a
    process tree is found by pid, which another program may have by now."""
    if os.name != "nt":
        try:
            os.killpg(process.pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass


# ----------------------------------------------------------------------------------------------
# The process


class ProcessProtocol(Protocol):
    """What a run needs of its background process (see :class:`CliProcess`). Created with
    ``(command, env=..., on_progress=..., on_log=..., on_result=..., output_dir=...)``; events reach
    the callbacks only from :meth:`poll` and :meth:`wait`."""

    outcome: Optional[RunOutcome]  # None until the process has ended

    @property
    def pid(self) -> Optional[int]: ...

    def start(self) -> None: ...

    def poll(self) -> bool:  # deliver events; True while running
        ...

    def wait(self, timeout: Optional[float] = None) -> RunOutcome: ...

    def cancel(self) -> None:  # kill the process tree; the outcome becomes CANCELLED
        ...


class CliProcess:
    """One command run in the background, its stdout and stderr in files of ``output_dir`` (a
    folder of its own, removed when it ends, when none is given)."""

    def __init__(self, command: Sequence[str], env: Optional[Dict[str, str]] = None,
                 cwd: Optional[Path] = None, on_progress: Optional[ProgressCallback] = None,
                 on_log: Optional[LogCallback] = None, on_result: Optional[ResultCallback] = None,
                 output_dir: Optional[Path] = None) -> None:
        self.command = [str(c) for c in command]
        self.env = env
        self.cwd = cwd
        self.on_progress = on_progress
        self.on_log = on_log
        self.on_result = on_result
        self.output_dir = None if output_dir is None else Path(output_dir)
        self.process: Optional[subprocess.Popen] = None
        self.result: Optional[Dict[str, Any]] = None
        self.outcome: Optional[RunOutcome] = None
        self._own_output_dir = output_dir is None
        self._stdout = None  # the reading end of the stdout file
        self._partial = b""  # an incomplete last line, until its newline arrives
        self._cancelled = False

    @property
    def pid(self) -> Optional[int]:
        return None if self.process is None else self.process.pid

    @property
    def running(self) -> bool:
        return self.process is not None and self.outcome is None

    # -- lifecycle --------------------------------------------------------------------------
    def start(self) -> None:
        if self.process is not None:
            raise RuntimeError("this process was already started")
        if self.output_dir is None:
            self.output_dir = Path(tempfile.mkdtemp(prefix=OUTPUT_FOLDER_PREFIX))
        stdout_path, stderr_path = self.output_dir / "process.stdout", self.output_dir / "process.stderr"
        try:
            with open(stdout_path, "wb") as stdout, open(stderr_path, "wb") as stderr:
                self.process = subprocess.Popen(
                    self.command, stdin=subprocess.DEVNULL, stdout=stdout, stderr=stderr, env=self.env,
                    cwd=None if self.cwd is None else str(self.cwd), **_popen_platform_kwargs(new_group=True))
        except OSError as exc:
            self._remove_own_output_dir()
            raise RuntimeError(f"could not start {self.command[0]} ({exc.strerror or exc})") from None
        self._stdout = open(stdout_path, "rb")  # its own file position: the process writes through its own

    def cancel(self) -> None:
        """Kill the whole process tree; the outcome becomes CANCELLED at the next poll."""
        if self.process is None or self.outcome is not None:
            return
        self._cancelled = True
        kill_process_tree(self.process)

    def poll(self) -> bool:
        """Deliver the events written so far to the callbacks; True while the run has not ended."""
        if self.process is None:
            raise RuntimeError("start() was not called")
        if self.outcome is not None:
            return False
        exited = self.process.poll() is not None  # first: all it wrote before exiting is in the file
        self._read_events(final=exited)
        if not exited:
            return True
        _kill_leftovers(self.process)
        self.outcome = self._make_outcome(self.process.returncode, self._stderr_tail())
        self._stdout.close()
        self._remove_own_output_dir()
        return False

    def wait(self, timeout: Optional[float] = None, interval: float = 0.05) -> RunOutcome:
        """Poll until the run ends; on ``timeout`` (seconds) the run is cancelled."""
        deadline = None if timeout is None else time.monotonic() + timeout
        while self.poll():
            if deadline is not None and time.monotonic() > deadline:
                self.cancel()
                deadline = None
            time.sleep(interval)
        assert self.outcome is not None
        return self.outcome

    # -- internals --------------------------------------------------------------------------
    def _read_events(self, final: bool) -> None:
        lines = (self._partial + self._stdout.read()).split(b"\n")
        self._partial = b"" if final else lines.pop()
        for line in lines:
            if line.strip() and not self._cancelled:  # nothing from a cancelled run reaches the user
                self._dispatch(parse_event_line(line.decode("utf-8", "replace")))

    def _stderr_tail(self) -> str:
        try:
            text = (self.output_dir / "process.stderr").read_text(encoding="utf-8", errors="replace")
        except OSError:
            return ""
        return "\n".join(text.splitlines()[-STDERR_TAIL_LINES:])

    def _remove_own_output_dir(self) -> None:
        if self._own_output_dir and self.output_dir is not None:
            shutil.rmtree(self.output_dir, ignore_errors=True)

    def _dispatch(self, event: Dict[str, Any]) -> None:
        kind = event["event"]
        if kind == "progress" and self.on_progress:
            self.on_progress(event["stage"], event["fraction"], event["message"])
        elif kind == "log" and self.on_log:
            if event["message"]:
                self.on_log(event["level"], event["message"])
        elif kind == "result":
            self.result = event
            if self.on_result:
                self.on_result(event)

    def _make_outcome(self, returncode: Optional[int], stderr: str) -> RunOutcome:
        if self._cancelled:
            return RunOutcome(CANCELLED, returncode, None, "the segmentation was cancelled", stderr)
        if returncode == 0 and self.result is not None:
            return RunOutcome(SUCCEEDED, returncode, self.result, "", stderr)
        if returncode == 0:
            return RunOutcome(FAILED, returncode, None, "the segmentation process ended without reporting "
                              "a result; see the log for details", stderr)
        return RunOutcome(FAILED, returncode, None, error_message_from_stderr(stderr, returncode), stderr)


@dataclass
class Launcher:
    """How background processes start: the command that runs the library (``prefix``, default
    ``<PythonSlicer> -m LiverTumorSegLib``), its environment (``env``, default this one with the
    library importable) and the :class:`ProcessProtocol` class. The module's one injection point
    for its background runs: tests give one that runs a fake command line."""

    prefix: Optional[Sequence[str]] = None
    env: Optional[Dict[str, str]] = None
    process_class: Callable[..., ProcessProtocol] = CliProcess

    def command_prefix(self) -> List[str]:
        return list(self.prefix) if self.prefix is not None else cli_prefix()

    def start(self, command: Sequence[str], on_progress: Optional[ProgressCallback] = None,
              on_log: Optional[LogCallback] = None, output_dir: Optional[Path] = None) -> ProcessProtocol:
        """A started process running ``command``; RuntimeError when it cannot start."""
        process = self.process_class(command, env=self.env if self.env is not None else library_environment(),
                                     on_progress=on_progress, on_log=on_log, output_dir=output_dir)
        process.start()
        return process


# ----------------------------------------------------------------------------------------------
# Staged progress


# The library's stages (titles and weights: LiverTumorSegLib.settings_schema), then the module's own.
STAGES: Tuple[Stage, ...] = settings_schema.STAGES + (Stage("import", "Importing into the scene", 0.08),)


@dataclass
class StagedProgress:
    """Turns per-stage progress events into one overall fraction (never decreasing) and a stage title.

    ``tumor_members`` is the expected ensemble size when known; members are counted as
    ``tumor:<name>`` stages arrive otherwise.
    """

    tumor_members: Optional[int] = None
    overall: float = 0.0
    title: str = ""
    _members_seen: List[str] = field(default_factory=list)

    def update(self, stage: str, fraction: float) -> Tuple[float, str]:
        base, member = settings_schema.split_stage(stage)
        start, weight = self._band(base)
        if member is not None:
            if member not in self._members_seen:
                self._members_seen.append(member)
            count = max(self.tumor_members or 0, len(self._members_seen))
            index = self._members_seen.index(member)
            position = start + weight * (index + fraction) / count
            self.title = settings_schema.stage_title(stage, index + 1, count, STAGES)
        elif weight > 0:
            position = start + weight * fraction
            self.title = settings_schema.stage_title(stage, stages=STAGES)
        else:
            position = self.overall
            self.title = stage
        self.overall = min(1.0, max(self.overall, position))
        return self.overall, self.title

    @staticmethod
    def _band(stage: str) -> Tuple[float, float]:
        """(start, share) of ``stage`` on the overall bar; (0, 0) for an unknown stage."""
        total = sum(s.weight for s in STAGES)
        start = 0.0
        for s in STAGES:
            if s.name == stage:
                return start / total, s.weight / total
            start += s.weight
        return 0.0, 0.0
