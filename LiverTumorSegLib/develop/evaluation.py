"""Evaluation of the whole pipeline on a labelled dataset (``livertumorseg evaluate``), reported as
the liver-tumour papers and the LiTS challenge report it.

Per case and structure (liver = labels 1 and 2, tumour = label 2), with the reference resampled
onto the prediction's grid by physical position (nearest neighbour) and only the voxels whose
label is known (not ``IGNORE_LABEL``) counted; P the predicted mask, R the reference:

    Dice = 2|P∩R| / (|P| + |R|)                                  (1 when both are empty)
    HD95 = max(P95_{p∈∂P} d(p, ∂R), P95_{r∈∂R} d(r, ∂P))         mm
    ASSD = (Σ_{p∈∂P} d(p, ∂R) + Σ_{r∈∂R} d(r, ∂P)) / (|∂P| + |∂R|)  mm

∂M: the voxels of M with a 6-neighbour outside M; d: Euclidean distance in mm; HD95 and ASSD are
undefined (NaN) when P or R is empty. A structure a case's labels do not annotate is not scored.

Over the cases: the mean Dice per case with a percentile-bootstrap 95 % CI, the global Dice
2ΣTP / Σ(|P| + |R|) over every voxel of every case (LiTS' "Dice global"), mean HD95 and ASSD with
their CIs; lesion-wise recall (reference lesions any predicted voxel touches) and precision
(predicted lesions that touch a reference lesion) by the lesion's equivalent-sphere diameter:
< 10, 10-20 and > 20 mm.
"""

from __future__ import annotations

import csv
import json
import logging
import math
import time
import warnings
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

import numpy as np
import SimpleITK as sitk

from .. import LIVER_LABEL, TUMOR_LABEL
from ..errors import CancelledError, LiverTumorSegError
from ..metrics import dice, lesion_detection, on_grid_of
from .training.cases import TrainingCase, read_validation_ids
from .training.mixed_labels import IGNORE_LABEL, AnnotatedStructures

log = logging.getLogger(__name__)

STRUCTURES = ("liver", "tumor")
SIZE_BINS: Tuple[Tuple[str, float, float], ...] = (("<10 mm", 0.0, 10.0), ("10-20 mm", 10.0, 20.0),
                                                   (">20 mm", 20.0, math.inf))
OUTPUT_FILES = {"report": "evaluation.json", "cases": "evaluation_cases.csv", "lesions": "evaluation_lesions.csv",
                "plot": "evaluation.png"}
CASE_COLUMNS = ["case", "liver_dice", "liver_hd95_mm", "liver_assd_mm", "liver_reference_ml", "liver_predicted_ml",
                "tumor_dice", "tumor_hd95_mm", "tumor_assd_mm", "tumor_reference_ml", "tumor_predicted_ml",
                "reference_lesions", "detected_lesions", "predicted_lesions", "false_positive_lesions", "seconds",
                "error"]


# ---------------------------------------------------------------------------------------------
# Metrics
# ---------------------------------------------------------------------------------------------

def surface_distances_mm(prediction: np.ndarray, reference: np.ndarray,
                         spacing_kji: Sequence[float]) -> Tuple[float, float]:
    """(HD95, ASSD) in mm of two binary masks on one grid (MONAI's surface distances, see the
    module docstring); (NaN, NaN) when either mask is empty."""
    import torch
    from monai.metrics import compute_average_surface_distance, compute_hausdorff_distance

    p, r = np.asarray(prediction, bool), np.asarray(reference, bool)
    if not p.any() or not r.any():
        return float("nan"), float("nan")
    pt, rt = (torch.from_numpy(m[None, None].astype(np.float32)) for m in (p, r))
    spacing = tuple(float(s) for s in spacing_kji)
    with warnings.catch_warnings():  # MONAI's deprecation notice of an argument it passes itself
        warnings.simplefilter("ignore", FutureWarning)
        hd95 = compute_hausdorff_distance(pt, rt, include_background=True, percentile=95, spacing=spacing)
        assd = compute_average_surface_distance(pt, rt, include_background=True, symmetric=True, spacing=spacing)
    return float(hd95.item()), float(assd.item())


