"""Fit a weighted ensemble's weights on validation data (grid search of the Dice)."""

from __future__ import annotations

import itertools
from typing import Dict, List, Sequence, Tuple

import numpy as np
import torch

from ..metrics import dice
from ..inference import LoadedModel, predict_foreground
from ..models.card import ModelCard
from .data import TrainingSample


def weight_grid(n_members: int, step: float = 0.1) -> List[Tuple[float, ...]]:
    """All weight vectors on a ``step`` grid of the simplex (each sums to 1)."""
    ticks = np.round(np.arange(0, 1 + 1e-9, step), 6)
    return [w for w in itertools.product(ticks, repeat=n_members) if abs(sum(w) - 1) < 1e-6]


def fit_ensemble_weights(members: Sequence[ModelCard], validation: Sequence[TrainingSample],
                         step: float = 0.1) -> Tuple[List[float], Dict[str, float]]:
    """Weights maximizing the mean per-case Dice over ``validation`` (samples on the members'
    common grid); returns the weights and the score of every weight vector tried."""
    loaded = [LoadedModel.load(card) for card in members]
    device = torch.device("cpu")
    probabilities = [[predict_foreground(model, _denormalize(sample, model.card), device, overlap=0.25,
                                       hypodensity=sample.hypodensity)[0]
                      for sample in validation] for model in loaded]
    scores: Dict[str, float] = {}
    best, best_score = None, -1.0
    for weights in weight_grid(len(members), step):
        per_case = []
        for case, sample in enumerate(validation):
            prob = sum(w * probabilities[m][case] for m, w in enumerate(weights))
            per_case.append(dice(prob >= 0.5, sample.target))
        score = float(np.mean(per_case))
        scores[",".join(f"{w:g}" for w in weights)] = round(score, 4)
        if score > best_score + 1e-9:
            best, best_score = weights, score
    assert best is not None
    return [float(w) for w in best], scores


def _denormalize(sample: TrainingSample, card: ModelCard) -> np.ndarray:
    """Back to HU (inference normalises again with the same window)."""
    lo, hi = card.hu_window
    return sample.image * (hi - lo) + lo
