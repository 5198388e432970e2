"""Tests of LiverTumorSegLib.io.writers: the four outputs read back with slicerio, SimpleITK,
nibabel, json and csv; geometry of the input grid; no overwrite without force; nothing left
behind by a failure."""

from __future__ import annotations

import csv
import json
from dataclasses import asdict
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

from LiverTumorSegLib.errors import LiverTumorSegError
from LiverTumorSegLib.geometry import Geometry
from LiverTumorSegLib.io import writers
from LiverTumorSegLib.io.terminology import LIVER, SEGMENTS, TUMOR
from LiverTumorSegLib.io.writers import TTA_KEYS, output_paths, write_outputs
from LiverTumorSegLib.measure import CSV_HEADER, measure_labelmap
from LiverTumorSegLib.pipeline import PipelineSettings, SegmentationResult

REQUIRED_REPORT_KEYS = ("liver_volume_ml", "tumor_volume_ml", "tlvr", "lesions", "models", "device",
                        "seconds_per_stage")


def _result(helpers, tiny_registry, tiny_models, orientation="oblique", with_tumor=True,
            uncertainty=False) -> tuple:
    """A SegmentationResult built from the phantom's analytic labels on a grid of ``orientation``."""
    ct = helpers.phantom_ct(size=(40, 34, 22), spacing=(4.0, 4.0, 5.0), direction=helpers.DIRECTIONS[orientation])
    labels = helpers.analytic_labels_like(ct)
    if not with_tumor:
        labels[labels == 2] = 1
    labels[2, 3, 4] = 2  # a one-voxel lesion outside the liver too: written as given
    labelmap = sitk.GetImageFromArray(labels)
    labelmap.CopyInformation(ct)
    geometry = Geometry.of(ct)
    measurements = measure_labelmap(labels, geometry, sitk.GetArrayViewFromImage(ct))
    cards = [tiny_registry.resolve(n) for n in (tiny_models.liver, tiny_models.tumor, *tiny_models.members)]
    std = None
    if uncertainty:
        std = sitk.GetImageFromArray(np.full((5, 6, 7), 0.25, np.float32))
        std.CopyInformation(ct[0:7, 0:6, 0:5])
    result = SegmentationResult(labelmap=labelmap, measurements=measurements, models=[c.summary() for c in cards],
                                device="cpu", seconds_per_stage={"liver": 1.5, "tumor": 2.0},
                                settings=asdict(PipelineSettings()), tumor_uncertainty=std,
                                warnings=["a warning"])
    return ct, labels, result


def _ijk_to_lps(image: sitk.Image) -> np.ndarray:
    matrix = np.eye(4)
    direction = np.asarray(image.GetDirection()).reshape(3, 3)
    matrix[:3, :3] = direction @ np.diag(image.GetSpacing())
    matrix[:3, 3] = image.GetOrigin()
    return matrix


@pytest.fixture
def written(tmp_path, helpers, tiny_registry, tiny_models):
    ct, labels, result = _result(helpers, tiny_registry, tiny_models)
    out = tmp_path / "out"
    paths = write_outputs(result, Path("/data/case7.nii.gz"), "case7", "file", out)
    return ct, labels, result, out, paths


def test_writes_the_four_outputs_named_after_the_input(written):
    _, _, _, out, paths = written
    assert set(paths) == {"segmentation", "labelmap", "report", "lesions_csv"}
    assert sorted(p.name for p in out.iterdir()) == ["case7.json", "case7.nii.gz", "case7.seg.nrrd",
                                                     "case7_lesions.csv"]
    assert paths == {k: str(v) for k, v in output_paths(out, "case7").items()}


