"""The background process against real subprocesses: a fake command line that speaks the
LiverTumorSegLib protocol (Testing/module/fake_livertumorseg.py) and the real library's CLI entry."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

from LiverTumorSegModuleLib import process
from LiverTumorSegModuleLib.process import CANCELLED, FAILED, SUCCEEDED, CliProcess, Launcher, SegmentOptions, StagedProgress
from LiverTumorSegModuleLib.runs import BackgroundSegmentation

FAKE_CLI = Path(__file__).resolve().parent / "fake_livertumorseg.py"
FAKE_PREFIX = [sys.executable, str(FAKE_CLI)]
REPO_ROOT = Path(__file__).resolve().parents[2]


def fake_env(mode: str) -> dict:
    env = dict(os.environ)
    env["FAKE_CLI_MODE"] = mode
    env["PYTHONUNBUFFERED"] = "1"
    return env


def write_ct(path: Path) -> None:
    hu = (np.arange(8 * 12 * 16, dtype=np.int16).reshape(8, 12, 16) % 200) - 100
    image = sitk.GetImageFromArray(hu)
    image.SetSpacing((0.8, 0.8, 2.5))
    image.SetOrigin((-10.0, 20.0, 30.0))
    sitk.WriteImage(image, str(path))


def process_alive(pid: int) -> bool:
    """False once the process is gone or a zombie (Linux /proc)."""
    stat = Path(f"/proc/{pid}/stat")
    try:
        state = stat.read_text().rsplit(")", 1)[1].split()[0]
    except (FileNotFoundError, ProcessLookupError, IndexError):
        return False
    return state not in ("Z", "X")


class Recorder:
    def __init__(self) -> None:
        self.progress = []
        self.logs = []
        self.results = []

    def runner(self, command, env) -> CliProcess:
        return CliProcess(command, env=env, on_progress=lambda s, f, m: self.progress.append((s, f, m)),
                          on_log=lambda level, msg: self.logs.append((level, msg)),
                          on_result=self.results.append)


def segment_args(tmp_path: Path, **options) -> list:
    ct = tmp_path / "ct.nrrd"
    write_ct(ct)
    return process.segment_command(FAKE_PREFIX, ct, tmp_path / "out", SegmentOptions(**options))


def test_successful_run_reports_stages_logs_and_result(tmp_path):
    rec = Recorder()
    run = rec.runner(segment_args(tmp_path, tta=False), fake_env("ok"))
    run.start()
    outcome = run.wait(timeout=60)
    assert outcome.status == SUCCEEDED, outcome
    stages = [s for s, _, _ in rec.progress]
    assert stages[0] == "load" and stages[-1] == "write"
    assert ["tumor:fake-a", "tumor:fake-b"] == [s for s in dict.fromkeys(stages) if s.startswith("tumor:")]
    assert ("warning", "fake warning: demo models are non-clinical") in rec.logs
    assert ("info", "a line that is not JSON, e.g. a library's own print") in rec.logs
    assert len(rec.results) == 1 and outcome.result == rec.results[0]
    assert outcome.result["name"] == "ct"
    for key in ("segmentation", "labelmap", "report", "lesions_csv"):
        assert Path(outcome.result["outputs"][key]).is_file()


def test_user_error_becomes_the_message(tmp_path):
    rec = Recorder()
    run = rec.runner(segment_args(tmp_path), fake_env("error"))
    run.start()
    outcome = run.wait(timeout=60)
    assert outcome.status == FAILED and outcome.returncode == 1
    assert outcome.error_message == "the input is not a CT (its values look like MR); give a CT volume"
    assert not rec.results


def test_crash_without_error_line_names_the_exit_code(tmp_path):
    run = Recorder().runner(segment_args(tmp_path), fake_env("crash"))
    run.start()
    outcome = run.wait(timeout=60)
    assert outcome.status == FAILED and outcome.returncode == 3
    assert "exit code 3" in outcome.error_message and "ZeroDivisionError" in outcome.error_message
    assert "Traceback" in outcome.details


def test_exit_zero_without_result_is_a_failure(tmp_path):
    run = Recorder().runner(segment_args(tmp_path), fake_env("noresult"))
    run.start()
    outcome = run.wait(timeout=60)
    assert outcome.status == FAILED and "without reporting a result" in outcome.error_message


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="checks the process tree through /proc")
def test_cancel_kills_the_whole_process_tree(tmp_path):
    rec = Recorder()
    run = rec.runner(segment_args(tmp_path), fake_env("hang"))
    run.start()
    deadline = time.monotonic() + 30
    child_pid = None
    while child_pid is None and time.monotonic() < deadline:
        assert run.poll(), "the hanging fake ended by itself"
        child_pid = next((int(m.split()[-1]) for _, m in rec.logs if m.startswith("child pid")), None)
        time.sleep(0.05)
    assert child_pid is not None and process_alive(child_pid)
    parent_pid = run.process.pid
    events_before = len(rec.progress)
    run.cancel()
    outcome = run.wait(timeout=10)
    assert outcome.status == CANCELLED
    deadline = time.monotonic() + 5
    while process_alive(child_pid) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not process_alive(child_pid), "the CLI's child process survived Cancel"
    assert not process_alive(parent_pid)
    assert len(rec.progress) == events_before  # nothing from a cancelled run reaches the user


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="checks the process tree through /proc")
def test_a_process_the_run_leaves_behind_ends_with_it(tmp_path):
    """A child that keeps the run's stdout open neither keeps the run going nor outlives it."""
    rec = Recorder()
    run = rec.runner(segment_args(tmp_path), fake_env("orphan"))
    run.start()
    started = time.monotonic()
    outcome = run.wait(timeout=30)
    assert time.monotonic() - started < 20
    assert outcome.status == FAILED and "without reporting a result" in outcome.error_message
    child = next(int(m.split()[-1]) for _, m in rec.logs if m.startswith("child pid"))
    deadline = time.monotonic() + 5
    while process_alive(child) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not process_alive(child)


