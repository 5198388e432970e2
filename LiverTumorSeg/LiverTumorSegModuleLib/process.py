"""Run the LiverTumorSegLib command line in a background process and follow its JSON-lines protocol.

No Qt and no MRML here: the Slicer widget polls :meth:`CliProcess.poll` from a QTimer, the
Logic's ``wait=True`` path and the tests call :meth:`CliProcess.wait`. Callbacks are only ever
called from ``poll``/``wait``, i.e. on the caller's thread; two reader threads only queue lines.

The protocol (stdout, one JSON object per line):
``{"event": "progress", "stage": ..., "fraction": 0..1, "message": ...}``,
``{"event": "log", "level": "info"|"warning", "message": ...}``, finally
``{"event": "result", "name": ..., "outputs": {...}}``. Exit code 0 on success; a user error
exits non-zero with one ``error: <message>`` line on stderr.
"""

from __future__ import annotations

import json
import os
import queue
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

SUCCEEDED = "succeeded"
FAILED = "failed"
CANCELLED = "cancelled"

STDERR_TAIL_LINES = 40
ORPHAN_GRACE_SECONDS = 5.0

TEMP_PREFIX = "LiverTumorSeg-"  # each run's private temporary folder: <temp>/LiverTumorSeg-XXXX
OWNER_FILE = "owner.json"  # in it: the pid of the Python that owns the run, and of the run's process
UNMARKED_STALE_SECONDS = 24 * 3600.0  # a folder without OWNER_FILE (older versions) this old is stale

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


@dataclass
class SegmentOptions:
    """The switches of ``segment`` the module exposes; ``None`` model names mean the CLI's default."""

    device: str = "auto"  # auto | cpu | cuda
    fast: bool = False
    tta: bool = False
    liver_refine: bool = True
    active_contour: bool = True
    interslice: bool = True
    liver_model: Optional[str] = None
    tumor_model: Optional[str] = None
    force: bool = False

    def to_args(self) -> List[str]:
        if self.device not in ("auto", "cpu", "cuda"):
            raise ValueError(f"device must be auto, cpu or cuda, not {self.device!r}")
        args = ["--device", self.device]
        if self.fast:
            args.append("--fast")
        if self.force:
            args.append("--force")
        if self.tta:
            args.append("--tta")
        if not self.liver_refine:
            args.append("--no-liver-refine")
        if not self.active_contour:
            args.append("--no-active-contour")
        if not self.interslice:
            args.append("--no-interslice")
        if self.liver_model:
            args += ["--liver-model", self.liver_model]
        if self.tumor_model:
            args += ["--tumor-model", self.tumor_model]
        return args


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


def library_root() -> Path:
    """The folder that holds the ``LiverTumorSegLib`` package: beside this package when installed
    (qt-scripted-modules/), the repository root in a source checkout."""
    module_dir = Path(__file__).resolve().parents[1]
    for candidate in (module_dir, module_dir.parent):
        if (candidate / "LiverTumorSegLib" / "__init__.py").is_file():
            return candidate
    raise FileNotFoundError(f"the LiverTumorSegLib package was not found beside {module_dir}; "
                            "reinstall the LiverTumorSeg extension")


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


def models_list_command(prefix: Sequence[str]) -> List[str]:
    return list(prefix) + ["models", "list", "--json"]


def list_models(prefix: Optional[Sequence[str]] = None, env: Optional[Dict[str, str]] = None,
                timeout: float = 120.0) -> List[Dict[str, Any]]:
    """The model cards the library knows (``models list --json``), blocking; raises RuntimeError
    with the library's own error message when the command fails."""
    return ModelListing(prefix, env).start().wait(timeout)


def parse_model_list(stdout: str, stderr: str, returncode: Optional[int]) -> List[Dict[str, Any]]:
    """The cards printed by ``models list --json``; RuntimeError with the library's message otherwise."""
    if returncode != 0:
        raise RuntimeError(error_message_from_stderr(stderr, returncode))
    try:
        cards = json.loads(stdout)
    except json.JSONDecodeError as exc:
        raise RuntimeError(f"'models list --json' printed something that is not JSON ({exc})") from None
    if not isinstance(cards, list):
        raise RuntimeError("'models list --json' did not print a list of model cards")
    return cards