@pytest.mark.parametrize("orientation", ["LPS", "permuted", "oblique"])
def test_seg_nrrd_reads_back_with_slicerio(tmp_path, helpers, tiny_registry, tiny_models, orientation):
    slicerio = pytest.importorskip("slicerio")
    ct, labels, result = _result(helpers, tiny_registry, tiny_models, orientation)
    paths = write_outputs(result, tmp_path / "c.nii.gz", "c", "file", tmp_path / "out")
    seg = slicerio.read_segmentation(paths["segmentation"])

    assert [s["name"] for s in seg["segments"]] == ["Liver", "Liver tumor"]
    np.testing.assert_allclose(seg["ijkToLPS"], _ijk_to_lps(ct), atol=1e-6)
    np.testing.assert_array_equal(seg["voxels"], labels.transpose(2, 1, 0))  # slicerio voxels are (i, j, k)
    by_name = {s["name"]: s for s in seg["segments"]}
    assert by_name["Liver"]["labelValue"] == 1 and by_name["Liver tumor"]["labelValue"] == 2
    for spec in SEGMENTS:
        np.testing.assert_allclose(by_name[spec.name]["color"], spec.color_rgb, atol=1e-6)

    liver_terms = by_name["Liver"]["terminology"]
    assert liver_terms["category"] == ["SCT", "123037004", "Anatomical Structure"]
    assert liver_terms["type"] == ["SCT", "10200004", "Liver"]
    tumor_terms = by_name["Liver tumor"]["terminology"]
    assert tumor_terms["category"] == ["SCT", "49755003", "Morphologically Altered Structure"]
    assert tumor_terms["type"] == ["SCT", "108369006", "Neoplasm"]
    assert tumor_terms["anatomicRegion"] == ["SCT", "10200004", "Liver"]

    # The extents Slicer reads are the segments' bounding boxes in (i, j, k).
    liver_ijk = np.argwhere(labels.transpose(2, 1, 0) == 1)
    expected = [int(v) for pair in zip(liver_ijk.min(axis=0), liver_ijk.max(axis=0)) for v in pair]
    assert by_name["Liver"]["extent"] == expected


def test_seg_nrrd_is_also_an_image_on_the_input_grid(written):
    ct, labels, _, _, paths = written
    image = sitk.ReadImage(paths["segmentation"])
    assert image.GetSize() == ct.GetSize()
    np.testing.assert_allclose(image.GetSpacing(), ct.GetSpacing(), atol=1e-9)
    np.testing.assert_allclose(image.GetOrigin(), ct.GetOrigin(), atol=1e-9)
    np.testing.assert_allclose(image.GetDirection(), ct.GetDirection(), atol=1e-9)
    np.testing.assert_array_equal(sitk.GetArrayViewFromImage(image), labels)


def test_nifti_labelmap_reads_back_with_simpleitk_and_nibabel(written):
    ct, labels, _, _, paths = written
    image = sitk.ReadImage(paths["labelmap"])
    assert image.GetPixelID() == sitk.sitkUInt8
    assert image.GetSize() == ct.GetSize()
    np.testing.assert_allclose(image.GetSpacing(), ct.GetSpacing(), atol=1e-5)
    np.testing.assert_allclose(image.GetOrigin(), ct.GetOrigin(), atol=1e-4)
    np.testing.assert_allclose(image.GetDirection(), ct.GetDirection(), atol=1e-5)
    np.testing.assert_array_equal(sitk.GetArrayViewFromImage(image), labels)

    nib = pytest.importorskip("nibabel")
    nifti = nib.load(paths["labelmap"])
    np.testing.assert_array_equal(np.asarray(nifti.dataobj), labels.transpose(2, 1, 0))
    ras = np.diag([-1.0, -1.0, 1.0, 1.0]) @ _ijk_to_lps(ct)
    np.testing.assert_allclose(nifti.affine, ras, atol=1e-4)


def test_json_report_has_the_required_keys_and_values(written, tiny_models):
    _, _, result, _, paths = written
    report = json.loads(Path(paths["report"]).read_text())
    for key in REQUIRED_REPORT_KEYS:
        assert key in report, key
    m = result.measurements
    assert report["liver_volume_ml"] == pytest.approx(m.liver_volume_ml)
    assert report["tumor_volume_ml"] == pytest.approx(m.tumor_volume_ml)
    assert report["tlvr"] == pytest.approx(m.tlvr)
    assert report["liver_volume_includes_tumor"] is True
    assert len(report["lesions"]) == len(m.lesions) == 2
    assert report["lesions"][0]["centroid_ras_mm"] == pytest.approx(list(m.lesions[0].centroid_ras_mm))
    assert report["device"] == "cpu" and report["seconds_per_stage"] == {"liver": 1.5, "tumor": 2.0}
    assert report["name"] == "case7" and report["input_kind"] == "file"
    assert report["warnings"] == ["a warning"] and report["non_clinical"] is True
    assert report["labels"] == {"0": "background", "1": "Liver", "2": "Liver tumor"}
    assert report["outputs"] == paths
    models = {entry["name"]: entry for entry in report["models"]}
    for name in (tiny_models.liver, *tiny_models.members):  # every model with weights
        assert {"name", "version", "sha256"} <= set(models[name]), name
        assert len(models[name]["sha256"]) == 64
    assert models[tiny_models.tumor]["members"][0]["model"] == tiny_models.members[0]
    assert report["settings"]["crop_margin_mm"] == PipelineSettings().crop_margin_mm
    assert report["grid"]["size"] == list(Geometry.of(result.labelmap).size)