def bootstrap_ci(values: Sequence[float], resamples: int = 2000, level: float = 0.95,
                 seed: int = 0) -> Tuple[float, float]:
    """Percentile-bootstrap CI of the mean: ``resamples`` draws of n values with replacement, the
    mean of each, and their (1 - level)/2 and (1 + level)/2 quantiles. NaN values are left out;
    (NaN, NaN) when none remain."""
    x = np.asarray([v for v in values if v is not None and not math.isnan(v)], dtype=np.float64)
    if len(x) == 0:
        return float("nan"), float("nan")
    rng = np.random.default_rng(seed)
    means = x[rng.integers(0, len(x), size=(resamples, len(x)))].mean(axis=1)
    low, high = np.quantile(means, [(1 - level) / 2, (1 + level) / 2])
    return float(low), float(high)


def size_bin(diameter_mm: float) -> str:
    """The SIZE_BINS name of a lesion of this equivalent-sphere diameter."""
    for name, low, high in SIZE_BINS:
        if low <= diameter_mm < high:
            return name
    raise ValueError(f"no size bin for {diameter_mm} mm")


def structure_metrics(prediction: np.ndarray, reference: np.ndarray, spacing_kji: Sequence[float]) -> Dict[str, Any]:
    """Dice, HD95, ASSD and the voxel counts (for the global Dice) of one structure of one case."""
    p, r = np.asarray(prediction, bool), np.asarray(reference, bool)
    hd95, assd = surface_distances_mm(p, r, spacing_kji)
    voxel_ml = float(np.prod(spacing_kji)) / 1000.0
    intersection, predicted, referenced = int(np.count_nonzero(p & r)), int(p.sum()), int(r.sum())
    return {"dice": dice(p, r), "hd95_mm": hd95, "assd_mm": assd, "intersection_voxels": intersection,
            "predicted_voxels": predicted, "reference_voxels": referenced,
            "predicted_ml": predicted * voxel_ml, "reference_ml": referenced * voxel_ml}


def evaluate_labels(predicted: np.ndarray, reference: np.ndarray, spacing_kji: Sequence[float],
                    structures: AnnotatedStructures = AnnotatedStructures()) -> Dict[str, Any]:
    """The scores of one case: labelmaps (0/1/2; the reference may hold IGNORE_LABEL) on one grid.
    Returns ``{"liver": metrics or None, "tumor": metrics or None, "lesions": detection or None}``
    (None for a structure the labels do not annotate)."""
    predicted, reference = np.asarray(predicted), np.asarray(reference)
    known = reference != IGNORE_LABEL
    scores: Dict[str, Any] = {"liver": None, "tumor": None, "lesions": None}
    if structures.liver:
        scores["liver"] = structure_metrics((predicted > 0) & known,
                                            ((reference == LIVER_LABEL) | (reference == TUMOR_LABEL)) & known,
                                            spacing_kji)
    if structures.tumor:
        p, r = (predicted == TUMOR_LABEL) & known, (reference == TUMOR_LABEL) & known
        scores["tumor"] = structure_metrics(p, r, spacing_kji)
        scores["lesions"] = lesion_detection(p, r, float(np.prod(spacing_kji)))
    return scores


# ---------------------------------------------------------------------------------------------
# Summary over cases
# ---------------------------------------------------------------------------------------------

def _rounded(value: float, digits: int = 4) -> Optional[float]:
    return None if value is None or math.isnan(value) else round(float(value), digits)


