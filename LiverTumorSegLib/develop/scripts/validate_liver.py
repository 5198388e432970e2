#!/usr/bin/env python
"""Compare liver models (the liver model and its refinement, as the pipeline runs them) on
VALIDATION data only, so a liver training round is chosen as cheaply as a tumour round.

Cases: phantoms of seeds 5002+ (abdomen views with the stomach, bowel, gallbladder and kidney
against the liver, as training draws them under seeds 0-149) with synthetic tumours of every kind,
each as the whole volume and as a 40 mm slab around its tumours (a scan covering part of the
liver: the sliding window repeats its edge slices). Never the held-out evaluation data (phantom
seeds 10000+, ts_dicom_upper_abdomen) nor chaos_ct_1 (the liver models' held-out expert case).

Per case: liver Dice, the predicted liver more than 3 mm outside the reference (spill into a
neighbour) and the share of the reference tumour inside the predicted liver (the tumour stage
searches only there: a large iso-dense lesion the liver stage leaves out is lost). Compared by
physical position. Prints one summary per model folder and writes them as JSON.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np
import SimpleITK as sitk

from LiverTumorSegLib.errors import LiverTumorSegError
from LiverTumorSegLib.metrics import dice, leak_beyond_ml, on_grid_of
from LiverTumorSegLib.develop.render import save_overlay
from LiverTumorSegLib.models.registry import ModelRegistry, embedded_models_dir
from LiverTumorSegLib.pipeline import Pipeline, PipelineSettings
from LiverTumorSegLib.develop.synth.shared_cases import (SLAB_MM, VALIDATION_PHANTOM_SEED,
                                                         VALIDATION_PHANTOM_SPACINGS, phantom_with_tumor_kind,
                                                         slab_around_tumours)
from LiverTumorSegLib.develop.synth.tumors import TUMOR_KINDS

log = logging.getLogger("validate_liver")

Case = Tuple[str, str, sitk.Image, sitk.Image]  # name, group, CT, labels 0/1/2


def validation_cases(count: int, slabs: bool = True) -> List[Case]:
    """``count`` validation phantoms, each kind of tumour in turn, whole and (``slabs``) as a slab."""
    cases: List[Case] = []
    kinds = list(TUMOR_KINDS)
    for index in range(count):
        seed, kind = VALIDATION_PHANTOM_SEED + index, kinds[index % len(kinds)]
        ct, labels, _ = phantom_with_tumor_kind(seed, kind, VALIDATION_PHANTOM_SPACINGS[index % 2])
        cases.append((f"phantom-{seed}+{kind}", "whole volume", ct, labels))
        if slabs:
            slab_ct, slab_labels = slab_around_tumours(ct, labels)
            cases.append((f"phantom-{seed}+{kind} {SLAB_MM:g} mm slab", f"{SLAB_MM:g} mm slab", slab_ct, slab_labels))
    return cases


def score_case(pipeline: Pipeline, case: Case, overlay: Optional[Path] = None) -> Dict[str, object]:
    """Liver Dice, spill beyond 3 mm (mL) and the share of the reference tumour inside the liver;
    with ``overlay``, a PNG there of the predicted liver (orange) over the reference liver (blue,
    tumours included), through the slices where they disagree most."""
    name, group, ct, labels = case
    try:
        liver = pipeline.liver_mask(ct)
    except LiverTumorSegError as exc:  # no liver found: a miss, scored as one
        log.warning("%s: %s", name, exc)
        liver = np.zeros(sitk.GetArrayViewFromImage(ct).shape, np.uint8)
    liver_image = sitk.GetImageFromArray(liver)
    liver_image.CopyInformation(ct)
    reference = on_grid_of(labels, liver_image)
    predicted = liver > 0
    tumour = reference == 2
    row = {"case": name, "group": group, "liver_dice": round(dice(predicted, reference > 0), 4),
           "leak_beyond_3mm_ml": round(leak_beyond_ml(predicted, reference > 0, ct.GetSpacing()[::-1], 3.0), 1)}
    if overlay is not None:
        whole_reference = sitk.GetImageFromArray((reference > 0).astype(np.uint8))
        whole_reference.CopyInformation(liver_image)
        save_overlay(ct, liver_image, overlay, whole_reference)
    if tumour.any():
        row["tumour_inside_liver"] = round(float(np.count_nonzero(predicted & tumour) / np.count_nonzero(tumour)), 3)
    return row


def summarize(rows: Sequence[Dict[str, object]]) -> Dict[str, Dict[str, object]]:
    """Per group: mean and minimum liver Dice, mean and maximum spill, mean and minimum tumour kept."""
    summary: Dict[str, Dict[str, object]] = {}
    for group in sorted({str(r["group"]) for r in rows}):
        of_group = [r for r in rows if r["group"] == group]
        dices = [float(r["liver_dice"]) for r in of_group]
        leaks = [float(r["leak_beyond_3mm_ml"]) for r in of_group]
        kept = [float(r["tumour_inside_liver"]) for r in of_group if "tumour_inside_liver" in r]
        summary[group] = {"cases": len(of_group), "liver_dice_mean": round(float(np.mean(dices)), 4),
                          "liver_dice_min": round(min(dices), 4),
                          "leak_beyond_3mm_ml_mean": round(float(np.mean(leaks)), 1),
                          "leak_beyond_3mm_ml_max": round(max(leaks), 1),
                          "tumour_inside_liver_mean": round(float(np.mean(kept)), 3) if kept else None,
                          "tumour_inside_liver_min": round(min(kept), 3) if kept else None}
    return summary


def pipeline_for(models: Path, liver_threshold: float = PipelineSettings.liver_threshold) -> Pipeline:
    """The pipeline with ``models``' liver cards (the embedded folder supplies what it lacks), its
    liver stage and refinement cut at ``liver_threshold``."""
    return Pipeline(PipelineSettings(device="cpu", liver_threshold=liver_threshold),
                    ModelRegistry([models, embedded_models_dir()]))


def _safe_name(text: str) -> str:
    """``text`` as one file name: path separators, spaces and '@' replaced."""
    return "".join(c if c.isalnum() or c in "+-_." else "_" for c in text).strip("._") or "models"


def parse_thresholds(text: str) -> List[float]:
    """``--liver-thresholds``: comma-separated probabilities in (0, 1)."""
    try:
        thresholds = [float(item) for item in text.split(",") if item.strip()]
    except ValueError:
        raise SystemExit(f"error: --liver-thresholds: '{text}' is not a comma-separated list of numbers") from None
    if not thresholds or any(not 0.0 < t < 1.0 for t in thresholds):
        raise SystemExit(f"error: --liver-thresholds: '{text}': give probabilities between 0 and 1")
    return thresholds


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("models", nargs="*", type=Path, default=[embedded_models_dir()],
                        help="model folders with liver-demo.json (and its refinement card); default: the embedded")
    parser.add_argument("--phantoms", type=int, default=14, help="validation phantoms (seeds 5002 on)")
    parser.add_argument("--no-slabs", action="store_true", help="whole volumes only")
    parser.add_argument("--liver-thresholds", default=f"{PipelineSettings.liver_threshold:g}",
                        help="probabilities at which the liver stage and its refinement are cut, comma-separated; "
                             "each folder is scored at each (default: the pipeline's)")
    parser.add_argument("--out", type=Path, default=None, help="write the per-case rows and summaries here (JSON)")
    parser.add_argument("--overlays", type=Path, default=None, metavar="DIR",
                        help="write each case's overlay (predicted liver orange, reference blue, through the "
                             "slices where they disagree most) to DIR/<folder>/<case>.png")
    args = parser.parse_args(argv)
    thresholds = parse_thresholds(args.liver_thresholds)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    cases = validation_cases(args.phantoms, slabs=not args.no_slabs)
    report = {}
    for models in args.models:
        for threshold in thresholds:
            label = str(models) if len(thresholds) == 1 else f"{models} @ liver threshold {threshold:g}"
            pipeline = pipeline_for(models, threshold)
            pictures = args.overlays / _safe_name(label) if args.overlays is not None else None
            rows = [score_case(pipeline, case, pictures / f"{_safe_name(case[0])}.png" if pictures else None)
                    for case in cases]
            for row in rows:
                log.info("%s: %s", label, row)
            report[label] = {"summary": summarize(rows), "cases": rows}
            print(f"{label}:")
            for group, values in report[label]["summary"].items():
                print(f"  {group}: {json.dumps(values)}")
    if args.out is not None:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(report, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