def test_json_reports_the_tta_uncertainty_when_present(tmp_path, helpers, tiny_registry, tiny_models):
    _, _, result = _result(helpers, tiny_registry, tiny_models, uncertainty=True)
    paths = write_outputs(result, tmp_path / "c.nii.gz", "c", "file", tmp_path / "out")
    assert json.loads(Path(paths["report"]).read_text())["tumor_tta_std_mean"] == pytest.approx(0.25)
    assert not any(key in paths for key in TTA_KEYS)  # no mean given: no TTA maps


def test_tta_mean_std_and_variation_coefficient_volumes(tmp_path, helpers, tiny_registry, tiny_models):
    ct, labels, result = _result(helpers, tiny_registry, tiny_models, orientation="RAS", uncertainty=True)
    crop = ct[10:30, 8:26, 4:18]  # a crop holding the phantom's lesion
    mean = np.full(sitk.GetArrayViewFromImage(crop).shape, 0.5, np.float32)
    mean[0, 0, 0] = 0.01  # below CV_MIN_MEAN: CV 0
    result.tumor_probability = sitk.GetImageFromArray(mean)
    result.tumor_probability.CopyInformation(crop)
    result.tumor_uncertainty = sitk.GetImageFromArray(np.full(mean.shape, 0.1, np.float32))
    result.tumor_uncertainty.CopyInformation(crop)
    plain = write_outputs(result, tmp_path / "c.nii.gz", "c", "file", tmp_path / "plain")
    assert not any(key in plain for key in TTA_KEYS)  # only on request
    assert json.loads(Path(plain["report"]).read_text())["tumor_tta_cv_mean_in_tumor"] == pytest.approx(0.2, abs=1e-6)
    paths = write_outputs(result, tmp_path / "c.nii.gz", "c", "file", tmp_path / "out", uncertainty_maps=True)
    assert [Path(paths[key]).name for key in TTA_KEYS] == ["c_tumor_tta_mean.nii.gz", "c_tumor_tta_std.nii.gz",
                                                          "c_tumor_tta_cv.nii.gz"]
    cv = sitk.ReadImage(paths["tta_cv"])
    assert cv.GetOrigin() == pytest.approx(crop.GetOrigin()) and cv.GetDirection() == pytest.approx(crop.GetDirection())
    values = sitk.GetArrayFromImage(cv)
    assert values[0, 0, 0] == 0.0 and values[1, 1, 1] == pytest.approx(0.2)  # 0.1 / 0.5
    report = json.loads(Path(paths["report"]).read_text())
    assert report["tumor_tta_cv_mean_in_tumor"] == pytest.approx(0.2, abs=1e-6)
    assert report["outputs"]["tta_mean"] == paths["tta_mean"]
    # an existing TTA volume is not overwritten without force
    (tmp_path / "out2").mkdir()
    Path(tmp_path / "out2" / "c_tumor_tta_cv.nii.gz").write_text("x")
    with pytest.raises(LiverTumorSegError, match="already exists"):
        write_outputs(result, tmp_path / "c.nii.gz", "c", "file", tmp_path / "out2", uncertainty_maps=True)
    result.tumor_probability = None  # a run without TTA has no maps to write
    with pytest.raises(LiverTumorSegError, match="did not use"):
        write_outputs(result, tmp_path / "c.nii.gz", "c", "file", tmp_path / "out3", uncertainty_maps=True)
    assert not (tmp_path / "out3").exists() or not any((tmp_path / "out3").iterdir())


