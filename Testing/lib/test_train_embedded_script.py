"""The embedded-model training script's member and real-case selection (no training here)."""

from __future__ import annotations

import argparse
import sys

import numpy as np
import pytest
import torch

from LiverTumorSegLib.develop.scripts import train_embedded
from LiverTumorSegLib.models.networks import build_network


@pytest.mark.parametrize("inputs", sorted(train_embedded.TUMOR_INPUTS))
def test_every_tumor_member_takes_the_chosen_inputs(inputs):
    channels = train_embedded.TUMOR_INPUTS[inputs]
    for card in train_embedded.tumor_cards(inputs):
        assert card.input_channels == channels
        assert card.architecture_args["in_channels"] == len(channels)
        assert card.task == "tumor" and card.non_clinical


def test_the_wide_member_sees_a_larger_region_with_the_network_it_starts_from():
    cards = {card.name: card for card in train_embedded.tumor_cards()}
    wide = cards["tumor-demo-unet-wide"]
    source = cards[train_embedded.WARM_START_FROM[wide.name]]
    assert wide.architecture_args == source.architecture_args  # so its weights load unchanged
    window_mm = [p * s for p, s in zip(wide.patch_size, wide.spacing_mm)]
    assert min(window_mm) >= 2 * max(p * s for p, s in zip(source.patch_size, source.spacing_mm)) - 1e-6
    state = build_network(source.architecture, source.architecture_args).state_dict()
    build_network(wide.architecture, wide.architecture_args).load_state_dict(state, strict=True)
    assert set(train_embedded.DEFAULT_TUMOR_MEMBERS) <= set(cards)


@pytest.mark.parametrize("member", ["tumor-demo-unet-fine", "tumor-demo-unet-deep-fine"])
def test_a_fine_member_sees_small_lesions_on_more_voxels_with_the_network_it_starts_from(member):
    cards = {card.name: card for card in train_embedded.tumor_cards()}
    fine = cards[member]
    source = cards[train_embedded.WARM_START_FROM[fine.name]]
    assert fine.architecture_args == source.architecture_args  # so its weights load unchanged
    assert max(fine.spacing_mm) < min(source.spacing_mm)
    voxels_across_5mm = 5.0 / max(fine.spacing_mm)
    assert voxels_across_5mm >= 5.0 - 1e-6
    levels = 2 ** len(fine.architecture_args["strides"])
    assert all(p % levels == 0 for p in fine.patch_size)  # every stride-2 level divides it


@pytest.mark.parametrize("spacing", [1.5, 1.0, 0.8])
def test_a_finer_liver_refinement_grid_keeps_its_context_and_network(spacing):
    card = train_embedded.liver_refine_card(spacing)
    default = train_embedded.liver_refine_card()
    assert card.spacing_mm == (spacing,) * 3 and default.spacing_mm == (1.5,) * 3
    assert all(p % 16 == 0 for p in card.patch_size)  # three stride-2 levels divide it
    window_mm = [p * s for p, s in zip(card.patch_size, card.spacing_mm)]
    assert all(abs(w - 96.0) <= 8.0 for w in window_mm)
    assert card.architecture_args == default.architecture_args  # a 1.5 mm model warm-starts it
    assert f"{spacing:g} mm" in card.description


def test_unknown_members_and_real_cases_are_refused_by_name():
    cards = {card.name: card for card in train_embedded.tumor_cards()}
    assert train_embedded.chosen_names("tumor-demo-unet, tumor-demo-unet-wide", list(cards), "member") == [
        "tumor-demo-unet", "tumor-demo-unet-wide"]
    with pytest.raises(SystemExit, match="tumor-demo-nope"):
        train_embedded.chosen_names("tumor-demo-unet,tumor-demo-nope", list(cards), "member")
    with pytest.raises(SystemExit, match="none given"):
        train_embedded.chosen_names(" , ", list(cards), "member")
    args = argparse.Namespace(liver_real_cases="ts_upper_abdomen_3mm,chaos_ct_1", real_variants=8)
    assert train_embedded.liver_real_cases(args) == ["ts_upper_abdomen_3mm", "chaos_ct_1"]
    assert "ts_upper_abdomen_3mm and chaos_ct_1 (8 variants each" in train_embedded.describe_liver_real(args)
    with pytest.raises(SystemExit, match="ts_dicom_upper_abdomen"):
        train_embedded.liver_real_cases(argparse.Namespace(liver_real_cases="ts_dicom_upper_abdomen"))


