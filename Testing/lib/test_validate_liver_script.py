"""The liver validation script: its scores by physical position and its summary."""

from __future__ import annotations

import numpy as np
import pytest
import SimpleITK as sitk

from LiverTumorSegLib.develop.scripts.validate_liver import score_case, summarize
from LiverTumorSegLib.errors import LiverTumorSegError


def labelled_volume(spacing=(1.0, 1.0, 2.0)) -> tuple:
    labels = np.zeros((60, 20, 20), np.uint8)
    labels[5:55, 4:16, 4:16] = 1
    labels[38:44, 8:12, 8:12] = 2  # the tumour sits high in the liver
    ct_array = np.where(labels > 0, 60.0, -100.0).astype(np.float32)
    ct, lab = sitk.GetImageFromArray(ct_array), sitk.GetImageFromArray(labels)
    for image in (ct, lab):
        image.SetSpacing(spacing)
        image.SetOrigin((10.0, -5.0, 100.0))
    return ct, lab


class FakePipeline:
    """Returns a fixed liver mask, as Pipeline.liver_mask would, or raises."""

    def __init__(self, mask=None):
        self.mask = mask

    def liver_mask(self, ct):
        if self.mask is None:
            raise LiverTumorSegError("no liver found in view")
        return self.mask


def test_scores_follow_what_the_liver_stage_drew():
    ct, labels = labelled_volume()
    reference = sitk.GetArrayFromImage(labels)
    perfect = score_case(FakePipeline((reference > 0).astype(np.uint8)), ("c", "g", ct, labels))
    assert perfect["liver_dice"] == 1.0 and perfect["leak_beyond_3mm_ml"] == 0.0
    assert perfect["tumour_inside_liver"] == 1.0 and type(perfect["tumour_inside_liver"]) is float
    without_tumour = (reference == 1).astype(np.uint8)  # a liver stage that left the lesion out
    spilled = without_tumour.copy()
    spilled[5:55, 0:2, :] = 1  # a neighbour 2-4 mm away
    spilled[5:55, 16:20, 4:16] = 1  # and one touching the liver: within 3 mm only up to 3 voxels
    row = score_case(FakePipeline(spilled), ("c", "g", ct, labels))
    assert row["tumour_inside_liver"] == 0.0 and row["liver_dice"] < 1.0
    assert row["leak_beyond_3mm_ml"] > 0.0
    missed = score_case(FakePipeline(), ("c", "g", ct, labels))  # no liver found: scored, not raised
    assert missed["liver_dice"] == 0.0 and missed["tumour_inside_liver"] == 0.0


def test_the_summary_is_per_group():
    rows = [{"case": "a", "group": "whole", "liver_dice": 0.9, "leak_beyond_3mm_ml": 1.0, "tumour_inside_liver": 1.0},
            {"case": "b", "group": "whole", "liver_dice": 0.8, "leak_beyond_3mm_ml": 5.0},
            {"case": "c", "group": "slab", "liver_dice": 0.5, "leak_beyond_3mm_ml": 0.0, "tumour_inside_liver": 0.2}]
    summary = summarize(rows)
    assert summary["whole"]["liver_dice_mean"] == pytest.approx(0.85) and summary["whole"]["liver_dice_min"] == 0.8
    assert summary["whole"]["leak_beyond_3mm_ml_max"] == 5.0 and summary["whole"]["tumour_inside_liver_min"] == 1.0
    assert summary["slab"]["cases"] == 1 and summary["slab"]["tumour_inside_liver_mean"] == 0.2