def _mean_with_ci(values: Sequence[float], resamples: int, seed: int) -> Dict[str, Any]:
    kept = [v for v in values if not math.isnan(v)]
    low, high = bootstrap_ci(kept, resamples, seed=seed)
    return {"mean": _rounded(float(np.mean(kept))) if kept else None, "ci95": [_rounded(low), _rounded(high)],
            "median": _rounded(float(np.median(kept))) if kept else None, "cases": len(kept)}


def lesion_table(cases: Sequence[Dict[str, Any]]) -> Dict[str, Dict[str, Any]]:
    """Lesion-wise recall and precision per size bin and over all sizes, pooled over the cases."""
    table: Dict[str, Dict[str, Any]] = {}
    for name, low, high in SIZE_BINS + (("all", 0.0, math.inf),):
        reference = [l for c in cases if c.get("lesions") for l in c["lesions"]["reference"]
                     if low <= l["diameter_mm"] < high]
        predicted = [l for c in cases if c.get("lesions") for l in c["lesions"]["predicted"]
                     if low <= l["diameter_mm"] < high]
        detected = sum(l["detected"] for l in reference)
        true_positive = sum(l["true_positive"] for l in predicted)
        table[name] = {"reference": len(reference), "detected": detected,
                       "recall": _rounded(detected / len(reference)) if reference else None,
                       "predicted": len(predicted), "true_positive": true_positive,
                       "precision": _rounded(true_positive / len(predicted)) if predicted else None}
    return table


def summarize(cases: Sequence[Dict[str, Any]], resamples: int = 2000, seed: int = 0) -> Dict[str, Any]:
    """Per structure: Dice per case (mean, bootstrap 95 % CI, median), global Dice, HD95 and ASSD
    (mean, CI); for the tumour also the Dice per case over the cases with a reference tumour; the
    lesion table; the cases the pipeline failed on."""
    summary: Dict[str, Any] = {"cases": len(cases), "failed_cases": [c["case"] for c in cases if c.get("error")]}
    for structure in STRUCTURES:
        scored = [c[structure] for c in cases if c.get(structure) is not None]
        if not scored:
            summary[structure] = None
            continue
        overlap = sum(s["predicted_voxels"] + s["reference_voxels"] for s in scored)
        entry = {"cases": len(scored),
                 "dice_per_case": _mean_with_ci([s["dice"] for s in scored], resamples, seed),
                 "dice_global": _rounded(2 * sum(s["intersection_voxels"] for s in scored) / overlap)
                 if overlap else 1.0,
                 "hd95_mm": _mean_with_ci([s["hd95_mm"] for s in scored], resamples, seed),
                 "assd_mm": _mean_with_ci([s["assd_mm"] for s in scored], resamples, seed)}
        if structure == "tumor":
            entry["dice_per_case_with_tumor"] = _mean_with_ci(
                [s["dice"] for s in scored if s["reference_voxels"] > 0], resamples, seed)
            entry["tumor_free_cases_with_false_tumor"] = sum(
                1 for s in scored if s["reference_voxels"] == 0 and s["predicted_voxels"] > 0)
        summary[structure] = entry
    summary["lesions"] = lesion_table(cases)
    return summary


# ---------------------------------------------------------------------------------------------
# Running the pipeline over a dataset
# ---------------------------------------------------------------------------------------------

def select_cases(cases: Sequence[TrainingCase], split_file: Optional[Path]) -> List[TrainingCase]:
    """Every case, or with ``split_file`` (a ``split.json`` written by ``train``) its validation cases."""
    if split_file is None:
        return list(cases)
    path = Path(split_file)
    wanted = read_validation_ids(path)
    by_id = {c.case_id: c for c in cases}
    missing = [name for name in wanted if name not in by_id]
    if missing:
        raise LiverTumorSegError(f"--split {path} names {len(missing)} case(s) the data does not hold "
                                 f"({', '.join(map(str, missing[:3]))}); give the --data the split was made from")
    return [by_id[name] for name in wanted]


