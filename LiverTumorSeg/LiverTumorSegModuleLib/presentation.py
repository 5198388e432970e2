"""Text the panel shows: the results table cells, a model card summary and the model combo boxes
(pure Python)."""

from __future__ import annotations

import html
import math
from dataclasses import dataclass
from typing import Any, Dict, Iterable, List, Tuple

from . import mrml

RESULT_HEADERS = ["", "Volume (mL)", "TLVR / % of liver", "Longest axial diameter (mm)", "Mean HU"]
ROW_LABELS = {mrml.LIVER_ROW: "Liver (tumor included)", mrml.TUMOR_ROW: "Liver tumor (all lesions)"}


def _number(value: Any, digits: int) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return ""
    return f"{value:.{digits}f}"


def results_display_rows(rows: List[Dict[str, Any]]) -> List[List[str]]:
    """Cells of the panel's results table (``RESULT_HEADERS`` columns), one list per table row, in
    the order of the measurements table (so a clicked row is that table's row). Missing or NaN
    values (not applicable) are shown empty."""
    cells = []
    for row in rows:
        label = ROW_LABELS.get(row[mrml.COLUMN_STRUCTURE], row[mrml.COLUMN_STRUCTURE])
        cells.append([label, _number(row.get(mrml.COLUMN_VOLUME), 2), _number(row.get(mrml.COLUMN_TLVR), 2),
                      _number(row.get(mrml.COLUMN_DIAMETER), 1), _number(row.get(mrml.COLUMN_MEAN_HU), 0)])
    return cells


def _metric_text(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.3f}"
    if isinstance(value, dict) and isinstance(value.get("mean"), (int, float)):
        return f"{float(value['mean']):.3f}"
    text = str(value)
    return text if len(text) <= 40 else text[:37] + "..."


def card_summary_html(card: Dict[str, Any]) -> str:
    """A model card in a few lines of rich text; non-clinical models say so."""
    esc = html.escape
    lines = [f"<b>{esc(str(card.get('name', '?')))}</b> {esc(str(card.get('version', '')))} "
             f"({esc(str(card.get('task', '?')))})"]
    if card.get("description"):
        lines.append(esc(str(card["description"])))
    if card.get("trained_on"):
        lines.append(f"Trained on: {esc(str(card['trained_on']))}")
    metrics = card.get("metrics")
    if isinstance(metrics, dict) and metrics:
        shown = ", ".join(f"{esc(str(k))} {esc(_metric_text(v))}" for k, v in list(metrics.items())[:4])
        lines.append(f"Measured: {shown}")
    members = card.get("members")
    if members:
        names = [f"{m.get('model', '?')} ×{m.get('weight', 1):g}" if isinstance(m, dict) else str(m)
                 for m in members]
        lines.append("Ensemble: " + esc(", ".join(names)))
    if card.get("non_clinical", True):
        lines.append("<span style='color:#c62828'><b>Not for clinical use.</b></span>")
    return "<br/>".join(lines)


# ----------------------------------------------------------------------------------------------
# Model combo boxes

MODELS_UNKNOWN = "unknown"  # not listed (yet), or listing failed: which models exist is not known
MODELS_LISTED = "listed"


@dataclass(frozen=True)
class ModelChoice:
    """One item of a model combo box: shown ``text``, the model ``name`` it stands for ("" = the
    library's default model), and whether that model is known to be installed."""

    text: str
    name: str
    tooltip: str = ""
    installed: bool = True


def model_combo_items(task: str, cards: Iterable[Dict[str, Any]], state: str, chosen: str,
                      default_name: str) -> Tuple[List[ModelChoice], int]:
    """The items of the ``task`` ("liver" or "tumor") model combo box and the index to show.

    The default model, the listed models of that task, and the ``chosen`` model (saved in the
    scene) even when it is not in the list: when the models could not be listed it is shown as
    "not verified", when the list does not have it as "not installed". So the box always shows the
    model Segment will use, and selecting an item never replaces a saved choice by one the user
    did not make.
    """
    items = [ModelChoice(f"default ({default_name})", "", "The library's default model")]
    names = []
    if state == MODELS_LISTED:
        names = [str(card.get("name", "")) for card in cards if card.get("task") == task and card.get("name")]
        items += [ModelChoice(name, name) for name in names]
    if chosen and chosen not in names:
        if chosen.endswith(".json"):  # a card file given through Python; the command line checks it
            items.append(ModelChoice(f"{chosen} (card file)", chosen, "A model card file"))
        elif state == MODELS_UNKNOWN:
            items.append(ModelChoice(f"{chosen} (not verified)", chosen,
                                     "The installed models could not be listed; the segmentation will report "
                                     "it if this model is missing"))
        else:
            items.append(ModelChoice(f"{chosen} (not installed)", chosen,
                                     f"The {task} model '{chosen}' chosen in this scene is not installed: choose "
                                     "another model, or import it (livertumorseg models import CARD.json)",
                                     installed=False))
    index = next(i for i, item in enumerate(items) if item.name == chosen) if chosen else 0
    return items, index


def missing_model_message(task: str, name: str) -> str:
    """Why Segment refuses a chosen model that is not installed."""
    return (f"The {task} model '{name}' chosen in this scene is not installed. Choose another {task} model "
            "(or 'default'), or import it first (livertumorseg models import CARD.json).")