def test_validation_phantoms_take_every_kind_in_turn_whole_and_as_slabs_under_validation_seeds(monkeypatch):
    from LiverTumorSegLib.develop.scripts import validate_liver
    from LiverTumorSegLib.develop.synth.tumors import TUMOR_KINDS

    drawn = []

    def phantom(seed, kind, spacing):
        drawn.append((seed, kind, spacing))
        return (*labelled_volume(), {})

    monkeypatch.setattr(validate_liver, "phantom_with_tumor_kind", phantom)
    cases = validate_liver.validation_cases(len(TUMOR_KINDS) + 1)
    assert [kind for _, kind, _ in drawn] == list(TUMOR_KINDS) + [list(TUMOR_KINDS)[0]]
    assert all(5002 <= seed < 9000 for seed, _, _ in drawn)  # neither training (0-149) nor held out (10000+)
    assert [group for _, group, _, _ in cases[:2]] == ["whole volume", "40 mm slab"]
    assert len(cases) == 2 * len(drawn) and len(validate_liver.validation_cases(3, slabs=False)) == 3


def test_each_folder_is_scored_at_each_liver_threshold(monkeypatch, tmp_path, capsys):
    import json

    from LiverTumorSegLib.develop.scripts import validate_liver

    made = []

    def pipeline_for(models, threshold):
        made.append((models, threshold))
        ct, labels = labelled_volume()
        return FakePipeline((sitk.GetArrayFromImage(labels) > 0).astype(np.uint8))

    monkeypatch.setattr(validate_liver, "pipeline_for", pipeline_for)
    monkeypatch.setattr(validate_liver, "validation_cases",
                        lambda count, slabs=True: [("c", "whole volume", *labelled_volume())])
    out = tmp_path / "report.json"
    assert validate_liver.main(["A", "B", "--liver-thresholds", "0.4,0.5", "--out", str(out)]) == 0
    assert [(str(m), t) for m, t in made] == [("A", 0.4), ("A", 0.5), ("B", 0.4), ("B", 0.5)]
    assert list(json.loads(out.read_text())) == [f"{m} @ liver threshold {t}" for m in "AB" for t in ("0.4", "0.5")]
    validate_liver.main(["A", "--out", str(out)])  # one threshold: the folder's own label, the pipeline's cut
    assert made[-1] == (validate_liver.Path("A"), validate_liver.PipelineSettings.liver_threshold)
    assert list(json.loads(out.read_text())) == ["A"] and "A:" in capsys.readouterr().out
    for bad in ("0.5,x", "1.2", ""):
        with pytest.raises(SystemExit, match="--liver-thresholds"):
            validate_liver.parse_thresholds(bad)


def test_the_pipeline_cuts_the_liver_at_the_threshold_asked():
    from LiverTumorSegLib.develop.scripts.validate_liver import pipeline_for
    from LiverTumorSegLib.models.registry import embedded_models_dir

    assert pipeline_for(embedded_models_dir(), 0.4).settings.liver_threshold == 0.4


def test_an_overlay_shows_the_spill_in_orange_beside_the_blue_reference(tmp_path):
    from skimage.io import imread

    from LiverTumorSegLib.develop.render import PRED_COLORS, REF_COLORS

    ct, labels = labelled_volume()
    spilled = (sitk.GetArrayFromImage(labels) > 0).astype(np.uint8)
    spilled[50:53, 16:20, 4:16] = 1  # a neighbour taken in on three slices only
    path = tmp_path / "pictures" / "case.png"
    score_case(FakePipeline(spilled), ("c", "g", ct, labels), overlay=path)
    rgb = imread(str(path))[..., :3]
    # the predicted contour is drawn over the reference's: blue is left only on a slice through the spill
    assert (rgb == PRED_COLORS[1]).all(axis=-1).any() and (rgb == REF_COLORS[1]).all(axis=-1).any()
    assert not (rgb == REF_COLORS[2]).all(axis=-1).any()  # the reference tumour counts as liver here
    assert score_case(FakePipeline(spilled), ("c", "g", ct, labels)) == score_case(
        FakePipeline(spilled), ("c", "g", ct, labels), overlay=tmp_path / "again.png")


def test_overlay_folder_names_are_single_file_names():
    from LiverTumorSegLib.develop.scripts.validate_liver import _safe_name

    assert _safe_name("work_tmp/train_l13 @ liver threshold 0.4") == "work_tmp_train_l13___liver_threshold_0.4"
    assert "/" not in _safe_name("phantom-5002+classic 40 mm slab") and _safe_name("..") == "models"
