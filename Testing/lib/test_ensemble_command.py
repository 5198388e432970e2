"""``livertumorseg ensemble``: weights fitted on the held-out cases of the members' split, a card the
registry and ``segment`` load as it is (members copied beside it), and one error line for bad input."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import SimpleITK as sitk

from LiverTumorSegLib.models.card import EnsembleCard, read_card
from LiverTumorSegLib.models.registry import ModelRegistry

SPLIT = {"train": ["case0"], "validation": ["case1", "case2"]}


@pytest.fixture(scope="module")
def dataset(tmp_path_factory, helpers) -> Path:
    return helpers.write_plain_dataset(tmp_path_factory.mktemp("ensemble") / "data",
                                       [helpers.phantom_case((36, 30, 20), (4.0 + 0.2 * i, 4.0, 4.0)) for i in range(3)])


def _member_runs(tmp_path: Path, helpers, tiny_models_dir: Path, second_split: dict = SPLIT) -> tuple:
    """Two train-like output folders, each a tumor card + weights + split.json: 'good' (the tiny
    tumor model: darker than 35 HU) and 'wrong' (calls the bright liver tumour)."""
    good, wrong = tmp_path / "run_good", tmp_path / "run_wrong"
    good.mkdir()
    wrong.mkdir()
    card = read_card(tiny_models_dir / "tiny-tumor-a.json")
    shutil.copy(tiny_models_dir / card.weights_file, good / card.weights_file)
    shutil.copy(tiny_models_dir / "tiny-tumor-a.json", good / "tiny-tumor-a.json")
    helpers.write_model(wrong, "wrong-tumor", "tumor", helpers.threshold_unet_state(100.0, True),
                        helpers.THRESHOLD_UNET_ARGS, spacing=(4.0, 4.0, 4.0))
    (good / "split.json").write_text(json.dumps(SPLIT))
    (wrong / "split.json").write_text(json.dumps(second_split))
    return good / "tiny-tumor-a.json", wrong / "wrong-tumor.json"


def test_ensemble_weights_from_the_members_split_and_the_card_segments(dataset, tmp_path, helpers, tiny_models_env,
                                                                       cli_main, capfd):
    good, wrong = _member_runs(tmp_path, helpers, tiny_models_env)
    out = tmp_path / "ensemble" / "my-ensemble.json"
    assert cli_main(["ensemble", "--members", str(wrong), str(good), "--data", str(dataset), "--output", str(out),
                     "--step", "0.5", "--device", "cpu"]) == 0
    captured = capfd.readouterr()
    assert "[2/2] case2" in captured.err and "my-ensemble: tumor ensemble" in captured.out
    card = read_card(out)
    assert isinstance(card, EnsembleCard) and card.task == "tumor"
    assert [(m.model, m.weight) for m in card.members] == [("wrong-tumor", 0.0), ("tiny-tumor-a", 1.0)]
    validation = card.metrics["validation"]
    assert validation["case_ids"] == ["case1", "case2"]  # the members' held-out cases only
    assert validation["members_alone"]["wrong-tumor"] < 0.2 < 0.7 < validation["members_alone"]["tiny-tumor-a"]
    assert validation["dice_per_case_mean"] == validation["members_alone"]["tiny-tumor-a"]
    assert "held out from the members' training" in card.trained_on and "--step 0.5" in card.source
    assert cli_main(["ensemble", "--members", str(wrong), str(good), "--data", str(dataset), "--output", str(out),
                     "--step", "0.5", "--device", "cpu", "--all-cases", "--force", "--progress", "none"]) == 0
    assert read_card(out).metrics["validation"]["case_ids"] == ["case0", "case1", "case2"]
    assert "(every case)" in read_card(out).trained_on
    # the members lie beside the card, where the registry finds them; segment loads the card as it is
    assert (out.parent / "wrong-tumor.json").is_file() and (out.parent / "tiny-tumor-a.safetensors").is_file()
    members = ModelRegistry([]).ensemble_members(ModelRegistry([]).resolve(str(out), task="tumor"))
    assert [Path(m.card_path).parent for m in members] == [out.parent, out.parent]
    ct_path = tmp_path / "ct.nii.gz"
    sitk.WriteImage(helpers.phantom_ct(), str(ct_path))
    assert cli_main(["segment", str(ct_path), "--output", str(tmp_path / "seg"), "--device", "cpu", "--progress",
                     "none", "--tumor-model", str(out)]) == 0
    report = json.loads((tmp_path / "seg" / "ct.json").read_text())
    assert "my-ensemble" in {m["name"] for m in report["models"]} and report["lesions"]


@pytest.mark.parametrize("case,message", [
    ("one_member", "an ensemble needs at least two --members"),
    ("splits_differ", "the members were validated on different cases"),
    ("no_split", "has no split.json beside its card"),
    ("bad_step", "--step must divide 1 into equal parts"),
    ("both", "give --split or --all-cases, not both"),
    ("liver_member", "is a liver model, but a tumor model is needed here"),
    ("not_json", "must name the ensemble card file, ending in .json"),
])
def test_ensemble_bad_inputs_end_in_one_error_line(case, message, dataset, tmp_path, helpers, tiny_models_env,
                                                   cli_main, capfd):
    good, wrong = _member_runs(tmp_path, helpers, tiny_models_env,
                               {"validation": ["case0"]} if case == "splits_differ" else SPLIT)
    out = tmp_path / "out" / "e.json"
    members = {"one_member": [str(good)], "no_split": [str(good), "tiny-tumor-b"],
               "liver_member": [str(good), "liver-demo"]}.get(case, [str(good), str(wrong)])
    extra = {"bad_step": ["--step", "0.3"], "both": ["--split", str(good.parent / "split.json"), "--all-cases"]}
    if case == "not_json":
        out = tmp_path / "out" / "e.txt"
    args = ["ensemble", "--members", *members, "--data", str(dataset), "--output", str(out), "--device", "cpu",
            *extra.get(case, [])]
    assert cli_main(args) == 1
    err = capfd.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: ") and message in err[0], err
    assert not out.exists()
