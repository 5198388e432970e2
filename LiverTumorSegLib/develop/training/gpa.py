"""Greedy parameter averaging (GPA, seed 000): one model from the average of several checkpoints'
parameters, where a checkpoint joins the average only if the averaged model then validates better.

With the checkpoints theta_1..theta_n sorted by their own validation score (best first), the
average starts as A = {theta_1} with score s = V(theta_1), and for i = 2..n

    candidate = (sum_{theta in A} theta + theta_i) / (|A| + 1)
    if V(candidate) > s:  A <- A + {theta_i},  s <- V(candidate)

(the greedy "model soup" of Wortsman et al. 2022, the algorithm GPA names). Floating-point
tensors are averaged; integer buffers (BatchNorm's batch counters) are taken from the first
member. V is any validation score, higher is better (the trainer uses the mean Dice per case).
"""

from __future__ import annotations

from typing import Callable, Dict, Iterable, List, Optional, Tuple

import torch

State = Dict[str, torch.Tensor]


class GreedyParameterAverage:
    """The running average A of the accepted checkpoints and its score s."""

    def __init__(self) -> None:
        self.total: Optional[State] = None  # sum of the accepted float tensors (float64: no drift)
        self.first: Optional[State] = None
        self.members: List[str] = []
        self.score: float = float("-inf")

    def _average_with(self, state: Optional[State]) -> State:
        count = len(self.members) + (state is not None)
        assert self.total is not None and self.first is not None
        averaged: State = {}
        for key, value in self.first.items():
            if value.is_floating_point():
                summed = self.total[key] + (state[key].double() if state is not None else 0.0)
                averaged[key] = (summed / count).to(value.dtype)
            else:
                averaged[key] = value.clone()
        return averaged

    def average(self) -> State:
        """The averaged parameters of the accepted checkpoints."""
        if self.total is None:
            raise ValueError("no checkpoint has joined the average yet")
        return self._average_with(None)

    def offer(self, name: str, state: State, evaluate: Callable[[State], float],
              own_score: Optional[float] = None) -> bool:
        """Add ``state`` if the average with it scores higher than the current average (the first
        checkpoint always joins, scored ``own_score`` when given, else evaluated); returns whether
        it joined."""
        state = {key: value.detach().cpu() for key, value in state.items()}
        if self.total is None:
            self.first = {key: value.clone() for key, value in state.items()}
            self.total = {key: value.double() for key, value in state.items() if value.is_floating_point()}
            self.members = [name]
            self.score = float(evaluate(state) if own_score is None else own_score)
            return True
        candidate = self._average_with(state)
        score = float(evaluate(candidate))
        if score <= self.score:
            return False
        for key in self.total:
            self.total[key] += state[key].double()
        self.members.append(name)
        self.score = score
        return True


def greedy_average(checkpoints: Iterable[Tuple[str, float, Callable[[], State]]],
                   evaluate: Callable[[State], float]) -> GreedyParameterAverage:
    """GPA over ``(name, own validation score, loader of its parameters)``: offered best first."""
    average = GreedyParameterAverage()
    for name, score, load in sorted(checkpoints, key=lambda c: -c[1]):
        average.offer(name, load(), evaluate, own_score=score)
    return average
