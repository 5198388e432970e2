#!/usr/bin/env python
"""Tune the tumor post-processing (probability threshold, minimum lesion volume) of the embedded
models on VALIDATION phantoms (seeds 5002+, the ones the ensemble weights are fitted on), never
on the held-out evaluation data (phantom seeds 10000+, ts_dicom_upper_abdomen).

Prints the mean tumor Dice per case and the false-positive lesions for each setting.
"""

from __future__ import annotations

import argparse
import itertools
import json
import sys
from pathlib import Path

import numpy as np
import SimpleITK as sitk

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from LiverTumorSegLib.metrics import dice, lesion_detection  # noqa: E402
from LiverTumorSegLib.models.registry import ModelRegistry  # noqa: E402
from LiverTumorSegLib.pipeline import Pipeline, PipelineSettings  # noqa: E402
from LiverTumorSegLib.synth.phantom import make_phantom  # noqa: E402


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", type=Path, default=ROOT / "Resources" / "Models")
    parser.add_argument("--phantoms", type=int, default=8)
    parser.add_argument("--thresholds", default="0.4,0.5,0.6")
    parser.add_argument("--min-lesion-ml", default="0.05,0.1,0.2")
    args = parser.parse_args()
    registry = ModelRegistry([args.models])
    phantoms = []
    for i in range(args.phantoms):
        ph = make_phantom(5002 + i, spacing=(1.0, 1.0, 2.5) if i % 2 else (0.8, 0.8, 1.5), n_tumors=(1, 4))
        phantoms.append(ph)
    results = {}
    for threshold, min_ml in itertools.product(map(float, args.thresholds.split(",")),
                                               map(float, args.min_lesion_ml.split(","))):
        pipeline = Pipeline(PipelineSettings(device="cpu", tumor_threshold=threshold, min_lesion_ml=min_ml), registry)
        scores, false_positives = [], 0
        for ph in phantoms:
            result = pipeline.run(ph.ct)
            pred = sitk.GetArrayViewFromImage(result.labelmap) == 2
            ref = sitk.GetArrayViewFromImage(ph.labels) == 2
            scores.append(dice(pred, ref))
            false_positives += lesion_detection(pred, ref, float(np.prod(ph.ct.GetSpacing())))["false_positives"]
        key = f"threshold {threshold:g}, min lesion {min_ml:g} mL"
        results[key] = {"tumor_dpc_mean": round(float(np.mean(scores)), 4), "false_positive_lesions": false_positives,
                        "per_case": [round(s, 3) for s in scores]}
        print(key, json.dumps(results[key]), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
