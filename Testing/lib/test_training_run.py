"""``livertumorseg train`` end to end on the CPU, on tiny datasets written here in every layout it
reads (plain images/ + labels/, MSD Task03, LiTS, HCC-TACE-Seg with its clinical table), with
every architecture and loss: the card it writes loads and segments a CT, a resumed run ends where
the uninterrupted one ends, and bad inputs end in one error line."""

from __future__ import annotations

import csv
import json
import os
import subprocess
from pathlib import Path
from typing import Dict, List

import numpy as np
import pytest
import SimpleITK as sitk
import torch

from LiverTumorSegLib.errors import LiverTumorSegError
from LiverTumorSegLib.models.card import read_card
from LiverTumorSegLib.models.weights import load_weights
from LiverTumorSegLib.develop.training.cases import read_validation_ids

SIZE, SPACING = (32, 28, 14), (5.0, 5.0, 5.0)  # 160 x 140 x 70 mm around the phantom's liver and lesion
TINY_ARGS = {
    "unet": {"channels": [4, 8], "strides": [2], "num_res_units": 0},
    "segresnet": {"init_filters": 8, "blocks_down": [1, 1], "blocks_up": [1]},
    "segresnetvae": {"init_filters": 8, "blocks_down": [1, 1], "blocks_up": [1], "vae_nz": 8},
    "vnet": {"width": 2},
    "dynunet": {"kernel_size": [[3, 3, 3]] * 3, "strides": [[1, 1, 1], [2, 2, 2], [2, 2, 2]],
                "upsample_kernel_size": [[2, 2, 2]] * 2, "filters": [4, 8, 16]},
}
GRID = {"liver": "6,6,6", "tumor": "4,4,4"}


def _case(helpers, index: int):
    """A phantom CT and its labels, each case on a slightly different grid."""
    return helpers.phantom_case(SIZE, (SPACING[0] + 0.2 * index, SPACING[1], SPACING[2] - 0.2 * index))


def _write_plain(root: Path, helpers, count: int = 3, index: Dict = None) -> Path:
    helpers.write_plain_dataset(root, [_case(helpers, i) for i in range(count)])
    if index is not None:
        (root / "labels.json").write_text(json.dumps(index))
    return root


def _write_msd(root: Path, helpers) -> Path:
    (root / "imagesTr").mkdir(parents=True)
    (root / "labelsTr").mkdir()
    training = []
    for i in range(3):
        ct, labels = _case(helpers, i)
        sitk.WriteImage(ct, str(root / "imagesTr" / f"liver_{i}.nii.gz"))
        sitk.WriteImage(labels, str(root / "labelsTr" / f"liver_{i}.nii.gz"))
        training.append({"image": f"./imagesTr/liver_{i}.nii.gz", "label": f"./labelsTr/liver_{i}.nii.gz"})
    (root / "dataset.json").write_text(json.dumps({"name": "Liver", "modality": {"0": "CT"},
                                                   "labels": {"0": "background", "1": "liver", "2": "cancer"},
                                                   "training": training, "test": []}))
    return root


def _write_lits(root: Path, helpers) -> Path:
    for i, batch in ((0, "Training Batch 1"), (1, "Training Batch 1"), (2, "Training Batch 2")):
        (root / batch).mkdir(parents=True, exist_ok=True)
        ct, labels = _case(helpers, i)
        sitk.WriteImage(ct, str(root / batch / f"volume-{i}.nii"))
        sitk.WriteImage(labels, str(root / batch / f"segmentation-{i}.nii"))
    return root