def check_outputs(output_dir: Path, force: bool) -> Dict[str, Path]:
    """The output paths; refuses (before any work) files that exist unless ``force``."""
    paths = {key: Path(output_dir) / name for key, name in OUTPUT_FILES.items()}
    if Path(output_dir).exists() and not Path(output_dir).is_dir():
        raise LiverTumorSegError(f"--output {output_dir} is a file, not a folder")
    existing = [p for p in paths.values() if p.exists()]
    if existing and not force:
        raise LiverTumorSegError(f"output {existing[0]} already exists; use --force to overwrite it or choose another "
                                 "--output folder")
    return paths


def evaluate_case(case: TrainingCase, pipeline: Any) -> Dict[str, Any]:
    """Run ``pipeline`` (a ``pipeline.Pipeline``) on the case's CT and score it against its labels.
    A case the pipeline gives up on (no liver found, out of memory) is scored as an empty
    prediction, with the reason in ``error``."""
    ct, reference = case.case.load()
    started = time.perf_counter()
    error = None
    try:
        labelmap = pipeline.run(ct).labelmap
    except CancelledError:
        raise
    except LiverTumorSegError as exc:
        error = str(exc)
        labelmap = sitk.Image(ct.GetSize(), sitk.sitkUInt8)
        labelmap.CopyInformation(ct)
    seconds = time.perf_counter() - started
    reference_on_grid = on_grid_of(reference, labelmap)
    scores = evaluate_labels(sitk.GetArrayViewFromImage(labelmap), reference_on_grid,
                             labelmap.GetSpacing()[::-1], case.structures)
    return dict(case=case.case_id, seconds=round(seconds, 2), error=error, **scores)


def case_row(case: Dict[str, Any]) -> Dict[str, Any]:
    """One row of evaluation_cases.csv (empty cells for what was not scored)."""
    row: Dict[str, Any] = {key: "" for key in CASE_COLUMNS}
    row.update(case=case["case"], seconds=case["seconds"], error=case.get("error") or "")
    for structure in STRUCTURES:
        scores = case.get(structure)
        if scores is None:
            continue
        for key in ("dice", "hd95_mm", "assd_mm"):
            value = _rounded(scores[key])
            row[f"{structure}_{key}"] = "" if value is None else value
        row[f"{structure}_reference_ml"] = round(scores["reference_ml"], 3)
        row[f"{structure}_predicted_ml"] = round(scores["predicted_ml"], 3)
    lesions = case.get("lesions")
    if lesions is not None:
        row.update(reference_lesions=len(lesions["reference"]),
                   detected_lesions=sum(l["detected"] for l in lesions["reference"]),
                   predicted_lesions=len(lesions["predicted"]), false_positive_lesions=lesions["false_positives"])
    return row


