"""No run outlives its Slicer, in the stand-in application (Testing/module/slicer_app_standin.py)
with the fake command line: quitting or unloading the module kills every run this Slicer started
(the Python console's too), and the next start removes what a crashed session left behind."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from LiverTumorSegModuleLib import mrml, process, runs
from slicer_app_standin import FAKE_CLI, SlicerApp, process_alive, wait_until

LINUX = sys.platform.startswith("linux")


def start_console_run(app: SlicerApp):
    """``LiverTumorSegLogic().segment(volume, wait=False)`` from the Python console, with the fake
    command line hanging in a child process; returns (task, cli pid, child pid)."""
    app.use_fake_cli("hang")
    logs = []
    task = app.module.LiverTumorSegLogic().segment(app.add_ct_volume(), wait=False,
                                                   onLog=lambda level, message: logs.append(message))
    assert wait_until(lambda: any(m.startswith("child pid") for m in logs), step=task.poll), logs
    child = int(next(m for m in logs if m.startswith("child pid")).split()[-1])
    return task, task._run.process.pid, child


@pytest.mark.skipif(not LINUX, reason="checks the process tree through /proc")
def test_quitting_slicer_kills_a_run_started_from_the_python_console(app):
    app.create_module()  # Slicer creates the module at startup
    task, cli, child = start_console_run(app)
    temp_dir = task.temp_dir
    assert temp_dir.is_dir() and process_alive(child)
    app.app.quit()  # aboutToQuit
    assert wait_until(lambda: not process_alive(child) and not process_alive(cli), timeout=10)
    assert not temp_dir.exists()
    assert not task.poll() and task.status == process.CANCELLED
    assert runs.active_runs() == []


@pytest.mark.skipif(not LINUX, reason="checks the process tree through /proc")
def test_unloading_the_module_kills_console_runs_too(app):
    widget = app.create_widget()
    task, cli, child = start_console_run(app)
    widget.cleanup()  # module unload
    assert wait_until(lambda: not process_alive(child) and not process_alive(cli), timeout=10)
    assert not task.temp_dir.exists()


def test_the_run_folder_records_who_owns_it(app):
    app.use_fake_cli("hang")
    run = runs.BackgroundSegmentation(process.SegmentOptions(), launcher=app.module.LiverTumorSegLogic.launcher)
    try:
        assert run.temp_dir.parent == app.temp_root
        assert json.loads((run.temp_dir / runs.OWNER_FILE).read_text())["owner_pid"] == os.getpid()
        app.add_ct_volume()
        mrml.write_volume_file(app.add_ct_volume(), run.input_path)
        run.start()
        record = json.loads((run.temp_dir / runs.OWNER_FILE).read_text())
        assert record["owner_pid"] == os.getpid() and record["process_pid"] == run.process.pid
        assert runs.remove_stale_runs(app.temp_root) == []  # its owner (this process) is alive
        assert run.temp_dir.is_dir()
    finally:
        run.cancel()
    assert runs.active_runs() == []


CRASHING_SESSION = r"""
import os, sys, time
sys.path.insert(0, sys.argv[1])
import numpy as np, SimpleITK as sitk
from LiverTumorSegModuleLib import process, runs
env = dict(os.environ, FAKE_CLI_MODE="hang", PYTHONUNBUFFERED="1")
logs = []
run = runs.BackgroundSegmentation(process.SegmentOptions(), launcher=process.Launcher([sys.executable, sys.argv[2]], env),
                                  temp_parent=sys.argv[3], on_log=lambda level, m: logs.append(m))
sitk.WriteImage(sitk.GetImageFromArray(np.zeros((8, 12, 16), np.int16)), str(run.input_path))
run.start()
while not any(m.startswith("child pid") for m in logs):
    run.poll(); time.sleep(0.05)
print(run.temp_dir, run.process.pid, logs[-1].split()[-1], flush=True)
time.sleep(600)
"""


@pytest.mark.skipif(not LINUX, reason="kills a session with SIGKILL and checks the processes through /proc")
def test_the_next_start_removes_what_a_crashed_session_left(app):
    module_dir = Path(process.__file__).resolve().parents[1]
    session = subprocess.Popen([sys.executable, "-c", CRASHING_SESSION, str(module_dir), str(FAKE_CLI),
                                str(app.temp_root)], stdout=subprocess.PIPE, text=True)
    try:
        folder, cli, child = session.stdout.readline().split()
        folder, cli, child = Path(folder), int(cli), int(child)
    finally:
        session.send_signal(signal.SIGKILL)  # Slicer crashes: its run keeps going
        session.wait(timeout=10)
    assert folder.is_dir() and process_alive(cli) and process_alive(child)
    recent_unmarked = app.temp_root / f"{runs.TEMP_PREFIX}being-created"
    recent_unmarked.mkdir()
    live = runs.BackgroundSegmentation(process.SegmentOptions(), launcher=process.Launcher([sys.executable, str(FAKE_CLI)]))  # ours
    try:
        app.create_module()  # the next start
        assert wait_until(lambda: not process_alive(child) and not process_alive(cli), timeout=10)
        assert not folder.exists()
        assert live.temp_dir.is_dir() and recent_unmarked.is_dir()
        old = time.time() - runs.UNMARKED_STALE_SECONDS - 60
        os.utime(recent_unmarked, (old, old))  # left by an older version, a day ago
        assert runs.remove_stale_runs(app.temp_root) == [recent_unmarked]
    finally:
        live.cleanup()
        for pid in (cli, child):  # whatever the test outcome, leave no process behind
            if process_alive(pid):
                os.kill(pid, signal.SIGKILL)


def test_a_stale_record_whose_pid_was_reused_kills_nothing(app, tmp_path):
    """The recorded process pid now belongs to another program: it is not killed."""
    bystander = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"], start_new_session=True)
    try:
        dead = subprocess.Popen([sys.executable, "-c", "pass"])
        dead.wait()
        folder = app.temp_root / f"{runs.TEMP_PREFIX}stale"
        folder.mkdir()
        (folder / runs.OWNER_FILE).write_text(json.dumps({"owner_pid": dead.pid, "owner_started": None,
                                                             "process_pid": bystander.pid}))
        assert runs.remove_stale_runs(app.temp_root) == [folder]
        time.sleep(0.2)
        assert bystander.poll() is None, "a process that is not the run's was killed"
    finally:
        bystander.kill()
        bystander.wait()