class ModelListing:
    """``models list --json`` without blocking the caller (the library imports PyTorch, which takes
    seconds): :meth:`start`, then :meth:`poll` until it returns False; then :attr:`cards` or
    :attr:`error` is set. Output goes to temporary files, so no pipe can fill up."""

    def __init__(self, prefix: Optional[Sequence[str]] = None, env: Optional[Dict[str, str]] = None) -> None:
        self.command = models_list_command(prefix or cli_prefix())
        self.env = env if env is not None else library_environment()
        self.cards: Optional[List[Dict[str, Any]]] = None
        self.error: str = ""
        self._process: Optional[subprocess.Popen] = None
        self._stdout = tempfile.TemporaryFile(mode="w+", encoding="utf-8")
        self._stderr = tempfile.TemporaryFile(mode="w+", encoding="utf-8")

    def start(self) -> "ModelListing":
        try:
            self._process = subprocess.Popen(self.command, stdin=subprocess.DEVNULL, stdout=self._stdout,
                                             stderr=self._stderr, env=self.env,
                                             **_popen_platform_kwargs(new_group=True))
        except OSError as exc:
            self.error = f"could not list the models ({exc.strerror or exc})"
            self._close()
        return self

    def poll(self) -> bool:
        """True while the listing runs."""
        if self._process is None or self.cards is not None or self.error:
            return False
        if self._process.poll() is None:
            return True
        self._stdout.seek(0)
        self._stderr.seek(0)
        try:
            self.cards = parse_model_list(self._stdout.read(), self._stderr.read(), self._process.returncode)
        except RuntimeError as exc:
            self.error = str(exc)
        self._close()
        return False

    def wait(self, timeout: float = 120.0) -> List[Dict[str, Any]]:
        deadline = time.monotonic() + timeout
        while self.poll():
            if time.monotonic() > deadline:
                self.cancel()
                raise RuntimeError(f"listing the models took more than {timeout:.0f} s")
            time.sleep(0.05)
        if self.error:
            raise RuntimeError(self.error)
        return self.cards or []

    def cancel(self) -> None:
        if self._process is not None and self._process.poll() is None:
            kill_process_tree(self._process)
            self._process.wait()
        self.error = self.error or "the model listing was cancelled"
        self._close()

    def _close(self) -> None:
        for handle in (self._stdout, self._stderr):
            if not handle.closed:
                handle.close()


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


def kill_process_tree(process: subprocess.Popen, use_psutil: bool = True) -> None:
    """Kill ``process`` and every process it started. The process must have been started in its
    own session (POSIX) or process group (Windows), as :class:`CliProcess` does."""
    pid = process.pid
    if os.name == "nt":
        subprocess.run(["taskkill", "/F", "/T", "/PID", str(pid)], capture_output=True,
                       **_popen_platform_kwargs(new_group=False))
        if process.poll() is None:
            process.kill()
        return
    descendants = []
    if use_psutil:
        try:
            import psutil
        except ImportError:
            psutil = None
        if psutil is not None:
            try:
                descendants = psutil.Process(pid).children(recursive=True)
            except psutil.Error:
                descendants = []
    try:
        os.killpg(pid, signal.SIGKILL)  # start_new_session=True: the group id is the pid
    except (ProcessLookupError, PermissionError):
        pass
    for child in descendants:  # children that left the group (setsid) are still known to psutil
        try:
            child.kill()
        except Exception:  # already gone
            pass
    if process.poll() is None:
        process.kill()


# ----------------------------------------------------------------------------------------------
# The runner