def _write_hcc(root: Path, helpers) -> Path:
    """Three patients: a CT series (patient ID in the headers), a DICOM SEG with Liver and Mass, and
    the clinical table (TCIA_ID, Age, AFP)."""
    pydicom = pytest.importorskip("pydicom")
    pytest.importorskip("highdicom")
    from LiverTumorSegLib.io.dicom_seg import write_dicom_seg_masks
    from LiverTumorSegLib.io.terminology import SegmentTerminology

    def terms(name, category, kind):
        return SegmentTerminology(label=0, segment_id=name, name=name, color_rgb=(0.5, 0.5, 0.5), category=category,
                                  type=kind)

    anatomy, altered = ("SCT", "123037004", "Anatomical Structure"), ("SCT", "49755003", "Morphologically Altered "
                                                                                       "Structure")
    for i in range(3):
        patient = f"HCC_00{i + 1}"
        ct, labels = _case(helpers, i)
        series = helpers.write_dicom_series(root / patient / "study" / "2.000000-PORTAL VENOUS", ct)
        for path in series.iterdir():
            ds = pydicom.dcmread(str(path))
            ds.PatientID = ds.PatientName = patient
            ds.save_as(str(path))
        array = sitk.GetArrayFromImage(labels)
        masks = []
        for mask in (array > 0, array == 2):
            image = sitk.GetImageFromArray(mask.astype(np.uint8))
            image.CopyInformation(ct)
            masks.append(image)
        (root / patient / "study" / "300.000000-Segmentation").mkdir(parents=True)
        write_dicom_seg_masks(masks, [terms("Liver", anatomy, ("SCT", "10200004", "Liver")),
                                      terms("Mass", altered, ("SCT", "4147007", "Mass"))],
                              series, root / patient / "study" / "300.000000-Segmentation" / "1-1.dcm")
    (root / "HCC-TACE-Seg_clinical_data.csv").write_text(
        "TCIA_ID,Age,Sex,AFP\nHCC_001,62,M,14.5\nHCC_002,71,F,200\nHCC_003,55,M,3.2\n")
    return root


@pytest.fixture(scope="module")
def datasets(tmp_path_factory, helpers) -> Dict[str, Path]:
    root = tmp_path_factory.mktemp("training_data")
    return {"plain": _write_plain(root / "plain", helpers), "msd": _write_msd(root / "Task03_Liver", helpers),
            "lits": _write_lits(root / "LiTS", helpers), "hcc": _write_hcc(root / "HCC-TACE-Seg", helpers)}


def train_args(data: Path, output: Path, task: str = "liver", architecture: str = "unet", steps: int = 2,
               *extra: str) -> List[str]:
    """A tiny run: 16^3 patches on a coarse grid, tiny networks, 3 folds, validation every step."""
    return ["train", "--data", str(data), "--task", task, "--output", str(output), "--architecture", architecture,
            "--architecture-args", json.dumps(TINY_ARGS[architecture]), "--steps", str(steps), "--folds", "3",
            "--patch-size", "16,16,16", "--spacing", GRID[task], "--validate-every", "1", "--device", "cpu",
            "--progress", "none", *extra]


def _log_rows(path: Path) -> List[Dict[str, str]]:
    with open(path, newline="", encoding="utf-8") as handle:
        return list(csv.DictReader(handle))


# --- layouts ----------------------------------------------------------------------------------

@pytest.mark.parametrize("layout", ["plain", "msd", "lits", "hcc"])
def test_each_layout_trains_a_model_with_a_patient_level_split(layout, datasets, tmp_path, cli_main, capfd):
    out = tmp_path / "run"
    args = train_args(datasets[layout], out)
    args[args.index("--progress") + 1] = "bar"
    assert cli_main(args) == 0
    card = read_card(out / "liver-unet-fold0.json")
    assert card.task == "liver" and card.architecture == "UNet" and card.weights_path.is_file()
    assert "livertumorseg train" in card.source and "--folds 3" in card.source
    split = json.loads((out / "split.json").read_text())
    assert len(split["train"]) == 2 and len(split["validation"]) == 1 and split["folds"] == 3
    assert not set(split["train"]) & set(split["validation"])
    rows = _log_rows(out / "training_log.csv")
    assert [r["step"] for r in rows] == ["1", "2"] and all(r["validation_dice"] for r in rows)
    assert len(_log_rows(out / "validation.csv")) == 2  # one validation case, two validations
    captured = capfd.readouterr()
    assert f"-> {out / 'liver-unet-fold0.json'}" in captured.out
    assert "step 2/2: validation Dice" in captured.err  # progress lines where stderr is not a terminal