def test_a_process_without_an_output_folder_uses_its_own_and_removes_it(tmp_path, monkeypatch):
    monkeypatch.setattr(process.tempfile, "tempdir", str(tmp_path))
    run = Recorder().runner(segment_args(tmp_path), fake_env("ok"))
    run.start()
    assert run.output_dir.parent == tmp_path and run.output_dir.name.startswith(process.OUTPUT_FOLDER_PREFIX)
    assert run.wait(timeout=60).succeeded
    assert not run.output_dir.exists()
    failing = CliProcess([str(tmp_path / "no-such-program")])
    with pytest.raises(RuntimeError, match="could not start"):
        failing.start()
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(process.OUTPUT_FOLDER_PREFIX)] == []


@pytest.mark.parametrize("use_psutil", [False, True])
def test_kill_process_tree(use_psutil):
    """Both paths: the process group (always) and psutil's child list (when psutil is installed)."""
    script = "import subprocess, sys, time; subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(600)']); " \
             "print('ready', flush=True); time.sleep(600)"
    proc = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True,
                            start_new_session=True)
    assert proc.stdout.readline().strip() == "ready"
    process.kill_process_tree(proc, use_psutil=use_psutil)
    assert proc.wait(timeout=10) != 0
    if sys.platform.startswith("linux"):
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline:
            group = [p for p in Path("/proc").iterdir() if p.name.isdigit() and _pgid(p) == proc.pid
                     and process_alive(int(p.name))]
            if not group:
                break
            time.sleep(0.05)
        assert not group, "a process of the killed group is still running"


def _pgid(proc_dir: Path) -> int:
    try:
        return int(proc_dir.joinpath("stat").read_text().rsplit(")", 1)[1].split()[2])
    except (OSError, IndexError, ValueError):
        return -1


def test_background_segmentation_cleans_up_on_cancel_and_failure(tmp_path):
    for mode, expected in (("hang", CANCELLED), ("error", FAILED)):
        run = BackgroundSegmentation(SegmentOptions(), input_name="CT 1/2", launcher=Launcher(FAKE_PREFIX, fake_env(mode)),
                                     temp_parent=tmp_path)
        assert run.input_path.name == "CT_1_2.nrrd"
        write_ct(run.input_path)
        run.start()
        if mode == "hang":
            deadline = time.monotonic() + 30
            while not (run.output_dir / "partial.tmp").exists() and time.monotonic() < deadline:
                run.poll()
                time.sleep(0.05)
            assert (run.output_dir / "partial.tmp").exists()
            run.cancel()
        else:
            run.wait(timeout=60)
        assert run.outcome.status == expected
        assert not run.temp_dir.exists(), f"{mode}: the temporary folder was left behind"
    assert list(tmp_path.iterdir()) == []


def test_background_segmentation_keeps_outputs_until_cleanup(tmp_path):
    run = BackgroundSegmentation(SegmentOptions(device="cpu"), input_name="ct",
                                 launcher=Launcher(FAKE_PREFIX, fake_env("ok")), temp_parent=tmp_path)
    write_ct(run.input_path)
    run.start()
    assert run.wait(timeout=60).succeeded
    outputs = run.outputs()
    assert outputs["labelmap"].is_file() and outputs["report"].is_file()
    run.cleanup()
    assert not run.temp_dir.exists()


def test_start_without_input_fails_cleanly(tmp_path):
    run = BackgroundSegmentation(SegmentOptions(), launcher=Launcher(FAKE_PREFIX, fake_env("ok")), temp_parent=tmp_path)
    with pytest.raises(RuntimeError, match="was not written"):
        run.start()
    assert not run.temp_dir.exists()