class CliProcess:
    """One command run in the background; events reach the callbacks when :meth:`poll` is called."""

    def __init__(self, command: Sequence[str], env: Optional[Dict[str, str]] = None,
                 cwd: Optional[Path] = None, on_progress: Optional[ProgressCallback] = None,
                 on_log: Optional[LogCallback] = None, on_result: Optional[ResultCallback] = None) -> None:
        self.command = [str(c) for c in command]
        self.env = env
        self.cwd = cwd
        self.on_progress = on_progress
        self.on_log = on_log
        self.on_result = on_result
        self.process: Optional[subprocess.Popen] = None
        self.result: Optional[Dict[str, Any]] = None
        self.outcome: Optional[RunOutcome] = None
        self._events: "queue.Queue[Tuple[str, Optional[str]]]" = queue.Queue()
        self._stderr_lines: List[str] = []
        self._threads: List[threading.Thread] = []
        self._open_streams = 0
        self._cancelled = False
        self._exited_at: Optional[float] = None

    # -- lifecycle --------------------------------------------------------------------------
    def start(self) -> None:
        if self.process is not None:
            raise RuntimeError("this process was already started")
        try:
            self.process = subprocess.Popen(
                self.command, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                env=self.env, cwd=None if self.cwd is None else str(self.cwd), text=True, encoding="utf-8",
                errors="replace", bufsize=1, **_popen_platform_kwargs(new_group=True))
        except OSError as exc:
            raise RuntimeError(f"could not start {self.command[0]} ({exc.strerror or exc})") from None
        for name, stream in (("stdout", self.process.stdout), ("stderr", self.process.stderr)):
            thread = threading.Thread(target=self._read, args=(name, stream), daemon=True,
                                      name=f"LiverTumorSeg-{name}")
            thread.start()
            self._threads.append(thread)
        self._open_streams = 2

    @property
    def running(self) -> bool:
        return self.process is not None and self.outcome is None

    def cancel(self) -> None:
        """Kill the whole process tree; the outcome becomes CANCELLED at the next poll."""
        if self.process is None or self.outcome is not None:
            return
        self._cancelled = True
        kill_process_tree(self.process)

    def poll(self) -> bool:
        """Deliver queued events to the callbacks; True while the run has not ended."""
        if self.process is None:
            raise RuntimeError("start() was not called")
        if self.outcome is not None:
            return False
        self._drain()
        exited = self.process.poll() is not None
        if exited and self._open_streams > 0:
            # A process it left behind still holds the pipes open: give it a moment, then end it.
            self._exited_at = self._exited_at or time.monotonic()
            if time.monotonic() - self._exited_at > ORPHAN_GRACE_SECONDS:
                kill_process_tree(self.process)
                self._open_streams = 0
        if exited and self._open_streams == 0:
            for thread in self._threads:
                thread.join(timeout=1.0)
            self._drain()
            self.outcome = self._make_outcome(self.process.returncode)
            return False
        return True

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
    def _read(self, name: str, stream) -> None:  # noqa: ANN001 - a text stream
        try:
            for line in iter(stream.readline, ""):
                self._events.put((name, line))
        except (OSError, ValueError):
            pass
        finally:
            self._events.put((name, None))

    def _drain(self) -> None:
        while True:
            try:
                name, line = self._events.get_nowait()
            except queue.Empty:
                return
            if line is None:
                self._open_streams -= 1
            elif name == "stderr":
                self._stderr_lines.append(line.rstrip("\r\n"))
                del self._stderr_lines[:-STDERR_TAIL_LINES]
            else:
                self._dispatch(parse_event_line(line))

    def _dispatch(self, event: Dict[str, Any]) -> None:
        if self._cancelled:
            return  # nothing from a cancelled run reaches the user
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

    def _make_outcome(self, returncode: Optional[int]) -> RunOutcome:
        stderr = "\n".join(self._stderr_lines)
        if self._cancelled:
            return RunOutcome(CANCELLED, returncode, None, "the segmentation was cancelled", stderr)
        if returncode == 0 and self.result is not None:
            return RunOutcome(SUCCEEDED, returncode, self.result, "", stderr)
        if returncode == 0:
            return RunOutcome(FAILED, returncode, None, "the segmentation process ended without reporting "
                              "a result; see the log for details", stderr)
        return RunOutcome(FAILED, returncode, None, error_message_from_stderr(stderr, returncode), stderr)


# ----------------------------------------------------------------------------------------------
# Staged progress


STAGE_WEIGHTS: Tuple[Tuple[str, float], ...] = (
    ("load", 0.04), ("liver", 0.20), ("crop", 0.02), ("liver_refine", 0.10), ("tumor", 0.38), ("postprocess", 0.12),
    ("measure", 0.03), ("write", 0.03), ("import", 0.08))

