"""What each action of the panel asks to install, in the stand-in application
(Testing/module/slicer_app_standin.py): only Segment needs PyTorch and MONAI; the versions
pyproject.toml declares are checked, and an outdated package is offered as an upgrade."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from LiverTumorSegModuleLib import dependencies, mrml, process
from slicer_app_standin import SlicerApp, with_versions


def box_labels(app: SlicerApp, volume):
    labels = np.zeros((10, 16, 20), dtype=np.uint8)
    labels[2:8, 3:13, 4:16] = 1
    labels[4:6, 6:9, 7:10] = 2
    return mrml.import_labelmap(app.scene, volume, labels)


def test_recompute_and_export_do_not_ask_for_pytorch_or_monai(app, monkeypatch, tmp_path):
    with_versions(monkeypatch, missing=("torch", "monai"))
    widget = app.create_widget()
    volume = app.add_ct_volume()
    segmentation = box_labels(app, volume)
    widget._parameterNode.inputVolume = volume
    widget._parameterNode.outputSegmentation = segmentation

    widget.ui.recomputeButton.click()
    assert app.dialogs.shown == [], "Recompute asked for something"
    assert mrml.measurements_table_node(segmentation) is not None
    assert any(line.startswith("Recomputed: liver") for line in widget.ui.logTextEdit.lines)

    widget.ui.exportDirectoryButton.directory = str(tmp_path / "export")
    widget.ui.exportButton.click()
    assert [kind for kind, _ in app.dialogs.shown] == ["info"], app.dialogs.shown  # "Exported to ..."
    assert (tmp_path / "export" / f"{process.safe_file_stem(segmentation.GetName())}.seg.nrrd").is_file()
    assert app.dialogs.pip_installs == []

    app.dialogs.answers["confirmOkCancel"] = False
    widget.ui.segmentButton.click()  # Segment does need them
    asked = app.dialogs.texts("confirmOkCancel")
    assert len(asked) == 1 and "torch>=2.1,<3 (not installed)" in asked[0] and "monai>=1.3,<2 (not installed)" in asked[0]
    assert widget._task is None


def test_recompute_and_export_run_with_only_the_packages_their_action_lists(tmp_path, helpers):
    """In a fresh Python where every other dependency fails to import, recompute and export work."""
    allowed = set(dependencies.ACTION_IMPORTS[dependencies.MEASURE]) | set(dependencies.ACTION_IMPORTS[dependencies.EXPORT])
    blocked = sorted(({name for name, _ in dependencies.REQUIREMENTS} | {"torch"}) - allowed)
    prologue = helpers.import_blocker(blocked, Path(__file__).resolve().parents[2] / "LiverTumorSeg")
    script = prologue + f"""
import numpy as np, slicer, vtk
from vtk.util import numpy_support
from LiverTumorSegModuleLib import mrml
scene = slicer.vtkMRMLScene()
image = vtk.vtkImageData(); image.SetDimensions(20, 16, 10); image.AllocateScalars(vtk.VTK_SHORT, 1)
numpy_support.vtk_to_numpy(image.GetPointData().GetScalars())[:] = 40
volume = scene.AddNewNodeByClass("vtkMRMLScalarVolumeNode", "CT"); volume.SetAndObserveImageData(image)
labels = np.zeros((10, 16, 20), np.uint8); labels[2:8, 3:13, 4:16] = 1; labels[4:6, 6:9, 7:10] = 2
node = mrml.import_labelmap(scene, volume, labels)
measurements, _ = mrml.recompute_measurements(scene, node, volume)
paths = mrml.export_results(node, volume, {str(tmp_path)!r}, "x")
print(len(measurements.lesions), sorted(paths))
"""
    completed = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300)
    assert completed.returncode == 0, completed.stderr[-3000:]
    assert completed.stdout.split()[0] == "1"




def test_requirement_problems_check_the_declared_versions():
    present = {"numpy": "1.26.4", "scipy": "1.11.4", "SimpleITK": "2.3.1", "scikit-image": "0.22.0",
               "monai": "1.2.0", "safetensors": "0.4.2", "slicerio": None, "tqdm": "4.66.1", "torch": "2.0.1"}
    problems = dependencies.requirement_problems(importable=lambda name: True,
                                                 version_of=lambda dist, name: present[dist])
    assert [(p.requirement, p.installed) for p in problems] == [("torch>=2.1,<3", "2.0.1"), ("monai>=1.3,<2", "1.2.0")]
    assert problems[1].describe() == "monai>=1.3,<2 (installed: 1.2.0)"
    present.update(torch="2.13.0+cpu", monai="2.0.0", numpy="1.23.5")
    problems = dependencies.requirement_problems(importable=lambda name: True,
                                                 version_of=lambda dist, name: present[dist])
    assert [(p.requirement, p.installed) for p in problems] == [("numpy>=1.24", "1.23.5"), ("monai>=1.3,<2", "2.0.0")]
    assert dependencies.missing_requirements(lambda name: True, lambda dist, name: present[dist]) == \
        ["numpy>=1.24", "monai>=1.3,<2"]
    assert dependencies.torch_missing(lambda name: True, lambda dist, name: "2.0.1")
    assert not dependencies.torch_missing(lambda name: True, lambda dist, name: "2.13.0+cu121")
    measure = dependencies.requirement_problems(dependencies.MEASURE, lambda name: True,
                                                lambda dist, name: present[dist])
    assert [p.requirement for p in measure] == ["numpy>=1.24"]


@pytest.mark.parametrize("version, specifier, expected", [
    ("1.3.0", ">=1.3,<2", True), ("1.2.9", ">=1.3,<2", False), ("2.0.0", ">=1.3,<2", False),
    ("1.10.0", ">=1.3,<2", True), ("2.13.0+cpu", ">=2.1,<3", True), ("2.0.1", ">=2.1,<3", False),
    ("0.4", ">=0.4", True), ("4.60.0", ">=4.60", True), ("4.9", ">=4.60", False), ("1.24", ">=1.24", True),
    ("1.4.2", "~=1.4", True), ("2.0", "~=1.4", False), ("1.4.7", "==1.4.*", True), ("1.5.0", "!=1.5.0", False)])
def test_version_comparison_with_and_without_packaging(version, specifier, expected):
    assert dependencies.simple_version_satisfies(version, specifier) is expected
    pytest.importorskip("packaging")
    assert dependencies.version_satisfies(version, specifier) is expected


def test_an_outdated_package_is_offered_as_an_upgrade_and_upgraded(app, monkeypatch):
    versions = with_versions(monkeypatch, versions={"monai": "1.2.0"})
    app.use_fake_cli("hang")
    app.dialogs.on_pip_install = lambda requirements: versions.update(monai="1.4.0")
    widget = app.create_widget()
    widget._parameterNode.inputVolume = app.add_ct_volume()
    widget.ui.segmentButton.click()
    try:
        asked = app.dialogs.texts("confirmOkCancel")
        assert len(asked) == 1 and "monai>=1.3,<2 (installed: 1.2.0)" in asked[0] and "upgrade" in asked[0]
        assert "torch" not in asked[0]
        assert app.dialogs.pip_installs == [["monai>=1.3,<2"]]
        assert app.dialogs.texts("error") == []
        assert widget._task is not None and widget._task.running
    finally:
        widget.cleanup()