@pytest.mark.parametrize("flag", ["--uncertainty-maps", "--tta"])  # --tta: what it asked for before TTA was default
def test_segment_writes_the_uncertainty_volumes_on_request(tmp_path, small_ct_file, tiny_models_env, cli_main, flag):
    assert cli_main(["segment", str(small_ct_file), "--output", str(tmp_path), "--device", "cpu", "--progress",
                     "none", flag]) == 0
    report = json.loads(next(tmp_path.glob("*.json")).read_text())
    assert report["settings"]["tta"] is True
    for key in TTA_KEYS:
        image = sitk.ReadImage(str(tmp_path / f"{report['name']}_tumor_{key}.nii.gz"))
        assert image.GetPixelID() == sitk.sitkFloat32


def test_segment_by_default_uses_tta_and_writes_no_maps(tmp_path, small_ct_file, tiny_models_env, cli_main):
    assert cli_main(["segment", str(small_ct_file), "--output", str(tmp_path), "--device", "cpu", "--progress",
                     "none"]) == 0
    report = json.loads(next(tmp_path.glob("*.json")).read_text())
    assert report["settings"]["tta"] is True and not list(tmp_path.glob("*_tumor_tta_*"))


@pytest.mark.parametrize("switch", ["--no-tta", "--fast"])
def test_uncertainty_maps_without_tta_is_one_clear_error(tmp_path, small_ct_file, tiny_models_env, cli_main, capsys,
                                                         switch):
    assert cli_main(["segment", str(small_ct_file), "--output", str(tmp_path / "o"), "--device", "cpu",
                     "--progress", "none", "--uncertainty-maps", switch]) == 1
    assert "needs the flip test-time augmentation" in capsys.readouterr().err
    assert not (tmp_path / "o").exists()


def test_lesions_csv_header_and_rows(written):
    _, _, result, _, paths = written
    with open(paths["lesions_csv"], newline="", encoding="utf-8") as handle:
        rows = list(csv.reader(handle))
    assert tuple(rows[0]) == CSV_HEADER
    assert len(rows) == 1 + len(result.measurements.lesions)
    for row, lesion in zip(rows[1:], result.measurements.lesions):
        assert int(row[0]) == lesion.id
        assert float(row[1]) == pytest.approx(lesion.volume_ml, abs=1e-4)
        assert [float(v) for v in row[3:6]] == pytest.approx(list(lesion.centroid_ras_mm), abs=0.01)
        assert float(row[6]) == pytest.approx(lesion.mean_hu, abs=0.1)


def test_no_tumor_still_writes_both_segments_and_an_empty_table(tmp_path, helpers, tiny_registry, tiny_models):
    slicerio = pytest.importorskip("slicerio")
    _, labels, result = _result(helpers, tiny_registry, tiny_models, with_tumor=False)
    labels[labels == 2] = 0
    labelmap = sitk.GetImageFromArray(labels)
    labelmap.CopyInformation(result.labelmap)
    result.labelmap = labelmap
    result.measurements = measure_labelmap(labels, Geometry.of(labelmap))
    paths = write_outputs(result, tmp_path / "c.nii.gz", "c", "file", tmp_path / "out")
    seg = slicerio.read_segmentation(paths["segmentation"])
    assert [s["name"] for s in seg["segments"]] == [LIVER.name, TUMOR.name]
    assert Path(paths["lesions_csv"]).read_text().strip().split(",") == list(CSV_HEADER)
    report = json.loads(Path(paths["report"]).read_text())
    assert report["tumor_volume_ml"] == 0 and report["tlvr"] == 0 and report["lesions"] == []


def test_existing_outputs_are_not_overwritten_without_force(tmp_path, helpers, tiny_registry, tiny_models):
    _, _, result = _result(helpers, tiny_registry, tiny_models)
    out = tmp_path / "out"
    out.mkdir()
    (out / "c.json").write_text("{\"mine\": true}\n")
    with pytest.raises(LiverTumorSegError, match="already exists; use --force"):
        write_outputs(result, tmp_path / "c.nii.gz", "c", "file", out)
    assert [p.name for p in out.iterdir()] == ["c.json"]
    assert (out / "c.json").read_text() == "{\"mine\": true}\n"

    write_outputs(result, tmp_path / "c.nii.gz", "c", "file", out, force=True)
    assert json.loads((out / "c.json").read_text())["name"] == "c"
    assert len(list(out.iterdir())) == 4