def test_segment_command_follows_the_cli_contract(tmp_path):
    options = SegmentOptions(device="cuda", fast=True, force=True, tta=False, refine_liver=False,
                             active_contour=False, interslice=False, liver_model="liver-x", tumor_model="tumor-y")
    command = process.segment_command(["PY", "-m", "LiverTumorSegLib"], Path("in.nrrd"), Path("out"), options)
    assert command[:8] == ["PY", "-m", "LiverTumorSegLib", "segment", "in.nrrd", "--output", "out", "--progress"]
    assert command[8] == "json"
    rest = command[9:]
    assert rest[rest.index("--device") + 1] == "cuda"
    for flag in ("--fast", "--force", "--no-tta", "--no-liver-refine", "--no-active-contour", "--no-interslice"):
        assert flag in rest
    assert rest[rest.index("--liver-model") + 1] == "liver-x" and rest[rest.index("--tumor-model") + 1] == "tumor-y"
    assert SegmentOptions().to_args() == []  # the library's defaults need no option
    assert SegmentOptions(min_lesion_ml=0.3).to_args() == ["--min-lesion-ml", "0.3"]  # any setting of the schema


def test_segment_options_refuse_what_the_library_would_refuse():
    """Checked when made, by the library's schema: before any process starts."""
    with pytest.raises(ValueError, match="unknown device 'gpu'"):
        SegmentOptions(device="gpu")
    with pytest.raises(ValueError, match="unknown setting 'liver_refine'"):
        SegmentOptions(liver_refine=False)
    with pytest.raises(ValueError, match="--margin-mm must be 0 or more"):
        SegmentOptions(crop_margin_mm=-1.0)
    assert SegmentOptions(device="cpu") == SegmentOptions(device="cpu") != SegmentOptions(device="cpu", force=True)
    assert repr(SegmentOptions(device="cpu", force=True)) == "SegmentOptions(device='cpu', force=True)"


def test_library_environment_makes_the_library_importable_from_anywhere(tmp_path):
    env = process.library_environment({"PATH": os.environ.get("PATH", ""), "PYTHONPATH": "/elsewhere"})
    assert env["PYTHONPATH"].split(os.pathsep) == [str(REPO_ROOT), "/elsewhere"]
    completed = subprocess.run([sys.executable, "-c", "import LiverTumorSegLib, sys; print(LiverTumorSegLib.__file__)"],
                               env=env, cwd=tmp_path, capture_output=True, text=True, timeout=60)
    assert completed.returncode == 0, completed.stderr
    assert Path(completed.stdout.strip()).resolve().parent == REPO_ROOT / "LiverTumorSegLib"


def test_parse_event_line_is_robust():
    assert process.parse_event_line('{"event": "progress", "stage": "liver", "fraction": 1.7}\n') == {
        "event": "progress", "stage": "liver", "fraction": 1.0, "message": ""}
    assert process.parse_event_line("plain text\n") == {"event": "log", "level": "info", "message": "plain text"}
    assert process.parse_event_line('{"something": 1}')["event"] == "log"
    assert process.parse_event_line('[1, 2]')["event"] == "log"
    result = process.parse_event_line('{"event": "result", "name": "x", "outputs": {}}')
    assert result["event"] == "result" and result["name"] == "x"


def test_error_message_from_stderr():
    assert process.error_message_from_stderr("noise\nerror: first\nerror: the last one\n", 1) == "the last one"
    assert "exit code -9" in process.error_message_from_stderr("", -9)


@pytest.mark.parametrize("refine", [["liver_refine"], []])  # the liver model may have no refinement model
def test_staged_progress_is_monotonic_and_covers_every_stage(refine):
    staged = StagedProgress(tumor_members=2)
    seen = []
    for stage in ("load", "liver", "crop", *refine, "tumor:a", "tumor:b", "postprocess", "measure", "write",
                  "import"):
        for fraction in (0.0, 0.5, 1.0):
            seen.append(staged.update(stage, fraction))
    fractions = [f for f, _ in seen]
    assert fractions == sorted(fractions)
    assert fractions[-1] == pytest.approx(1.0)
    titles = [t for _, t in seen]
    assert "Tumor model a (1/2)" in titles and "Tumor model b (2/2)" in titles and "Liver (global view)" in titles
    assert ("Liver refinement (local view)" in titles) == bool(refine)
    assert titles[-1] == "Importing into the scene"  # the module's own stage, after the library's
    # an unknown stage keeps the bar where it is
    assert staged.update("something-new", 0.5)[0] == pytest.approx(1.0)
    # without a known member count, members are counted as they come
    unknown = StagedProgress()
    first = unknown.update("tumor:x", 1.0)[0]
    second = unknown.update("tumor:y", 0.0)[0]
    assert second >= first
    assert unknown.update("tumor:y", 0.5)[1] == "Tumor model y (2/2)"


def test_safe_file_stem():
    assert process.safe_file_stem("CT: 1/2 (arterial)") == "CT__1_2__arterial"
    assert process.safe_file_stem("..") == "input"
    assert process.safe_file_stem("Lebér") == "Leb_r"