def test_an_ensemble_member_not_trained_now_is_copied_from_init_from(tmp_path, tiny_models_dir):
    from LiverTumorSegLib.models.card import read_card

    source = next(p for p in tiny_models_dir.glob("*.json") if getattr(read_card(p), "weights_file", None))
    name = source.stem
    out = tmp_path / "out"
    out.mkdir()
    card = train_embedded._existing_member(argparse.Namespace(out=out, init_from=tiny_models_dir), name)
    assert card.name == name and (out / f"{name}.json").exists()
    assert (out / card.weights_file).read_bytes() == (tiny_models_dir / card.weights_file).read_bytes()
    with pytest.raises(SystemExit, match="neither trained now"):
        train_embedded._existing_member(argparse.Namespace(out=out, init_from=None), "tumor-demo-unet-wide")


def test_the_kind_mix_decides_which_tumour_kinds_are_drawn():
    from LiverTumorSegLib.develop.synth.tumors import TUMOR_KINDS

    assert train_embedded.parse_kind_mix(None) == train_embedded.KIND_MIX
    assert set(train_embedded.KIND_MIX) == set(TUMOR_KINDS)  # the default draws every kind
    assert train_embedded.parse_kind_mix("hilum=2") == {"hilum": 2.0}
    only_small = train_embedded.parse_kind_mix("small=1")
    assert {train_embedded.draw_kind(seed, only_small) for seed in range(30)} == {"small"}
    mix = train_embedded.parse_kind_mix("small=3,surface=1")
    drawn = [train_embedded.draw_kind(seed, mix) for seed in range(400)]
    assert set(drawn) == {"small", "surface"} and 0.65 < drawn.count("small") / len(drawn) < 0.85
    assert train_embedded.draw_kind(7, mix) == train_embedded.draw_kind(7, mix)  # reproducible
    for text, message in [("tiny=1", "unknown tumour kind 'tiny'"), ("small", "not kind=weight"),
                          ("small=-1", "negative"), ("small=0", "every weight is 0")]:
        with pytest.raises(SystemExit, match=message):
            train_embedded.parse_kind_mix(text)


def test_the_hyperdense_share_reaches_the_kinds_that_may_be_bright_in_the_portal_phase(monkeypatch, capsys):
    drawn = []
    real = train_embedded.insert_tumor_kind

    def recording(ct, liver, seed, kind, hyper_fraction=None):
        drawn.append((kind, hyper_fraction))
        return real(ct, liver, seed=seed, kind=kind, hyper_fraction=hyper_fraction)

    monkeypatch.setattr(train_embedded, "insert_tumor_kind", recording)
    card = {c.name: c for c in train_embedded.tumor_cards()}["tumor-demo-unet"]
    mix = train_embedded.parse_kind_mix("small=1,large_isodense=1")
    train_embedded.build_samples(card, 6, 0, seed_base=1, perfusion_fraction=0.0, real_cases=[], kind_mix=mix,
                                 hyperdense_share=0.6)
    assert drawn and {share for kind, share in drawn} <= {0.6, None}
    assert all((share == 0.6) == (kind == "small") for kind, share in drawn)
    assert train_embedded.hyper_fraction_for("metastases", None) is None
    monkeypatch.setattr(sys, "argv", ["train_embedded.py", "--hyperdense-share", "1.5"])
    with pytest.raises(SystemExit):
        train_embedded.main()
    assert "--hyperdense-share must lie between 0 and 1" in capsys.readouterr().err


def test_a_larger_tumour_patch_keeps_the_network_and_must_fit_its_levels():
    cards = {card.name: card for card in train_embedded.tumor_cards()}
    deep = cards["tumor-demo-unet-deep"]  # four stride-2 levels: a multiple of 16
    larger = train_embedded.with_patch(deep, 96)
    assert larger.patch_size == (96, 96, 96) and tuple(deep.patch_size) == (64, 64, 64)
    assert larger.architecture_args == deep.architecture_args and larger.spacing_mm == deep.spacing_mm
    assert train_embedded.with_patch(deep, None) is deep
    for bad in (72, 0):
        with pytest.raises(SystemExit, match="multiple of 16"):
            train_embedded.with_patch(deep, bad)
    assert train_embedded.with_patch(cards["tumor-demo-unet"], 72).patch_size == (72, 72, 72)  # three levels: 8


