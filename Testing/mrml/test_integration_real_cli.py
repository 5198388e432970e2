"""The module's whole path with the real library: a real CT loaded into a real MRML scene, the
real ``python -m LiverTumorSegLib segment`` in a background process, the result imported.

Uses the tiny deterministic models of Testing/conftest.py (``tiny_models_dir``: hand-set MONAI
UNets, so the run takes seconds) and, when the repository has them, the embedded demo models.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time

import numpy as np
import pytest
import slicer

from LiverTumorSegModuleLib import mrml, process
from LiverTumorSegModuleLib.process import CANCELLED, SUCCEEDED, Launcher, SegmentOptions
from LiverTumorSegModuleLib.task import SegmentationTask
from mrml_helpers import subject_hierarchy_with_study, volume_fingerprint

from LiverTumorSegLib.io.terminology import LIVER, TUMOR

CT_CASE = "ts_upper_abdomen_3mm/ct.nii.gz"


def load_ct(scene, path):
    """Load a CT file the way Slicer does: a scalar volume node read by a storage node."""
    volume = scene.AddNewNodeByClass("vtkMRMLScalarVolumeNode", "upper abdomen CT")
    storage = slicer.vtkMRMLVolumeArchetypeStorageNode()
    storage.SetFileName(str(path))
    assert storage.ReadData(volume)
    return volume


def models_env(models_dir, cache_dir) -> dict:
    env = process.library_environment()
    env["LIVERTUMORSEG_MODELS"] = str(models_dir)
    env["LIVERTUMORSEG_CACHE"] = str(cache_dir)
    return env


class Recorder:
    def __init__(self) -> None:
        self.status = []
        self.logs = []

    def on_status(self, fraction, title) -> None:
        self.status.append((fraction, title))

    def on_log(self, level, message) -> None:
        self.logs.append((level, message))


def test_real_cli_result_imported_into_a_real_scene(shared_data, tiny_models_dir, tmp_path):
    ct_path = shared_data(CT_CASE)  # skips with the reason when ../shared/data is absent
    scene = slicer.vtkMRMLScene()
    volume = load_ct(scene, ct_path)
    hierarchy, study = subject_hierarchy_with_study(scene, volume)
    before = volume_fingerprint(volume)
    recorder = Recorder()
    task = SegmentationTask(scene, volume, SegmentOptions(device="cpu", fast=True), tumor_members=2,
                            launcher=Launcher(process.cli_prefix(sys.executable), models_env(tiny_models_dir, tmp_path)),
                            on_status=recorder.on_status, on_log=recorder.on_log)
    task.start()
    assert task.wait(timeout=300) == SUCCEEDED, (task.error_message, recorder.logs)
    assert not task.temp_dir.exists()
    assert volume_fingerprint(volume) == before

    fractions = [f for f, _ in recorder.status]
    assert fractions == sorted(fractions) and fractions[-1] == pytest.approx(1.0)
    titles = [t for _, t in recorder.status]
    for expected in ("Liver (global view)", "Cropping to the liver", "Tumor model tiny-tumor-a (1/2)",
                     "Tumor model tiny-tumor-b (2/2)", "Importing into the scene"):
        assert any(t.startswith(expected) for t in titles), expected
    assert any(t.startswith("Post-processing: refining lesion") for t in titles)

    node, table = task.segmentation_node, task.table_node
    segmentation = node.GetSegmentation()
    assert {segmentation.GetNthSegment(i).GetName() for i in range(segmentation.GetNumberOfSegments())} == \
        {"Liver", "Liver tumor"}
    assert "10200004" in mrml.segment_terminology_string(segmentation.GetSegment(LIVER.segment_id))
    assert "108369006" in mrml.segment_terminology_string(segmentation.GetSegment(TUMOR.segment_id))
    assert node.GetNodeReference(node.GetReferenceImageGeometryReferenceRole()) is volume
    assert hierarchy.GetItemParent(hierarchy.GetItemByDataNode(node)) == study
    report_meta = json.loads(node.GetAttribute(mrml.ATTRIBUTE_REPORT))
    assert report_meta["models"][0]["name"] == "liver-demo" and report_meta["device"] == "cpu"

    labels = mrml.segmentation_labelmap(node, volume)
    assert (labels == 1).sum() > 1000 and (labels == 2).any()

    # The CLI's numbers (its own grid, LPS) and the module's recomputation (MRML grid, RAS) agree.
    rows = mrml.table_rows(table)
    measurements, _ = mrml.recompute_measurements(scene, node, volume)
    assert rows[0][mrml.COLUMN_VOLUME] == pytest.approx(measurements.liver_volume_ml, rel=1e-6)
    assert rows[1][mrml.COLUMN_VOLUME] == pytest.approx(measurements.tumor_volume_ml, rel=1e-6)
    assert len(rows) - 2 == len(measurements.lesions)
    first = measurements.lesions[0]
    assert [rows[2][c] for c in mrml.COLUMN_CENTROID] == pytest.approx(list(first.centroid_ras_mm), abs=1e-3)
    assert rows[2][mrml.COLUMN_MEAN_HU] == pytest.approx(first.mean_hu, abs=1e-3)

    paths = mrml.export_results(node, volume, tmp_path / "export", "case")
    exported = json.loads(paths["report"].read_text())
    assert exported["edited_after_segmentation"] is False
    assert exported["liver_volume_ml"] == pytest.approx(measurements.liver_volume_ml)


def test_cancel_of_the_real_cli_leaves_nothing(shared_data, tiny_models_dir, tmp_path):
    ct_path = shared_data(CT_CASE)  # skips with the reason when ../shared/data is absent
    scene = slicer.vtkMRMLScene()
    volume = load_ct(scene, ct_path)
    count = scene.GetNumberOfNodesByClass("vtkMRMLSegmentationNode")
    recorder = Recorder()
    task = SegmentationTask(scene, volume, SegmentOptions(device="cpu"),
                            launcher=Launcher(process.cli_prefix(sys.executable), models_env(tiny_models_dir, tmp_path)),
                            on_status=recorder.on_status)
    task.start()
    pid = task._run.process.pid  # the CLI process, to check it is gone after Cancel
    deadline = time.monotonic() + 120
    while not any(t == "Liver (global view)" for _, t in recorder.status) and time.monotonic() < deadline:
        assert task.poll(), "the run ended before it could be cancelled"
        time.sleep(0.02)
    task.cancel()
    assert task.status == CANCELLED
    assert not task.temp_dir.exists()
    assert scene.GetNumberOfNodesByClass("vtkMRMLSegmentationNode") == count
    if sys.platform.startswith("linux"):
        from pathlib import Path

        assert not Path(f"/proc/{pid}").exists() or "Z" in Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1][:3]


def test_embedded_demo_models_in_slicer_scene(shared_data, tmp_path):
    """The default (embedded) models, as a Slicer user gets them: they ship with the module, so
    their absence is a failure, and the liver they give matches the reference by position."""
    import SimpleITK as sitk

    from LiverTumorSegLib.metrics import dice, on_grid_of

    ct_path = shared_data(CT_CASE)
    listing = subprocess.run(process.cli_prefix(sys.executable) + ["models", "list", "--json"],
                             env=models_env(tmp_path / "none", tmp_path / "cache"), capture_output=True, text=True,
                             timeout=300)
    assert listing.returncode == 0, listing.stderr
    tasks = {card.get("task") for card in json.loads(listing.stdout)}
    assert {"liver", "tumor"} <= tasks, "the embedded liver and tumor models must ship in Resources/Models"
    scene = slicer.vtkMRMLScene()
    volume = load_ct(scene, ct_path)
    task = SegmentationTask(scene, volume, SegmentOptions(device="cpu", fast=True),
                            launcher=Launcher(process.cli_prefix(sys.executable), models_env(tmp_path / "none", tmp_path / "cache")))
    task.start()
    assert task.wait(timeout=600) == SUCCEEDED, task.error_message
    labels = mrml.segmentation_labelmap(task.segmentation_node, volume)
    reference = sitk.ReadImage(str(shared_data("ts_upper_abdomen_3mm/liver_reference.nii.gz")))
    ct = sitk.ReadImage(str(ct_path))
    labels_image = sitk.GetImageFromArray(labels.astype(np.uint8))
    labels_image.CopyInformation(ct)
    assert dice(labels > 0, on_grid_of(reference, labels_image) > 0) > 0.8
