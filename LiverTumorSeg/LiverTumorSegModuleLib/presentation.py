"""Text the panel shows: the results table cells and a model card summary (pure Python)."""

from __future__ import annotations

import html
import math
from typing import Any, Dict, List

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
