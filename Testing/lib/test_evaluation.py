"""``livertumorseg evaluate``: surface distances, bootstrap CI, global Dice and lesion-wise recall /
precision by size against values computed by hand; the command end to end on a tiny dataset with
the tiny models; bad inputs end in one error line."""

from __future__ import annotations

import csv
import json
import math
from pathlib import Path

import numpy as np
import pytest

from LiverTumorSegLib.develop.evaluation import (bootstrap_ci, evaluate_labels, lesion_table, size_bin, summarize,
                                                 surface_distances_mm)
from LiverTumorSegLib.develop.training.mixed_labels import IGNORE_LABEL, AnnotatedStructures


def test_surface_distances_by_hand():
    prediction, reference = np.zeros((8, 3, 3), bool), np.zeros((8, 3, 3), bool)
    prediction[0, 1, 1] = True
    reference[2, 1, 1] = reference[5, 1, 1] = True  # 2 and 5 voxels away along k
    # P->R: {2}; R->P: {2, 5}. HD95 = max(2, P95{2, 5} = 2 + 0.95 * 3); ASSD = (2 + 2 + 5) / 3
    hd95, assd = surface_distances_mm(prediction, reference, (1.0, 1.0, 1.0))
    assert hd95 == pytest.approx(4.85) and assd == pytest.approx(3.0)
    hd95, assd = surface_distances_mm(prediction, reference, (2.0, 1.0, 1.0))  # k spacing 2 mm doubles both
    assert hd95 == pytest.approx(9.7) and assd == pytest.approx(6.0)
    assert all(math.isnan(v) for v in surface_distances_mm(prediction, np.zeros_like(reference), (1, 1, 1)))


def test_bootstrap_ci_by_hand():
    # two values 0 and 1: a resample's mean is 0, 0.5 or 1 with probability 1/4, 1/2, 1/4
    assert bootstrap_ci([0.0, 1.0], resamples=4000) == (0.0, 1.0)
    assert bootstrap_ci([0.7, 0.7, float("nan")]) == pytest.approx((0.7, 0.7))
    low, high = bootstrap_ci(list(np.linspace(0.5, 0.9, 40)))
    assert low < 0.7 < high and high - low < 0.1
    assert all(math.isnan(v) for v in bootstrap_ci([float("nan")]))


def test_case_scores_lesions_by_size_and_the_global_dice_by_hand():
    spacing = (2.0, 1.0, 1.0)  # 2 mm^3 voxels
    reference = np.zeros((20, 40, 40), np.uint8)
    reference[2:18, 2:38, 2:38] = 1
    reference[4:6, 4:8, 4:8] = 2  # 32 voxels = 64 mm^3: 5.0 mm, detected
    reference[4:10, 20:32, 20:32] = 2  # 864 voxels = 1728 mm^3: 14.9 mm, missed
    reference[0, :, :] = IGNORE_LABEL  # unknown: never counted
    predicted = np.zeros_like(reference)
    predicted[2:18, 2:38, 2:38] = 1
    predicted[5, 4:6, 4:6] = 2  # 4 voxels inside the first lesion
    predicted[12:16, 10:14, 10:14] = 2  # 64 voxels = 128 mm^3: 6.3 mm, a false positive
    predicted[0, :, :] = 2  # on unknown voxels: ignored
    scores = evaluate_labels(predicted, reference, spacing)
    assert scores["liver"]["dice"] == 1.0 and scores["liver"]["reference_ml"] == pytest.approx(16 * 36 * 36 * 2e-3)
    tumor = scores["tumor"]
    assert (tumor["intersection_voxels"], tumor["predicted_voxels"], tumor["reference_voxels"]) == (4, 68, 896)
    assert tumor["dice"] == pytest.approx(2 * 4 / (68 + 896))
    lesions = scores["lesions"]
    assert [(l["diameter_mm"], l["detected"]) for l in lesions["reference"]] == [(5.0, True), (14.9, False)]
    assert [l["true_positive"] for l in lesions["predicted"]] == [True, False]
    assert [size_bin(d) for d in (5.0, 10.0, 14.9, 20.0, 31.0)] == ["<10 mm", "10-20 mm", "10-20 mm", ">20 mm",
                                                                   ">20 mm"]
    table = lesion_table([scores])
    assert table["<10 mm"] == {"reference": 1, "detected": 1, "recall": 1.0, "predicted": 2, "true_positive": 1,
                               "precision": 0.5}
    assert table["10-20 mm"]["recall"] == 0.0 and table["10-20 mm"]["precision"] is None
    assert table["all"]["reference"] == 2 and table["all"]["recall"] == 0.5

    # a second case, tumour-free, with no tumour predicted: tumour Dice 1 (both empty), HD95 undefined
    clean = evaluate_labels(np.where(predicted == 1, 1, 0), np.where(reference == 2, 1, reference), spacing)
    assert clean["tumor"]["dice"] == 1.0 and math.isnan(clean["tumor"]["hd95_mm"])
    summary = summarize([dict(case="a", seconds=1.0, error=None, **scores),
                         dict(case="b", seconds=1.0, error=None, **clean)], resamples=200)
    assert summary["tumor"]["dice_global"] == pytest.approx(round(2 * 4 / (68 + 896), 4))
    assert summary["tumor"]["dice_per_case"]["mean"] == pytest.approx(round((tumor["dice"] + 1.0) / 2, 4))
    assert summary["tumor"]["dice_per_case_with_tumor"]["cases"] == 1
    assert summary["tumor"]["hd95_mm"]["cases"] == 1  # the tumour-free case has no HD95

    only_tumor = evaluate_labels(predicted, reference, spacing, AnnotatedStructures(liver=False, tumor=True))
    assert only_tumor["liver"] is None and only_tumor["tumor"]["dice"] == tumor["dice"]