def test_the_split_keeps_a_patients_scans_in_one_fold(tmp_path, helpers):
    from LiverTumorSegLib.develop.training.cases import kfold_split, open_training_cases

    root = _write_plain(tmp_path / "plain", helpers, count=4,
                        index={"patients": {"case0": "p1", "case1": "p1", "case2": "p2", "case3": "p3"}})
    _, cases = open_training_cases(root)
    for fold in range(3):
        split = kfold_split(cases, 3, fold, seed=5)
        assert ("case0" in split["train"]) == ("case1" in split["train"])
        assert sorted(split["train"] + split["validation"]) == ["case0", "case1", "case2", "case3"]
    assert kfold_split(cases, 3, 1, seed=5) == kfold_split(cases, 3, 1, seed=5)


# --- architectures and losses -----------------------------------------------------------------

@pytest.mark.parametrize("architecture,loss,task", [("segresnet", "gdl-focal", "tumor"), ("segresnetvae", "bd", "tumor"),
                                                    ("vnet", "dicece", "liver"), ("dynunet", "bd", "liver"),
                                                    ("unet", "gdl-focal", "tumor")])
def test_each_architecture_and_loss_trains_and_its_card_predicts(architecture, loss, task, datasets, tmp_path,
                                                                  cli_main, helpers):
    from LiverTumorSegLib.inference import LoadedModel, predict_image

    out = tmp_path / "run"
    assert cli_main(train_args(datasets["plain"], out, task, architecture, 2, "--loss", loss, "--name", "m")) == 0
    card = read_card(out / "m.json")
    assert card.task == task and f"--loss {loss}" in card.source
    rows = _log_rows(out / "training_log.csv")
    assert all(r["vae_loss"] for r in rows) == (architecture == "segresnetvae")  # the VAE term is trained
    ct, _ = _case(helpers, 0)
    probability, _ = predict_image(ct, LoadedModel.load(card), torch.device("cpu"))
    values = sitk.GetArrayViewFromImage(probability)
    assert values.min() >= 0.0 and values.max() <= 1.0


# --- the card in the pipeline -----------------------------------------------------------------

def test_trained_liver_and_tumor_cards_segment_a_ct(datasets, tmp_path, cli_main, helpers, tiny_models_env):
    liver_out, tumor_out = tmp_path / "liver", tmp_path / "tumor"
    assert cli_main(train_args(datasets["plain"], liver_out, "liver", "unet", 100, "--learning-rate", "0.01",
                               "--validate-every", "50", "--architecture-args",
                               json.dumps({"channels": [8, 16], "strides": [2], "num_res_units": 0}))) == 0
    assert cli_main(train_args(datasets["plain"], tumor_out, "tumor", "unet", 2)) == 0
    liver_card = read_card(liver_out / "liver-unet-fold0.json")
    assert liver_card.metrics["validation"]["dice_per_case_mean"] > 0.7  # 100 steps learn it (0.80)
    ct, labels = _case(helpers, 0)
    ct_path = tmp_path / "ct.nii.gz"
    sitk.WriteImage(ct, str(ct_path))
    assert cli_main(["segment", str(ct_path), "--output", str(tmp_path / "seg"), "--device", "cpu", "--progress",
                     "none", "--liver-model", str(liver_out / "liver-unet-fold0.json"),
                     "--tumor-model", str(tumor_out / "tumor-unet-fold0.json")]) == 0
    report = json.loads((tmp_path / "seg" / "ct.json").read_text())
    assert {m["name"] for m in report["models"]} >= {"liver-unet-fold0", "tumor-unet-fold0"}
    segmented = sitk.GetArrayFromImage(sitk.ReadImage(str(tmp_path / "seg" / "ct.nii.gz")))
    reference = sitk.GetArrayViewFromImage(labels) > 0
    assert 2 * np.count_nonzero((segmented > 0) & reference) / (np.count_nonzero(segmented > 0)
                                                                + np.count_nonzero(reference)) > 0.7


