"""The runtime library works without its development package (``LiverTumorSegLib.develop``:
synthesis, training, evaluation, dataset readers), as in the Slicer extension, which does not
ship it: every runtime module imports, and segment, measure, lesion and models run, in a Python
where importing the development package fails; train, evaluate and ensemble end in one error line."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[2]
LIBRARY = REPO_ROOT / "LiverTumorSegLib"

BLOCKED = ["LiverTumorSegLib.develop"]


def runtime_modules() -> list:
    """Every module of the library outside the development package."""
    names = []
    for path in sorted(LIBRARY.rglob("*.py")):
        parts = path.relative_to(REPO_ROOT).with_suffix("").parts
        if "develop" in parts or "__pycache__" in parts:
            continue
        names.append(".".join(parts[:-1] if parts[-1] == "__init__" else parts))
    return names


@pytest.fixture
def blocked(helpers) -> str:
    """The prologue that makes the development package fail to import in a subprocess."""
    return helpers.import_blocker(BLOCKED)


def run_blocked(prologue: str, script: str, env: dict, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", prologue + script], env=env, cwd=cwd, capture_output=True, text=True,
                          timeout=600)


def test_the_development_package_is_where_the_runtime_does_not_look():
    assert (LIBRARY / "develop" / "__init__.py").is_file()
    assert "LiverTumorSegLib.develop" not in runtime_modules()
    assert {"LiverTumorSegLib.pipeline", "LiverTumorSegLib.cli", "LiverTumorSegLib.io.writers",
            "LiverTumorSegLib.metrics"} <= set(runtime_modules())
    for moved in ("synth", "training", "evaluation.py", "render.py", "io/datasets.py"):
        assert not (LIBRARY / moved).exists(), f"{moved} belongs in LiverTumorSegLib/develop/"


def test_runtime_modules_import_and_commands_run_with_the_development_package_blocked(cli_env, small_ct_file,
                                                                                    tmp_path, blocked):
    script = f"""
import importlib, json, sys
for name in {runtime_modules()!r}:
    importlib.import_module(name)
from LiverTumorSegLib import cli
out = {str(tmp_path / "out")!r}
codes = {{"segment": cli.main(["segment", {str(small_ct_file)!r}, "--output", out, "--device", "cpu",
                               "--progress", "none"])}}
report = json.load(open(out + "/case01.json"))
codes["measure"] = cli.main(["measure", out + "/case01.nii.gz", "--ct", {str(small_ct_file)!r},
                             "--output", {str(tmp_path / "measured")!r}])
codes["models"] = cli.main(["models", "list", "--json"])
point = ",".join(f"{{v:.2f}}" for v in report["lesions"][0]["centroid_ras_mm"])
codes["lesion"] = cli.main(["lesion", "remove", {str(small_ct_file)!r}, out + "/case01.nii.gz", "--at=" + point,
                            "--output", {str(tmp_path / "edited")!r}])
print(json.dumps({{"codes": codes, "lesions": len(report["lesions"]),
                  "develop": sorted(m for m in sys.modules if m.startswith("LiverTumorSegLib.develop"))}}))
"""
    completed = run_blocked(blocked, script, cli_env, tmp_path)
    assert completed.returncode == 0, completed.stderr[-3000:]
    answer = json.loads(completed.stdout.strip().splitlines()[-1])
    assert answer["codes"] == {"segment": 0, "measure": 0, "models": 0, "lesion": 0}, completed.stderr[-3000:]
    assert answer["lesions"] >= 1
    assert answer["develop"] == []


def test_development_commands_give_one_error_line_without_the_development_package(cli_env, tmp_path, blocked):
    script = """
from LiverTumorSegLib import cli
sys.exit(cli.main())
"""
    runs = {
        "train": ["train", "--data", str(tmp_path / "data"), "--task", "liver", "--output", str(tmp_path / "run"),
                  "--steps", "2"],
        "evaluate": ["evaluate", "--data", str(tmp_path / "data"), "--output", str(tmp_path / "eval")],
        "ensemble": ["--verbose", "ensemble", "--members", "a", "b", "--data", "x", "--output", "e.json"],
    }
    for command, argv in runs.items():
        completed = subprocess.run([sys.executable, "-c", blocked + script, *argv], env=cli_env, cwd=tmp_path,
                                   capture_output=True, text=True, timeout=300)
        lines = [line for line in completed.stderr.splitlines() if line.strip()]
        assert completed.returncode == 1, completed.stderr
        assert len(lines) == 1 and lines[0].startswith(f"error: livertumorseg {command} needs the development "
                                                       "package LiverTumorSegLib.develop"), completed.stderr
        assert "pip install" in lines[0]
    assert sorted(p.name for p in tmp_path.iterdir()) == []

    listed = subprocess.run([sys.executable, "-c", blocked + script, "--help"], env=cli_env, cwd=tmp_path,
                            capture_output=True, text=True, timeout=300)
    assert listed.returncode == 0, listed.stderr
    assert "train" in listed.stdout and "(not in this installation)" in listed.stdout
    wrong = subprocess.run([sys.executable, "-c", blocked + script, "models", "list", "--bogus"], env=cli_env,
                           cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert wrong.returncode == 2 and "unrecognized arguments: --bogus" in wrong.stderr


def test_runtime_commands_leave_the_development_package_unimported_where_it_is_installed(cli_env, tmp_path):
    """The development package is imported when a development command runs, not before."""
    script = """
import json, sys
from LiverTumorSegLib import cli
code = cli.main(["models", "list", "--json"])
listed = sorted(m for m in sys.modules if m.startswith("LiverTumorSegLib.develop"))
cli.build_parser("train")
print(json.dumps({"code": code, "listed": listed, "train": "LiverTumorSegLib.develop.commands" in sys.modules,
                  "torch": "torch" in sys.modules}))
"""
    completed = subprocess.run([sys.executable, "-c", script], env=cli_env, cwd=tmp_path, capture_output=True,
                               text=True, timeout=300)
    assert completed.returncode == 0, completed.stderr[-3000:]
    answer = json.loads(completed.stdout.strip().splitlines()[-1])
    assert answer == {"code": 0, "listed": [], "train": True, "torch": False}


def test_with_the_development_package_an_unknown_flag_is_still_refused(capsys):
    import pytest

    from LiverTumorSegLib import cli

    with pytest.raises(SystemExit) as stopped:
        cli.main(["train", "--data", "x", "--task", "liver", "--output", "y", "--bogus"])
    assert stopped.value.code == 2
    assert "unrecognized arguments: --bogus" in capsys.readouterr().err