def _json_ready(value: Any) -> Any:
    """NaN -> None (JSON has no NaN), recursively."""
    if isinstance(value, float) and math.isnan(value):
        return None
    if isinstance(value, dict):
        return {k: _json_ready(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_json_ready(v) for v in value]
    return value


def write_evaluation(paths: Dict[str, Path], cases: Sequence[Dict[str, Any]], summary: Dict[str, Any],
                     settings: Dict[str, Any]) -> Dict[str, str]:
    """evaluation.json (settings, summary, cases), evaluation_cases.csv, evaluation_lesions.csv and,
    when matplotlib is installed, evaluation.png. Returns the paths written by key."""
    paths["report"].parent.mkdir(parents=True, exist_ok=True)
    with open(paths["cases"], "w", newline="", encoding="utf-8") as handle:
        writer = csv.DictWriter(handle, fieldnames=CASE_COLUMNS)
        writer.writeheader()
        writer.writerows(case_row(c) for c in cases)
    with open(paths["lesions"], "w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(["case", "kind", "diameter_mm", "size_bin", "found"])
        for case in cases:
            for kind, found in (("reference", "detected"), ("predicted", "true_positive")):
                for lesion in (case.get("lesions") or {}).get(kind, []):
                    writer.writerow([case["case"], kind, lesion["diameter_mm"], size_bin(lesion["diameter_mm"]),
                                     int(lesion[found])])
    written = {key: str(paths[key]) for key in ("report", "cases", "lesions")}
    try:
        plot_evaluation(cases, summary, paths["plot"])
        written["plot"] = str(paths["plot"])
    except ImportError:
        log.warning("no evaluation.png: the plot needs matplotlib (pip install 'LiverTumorSegLib[evaluate]')")
    report = {"settings": settings, "summary": summary, "cases": list(cases), "outputs": written}
    paths["report"].write_text(json.dumps(_json_ready(report), indent=2) + "\n", encoding="utf-8")
    return written


def plot_evaluation(cases: Sequence[Dict[str, Any]], summary: Dict[str, Any], path: Path) -> None:
    """Three panels: Dice per case (dots; mean and 95 % CI), HD95 per case, lesion recall and
    precision by size (bars, with the lesion counts)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    figure = Figure(figsize=(13, 4.2), dpi=110)
    FigureCanvasAgg(figure)
    axes = figure.subplots(1, 3)
    jitter = np.random.default_rng(0)
    for panel, (key, label) in zip(axes[:2], (("dice", "Dice per case"), ("hd95_mm", "HD95 per case (mm)"))):
        for x, structure in enumerate(STRUCTURES):
            values = [c[structure][key] for c in cases if c.get(structure) is not None
                      and not math.isnan(c[structure][key])]
            if not values:
                continue
            panel.scatter(x + jitter.uniform(-0.12, 0.12, len(values)), values, s=14, alpha=0.6)
            stats = summary[structure]["dice_per_case" if key == "dice" else key]
            low, high = stats["ci95"]
            if stats["mean"] is not None and low is not None:
                panel.errorbar([x + 0.3], [stats["mean"]], yerr=[[stats["mean"] - low], [high - stats["mean"]]],
                               fmt="o", color="black", capsize=4)
        panel.set_xticks(range(len(STRUCTURES)), [f"{s}\n(n={summary[s]['cases'] if summary[s] else 0})"
                                                  for s in STRUCTURES])
        panel.set_xlim(-0.5, len(STRUCTURES) - 0.3)
        panel.set_title(label + ("; black: mean, 95 % CI" if key == "dice" else ""), fontsize=9)
        if key == "dice":
            panel.set_ylim(-0.02, 1.02)
    bins = [name for name, _, _ in SIZE_BINS] + ["all"]
    table = summary["lesions"]
    positions = np.arange(len(bins))
    for offset, key, count_key in ((-0.2, "recall", "reference"), (0.2, "precision", "predicted")):
        heights = [table[b][key] if table[b][key] is not None else 0.0 for b in bins]
        bars = axes[2].bar(positions + offset, heights, width=0.38, label=key)
        for bar, b in zip(bars, bins):
            axes[2].annotate(f"n={table[b][count_key]}", (bar.get_x() + bar.get_width() / 2, bar.get_height()),
                             ha="center", va="bottom", fontsize=7)
    axes[2].set_xticks(positions, bins)
    axes[2].set_ylim(0, 1.12)
    axes[2].legend(fontsize=8, loc="lower right")
    axes[2].set_title("Lesion recall / precision by diameter", fontsize=9)
    figure.tight_layout()
    figure.savefig(str(path))


def run_evaluation(cases: Sequence[TrainingCase], pipeline: Any,
                   on_case: Optional[Callable[[int, int, Dict[str, Any]], None]] = None) -> List[Dict[str, Any]]:
    """Every case through the pipeline and scored; ``on_case(index, total, scores)`` after each."""
    results = []
    for index, case in enumerate(cases):
        results.append(evaluate_case(case, pipeline))
        if on_case is not None:
            on_case(index, len(cases), results[-1])
    return results