# --- resume -----------------------------------------------------------------------------------

def test_a_resumed_run_ends_where_the_uninterrupted_run_ends(datasets, tmp_path, cli_main):
    from LiverTumorSegLib.develop.training.config import build_config
    from LiverTumorSegLib.develop.training.run import TrainingRun

    args = train_args(datasets["plain"], tmp_path / "whole", "liver", "unet", 4, "--validate-every", "2", "--gpa",
                      "--gpa-start", "0")
    assert cli_main(args) == 0

    interrupted = tmp_path / "interrupted"
    settings = build_config({}, {"data": str(datasets["plain"]), "task": "liver", "output": str(interrupted),
                                 "architecture_args": TINY_ARGS["unet"], "steps": 4, "folds": 3,
                                 "patch_size": [16, 16, 16], "spacing_mm": [6.0, 6.0, 6.0], "validate_every": 2,
                                 "device": "cpu", "gpa": True, "gpa_start": 0.0})

    def stop_after_the_first_checkpoint(event):
        if event.kind == "step" and event.step == 3:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        TrainingRun(settings, stop_after_the_first_checkpoint).run()
    checkpoint = torch.load(interrupted / "checkpoint_last.pt", weights_only=True)
    assert checkpoint["step"] == 2 and not (interrupted / "liver-unet-fold0.json").exists()
    resume = train_args(datasets["plain"], interrupted, "liver", "unet", 4, "--validate-every", "2", "--gpa",
                        "--gpa-start", "0", "--resume")
    assert cli_main(resume) == 0
    def losses(run: Path) -> list:
        return [(r["step"], r["loss"], r["validation_dice"]) for r in _log_rows(run / "training_log.csv")]

    assert losses(interrupted) == losses(tmp_path / "whole") and len(losses(interrupted)) == 4
    whole, resumed = read_card(tmp_path / "whole" / "liver-unet-fold0.json"), read_card(
        interrupted / "liver-unet-fold0.json")
    assert resumed.weights_sha256 == whole.weights_sha256  # the same weights, bit for bit
    assert resumed.metrics == whole.metrics
    last = torch.load(interrupted / "checkpoint_last.pt", weights_only=True)
    assert last["step"] == 4 and set(last) >= {"optimizer", "scheduler", "scaler", "torch_rng", "network"}


def test_resume_refuses_other_settings_and_a_new_run_refuses_a_used_folder(datasets, tmp_path, cli_main, capfd):
    out = tmp_path / "run"
    assert cli_main(train_args(datasets["plain"], out, "liver", "unet", 1)) == 0
    capfd.readouterr()
    assert cli_main(train_args(datasets["plain"], out, "liver", "unet", 1)) == 1
    assert "already holds a training run; continue it with --resume" in capfd.readouterr().err
    assert cli_main(train_args(datasets["plain"], out, "liver", "unet", 1, "--loss", "bd", "--resume")) == 1
    assert "loss ('dicece' -> 'bd')" in capfd.readouterr().err
    assert cli_main(train_args(datasets["plain"], tmp_path / "fresh", "liver", "unet", 1, "--resume")) == 1
    assert "holds no training run to continue" in capfd.readouterr().err


# --- methods switched on from the command line ------------------------------------------------

def test_tlvr_label_smoothing_on_hcc_tace_seg_with_its_clinical_table(datasets, tmp_path, cli_main):
    out = tmp_path / "run"
    assert cli_main(train_args(datasets["hcc"], out, "tumor", "unet", 1, "--label-smoothing", "tlvr",
                               "--clinical-columns", "Age,AFP")) == 0
    regression = json.loads((out / "tlvr_regression.json").read_text())
    assert regression["columns"] == ["Age", "AFP"] and len(regression["coefficients"]) == 3
    card = read_card(out / "tumor-unet-fold0.json")
    assert "TLVR label smoothing" in card.trained_on and "--label-smoothing tlvr" in card.source


