"""The extension's CMake files, run with the Slicer/CTK macros replaced by recorders (cmake -P):
every named file exists, every runtime library file and resource file is packaged, the library's
development package (LiverTumorSegLib/develop/) is not, and the installed layout works (module,
helper package, library and resources side by side in qt-scripted-modules/)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[2]
CHECK_SCRIPT = Path(__file__).resolve().parent / "check_extension_packaging.cmake"
CMAKE = shutil.which("cmake")

pytestmark = pytest.mark.skipif(CMAKE is None, reason="cmake is not installed")


def run_check(source_dir: Path, work_dir: Path) -> tuple:
    manifest = work_dir / "manifest.txt"
    completed = subprocess.run([CMAKE, f"-DEXTENSION_SOURCE_DIR={source_dir}", f"-DMANIFEST_FILE={manifest}",
                                "-P", str(CHECK_SCRIPT)], cwd=work_dir, capture_output=True, text=True, timeout=120)
    entries = manifest.read_text().splitlines() if manifest.exists() else []
    return completed, entries


def packaged(entries) -> dict:
    return dict(line.split("|", 1) for line in entries if not line.startswith(("TEST|", "EXTENSION|", "CATALOG|")))


def copy_extension(destination: Path) -> Path:
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc")
    destination.mkdir(parents=True)
    shutil.copy2(REPO_ROOT / "CMakeLists.txt", destination / "CMakeLists.txt")
    for folder in ("LiverTumorSeg", "LiverTumorSegLib", "Resources"):
        shutil.copytree(REPO_ROOT / folder, destination / folder, ignore=ignore)
    return destination


def test_the_extension_packages_module_library_and_resources(tmp_path):
    completed, entries = run_check(REPO_ROOT, tmp_path)
    assert completed.returncode == 0, completed.stderr
    files = packaged(entries)
    assert files["LiverTumorSeg.py"] == str(REPO_ROOT / "LiverTumorSeg" / "LiverTumorSeg.py")
    assert files["LiverTumorSegLib/__init__.py"] == str(REPO_ROOT / "LiverTumorSegLib" / "__init__.py")
    assert files["LiverTumorSegLib/cli.py"] == str(REPO_ROOT / "LiverTumorSegLib" / "cli.py")
    assert files["Resources/UI/LiverTumorSeg.ui"] == str(REPO_ROOT / "Resources" / "UI" / "LiverTumorSeg.ui")
    assert files["Resources/Icons/LiverTumorSeg.png"] == str(REPO_ROOT / "Resources" / "Icons" / "LiverTumorSeg.png")
    library_files = {p.relative_to(REPO_ROOT).as_posix() for p in (REPO_ROOT / "LiverTumorSegLib").rglob("*.py")
                     if "__pycache__" not in p.parts}
    runtime_files = {f for f in library_files if not f.startswith("LiverTumorSegLib/develop/")}
    assert "LiverTumorSegLib/pipeline.py" in runtime_files and "LiverTumorSegLib/develop/__init__.py" in library_files
    assert runtime_files <= set(files)
    assert not [f for f in files if f.startswith("LiverTumorSegLib/develop")], "the development package is packaged"
    model_files = {p.relative_to(REPO_ROOT).as_posix() for p in (REPO_ROOT / "Resources" / "Models").glob("*")
                   if p.suffix in (".json", ".safetensors")}
    assert model_files <= set(files)
    assert files["LiverTumorSegLib/requirements.txt"] == str(REPO_ROOT / "LiverTumorSegLib" / "requirements.txt")
    assert "TEST|LiverTumorSeg.py" in entries
    assert "EXTENSION|EXTENSION_DEPENDS|PyTorch" in entries


def test_the_installed_layout_runs(tmp_path):
    """Copy the packaged files as an install would; the module's helpers find the library, the
    library finds its embedded models, and ``python -m LiverTumorSegLib`` runs from there."""
    completed, entries = run_check(REPO_ROOT, tmp_path)
    assert completed.returncode == 0, completed.stderr
    install = tmp_path / "lib" / "Slicer-5.6" / "qt-scripted-modules"
    for destination, source in packaged(entries).items():
        target = install / destination
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(source, target)
    script = (
        "import sys, json; sys.path.insert(0, sys.argv[1])\n"
        "from LiverTumorSegModuleLib import dependencies, process\n"
        "import LiverTumorSegLib\n"
        "from LiverTumorSegLib.models import registry\n"
        "print(json.dumps([str(process.library_root()), LiverTumorSegLib.__file__, str(registry.embedded_models_dir()),\n"
        "                  dependencies.TORCH_REQUIREMENT, dict(dependencies.REQUIREMENTS)]))\n")
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    run = subprocess.run([sys.executable, "-c", script, str(install)], cwd=tmp_path, env=env, capture_output=True,
                         text=True, timeout=300)
    assert run.returncode == 0, run.stderr
    root, library_file, models_dir, torch_requirement, requirements = json.loads(run.stdout.strip().splitlines()[-1])
    assert torch_requirement.startswith("torch") and requirements["skimage"].startswith("scikit-image")  # the packaged list
    assert Path(root) == install
    assert Path(library_file).parent == install / "LiverTumorSegLib"
    assert Path(models_dir) == install / "Resources" / "Models"
    assert (install / "Resources" / "UI" / "LiverTumorSeg.ui").is_file()  # MODULE_DIR / "Resources" / ...

    version = subprocess.run(
        [sys.executable, "-c", "import sys; sys.path.insert(0, sys.argv[1]); "
         "from LiverTumorSegModuleLib import process; import subprocess; "
         "sys.exit(subprocess.run(process.cli_prefix(sys.executable) + ['--version'], "
         "env=process.library_environment()).returncode)", str(install)],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert version.returncode == 0, version.stderr
    assert "livertumorseg" in version.stdout

    # Without the development package, train ends in one error line. Slicer's Python has no
    # editable install of the library, whose finder would reach into the checkout: drop it.
    assert not (install / "LiverTumorSegLib" / "develop").exists()
    train = subprocess.run(
        [sys.executable, "-c", "import sys; sys.meta_path[:] = [f for f in sys.meta_path "
         "if not getattr(f, '__module__', '').startswith('__editable__')]; sys.path.insert(0, sys.argv[1]); "
         "from LiverTumorSegLib import cli; print(cli.__file__); sys.exit(cli.main(sys.argv[2:]))", str(install),
         "train", "--data", str(tmp_path / "data"), "--task", "liver", "--output", str(tmp_path / "run")],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert train.returncode == 1, train.stderr
    assert Path(train.stdout.strip()) == install / "LiverTumorSegLib" / "cli.py"
    assert train.stderr.strip().startswith("error: livertumorseg train needs the development package"), train.stderr
    assert len(train.stderr.strip().splitlines()) == 1


def test_a_named_file_that_is_missing_fails(tmp_path):
    source = copy_extension(tmp_path / "src")
    (source / "LiverTumorSeg" / "LiverTumorSegModuleLib" / "task.py").unlink()
    work = tmp_path / "work"
    work.mkdir()
    completed, _ = run_check(source, work)
    assert completed.returncode != 0
    assert "LiverTumorSegModuleLib/task.py, which does not exist" in completed.stderr


def test_an_unpackaged_file_fails(tmp_path):
    source = copy_extension(tmp_path / "src")
    (source / "LiverTumorSeg" / "LiverTumorSegModuleLib" / "extra.py").write_text("VALUE = 1\n")
    (source / "LiverTumorSeg" / "helper.py").write_text("VALUE = 1\n")
    work = tmp_path / "work"
    work.mkdir()
    completed, _ = run_check(source, work)
    assert completed.returncode != 0
    assert "LiverTumorSegModuleLib/extra.py is not packaged" in completed.stderr
    assert "helper.py is not packaged" in completed.stderr


def test_a_top_level_helper_script_is_refused(tmp_path):
    source = copy_extension(tmp_path / "src")
    (source / "LiverTumorSeg" / "helper.py").write_text("VALUE = 1\n")
    cmake_file = source / "LiverTumorSeg" / "CMakeLists.txt"
    cmake_file.write_text(cmake_file.read_text().replace("  ${MODULE_NAME}.py\n", "  ${MODULE_NAME}.py\n  helper.py\n", 1))
    work = tmp_path / "work"
    work.mkdir()
    completed, _ = run_check(source, work)
    assert completed.returncode != 0
    assert "helper.py would be loaded by Slicer as a module" in completed.stderr


def test_the_development_package_is_never_packaged(tmp_path):
    """A new file under LiverTumorSegLib/develop/ stays out; naming one in the CMake files fails."""
    source = copy_extension(tmp_path / "src")
    (source / "LiverTumorSegLib" / "develop" / "brand_new.py").write_text("VALUE = 1\n")
    work = tmp_path / "work"
    work.mkdir()
    completed, entries = run_check(source, work)
    assert completed.returncode == 0, completed.stderr
    assert not [f for f in packaged(entries) if f.startswith("LiverTumorSegLib/develop")]

    cmake_file = source / "LiverTumorSeg" / "CMakeLists.txt"
    text = cmake_file.read_text()
    assert 'list(FILTER LIBRARY_PYTHON_SCRIPTS EXCLUDE REGEX "^LiverTumorSegLib/develop/")' in text
    cmake_file.write_text(text.replace('list(FILTER LIBRARY_PYTHON_SCRIPTS EXCLUDE REGEX "^LiverTumorSegLib/develop/")',
                                       "", 1))
    work = tmp_path / "work2"
    work.mkdir()
    completed, _ = run_check(source, work)
    assert completed.returncode != 0
    assert "LiverTumorSegLib/develop/brand_new.py is packaged: the library's development package" in completed.stderr


def test_new_library_and_model_files_are_picked_up(tmp_path):
    """The library and resources are globbed: a new file ships without editing the CMake files."""
    source = copy_extension(tmp_path / "src")
    (source / "LiverTumorSegLib" / "brand_new.py").write_text("VALUE = 1\n")
    (source / "Resources" / "Models" / "new-model.json").write_text("{}\n")
    (source / "Resources" / "Models" / "new-model.safetensors").write_bytes(b"\0")
    work = tmp_path / "work"
    work.mkdir()
    completed, entries = run_check(source, work)
    assert completed.returncode == 0, completed.stderr
    files = packaged(entries)
    assert {"LiverTumorSegLib/brand_new.py", "Resources/Models/new-model.json",
            "Resources/Models/new-model.safetensors"} <= set(files)


def test_the_extension_catalog_gets_the_whole_description(tmp_path):
    """SlicerExtensionCPack passes EXTENSION_DESCRIPTION unquoted: a ';' would cut it (and its
    "not for clinical use") in the extension catalog."""
    completed, entries = run_check(REPO_ROOT, tmp_path)
    assert completed.returncode == 0, completed.stderr
    catalog = next(line.split("|", 2)[2] for line in entries if line.startswith("CATALOG|EXTENSION_DESCRIPTION|"))
    assert catalog.startswith("Liver and liver-tumor segmentation of abdominal CT.")
    assert catalog.endswith("The embedded demo models are not for clinical use.")
    assert ";" not in catalog


def test_a_semicolon_in_the_description_fails(tmp_path):
    source = copy_extension(tmp_path / "src")
    cmake_file = source / "CMakeLists.txt"
    text = cmake_file.read_text()
    assert "Runs in the background" in text
    cmake_file.write_text(text.replace("Runs in the background", "Runs; in the background", 1))
    work = tmp_path / "work"
    work.mkdir()
    completed, entries = run_check(source, work)
    assert completed.returncode != 0
    assert "EXTENSION_DESCRIPTION contains a semicolon" in completed.stderr
    assert "CATALOG|EXTENSION_DESCRIPTION|Liver and liver-tumor segmentation of abdominal CT. Runs" in entries
