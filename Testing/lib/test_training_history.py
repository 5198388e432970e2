"""Tests of LiverTumorSegLib.develop.training.history: the flat training history of a model card."""

from __future__ import annotations

from dataclasses import replace

from LiverTumorSegLib.models.card import ModelCard
from LiverTumorSegLib.develop.training.history import describe_training, render_history, training_rounds

HELD_OUT = "ts_dicom_upper_abdomen"


def _card(trained_on: str, sha: str = "ab" * 32) -> ModelCard:
    return ModelCard(name="liver-demo", version="0.1.0", task="liver", architecture="UNet", architecture_args={},
                     spacing_mm=(3.0, 3.0, 3.0), patch_size=(8, 8, 8), hu_window=(-100.0, 200.0),
                     weights_file="w.safetensors", weights_sha256=sha, trained_on=trained_on)


def test_rounds_accumulate_flat_newest_first():
    first = describe_training("25 phantoms (8 variants, half with tumours); 2500 steps", None, HELD_OUT)
    assert first == "Round 1: 25 phantoms (8 variants, half with tumours); 2500 steps. Held out: ts_dicom_upper_abdomen."
    second = describe_training("50 phantoms; 3000 steps, peak learning rate 0.0005", _card(first, "12" * 32), HELD_OUT)
    third = describe_training("90 phantoms; 2500 steps", _card(second, "34" * 32), HELD_OUT)
    assert third.startswith("Round 3: 90 phantoms; 2500 steps (fine-tuned from liver-demo 343434343434). Round 2: ")
    assert "(which had" not in third and third.count("Held out") == 1 and third.endswith("Held out: ts_dicom_upper_abdomen.")
    assert training_rounds(third) == ["25 phantoms (8 variants, half with tumours); 2500 steps",
                                      "50 phantoms; 3000 steps, peak learning rate 0.0005 "
                                      "(fine-tuned from liver-demo 121212121212)",
                                      "90 phantoms; 2500 steps (fine-tuned from liver-demo 343434343434)"]


def test_the_old_nested_form_is_read_and_rewritten_flat():
    nested = ("90 phantoms; 2500 steps, fine-tuned from liver-demo 732fd64e407b (which had: 70 phantoms (seeds 0-69); "
              "2500 steps, fine-tuned from liver-demo 767aad036a23 (which had: 25 phantoms; 2500 steps)). "
              "Held out: ts_dicom_upper_abdomen.")
    rounds = training_rounds(nested)
    assert rounds == ["25 phantoms; 2500 steps",
                      "70 phantoms (seeds 0-69); 2500 steps (fine-tuned from liver-demo 767aad036a23)",
                      "90 phantoms; 2500 steps (fine-tuned from liver-demo 732fd64e407b)"]
    flat = render_history(rounds, HELD_OUT)
    assert flat.startswith("Round 3: 90 phantoms; 2500 steps (fine-tuned from liver-demo 732fd64e407b). Round 2: 70")
    assert training_rounds(flat) == rounds
    nxt = describe_training("120 phantoms; 2500 steps", replace(_card(nested), weights_sha256="56" * 32), HELD_OUT)
    assert training_rounds(nxt)[:3] == rounds and nxt.startswith("Round 4: 120 phantoms")


def test_a_plain_or_empty_text_is_one_round_or_none():
    assert training_rounds("synthetic phantoms only") == ["synthetic phantoms only"]
    assert training_rounds("") == []
    assert render_history([], "") == ""


def test_a_round_heading_with_a_note_written_by_hand_starts_a_round():
    """A card edited by hand ("Round 14 (seed 14 again): ...") still splits into its rounds: the
    next round fine-tuned from it must not swallow that card's whole history as one round."""
    edited = ("Round 14 (the round-12 weights again, seed 14): 40 phantoms; 1200 steps (fine-tuned from liver-demo "
              "121212121212). Round 12 (a second fine-tune): 40 phantoms; 1200 steps. Round 1: 25 phantoms; "
              "2500 steps. Held out: ts_dicom_upper_abdomen.")
    assert training_rounds(edited) == [
        "25 phantoms; 2500 steps", "(a second fine-tune): 40 phantoms; 1200 steps",
        "(the round-12 weights again, seed 14): 40 phantoms; 1200 steps (fine-tuned from liver-demo 121212121212)"]
    nxt = describe_training("60 phantoms; 2400 steps", _card(edited, "34" * 32), HELD_OUT)
    assert nxt.startswith("Round 4: 60 phantoms; 2400 steps (fine-tuned from liver-demo 343434343434). Round 3: (the")
    assert training_rounds(nxt)[:3] == training_rounds(edited)