def test_mixed_labels_use_liver_pseudo_labels_for_a_tumour_only_case(datasets, tmp_path, cli_main, helpers,
                                                                       tiny_models_env, tiny_models):
    from LiverTumorSegLib.develop.training.cases import open_training_cases
    from LiverTumorSegLib.develop.training.run import prepare_case, _start_card
    from LiverTumorSegLib.develop.training.config import build_config

    root = _write_plain(tmp_path / "mixed", helpers, index={
        "labels": {"0": "background", "1": "liver", "2": "tumor"}, "annotated": {"case2": ["tumor"]}})
    labels = sitk.ReadImage(str(root / "labels" / "case2.nii.gz"))  # tumour-only: its liver is not labelled
    tumour_only = sitk.GetImageFromArray((sitk.GetArrayFromImage(labels) == 2).astype(np.uint8) * 2)
    tumour_only.CopyInformation(labels)
    sitk.WriteImage(tumour_only, str(root / "labels" / "case2.nii.gz"))
    out = tmp_path / "run"
    assert cli_main(train_args(root, out, "liver", "unet", 1, "--folds", "1")) == 1  # no pseudo-labels: refused
    assert cli_main(train_args(root, out, "liver", "unet", 1, "--folds", "1",
                               "--pseudo-liver-model", tiny_models.liver)) == 0
    _, cases = open_training_cases(root)
    assert [c.structures.liver for c in cases] == [True, True, False]
    config = build_config({}, {"data": str(root), "task": "liver", "output": str(tmp_path / "x"),
                               "spacing_mm": [6.0, 6.0, 6.0], "patch_size": [16, 16, 16]})
    card, _ = _start_card(config)
    from LiverTumorSegLib.inference import LoadedModel
    from LiverTumorSegLib.models.registry import ModelRegistry
    from LiverTumorSegLib.develop.training.mixed_labels import pseudo_liver_probability

    liver_model = LoadedModel.load(ModelRegistry.default().resolve(tiny_models.liver))
    prepared, _, _ = prepare_case(cases[2], card, lambda ct: pseudo_liver_probability(ct, liver_model,
                                                                                      torch.device("cpu")))
    assert 0 < prepared.known.mean() < 1  # the uncertain edge of the pseudo-liver is left out of the loss
    assert prepared.target[prepared.known > 0].any()


# --- settings and errors ----------------------------------------------------------------------

def test_a_config_file_sets_the_run_and_flags_override_it(datasets, tmp_path, cli_main):
    config = tmp_path / "run.json"
    config.write_text(json.dumps({"data": str(datasets["plain"]), "task": "tumor", "architecture": "unet",
                                  "architecture-args": TINY_ARGS["unet"], "steps": 5, "folds": 3,
                                  "patch_size": [16, 16, 16], "spacing_mm": [4, 4, 4], "loss": "bd", "seed": 3}))
    out = tmp_path / "run"
    assert cli_main(["train", "--config", str(config), "--output", str(out), "--steps", "1", "--device", "cpu",
                     "--progress", "none"]) == 0
    recorded = json.loads((out / "config.json").read_text())
    assert recorded["steps"] == 1 and recorded["loss"] == "bd" and recorded["seed"] == 3
    card = read_card(out / "tumor-unet-fold0.json")
    assert "--loss bd" in card.source and "--seed 3" in card.source and "--steps 1" in card.source