def test_darkened_tumour_samples_carry_their_hard_negative_region():
    card = {c.name: c for c in train_embedded.tumor_cards()}["tumor-demo-unet"]
    darkened, = train_embedded.build_samples(card, 1, 0, seed_base=1, perfusion_fraction=1.0, real_cases=[])
    plain, = train_embedded.build_samples(card, 1, 0, seed_base=1, perfusion_fraction=0.0, real_cases=[])
    assert plain.hard_negative is None
    assert darkened.hard_negative is not None and darkened.hard_negative.shape == darkened.target.shape
    assert darkened.hard_negative.mean() > 0.02  # a broad region of the liver crop ...
    assert not (darkened.hard_negative & (darkened.target > 0)).any()  # ... never on a tumour


@pytest.mark.parametrize("which", ["liver", "liver_refine"])
def test_liver_phantoms_carry_the_neighbours_a_liver_stage_spills_into(which):
    card = train_embedded.liver_card() if which == "liver" else train_embedded.liver_refine_card()
    leaky, = train_embedded.build_samples(card, 1, 0, seed_base=1, perfusion_fraction=0.0, real_cases=[],
                                          neighbour_leaks=True)
    plain, = train_embedded.build_samples(card, 1, 0, seed_base=1, perfusion_fraction=0.0, real_cases=[])
    assert plain.hard_negative is None
    np.testing.assert_array_equal(plain.target, leaky.target)
    region = leaky.hard_negative
    assert region is not None and region.shape == leaky.target.shape
    assert 0.005 < region.mean() < 0.3 and not (region & (leaky.target > 0)).any()  # beside the liver, not in it
    from scipy import ndimage
    distance = ndimage.distance_transform_edt(leaky.target == 0, sampling=card.spacing_mm[::-1])
    assert distance[region].max() <= 22.0  # within 20 mm of the liver (a voxel of resampling)


@pytest.mark.parametrize("flag", ["--refine-neighbour-fraction", "--liver-neighbour-fraction"])
def test_the_neighbour_fraction_must_leave_the_liver_its_patches(monkeypatch, capsys, flag):
    monkeypatch.setattr(sys, "argv", ["train_embedded.py", flag, "0.5"])
    with pytest.raises(SystemExit):
        train_embedded.main()
    assert f"{flag} must lie between 0 and 0.33" in capsys.readouterr().err


def test_the_liver_neighbour_fraction_centres_the_liver_models_patches_on_its_neighbours(monkeypatch, tmp_path):
    calls = {}

    def recording(card, samples, out, config):
        calls.update(card=card, samples=samples, config=config)
        return card

    monkeypatch.setattr(train_embedded, "train_model", recording)
    monkeypatch.setattr(train_embedded, "write_card", lambda card, path: None)
    monkeypatch.setattr(sys, "argv", ["train_embedded.py", "--out", str(tmp_path), "--tasks", "liver", "--phantoms",
                                      "1", "--real-variants", "0", "--liver-neighbour-fraction", "0.25"])
    assert train_embedded.main() == 0
    assert calls["config"].hard_negative_fraction == 0.25
    assert all(sample.hard_negative is not None and sample.hard_negative.any() for sample in calls["samples"])
    assert "25% of the patches centred on a neighbour organ beside the phantom's liver" in calls["card"].trained_on