def _assert_nothing_left(folder: Path) -> None:
    assert list(folder.iterdir()) == [], [p.name for p in folder.iterdir()]


def test_a_failing_writer_leaves_no_file_and_no_temporary_folder(tmp_path, helpers, tiny_registry, tiny_models,
                                                                 monkeypatch):
    _, _, result = _result(helpers, tiny_registry, tiny_models)
    out = tmp_path / "out"

    def disk_full(image, path):
        Path(path).write_bytes(b"partial")
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(writers, "write_labelmap", disk_full)
    with pytest.raises(LiverTumorSegError, match="cannot write outputs.*No space left on device"):
        write_outputs(result, tmp_path / "c.nii.gz", "c", "file", out)
    _assert_nothing_left(out)


@pytest.mark.parametrize("error", [OSError(5, "Input/output error"), KeyboardInterrupt()])
def test_a_failure_while_moving_into_place_removes_the_moved_files(tmp_path, helpers, tiny_registry, tiny_models,
                                                                  monkeypatch, error):
    _, _, result = _result(helpers, tiny_registry, tiny_models)
    out = tmp_path / "out"
    real_replace = writers.os.replace
    calls = []

    def replace(src, dst):
        calls.append(dst)
        if len(calls) == 3:
            raise error
        real_replace(src, dst)

    monkeypatch.setattr(writers.os, "replace", replace)
    with pytest.raises((LiverTumorSegError, KeyboardInterrupt)):
        write_outputs(result, tmp_path / "c.nii.gz", "c", "file", out)
    assert len(calls) == 3
    _assert_nothing_left(out)


def test_output_folder_is_created_and_a_file_in_its_place_is_an_error(tmp_path, helpers, tiny_registry,
                                                                       tiny_models):
    _, _, result = _result(helpers, tiny_registry, tiny_models)
    nested = tmp_path / "a" / "b" / "c"
    write_outputs(result, tmp_path / "x.nii.gz", "x", "file", nested)
    assert len(list(nested.iterdir())) == 4
    blocker = tmp_path / "blocker"
    blocker.write_text("a file, not a folder")
    with pytest.raises(LiverTumorSegError, match="cannot create output folder"):
        write_outputs(result, tmp_path / "x.nii.gz", "x", "file", blocker / "out")


def test_a_labelmap_result_writes_the_same_outputs_with_the_run_report(tmp_path, helpers, tiny_registry,
                                                                     tiny_models):
    """What the Slicer module exports: a labelmap measured now, with what its run reported."""
    from LiverTumorSegLib.io.writers import LabelmapResult

    ct, labels, result = _result(helpers, tiny_registry, tiny_models)
    run_report = {"models": result.models, "device": "cpu", "seconds_per_stage": {"liver": 1.5},
                  "settings": {"tta": False}, "warnings": ["w"], "something_else": 1}
    exported = LabelmapResult.measured(labels, Geometry.of(ct), sitk.GetArrayViewFromImage(ct), run_report)
    assert exported.measurements == result.measurements
    assert Geometry.of(exported.labelmap).matches(Geometry.of(ct))
    paths = write_outputs(exported, tmp_path / "CT", "case", "slicer", tmp_path / "out",
                          report_extra={"edited_after_segmentation": True})
    report = json.loads(Path(paths["report"]).read_text())
    assert report["edited_after_segmentation"] is True and report["input_kind"] == "slicer"
    assert report["models"] == result.models and report["device"] == "cpu" and report["warnings"] == ["w"]
    assert report["non_clinical"] is True and "something_else" not in report
    assert np.array_equal(sitk.GetArrayFromImage(sitk.ReadImage(paths["labelmap"])), labels)
    bare = LabelmapResult.measured(labels, Geometry.of(ct))  # a segmentation no run made
    assert bare.models == [] and bare.device is None and bare.measurements.lesions[0].mean_hu is None