@pytest.mark.parametrize("changes,message", [
    ({"--data": "{missing}"}, "does not exist or is not a folder"),
    ({"--data": "{empty}"}, "is not a recognised liver dataset"),
    ({"--amp": None}, "--amp (mixed precision) needs a CUDA GPU"),
    ({"--folds": "9"}, "9 folds need at least 9 patients"),
    ({"--patch-size": "15,16,16"}, "must be a multiple of 2"),
])
def test_bad_training_inputs_end_in_one_error_line(changes, message, datasets, tmp_path, cli_main, capfd):
    (tmp_path / "empty").mkdir()
    args = train_args(datasets["plain"], tmp_path / "run", "liver", "unet", 1)
    for flag, value in changes.items():
        value = None if value is None else value.format(missing=tmp_path / "missing", empty=tmp_path / "empty")
        if value is None:
            args.append(flag)
        else:
            args[args.index(flag) + 1] = value
    assert cli_main(args) == 1
    err = capfd.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: ") and message in err[0], err
    assert not (tmp_path / "run" / "checkpoint_last.pt").exists()


def test_batches_depend_only_on_the_seed_and_the_step_whatever_the_workers():
    from LiverTumorSegLib.develop.training.patches import PatchBatches, PreparedCase

    rng = np.random.default_rng(0)
    target = np.zeros((20, 20, 20), np.float32)
    target[5:12, 6:14, 4:10] = 1
    cases = [PreparedCase(f"c{i}", rng.normal(size=(1, 20, 20, 20)).astype(np.float32), target,
                          np.ones(target.shape, np.uint8), weight=float(i + 1)).pad_to((16, 16, 16)) for i in range(2)]

    def batches():
        return PatchBatches(cases, (16, 16, 16), batch_size=2, positive_fraction=0.5, affine=True, seed=4, steps=6)

    first = batches()
    step3 = first[3]
    first[5]
    assert all(torch.equal(step3[k], batches()[3][k]) for k in step3)
    assert not torch.equal(step3["image"], first[4]["image"])
    loader = torch.utils.data.DataLoader(batches(), batch_size=None, sampler=range(2, 4), num_workers=1)
    from_worker = list(loader)
    assert all(torch.equal(from_worker[1][k], step3[k]) for k in step3)
    assert step3["image"].shape == (2, 1, 16, 16, 16) and step3["known"].shape == (2, 1, 16, 16, 16)


def test_category_weights_epochs_and_fine_tuning(tmp_path, helpers, datasets, cli_main):
    from LiverTumorSegLib.develop.training.config import build_config
    from LiverTumorSegLib.develop.training.run import TrainingRun

    root = _write_plain(tmp_path / "typed", helpers, count=4,
                        index={"categories": {"case0": "HCC", "case1": "HCC", "case2": "HCC", "case3": "ICC"}})
    config = build_config({}, {"data": str(root), "task": "tumor", "output": str(tmp_path / "typed_run"), "folds": 1,
                               "epochs": 3, "batch_size": 3, "patch_size": [16, 16, 16], "spacing_mm": [4, 4, 4],
                               "architecture_args": TINY_ARGS["unet"]})
    run = TrainingRun(config)
    assert run.total_steps == 3 * 2  # 4 cases in batches of 3: two steps per epoch
    train, validation = run.prepare()
    assert [c.weight for c in train] == pytest.approx([4 / 6, 4 / 6, 4 / 6, 2.0]) and validation == []

    source_out, tuned_out = tmp_path / "source", tmp_path / "tuned"
    assert cli_main(train_args(datasets["plain"], source_out, "tumor", "unet", 1)) == 0
    source = read_card(source_out / "tumor-unet-fold0.json")
    assert cli_main(["train", "--data", str(datasets["plain"]), "--task", "tumor", "--output", str(tuned_out),
                     "--init-from", source.card_path, "--steps", "1", "--learning-rate", "0", "--folds", "1",
                     "--device", "cpu", "--progress", "none"]) == 0
    tuned = read_card(tuned_out / "tumor-unet-fold0-finetuned.json")
    assert (tuned.architecture_args, tuned.patch_size, tuned.spacing_mm) == \
        (source.architecture_args, source.patch_size, source.spacing_mm)
    start, after = load_weights(source.weights_path, source.weights_sha256), load_weights(tuned.weights_path,
                                                                                           tuned.weights_sha256)
    assert all(torch.equal(start[k], after[k]) for k in start)  # learning rate 0: still the source's weights
    assert "fine-tuned from tumor-unet-fold0" in tuned.trained_on