def test_a_suffixed_round_joins_the_members_it_started_from_with_equal_weights(monkeypatch, tmp_path):
    from LiverTumorSegLib.models.card import read_card
    from LiverTumorSegLib.models.registry import embedded_models_dir

    shipped = embedded_models_dir()
    out = tmp_path / "out"
    out.mkdir()
    monkeypatch.setattr(sys, "argv", [
        "train_embedded.py", "--out", str(out), "--tasks", "tumor", "--phantoms", "1", "--real-variants", "0",
        "--tumor-steps", "2", "--tumor-members", "tumor-demo-unet-deep", "--member-suffix=-r99",
        "--tumor-lesion-balanced-fraction", "0.5", "--init-from", str(shipped),
        "--ensemble", "tumor-demo-unet-deep,tumor-demo-unet-deep-r19,tumor-demo-unet-deep-r99",
        "--equal-weights"])
    assert train_embedded.main() == 0
    trained = read_card(out / "tumor-demo-unet-deep-r99.json")
    source = read_card(shipped / "tumor-demo-unet-deep.json")
    assert trained.name == "tumor-demo-unet-deep-r99" and trained.weights_file == "tumor-demo-unet-deep-r99.safetensors"
    assert trained.weights_sha256 != source.weights_sha256
    assert f"fine-tuned from tumor-demo-unet-deep {source.weights_sha256[:12]}" in trained.trained_on
    assert "(50% of those on a lesion drawn uniformly among the sample's lesions" in trained.trained_on
    assert "inputs: the CT on a 1.5 mm grid;" in trained.trained_on
    ensemble = read_card(out / "tumor-demo-ensemble.json")
    # an earlier round under another suffix (saved in --init-from) joins too
    assert [m.model for m in ensemble.members] == ["tumor-demo-unet-deep", "tumor-demo-unet-deep-r19",
                                                   "tumor-demo-unet-deep-r99"]
    assert [m.weight for m in ensemble.members] == pytest.approx([1 / 3] * 3)
    assert "equal weights" in ensemble.description and "each member's card" in ensemble.trained_on
    assert read_card(out / "tumor-demo-unet-deep.json").weights_sha256 == source.weights_sha256  # copied as it was
    assert (read_card(out / "tumor-demo-unet-deep-r19.json").weights_sha256
            == read_card(shipped / "tumor-demo-unet-deep-r19.json").weights_sha256)


def test_saved_tumor_members_lists_the_single_tumour_models_of_each_folder(tmp_path):
    from LiverTumorSegLib.models.registry import embedded_models_dir

    (tmp_path / "notes.json").write_text("{}")  # other JSON beside the cards is skipped
    names = train_embedded.saved_tumor_members(embedded_models_dir(), tmp_path / "missing", None, tmp_path)
    assert "tumor-demo-unet-deep-r19" in names and "tumor-demo-unet" in names
    assert "tumor-demo-ensemble" not in names and "liver-demo" not in names  # an ensemble, a liver model


def test_an_ensemble_member_with_another_suffix_is_refused(monkeypatch, tmp_path):
    monkeypatch.setattr(sys, "argv", [
        "train_embedded.py", "--out", str(tmp_path), "--tasks", "tumor", "--tumor-members", "tumor-demo-unet",
        "--member-suffix=-r99", "--ensemble", "tumor-demo-unet-r98"])
    with pytest.raises(SystemExit, match="tumor-demo-unet-r98"):
        train_embedded.main()


def test_the_liver_card_keeps_its_chosen_inference_window():
    """The liver model infers on windows wider in-plane than its training patch (chosen on
    validation); a retrain must keep them, and the network must accept them."""
    from LiverTumorSegLib.models.card import read_card
    from LiverTumorSegLib.models.registry import embedded_models_dir

    card = train_embedded.liver_card()
    window, patch = card.inference_patch_size, card.patch_size
    assert window is not None and window[0] > patch[0] and window[1] > patch[1] and window[2] == patch[2]
    network = build_network(card.architecture, card.architecture_args).eval()
    with torch.inference_mode():
        out = network(torch.zeros((1, 1, *card.inference_patch_size_kji)))
    assert tuple(out.shape[2:]) == card.inference_patch_size_kji
    assert tuple(read_card(embedded_models_dir() / "liver-demo.json").inference_patch_size) == tuple(window)


@pytest.mark.parametrize("member", ["tumor-demo-unet-wide", "tumor-demo-unet-fine", "tumor-demo-unet-deep-fine"])
def test_a_member_on_another_grid_starts_from_the_network_it_shares(member):
    from LiverTumorSegLib.models.registry import embedded_models_dir

    shipped = embedded_models_dir()
    start = train_embedded.initial_card(argparse.Namespace(init_from=shipped), member)
    assert start is not None and start.name == train_embedded.WARM_START_FROM[member]
    assert train_embedded.initial_card(argparse.Namespace(init_from=None), member) is None


def test_a_grid_is_named_in_millimetres():
    assert train_embedded.format_spacing((1.0, 1.0, 1.0)) == "1 mm"
    assert train_embedded.format_spacing((0.8, 0.8, 2.0)) == "0.8 x 0.8 x 2 mm"
