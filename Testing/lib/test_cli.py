"""The command-line contract, run as real subprocesses (``python -m LiverTumorSegLib``) with the
tiny models: outputs, JSON progress protocol, one ``error:`` line and no file for every bad
input, no overwrite without --force, models list/verify, measure, and SIGTERM.

Every bad input is also run in process (``cli.main``, stderr captured at the file-descriptor
level, so messages printed by C++ libraries count too); a representative subset of them, one
per failure path, runs as subprocesses in parallel to keep the suite fast."""

from __future__ import annotations

import json
import shutil
import signal
import subprocess
import time
from pathlib import Path
from typing import Dict, List, Sequence

import numpy as np
import pytest
import SimpleITK as sitk

from LiverTumorSegLib.io.volume import load_volume

OUTPUT_SUFFIXES = (".seg.nrrd", ".nii.gz", ".json", "_lesions.csv")
BAD_CASES = ("missing", "empty_file", "truncated_nii_gz", "truncated_nii", "text_file", "text_named_nifti", "two_d",
             "single_slice", "four_d", "rgb", "tiny", "nan", "mr_file", "mr_dicom", "empty_folder", "non_dicom_folder",
             "no_liver")
BAD_CASES_AS_SUBPROCESS = ("missing", "truncated_nii_gz", "empty_folder", "no_liver")  # one per failure path
PROCESS_TIMEOUT_S = 180


def _command(python: str, args: Sequence[str]) -> List[str]:
    return [python, "-m", "LiverTumorSegLib", *[str(a) for a in args]]


