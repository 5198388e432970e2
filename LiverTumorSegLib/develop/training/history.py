"""The training history a model card states in ``trained_on``: one flat list of rounds, newest
first ("Round 3: ... Round 2: ... Round 1: ... Held out: ..."), each round saying its data, steps
and the weights it was fine-tuned from. Older cards nested each earlier round in parentheses
("..., fine-tuned from NAME SHA (which had: ...)"); they are read too, and rewritten flat."""

from __future__ import annotations

import re
from typing import List, Optional

from ...models.card import ModelCard

HELD_OUT_MARK = ". Held out: "
# "Round 3: ..." and a heading written by hand, "Round 14 (the round-12 weights again): ...", whose
# note stays with its round's text.
_ROUND = re.compile(r"(?:^|(?<=\.) )Round \d+(?:: | (?=\())")
_NESTED = re.compile(r"^(?P<head>.*?), fine-tuned from (?P<name>\S+) (?P<sha>[0-9a-f]{12}) \(which had: (?P<rest>.*)\)$",
                     re.S)


def training_rounds(trained_on: str) -> List[str]:
    """The rounds that ``trained_on`` describes, oldest first, without the held-out sentence."""
    body = trained_on.split(HELD_OUT_MARK)[0].strip()
    if _ROUND.match(body):
        newest_first = [part.strip().rstrip(".") for part in _ROUND.split(body) if part.strip()]
        return newest_first[::-1]
    nested = _NESTED.match(body)
    if nested:
        latest = f"{nested['head']} (fine-tuned from {nested['name']} {nested['sha']})"
        return training_rounds(nested["rest"]) + [latest]
    return [body.rstrip(".")] if body else []


def render_history(rounds: List[str], held_out: str) -> str:
    """The flat ``trained_on`` text of ``rounds`` (oldest first), then the held-out sentence."""
    text = " ".join(f"Round {number}: {text}." for number, text in reversed(list(enumerate(rounds, 1))))
    return f"{text} Held out: {held_out}." if held_out else text


def describe_training(this_round: str, start: Optional[ModelCard], held_out: str) -> str:
    """``trained_on`` for a model trained as ``this_round``, fine-tuned from ``start``'s weights
    (None: from scratch): then the earlier rounds of ``start``, newest first."""
    rounds = training_rounds(start.trained_on) if start is not None else []
    if start is not None:
        this_round += f" (fine-tuned from {start.name} {start.weights_sha256[:12]})"
    return render_history(rounds + [this_round], held_out)