STAGE_TITLES = {"load": "Loading the CT", "liver": "Liver (global view)", "crop": "Cropping to the liver",
                "liver_refine": "Liver refinement (local view)",
                "postprocess": "Post-processing", "measure": "Measuring", "write": "Writing results",
                "import": "Importing into the scene"}


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
        base, weight = self._band(stage.split(":", 1)[0])
        if stage.startswith("tumor:"):
            member = stage.split(":", 1)[1]
            if member not in self._members_seen:
                self._members_seen.append(member)
            count = max(self.tumor_members or 0, len(self._members_seen))
            index = self._members_seen.index(member)
            position = base + weight * (index + fraction) / count
            self.title = f"Tumor model {member} ({index + 1}/{count})"
        elif weight > 0:
            position = base + weight * fraction
            self.title = STAGE_TITLES.get(stage, stage)
        else:
            position = self.overall
            self.title = stage
        self.overall = min(1.0, max(self.overall, position))
        return self.overall, self.title

    @staticmethod
    def _band(stage: str) -> Tuple[float, float]:
        start = 0.0
        for name, weight in STAGE_WEIGHTS:
            if name == stage:
                return start, weight
            start += weight
        return 0.0, 0.0


# ----------------------------------------------------------------------------------------------
# One segmentation run: temporary folder + process + cleanup


class BackgroundSegmentation:
    """A segmentation in a private temporary folder: the caller writes the input volume to
    :attr:`input_path`, calls :meth:`start`, polls, and calls :meth:`cleanup` once it has read the
    outputs. Cancel and failure remove the folder at once, so nothing is left behind."""

    def __init__(self, options: SegmentOptions, input_name: str = "input",
                 prefix: Optional[Sequence[str]] = None, env: Optional[Dict[str, str]] = None, on_progress: Optional[ProgressCallback] = None,
                 on_log: Optional[LogCallback] = None, temp_parent: Optional[Path] = None) -> None:
        self.options = options
        self.prefix = list(prefix) if prefix is not None else cli_prefix()
        self.env = env if env is not None else library_environment()
        self.temp_dir = Path(tempfile.mkdtemp(prefix=TEMP_PREFIX, dir=None if temp_parent is None
                                              else str(temp_parent)))
        self.input_path = self.temp_dir / f"{safe_file_stem(input_name)}.nrrd"
        self.output_dir = self.temp_dir / "output"
        self.on_progress = on_progress
        self.on_log = on_log
        self.process: Optional[CliProcess] = None
        _write_owner_record(self.temp_dir)
        with _RUNS_LOCK:
            _RUNS.add(self)

    @property
    def command(self) -> List[str]:
        return segment_command(self.prefix, self.input_path, self.output_dir, self.options)

    def start(self) -> None:
        if not self.input_path.is_file():
            self.cleanup()
            raise RuntimeError(f"the input volume was not written to {self.input_path}")
        self.process = CliProcess(self.command, env=self.env, on_progress=self.on_progress, on_log=self.on_log)
        try:
            self.process.start()
        except RuntimeError:
            self.cleanup()
            raise
        _write_owner_record(self.temp_dir, self.process.process.pid)

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


def process_start_time(pid: int) -> Optional[float]:
    """When process ``pid`` started (seconds since the epoch), None when unknown; tells a process
    from a later one that got the same pid."""
    try:
        import psutil
    except ImportError:
        psutil = None
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
    try:
        import psutil
    except ImportError:
        psutil = None
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
    try:
        import psutil
    except ImportError:
        psutil = None
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
    if os.name == "nt":
        subprocess.run(["taskkill", "/F", "/T", "/PID", str(pid)], capture_output=True,
                       **_popen_platform_kwargs(new_group=False))
        return
    descendants = []
    try:
        import psutil

        descendants = psutil.Process(pid).children(recursive=True)
    except Exception:  # no psutil, or gone
        pass
    try:
        if os.getpgid(pid) == pid:  # it leads its own group (start_new_session), as CliProcess starts it
            os.killpg(pid, signal.SIGKILL)
        else:
            os.kill(pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass
    for child in descendants:
        try:
            child.kill()
        except Exception:
            pass


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


def safe_file_stem(name: str) -> str:
    """A file-name-safe version of a node name (ASCII letters, digits, ``-`` and ``_`` kept)."""
    cleaned = "".join(c if (c.isascii() and c.isalnum()) or c in "-_" else "_" for c in name).strip("_")
    return cleaned[:100] or "input"