def _run(python: str, args: Sequence[str], env: Dict[str, str], cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run(_command(python, args), env=env, cwd=cwd, capture_output=True, text=True,
                          timeout=PROCESS_TIMEOUT_S)


def _run_parallel(python: str, runs: Sequence[Sequence[str]], env: Dict[str, str], cwd: Path,
                  envs: Sequence[Dict[str, str]] = ()) -> List[subprocess.CompletedProcess]:
    """Several CLI runs at once (they are mostly interpreter start-up)."""
    procs = []
    for index, args in enumerate(runs):
        run_env = envs[index] if envs else env
        procs.append((args, subprocess.Popen(_command(python, args), env=run_env, cwd=cwd, stdout=subprocess.PIPE,
                                             stderr=subprocess.PIPE, text=True)))
    results = []
    for args, proc in procs:
        out, err = proc.communicate(timeout=PROCESS_TIMEOUT_S)
        results.append(subprocess.CompletedProcess(args, proc.returncode, out, err))
    return results


def _assert_one_error_line(stderr: str, only_line: bool) -> str:
    """Exactly one line starts with 'error:', no traceback; with ``only_line`` nothing else."""
    assert "Traceback" not in stderr, stderr
    lines = [line for line in stderr.splitlines() if line.strip()]
    errors = [line for line in lines if line.startswith("error: ")]
    assert len(errors) == 1, stderr
    if only_line:
        assert lines == errors, stderr
    return errors[0]


def _outputs(folder: Path, name: str) -> List[Path]:
    return [folder / f"{name}{suffix}" for suffix in OUTPUT_SUFFIXES]


def _leftovers(folder: Path) -> List[str]:
    return sorted(p.name for p in folder.iterdir()) if folder.exists() else []


@pytest.fixture(scope="module")
def segmented(tmp_path_factory, cli_env, python_exe, helpers):
    """One run with the JSON progress protocol on a synthetic DICOM series folder 'patient01'
    (image axes along S, L, P): (input folder, output folder, process)."""
    root = tmp_path_factory.mktemp("cli_segment")
    series = helpers.write_dicom_series(root / "study" / "patient01",
                                        helpers.phantom_ct(direction=helpers.DIRECTIONS["permuted"]))
    out = root / "out"
    proc = _run(python_exe, ["segment", series, "--output", out, "--device", "cpu", "--progress", "json"],
                cli_env, root)
    return series, out, proc


def test_segment_writes_the_four_outputs_on_the_input_grid(segmented):
    series, out, proc = segmented
    assert proc.returncode == 0, proc.stderr
    assert proc.stderr.strip() == ""
    assert sorted(p.name for p in out.iterdir()) == sorted(p.name for p in _outputs(out, "patient01"))
    reader = sitk.ImageSeriesReader()
    reader.SetFileNames(reader.GetGDCMSeriesFileNames(str(series)))
    ct = reader.Execute()
    for name in ("patient01.nii.gz", "patient01.seg.nrrd"):
        labels = sitk.ReadImage(str(out / name))
        assert labels.GetSize() == ct.GetSize()
        np.testing.assert_allclose(labels.GetDirection(), ct.GetDirection(), atol=1e-6)
        np.testing.assert_allclose(labels.GetOrigin(), ct.GetOrigin(), atol=1e-4)
        np.testing.assert_allclose(labels.GetSpacing(), ct.GetSpacing(), atol=1e-6)
    report = json.loads((out / "patient01.json").read_text())
    assert report["device"] == "cpu" and report["input_kind"] == "dicom"
    assert report["liver_volume_ml"] > 100 and len(report["lesions"]) == 1


def test_progress_json_protocol(segmented, tiny_models):
    series, out, proc = segmented
    assert proc.returncode == 0, proc.stderr
    events = [json.loads(line) for line in proc.stdout.splitlines()]  # every line is one JSON object
    progress = [e for e in events if e["event"] == "progress"]
    stages = []
    for event in progress:
        assert 0.0 <= event["fraction"] <= 1.0
        if not stages or stages[-1] != event["stage"]:
            stages.append(event["stage"])
    members = [f"tumor:{m}" for m in tiny_models.members]
    assert stages == ["load", "liver", "crop", *members, "postprocess", "measure", "write"]
    for stage in stages:
        fractions = [e["fraction"] for e in progress if e["stage"] == stage]
        assert fractions[0] == 0.0 and fractions[-1] == 1.0, stage
    assert events[-1]["event"] == "result"
    assert events[-1]["name"] == "patient01" and events[-1]["input"] == str(series)
    assert sorted(events[-1]["outputs"].values()) == sorted(str(p) for p in _outputs(out, "patient01"))
    assert all(Path(p).is_file() for p in events[-1]["outputs"].values())


def test_segment_in_process_shows_one_bar_per_stage(tiny_models_env, small_ct_file, tmp_path, capfd, cli_main):
    assert cli_main(["segment", str(small_ct_file), "--output", str(tmp_path / "out"), "--device", "cpu"]) == 0
    captured = capfd.readouterr()
    assert "case01: liver" in captured.out and "TLVR" in captured.out
    assert "Traceback" not in captured.err and "error:" not in captured.err
    for stage in ("load", "liver", "crop", "tumor:tiny-tumor-a", "tumor:tiny-tumor-b", "postprocess", "write"):
        assert stage in captured.err
    assert _leftovers(tmp_path / "out") == sorted(p.name for p in _outputs(tmp_path / "out", "case01"))


@pytest.mark.parametrize("progress", ["none", "bar"])
@pytest.mark.parametrize("case", BAD_CASES)
def test_bad_input_in_process_one_error_line_no_file(case, progress, bad_inputs, tiny_models_env, tmp_path, capfd,
                                                     cli_main):
    bad = bad_inputs[case]
    out = tmp_path / "out"
    code = cli_main(["segment", str(bad.path), "--output", str(out), "--progress", progress])
    captured = capfd.readouterr()
    assert code == 1
    line = _assert_one_error_line(captured.err, only_line=(progress == "none"))
    assert any(fragment in line.lower() for fragment in bad.expect), line
    assert _leftovers(out) == []


def test_bad_inputs_as_subprocesses(bad_inputs, cli_env, python_exe, tmp_path):
    runs = [["segment", bad_inputs[case].path, "--output", tmp_path / case, "--progress", "json"]
            for case in BAD_CASES_AS_SUBPROCESS]
    for case, proc in zip(BAD_CASES_AS_SUBPROCESS, _run_parallel(python_exe, runs, cli_env, tmp_path)):
        assert proc.returncode == 1, (case, proc.stderr)
        line = _assert_one_error_line(proc.stderr, only_line=True)
        assert any(fragment in line.lower() for fragment in bad_inputs[case].expect), (case, line)
        for stdout_line in proc.stdout.splitlines():
            assert json.loads(stdout_line)["event"] in ("progress", "log"), (case, stdout_line)
        assert _leftovers(tmp_path / case) == [], case


def test_bad_input_cases_cover_the_loader_list(helpers):
    assert set(BAD_CASES) == set(helpers.LOAD_ERROR_CASES) | set(helpers.PIPELINE_ERROR_CASES)


def _snapshot(paths: Sequence[Path]) -> Dict[str, tuple]:
    return {p.name: (p.read_bytes(), p.stat().st_mtime_ns) for p in paths}


def test_existing_output_needs_force(segmented, cli_env, python_exe, tmp_path, helpers):
    series, first_out, first = segmented
    assert first.returncode == 0, first.stderr
    kept, replaced = tmp_path / "kept", tmp_path / "replaced"
    shutil.copytree(first_out, kept)
    shutil.copytree(first_out, replaced)
    before_kept, before_replaced = _snapshot(_outputs(kept, "patient01")), _snapshot(_outputs(replaced, "patient01"))
    same_name_file = tmp_path / "patient01.nii.gz"  # a NIfTI input whose outputs have the same names
    sitk.WriteImage(helpers.phantom_ct(), str(same_name_file))
    time.sleep(0.01)
    refused, forced = _run_parallel(python_exe, [
        ["segment", series, "--output", kept, "--progress", "none"],
        ["segment", same_name_file, "--output", replaced, "--progress", "none", "--force"]], cli_env, tmp_path)

    assert refused.returncode == 1
    line = _assert_one_error_line(refused.stderr, only_line=True)
    assert "already exists" in line and "--force" in line
    assert _snapshot(_outputs(kept, "patient01")) == before_kept

    assert forced.returncode == 0, forced.stderr
    after = _snapshot(_outputs(replaced, "patient01"))
    assert all(after[name][1] != before_replaced[name][1] for name in before_replaced), "every output rewritten"
    assert json.loads((replaced / "patient01.json").read_text())["input_kind"] == "file"
    assert _leftovers(replaced) == sorted(p.name for p in _outputs(replaced, "patient01"))


def test_two_inputs_with_the_same_name_are_refused(tmp_path, tiny_models_env, helpers, capfd, cli_main):
    for sub in ("a", "b"):
        (tmp_path / sub).mkdir()
        sitk.WriteImage(helpers.phantom_ct(), str(tmp_path / sub / "case.nii.gz"))
    helpers.write_dicom_series(tmp_path / "c" / "case", helpers.phantom_ct(size=(40, 34, 12)))
    out = tmp_path / "out"
    for inputs in ([tmp_path / "a" / "case.nii.gz", tmp_path / "b" / "case.nii.gz"],
                   [tmp_path / "a" / "case.nii.gz", tmp_path / "c" / "case"]):
        assert cli_main(["segment", *map(str, inputs), "--output", str(out)]) == 1
        assert "named 'case'" in _assert_one_error_line(capfd.readouterr().err, only_line=True)
        assert _leftovers(out) == []


def test_one_bad_input_among_several_fails_only_that_one(tmp_path, bad_inputs, tiny_models_env, small_ct_file,
                                                        capfd, cli_main):
    out = tmp_path / "out"
    code = cli_main(["segment", str(small_ct_file), str(bad_inputs["tiny"].path), "--output", str(out),
                     "--progress", "none"])
    err = capfd.readouterr().err
    assert code == 1 and "Traceback" not in err
    errors = [line for line in err.splitlines() if line.startswith("error: ")]
    assert len(errors) == 2 and "tiny.nii.gz" in errors[0] and "1 of 2 inputs failed" in errors[1]
    assert _leftovers(out) == sorted(p.name for p in _outputs(out, "case01"))


def test_dicom_seg_output_for_a_dicom_folder(tmp_path, tiny_models_env, helpers, capfd, cli_main):
    from LiverTumorSegLib.io.dicom_seg import read_dicom_seg

    series = helpers.write_dicom_series(tmp_path / "in" / "patient02",
                                        helpers.phantom_ct(direction=helpers.DIRECTIONS["permuted"]))
    out = tmp_path / "out"
    assert cli_main(["segment", str(series), "--output", str(out), "--dicom-seg", "--progress", "none"]) == 0
    assert sorted(p.name for p in out.iterdir()) == sorted([p.name for p in _outputs(out, "patient02")]
                                                           + ["patient02_seg.dcm"])
    labelmap = sitk.ReadImage(str(out / "patient02.nii.gz"))
    labels = sitk.GetArrayFromImage(labelmap)
    masks = read_dicom_seg(out / "patient02_seg.dcm", labelmap)
    assert set(masks) == {"Liver", "Liver tumor"}
    np.testing.assert_array_equal(masks["Liver"] > 0, labels == 1)
    np.testing.assert_array_equal(masks["Liver tumor"] > 0, labels == 2)
    assert (labels == 2).any()
    err = capfd.readouterr().err
    assert not [line for line in err.splitlines() if line.startswith(("INFO:", "DEBUG:"))], err  # highdicom's
    # The DICOM SEG counts as an output: not overwritten without --force.
    for path in _outputs(out, "patient02"):
        path.unlink()
    assert cli_main(["segment", str(series), "--output", str(out), "--dicom-seg", "--progress", "none"]) == 1
    assert "patient02_seg.dcm" in _assert_one_error_line(capfd.readouterr().err, only_line=True)


@pytest.mark.parametrize("argv", [["models", "list"], ["--verbose", "models", "list"], ["models", "list", "--verbose"]])
def test_library_logging_is_quiet_unless_verbose(argv, tiny_models_env, capfd, cli_main):
    """Other libraries' INFO lines (highdicom logs ~9 per DICOM SEG) and ours show only with
    --verbose (before or after the command); warnings always show."""
    import logging

    assert cli_main(argv) == 0
    capfd.readouterr()
    logging.getLogger("highdicom.seg.sop").info("highdicom says something")
    logging.getLogger("LiverTumorSegLib.models.download").info("downloading")
    logging.getLogger("highdicom").warning("a real problem")
    lines = capfd.readouterr().err.splitlines()
    verbose = "--verbose" in argv
    assert ("INFO: highdicom says something" in lines) == verbose and ("INFO: downloading" in lines) == verbose
    assert "WARNING: a real problem" in lines


def test_dicom_seg_for_a_file_input_is_refused_before_any_work(tiny_models_env, small_ct_file, tmp_path, capfd,
                                                               cli_main):
    out = tmp_path / "out"
    assert cli_main(["segment", str(small_ct_file), "--output", str(out), "--dicom-seg"]) == 1
    assert "DICOM folder" in _assert_one_error_line(capfd.readouterr().err, only_line=True)
    assert _leftovers(out) == []


def test_models_list_and_verify(tmp_path, cli_env, python_exe, tiny_models):
    corrupted = tmp_path / "corrupted"
    corrupted.mkdir()
    for name in (tiny_models.liver, *tiny_models.members, tiny_models.tumor):
        shutil.copy2(tiny_models.directory / f"{name}.json", corrupted)
        weights = tiny_models.directory / f"{name}.safetensors"
        if weights.exists():
            shutil.copy2(weights, corrupted)
    member = corrupted / f"{tiny_models.members[0]}.safetensors"
    member.write_bytes(member.read_bytes()[:-1] + b"\x7f")
    corrupted_env = dict(cli_env, LIVERTUMORSEG_MODELS=str(corrupted))
    runs = [["models", "list"], ["models", "list", "--json"], ["models", "verify", tiny_models.liver, tiny_models.tumor],
            ["models", "verify"]]
    listed, listed_json, verified, broken = _run_parallel(
        python_exe, runs, cli_env, tmp_path, envs=[cli_env, cli_env, cli_env, corrupted_env])

    assert listed.returncode == 0, listed.stderr
    for name in (tiny_models.liver, tiny_models.tumor, *tiny_models.members):
        assert name in listed.stdout
    assert "[NON-CLINICAL]" in listed.stdout

    assert listed_json.returncode == 0, listed_json.stderr
    cards = {c["name"]: c for c in json.loads(listed_json.stdout)}
    assert cards[tiny_models.liver]["location"] == str(tiny_models.directory / f"{tiny_models.liver}.json")
    assert cards[tiny_models.tumor]["kind"] == "ensemble"
    assert [m["model"] for m in cards[tiny_models.tumor]["members"]] == list(tiny_models.members)

    assert verified.returncode == 0, verified.stdout + verified.stderr
    assert verified.stdout.count("ok   ") == 3 and "FAIL" not in verified.stdout

    assert broken.returncode == 1
    assert f"FAIL {tiny_models.members[0]}" in broken.stdout
    assert _assert_one_error_line(broken.stderr, only_line=True).startswith("error: 1 model problem")


def test_measure_recomputes_the_volumes_from_a_labelmap(segmented, cli_env, python_exe, tmp_path, capfd,
                                                        cli_main):
    ct_path, out, first = segmented
    assert first.returncode == 0, first.stderr
    report = json.loads((out / "patient01.json").read_text())
    proc = _run(python_exe, ["measure", out / "patient01.nii.gz", "--ct", ct_path, "--output", tmp_path / "m"],
                cli_env, tmp_path)
    assert proc.returncode == 0, proc.stderr
    measured = json.loads((tmp_path / "m" / "patient01_measurements.json").read_text())
    for key in ("liver_volume_ml", "tumor_volume_ml", "tlvr"):
        assert measured[key] == pytest.approx(report[key])
    assert measured["lesions"] == report["lesions"]
    assert json.loads(proc.stdout)["liver_volume_ml"] == pytest.approx(report["liver_volume_ml"])
    assert (tmp_path / "m" / "patient01_lesions.csv").read_text() == (out / "patient01_lesions.csv").read_text()

    # After an edit (the tumor relabelled as liver) the numbers follow the labelmap.
    labelmap = sitk.ReadImage(str(out / "patient01.nii.gz"))
    edited = sitk.ChangeLabel(labelmap, {2: 1})
    sitk.WriteImage(edited, str(tmp_path / "edited.nii.gz"))
    assert cli_main(["measure", str(tmp_path / "edited.nii.gz"), "--output", str(tmp_path / "m2")]) == 0
    capfd.readouterr()
    remeasured = json.loads((tmp_path / "m2" / "edited_measurements.json").read_text())
    assert remeasured["tumor_volume_ml"] == 0 and remeasured["lesions"] == []
    assert remeasured["liver_volume_ml"] == pytest.approx(report["liver_volume_ml"])

    # The .seg.nrrd is a labelmap too, and names its outputs without '.seg'.
    assert cli_main(["measure", str(out / "patient01.seg.nrrd"), "--output", str(tmp_path / "m3")]) == 0
    capfd.readouterr()
    assert json.loads((tmp_path / "m3" / "patient01_measurements.json").read_text())["tumor_volume_ml"] == \
        pytest.approx(report["tumor_volume_ml"])

    # A CT on another grid, an existing output, a missing labelmap: one error line each.
    other_ct = tmp_path / "other.nii.gz"
    sitk.WriteImage(load_volume(ct_path).image[1:, :, :], str(other_ct))
    for args, fragment in [(["--ct", str(other_ct), "--output", str(tmp_path / "m4")], "same grid"),
                           (["--output", str(tmp_path / "m2")], "already exists")]:
        assert cli_main(["measure", str(tmp_path / "edited.nii.gz"), *args]) == 1
        assert fragment in _assert_one_error_line(capfd.readouterr().err, only_line=True)
    assert cli_main(["measure", str(tmp_path / "nothing.nii.gz"), "--output", str(tmp_path / "m5")]) == 1
    assert "does not exist" in _assert_one_error_line(capfd.readouterr().err, only_line=True)


@pytest.fixture(scope="module")
def large_ct_file(tmp_path_factory, helpers) -> Path:
    """A bigger synthetic CT (about 10 M voxels) so that a run lasts long enough to be stopped."""
    path = tmp_path_factory.mktemp("large_ct") / "large.nii"
    sitk.WriteImage(helpers.phantom_ct(size=(256, 224, 170), spacing=(0.7, 0.65, 0.9)), str(path))
    return path


def test_sigterm_leaves_no_output_and_no_temporary_folder(large_ct_file, cli_env, python_exe, tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    proc = subprocess.Popen(_command(python_exe, ["segment", large_ct_file, "--output", out, "--progress", "json"]),
                            env=cli_env, cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        first = proc.stdout.readline()
        assert json.loads(first)["event"] == "progress", first
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=PROCESS_TIMEOUT_S)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 130, err
    assert "SIGTERM" in _assert_one_error_line(err, only_line=True)
    assert _leftovers(out) == []


def test_segment_switches_reach_the_pipeline_settings():
    from LiverTumorSegLib.cli import _settings_from_args, build_parser

    parse = build_parser().parse_args
    default = _settings_from_args(parse(["segment", "ct.nii.gz", "--output", "out"]))
    assert default.refine_liver and default.active_contour and default.interslice and default.use_tta
    assert default.parenchyma.enabled
    switched = _settings_from_args(parse(["segment", "ct.nii.gz", "--output", "out", "--no-liver-refine",
                                          "--no-active-contour", "--no-interslice", "--no-tta", "--fast",
                                          "--no-parenchyma-prior", "--lesion-closing-mm", "0",
                                          "--min-lesion-ml", "0.3", "--margin-mm", "7"]))
    assert (switched.refine_liver, switched.active_contour, switched.interslice, switched.tta, switched.fast) == \
        (False, False, False, False, True)
    assert switched.min_lesion_ml == 0.3 and switched.crop_margin_mm == 7.0
    assert not switched.parenchyma.enabled
    assert default.lesion_closing_mm == 10.0 and switched.lesion_closing_mm == 0.0


# ---------------------------------------------------------------------------------------------
# lesion add | remove
# ---------------------------------------------------------------------------------------------

def _at(point: Sequence[float]) -> str:
    return ",".join(f"{v:.3f}" for v in point)


def test_lesion_remove_then_add_on_the_outputs_of_segment(segmented, tiny_models_env, tmp_path, capfd, cli_main):
    series, out, first = segmented
    assert first.returncode == 0, first.stderr
    report = json.loads((out / "patient01.json").read_text())
    centroid = report["lesions"][0]["centroid_ras_mm"]

    # remove the lesion from the .seg.nrrd that segment wrote: it becomes liver
    assert cli_main(["lesion", "remove", str(series), str(out / "patient01.seg.nrrd"), "--at", _at(centroid),
                     "--output", str(tmp_path / "removed")]) == 0
    captured = capfd.readouterr()
    assert "patient01: removed a lesion" in captured.out and captured.err == ""
    removed = tmp_path / "removed"
    assert _leftovers(removed) == sorted(p.name for p in _outputs(removed, "patient01"))
    after = json.loads((removed / "patient01.json").read_text())
    assert after["lesions"] == [] and after["tumor_volume_ml"] == 0
    assert after["liver_volume_ml"] == pytest.approx(report["liver_volume_ml"])
    assert after["settings"]["edit"]["action"] == "remove"
    before_labels = sitk.GetArrayFromImage(sitk.ReadImage(str(out / "patient01.nii.gz")))
    removed_labels = sitk.GetArrayFromImage(sitk.ReadImage(str(removed / "patient01.nii.gz")))
    np.testing.assert_array_equal(removed_labels, np.where(before_labels == 2, 1, before_labels))
    seg_labels = sitk.GetArrayFromImage(sitk.ReadImage(str(removed / "patient01.seg.nrrd")))
    np.testing.assert_array_equal(seg_labels, removed_labels)

    # add it back from the NIfTI labelmap: the edit draws about the lesion segment drew
    assert cli_main(["lesion", "add", str(series), str(removed / "patient01.nii.gz"), "--at", _at(centroid),
                     "--output", str(tmp_path / "added")]) == 0
    assert "patient01: added a lesion" in capfd.readouterr().out
    added = json.loads((tmp_path / "added" / "patient01.json").read_text())
    assert len(added["lesions"]) == 1
    assert added["lesions"][0]["volume_ml"] == pytest.approx(report["lesions"][0]["volume_ml"], rel=0.35)
    np.testing.assert_allclose(added["lesions"][0]["centroid_ras_mm"], centroid, atol=4.0)
    assert added["models"] and added["settings"]["edit"]["method"] == "model"
    added_labels = sitk.GetArrayFromImage(sitk.ReadImage(str(tmp_path / "added" / "patient01.nii.gz")))
    changed = added_labels != removed_labels
    assert np.all(added_labels[changed] == 2)  # only tumor was added, nothing else moved


def test_lesion_bad_input_gives_one_error_line_and_writes_nothing(segmented, tiny_models_env, tmp_path, capfd,
                                                                  cli_main):
    series, out, first = segmented
    assert first.returncode == 0, first.stderr
    labelmap = out / "patient01.nii.gz"
    other_grid = tmp_path / "other_grid.nii.gz"
    coarser = sitk.ReadImage(str(labelmap))
    coarser.SetSpacing([1.5 * s for s in coarser.GetSpacing()])
    sitk.WriteImage(coarser, str(other_grid))
    no_liver = tmp_path / "no_liver.seg.nrrd"
    no_liver.write_bytes((out / "patient01.seg.nrrd").read_bytes().replace(b"Segment0_Name:=Liver\n",
                                                                          b"Segment0_Name:=Organ\n"))
    existing = tmp_path / "existing"
    existing.mkdir()
    (existing / "patient01.json").write_text("{}")
    far_away, body_not_liver = "0,0,900", "-45,0,0"  # RAS: the phantom's left, in the body, outside the liver
    cases = [
        (["add", series, labelmap, "--at", far_away], "outside the image"),
        (["add", series, labelmap, "--at", body_not_liver], "outside the liver"),
        (["remove", series, labelmap, "--at", body_not_liver], "not on a tumor"),
        (["add", series, labelmap, "--at", "1,2"], "r,a,s"),
        (["add", series, labelmap, "--at", "a,b,c"], "r,a,s"),
        (["add", series, tmp_path / "missing.nii.gz", "--at", "0,0,0"], "does not exist"),
        (["add", tmp_path / "missing_ct", labelmap, "--at", "0,0,0"], "does not exist"),
        (["add", series, other_grid, "--at", "0,0,0"], "not on the ct's grid"),
        (["remove", series, no_liver, "--at", "0,0,0"], "no segment named 'liver'"),
    ]
    for index, (args, fragment) in enumerate(cases):
        target = tmp_path / f"out{index}"
        code = cli_main(["lesion", *[str(a) for a in args], "--output", str(target)])
        line = _assert_one_error_line(capfd.readouterr().err, only_line=True)
        assert code == 1 and fragment in line.lower(), (args, line)
        assert _leftovers(target) == [], args
    code = cli_main(["lesion", "remove", str(series), str(labelmap), "--at", "0,0,0", "--output", str(existing)])
    assert code == 1
    assert "already exists" in _assert_one_error_line(capfd.readouterr().err, only_line=True)
    assert _leftovers(existing) == ["patient01.json"] and (existing / "patient01.json").read_text() == "{}"


def test_lesion_add_as_a_subprocess_with_force(segmented, cli_env, python_exe, tmp_path):
    series, out, first = segmented
    assert first.returncode == 0, first.stderr
    centroid = json.loads((out / "patient01.json").read_text())["lesions"][0]["centroid_ras_mm"]
    edited = tmp_path / "edited"
    shutil.copytree(out, edited)
    # the lesion is already there: adding it again changes nothing but rewrites the outputs (--force)
    proc = _run(python_exe, ["lesion", "add", series, edited / "patient01.seg.nrrd", "--at", _at(centroid),
                             "--output", edited, "--force"], cli_env, tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert "added a lesion" in proc.stdout and "Traceback" not in proc.stderr
    report = json.loads((edited / "patient01.json").read_text())
    assert len(report["lesions"]) == 1
    assert _leftovers(edited) == sorted(p.name for p in _outputs(edited, "patient01"))


@pytest.mark.parametrize("world_size, leaves_by", [(None, "sys.exit"), ("1", "sys.exit"), ("2", "os._exit"),
                                                   ("x", "sys.exit")])
def test_a_torchrun_worker_leaves_without_the_interpreter_teardown(monkeypatch, world_size, leaves_by):
    """A worker of a torchrun launch ends with os._exit (DDP keeps gloo's threads alive past the
    process group's end, and tearing them down at exit aborted a worker now and then); output is
    flushed first. Any other run ends with sys.exit and the command's code."""
    from LiverTumorSegLib import cli

    class Left(Exception):
        pass

    def leave(how):
        def record(code):
            raise Left(how, code)
        return record

    flushed = []
    monkeypatch.setattr(cli, "main", lambda: 7)
    monkeypatch.setattr(cli.os, "_exit", leave("os._exit"))
    monkeypatch.setattr(cli.sys, "exit", leave("sys.exit"))
    monkeypatch.setattr(cli.logging, "shutdown", lambda: flushed.append("logging"))
    if world_size is None:
        monkeypatch.delenv("WORLD_SIZE", raising=False)
    else:
        monkeypatch.setenv("WORLD_SIZE", world_size)
    with pytest.raises(Left) as left:
        cli.entry_point()
    assert left.value.args == (leaves_by, 7)
    assert flushed == (["logging"] if leaves_by == "os._exit" else [])
