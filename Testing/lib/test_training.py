"""The minimal trainer and the ensemble-weight fit, on tiny volumes a small U-Net learns in seconds:
it learns, writes weights + card that load back, fine-tunes from a card, and the fitted ensemble
weights favour the member that segments better."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from LiverTumorSegLib.errors import LiverTumorSegError
from LiverTumorSegLib.inference import LoadedModel, predict_foreground
from LiverTumorSegLib.metrics import dice
from LiverTumorSegLib.models.card import ModelCard, read_card
from LiverTumorSegLib.models.weights import load_weights
from LiverTumorSegLib.training.data import TrainingSample
from LiverTumorSegLib.training.ensemble_weights import fit_ensemble_weights, weight_grid
from LiverTumorSegLib.training.trainer import TrainConfig, train_model

HU_WINDOW = (-100.0, 200.0)


def tiny_card(name: str, channels=(4, 8)) -> ModelCard:
    return ModelCard(name=name, version="0.0.1-test", task="tumor", architecture="UNet",
                     architecture_args={"in_channels": 1, "out_channels": 2, "channels": list(channels),
                                        "strides": [2] * (len(channels) - 1), "num_res_units": 0},
                     spacing_mm=(2.0, 2.0, 2.0), patch_size=(16, 16, 16), hu_window=HU_WINDOW,
                     weights_file="", weights_sha256="")


def bright_box_samples(n: int, seed: int = 0) -> list:
    """Normalised volumes (24^3) with one bright box (the target) in noisy darker tissue."""
    rng = np.random.default_rng(seed)
    samples = []
    for index in range(n):
        target = np.zeros((24, 24, 24), np.uint8)
        lo = rng.integers(3, 11, size=3)
        size = rng.integers(5, 10, size=3)
        target[lo[0]:lo[0] + size[0], lo[1]:lo[1] + size[1], lo[2]:lo[2] + size[2]] = 1
        hu = np.where(target > 0, 150.0, 0.0) + rng.normal(0, 15, target.shape)
        image = ((hu - HU_WINDOW[0]) / (HU_WINDOW[1] - HU_WINDOW[0])).astype(np.float32)
        samples.append(TrainingSample(f"box-{index}", image, target))
    return samples


def to_hu(sample: TrainingSample) -> np.ndarray:
    return sample.image * (HU_WINDOW[1] - HU_WINDOW[0]) + HU_WINDOW[0]


QUICK = dict(batch_size=2, learning_rate=1e-2, affine=False, positive_fraction=0.5)


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A tiny U-Net trained on bright boxes: (card, training samples)."""
    samples = bright_box_samples(6)
    card = train_model(tiny_card("box-unet"), samples, tmp_path_factory.mktemp("trained"),
                       TrainConfig(steps=120, seed=0, **QUICK))
    return card, samples


def test_training_learns_and_writes_weights_and_card_that_load_back(trained):
    card, _ = trained
    assert card.weights_path.is_file() and len(card.weights_sha256) == 64
    written = read_card(card.card_path)
    assert written.weights_sha256 == card.weights_sha256 and written.architecture_args == card.architecture_args
    model = LoadedModel.load(written)  # sha256-checked, no pickle
    unseen = bright_box_samples(3, seed=99)
    scores = [dice(predict_foreground(model, to_hu(s), torch.device("cpu"))[0] >= 0.5, s.target) for s in unseen]
    assert min(scores) > 0.8, scores


def test_fine_tuning_starts_from_the_given_weights(trained, tmp_path):
    card, samples = trained
    # With a zero learning rate the weights cannot move: what is saved is where training started.
    tuned = train_model(card, samples, tmp_path, TrainConfig(steps=2, seed=1, init_from=card,
                                                             **{**QUICK, "learning_rate": 0.0}))
    start = load_weights(card.weights_path, card.weights_sha256)
    after = load_weights(tuned.weights_path, tuned.weights_sha256)
    assert start.keys() == after.keys()
    assert all(torch.equal(start[k], after[k]) for k in start)
    scratch = train_model(card, samples, tmp_path / "scratch", TrainConfig(steps=2, seed=1, **{**QUICK,
                                                                                             "learning_rate": 0.0}))
    assert scratch.weights_sha256 != card.weights_sha256


def test_fine_tuning_a_different_network_is_refused(trained, tmp_path):
    card, samples = trained
    other = tiny_card("wider", channels=(8, 16))
    with pytest.raises(LiverTumorSegError, match="different networks"):
        train_model(other, samples, tmp_path, TrainConfig(steps=1, init_from=card, **QUICK))
    assert not (tmp_path / "wider.safetensors").exists()


def test_weight_grid_covers_the_simplex():
    grid = weight_grid(2, 0.25)
    assert grid == [(0.0, 1.0), (0.25, 0.75), (0.5, 0.5), (0.75, 0.25), (1.0, 0.0)]
    assert all(abs(sum(w) - 1) < 1e-9 for w in weight_grid(3, 0.1)) and len(weight_grid(3, 0.1)) == 66


def test_ensemble_weights_favour_the_better_member(trained, tmp_path):
    card, samples = trained
    untrained = train_model(tiny_card("box-unet-untrained"), samples, tmp_path,
                            TrainConfig(steps=1, seed=3, **{**QUICK, "learning_rate": 0.0}))
    validation = bright_box_samples(3, seed=7)
    weights, scores = fit_ensemble_weights([untrained, card], validation, step=0.25)
    assert weights[1] > weights[0]
    assert scores["0,1"] > scores["1,0"] + 0.3
    assert max(scores.values()) == scores[",".join(f"{w:g}" for w in weights)]