def test_a_stopped_run_says_how_to_continue_it(datasets, tmp_path, cli_main, capfd, monkeypatch):
    from LiverTumorSegLib.develop.training.run import TrainingRun

    out = tmp_path / "run"

    def stopped(self):
        out.mkdir()
        (out / "checkpoint_last.pt").write_bytes(b"")
        raise KeyboardInterrupt

    monkeypatch.setattr(TrainingRun, "run", stopped)
    assert cli_main(train_args(datasets["plain"], out)) == 130
    assert capfd.readouterr().err.strip() == ("error: training was stopped before its last step; continue it from its "
                                             "last checkpoint with --resume")


# --- distributed data parallel ----------------------------------------------------------------

def test_torchrun_with_two_processes_trains_one_model(datasets, tmp_path, cli_main, python_exe, capfd):
    """DDP on the CPU (gloo): process 0 alone writes; process 1's batches take part in every step."""
    single, ddp = tmp_path / "single", tmp_path / "ddp"
    assert cli_main(train_args(datasets["plain"], single, "liver", "unet", 2)) == 0
    command = [python_exe, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2", "-m",
               "LiverTumorSegLib", *train_args(datasets["plain"], ddp, "liver", "unet", 2)]
    done = subprocess.run(command, env=dict(os.environ, OMP_NUM_THREADS="1"), capture_output=True, text=True,
                          timeout=180)
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.count("liver-unet-fold0: liver model") == 1  # process 0 reports
    card = read_card(ddp / "liver-unet-fold0.json")
    assert "2 processes (DDP, 2 x 2 patches per step)" in card.trained_on
    assert [r["step"] for r in _log_rows(ddp / "training_log.csv")] == ["1", "2"]
    assert len(_log_rows(ddp / "validation.csv")) == 2  # one validation case (process 0's share), two validations
    assert torch.load(ddp / "checkpoint_last.pt", weights_only=True)["world_size"] == 2
    # process 0 draws the one-process run's batches; with process 1's gradients averaged in, the weights differ
    assert card.weights_sha256 != read_card(single / "liver-unet-fold0.json").weights_sha256
    capfd.readouterr()
    resume = train_args(datasets["plain"], ddp, "liver", "unet", 2, "--resume")
    assert cli_main(resume) == 1
    assert "trained with 2 process(es), this one has 1" in capfd.readouterr().err


def test_distributed_ranks_from_the_environment():
    from LiverTumorSegLib.develop.training.distributed import Distributed

    assert not Distributed.from_environment({}).enabled and Distributed.from_environment({}).main
    second = Distributed.from_environment({"WORLD_SIZE": "3", "RANK": "1", "LOCAL_RANK": "1"})
    assert second.enabled and not second.main and second.share(list("abcdefg")) == ["b", "e"]
    with pytest.raises(LiverTumorSegError, match="is not a process of the launch"):
        Distributed.from_environment({"WORLD_SIZE": "2", "RANK": "2"})




@pytest.mark.parametrize("content, fragment", [
    (None, "does not exist"),
    ("{not json", "is not readable JSON"),
    (json.dumps({"train": ["a"]}), "lists no validation cases"),
    (json.dumps({"validation": []}), "lists no validation cases"),
    (json.dumps(["a"]), "lists no validation cases"),
])
def test_a_split_file_without_validation_cases_is_one_clear_error(tmp_path, content, fragment):
    path = tmp_path / "split.json"
    if content is not None:
        path.write_text(content)
    with pytest.raises(LiverTumorSegError, match=fragment):
        read_validation_ids(path)
    path.write_text(json.dumps({"train": ["a"], "validation": ["b", "c"]}))
    assert read_validation_ids(path) == ["b", "c"]