def _write_dataset(root: Path, helpers, count: int = 2) -> Path:
    return helpers.write_plain_dataset(root, [helpers.phantom_case((40, 34, 22), (4.0 + 0.2 * i, 4.0, 4.0))
                                              for i in range(count)])


@pytest.fixture(scope="module")
def dataset(tmp_path_factory, helpers) -> Path:
    return _write_dataset(tmp_path_factory.mktemp("evaluation") / "data", helpers)


def test_evaluate_writes_scores_csv_json_and_a_plot(dataset, tmp_path, tiny_models_env, cli_main, capfd):
    out = tmp_path / "evaluation"
    assert cli_main(["evaluate", "--data", str(dataset), "--output", str(out), "--device", "cpu",
                     "--bootstrap", "200"]) == 0
    captured = capfd.readouterr()
    assert "[2/2] case1: liver Dice" in captured.err and "liver Dice per case" in captured.out
    report = json.loads((out / "evaluation.json").read_text())
    summary = report["summary"]
    assert summary["cases"] == 2 and summary["failed_cases"] == []
    liver = summary["liver"]["dice_per_case"]
    assert liver["mean"] > 0.85 and liver["ci95"][0] <= liver["mean"] <= liver["ci95"][1]
    assert summary["tumor"]["hd95_mm"]["mean"] is not None and summary["lesions"]["all"]["reference"] == 2
    assert summary["lesions"]["all"]["recall"] == 1.0  # the phantom's 20 mm lesion, found in both cases
    assert {m["name"] for m in report["settings"]["models"]} >= {"liver-demo", "tumor-demo-ensemble"}
    with open(out / "evaluation_cases.csv", newline="") as handle:
        rows = list(csv.DictReader(handle))
    assert [r["case"] for r in rows] == ["case0", "case1"] and float(rows[0]["liver_dice"]) > 0.85
    assert (out / "evaluation_lesions.csv").read_text().count("reference") == 2
    assert (out / "evaluation.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

    # --split: only the validation cases of a train run's split.json
    split = tmp_path / "split.json"
    split.write_text(json.dumps({"train": ["case0"], "validation": ["case1"]}))
    assert cli_main(["evaluate", "--data", str(dataset), "--output", str(out), "--device", "cpu", "--split",
                     str(split), "--force", "--progress", "none", "--bootstrap", "50"]) == 0
    assert [c["case"] for c in json.loads((out / "evaluation.json").read_text())["cases"]] == ["case1"]


@pytest.mark.parametrize("extra,message", [
    (["--data", "{missing}"], "does not exist or is not a folder"),
    (["--split", "{bad_split}"], "names 1 case(s) the data does not hold"),
    (["--tumor-model", "no-such-model"], "model 'no-such-model' not found"),
    (["--bootstrap", "0"], "--bootstrap must be 1 or more"),
    (["--output", "{used}"], "already exists; use --force"),
])
def test_evaluate_bad_inputs_end_in_one_error_line(extra, message, dataset, tmp_path, tiny_models_env, cli_main,
                                                   capfd):
    bad_split = tmp_path / "split.json"
    bad_split.write_text(json.dumps({"validation": ["case9"]}))
    used = tmp_path / "used"
    used.mkdir()
    (used / "evaluation.json").write_text("{}")
    args = ["evaluate", "--data", str(dataset), "--output", str(tmp_path / "out"), "--device", "cpu"]
    for flag, value in zip(extra[::2], extra[1::2]):
        value = value.format(missing=tmp_path / "missing", bad_split=bad_split, used=used)
        if flag in args:
            args[args.index(flag) + 1] = value
        else:
            args += [flag, value]
    assert cli_main(args) == 1
    err = capfd.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: ") and message in err[0], err
    assert not (tmp_path / "out").exists()
