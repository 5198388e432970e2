"""Fit a weighted ensemble's weights on validation data (grid search of the Dice).

For the members' foreground probabilities p_m of each validation case and every weight vector w on
a ``step`` grid of the simplex (Σ w_m = 1, w_m >= 0), the ensemble's mask is Σ_m w_m p_m >= 0.5;
the weights kept are those with the highest mean Dice per case (the first of equal ones)."""

from __future__ import annotations

import itertools
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np
import torch

from ...metrics import dice
from ...inference import LoadedModel, predict_foreground
from ...models.card import ModelCard
from .data import TrainingSample


def weight_grid(n_members: int, step: float = 0.1) -> List[Tuple[float, ...]]:
    """All weight vectors on a ``step`` grid of the simplex (each sums to 1)."""
    ticks = np.round(np.arange(0, 1 + 1e-9, step), 6)
    return [w for w in itertools.product(ticks, repeat=n_members) if abs(sum(w) - 1) < 1e-6]


def fit_ensemble_weights(members: Sequence[ModelCard], validation: Sequence[TrainingSample],
                         step: float = 0.1) -> Tuple[List[float], Dict[str, float]]:
    """Weights maximizing the mean per-case Dice over ``validation`` (samples prepared for the
    first member's grid); returns the weights and the score of every weight vector tried. A
    member at another spacing (e.g. a coarse, wide-view member) runs on its own grid and its
    probability is resampled onto the samples' grid, as the pipeline's tumor stage does."""
    loaded = [LoadedModel.load(card) for card in members]
    device = torch.device("cpu")
    reference = members[0]
    probabilities = [[_member_probability(model, sample, reference, device) for sample in validation]
                     for model in loaded]
    grid = weight_grid(len(members), step)
    per_case = [grid_dice([probabilities[m][case] for m in range(len(members))], sample.target, grid)
                for case, sample in enumerate(validation)]
    return best_weights(grid, per_case)


def grid_dice(probabilities: Sequence[np.ndarray], target: np.ndarray, grid: Sequence[Tuple[float, ...]],
              known: Optional[np.ndarray] = None) -> List[float]:
    """One case's Dice of Σ_m w_m p_m >= 0.5 against ``target`` for every weight vector w of
    ``grid`` (counted over the ``known`` voxels when given)."""
    scores = []
    for weights in grid:
        prob = sum(w * probabilities[m] for m, w in enumerate(weights))
        predicted = prob >= 0.5
        scores.append(dice(predicted, target) if known is None else dice(predicted & known, target & known))
    return scores


def best_weights(grid: Sequence[Tuple[float, ...]], per_case: Sequence[Sequence[float]]
                 ) -> Tuple[List[float], Dict[str, float]]:
    """The weight vector of ``grid`` with the highest mean Dice per case (``per_case[case][vector]``),
    and the mean Dice of every vector, keyed ``"w1,w2,..."``."""
    scores: Dict[str, float] = {}
    best, best_score = None, -1.0
    for index, weights in enumerate(grid):
        score = float(np.mean([case[index] for case in per_case]))
        scores[",".join(f"{w:g}" for w in weights)] = round(score, 4)
        if score > best_score + 1e-9:
            best, best_score = weights, score
    assert best is not None
    return [float(w) for w in best], scores


def _member_probability(model: LoadedModel, sample: TrainingSample, reference: ModelCard,
                        device: torch.device) -> np.ndarray:
    """``model``'s foreground probability on ``sample`` (prepared on ``reference``'s grid)."""
    hu = _denormalize(sample, reference)
    if tuple(model.card.spacing_mm) == tuple(reference.spacing_mm):
        return predict_foreground(model, hu, device, overlap=0.25, hypodensity=sample.hypodensity)[0]
    import SimpleITK as sitk

    from ...stages.tumor import ensemble_probability

    def on_sample_grid(array: np.ndarray) -> "sitk.Image":
        image = sitk.GetImageFromArray(np.ascontiguousarray(array, dtype=np.float32))
        image.SetSpacing(tuple(float(s) for s in reference.spacing_mm))
        return image

    hypodensity = on_sample_grid(sample.hypodensity) if sample.hypodensity is not None else None
    return ensemble_probability(on_sample_grid(hu), [model], [1.0], device, hypodensity=hypodensity)[0]


def _denormalize(sample: TrainingSample, card: ModelCard) -> np.ndarray:
    """Back to HU (inference normalises again with the same window)."""
    lo, hi = card.hu_window
    return sample.image * (hi - lo) + lo
