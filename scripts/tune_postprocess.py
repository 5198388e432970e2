#!/usr/bin/env python
"""Tune the tumor post-processing (seed and grow thresholds, minimum lesion volume) of the
embedded models on VALIDATION data only: phantoms of seeds 5002+ (the ones the ensemble
weights are fitted on) and the real training liver ts_upper_abdomen_3mm with synthetic tumours
of every kind under other seeds; never on the held-out evaluation data (phantom seeds 10000+,
ts_dicom_upper_abdomen, real-liver tumour seeds 9000+).

The models run once per case (Pipeline.tumor_evidence); each setting only re-runs the
post-processing (Pipeline.finish). Prints the mean tumor Dice per case, per tumour kind, the
lesions >= 10 mm found and the false-positive lesions of each setting, best first.
"""

from __future__ import annotations

import argparse
import itertools
import json
import sys
from dataclasses import replace
from pathlib import Path

import numpy as np
import SimpleITK as sitk

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from LiverTumorSegLib.io.volume import load_volume  # noqa: E402
from LiverTumorSegLib.metrics import dice, lesion_detection, on_grid_of  # noqa: E402
from LiverTumorSegLib.models.registry import ModelRegistry  # noqa: E402
from LiverTumorSegLib.pipeline import Pipeline, PipelineSettings  # noqa: E402
from LiverTumorSegLib.synth.phantom import make_phantom  # noqa: E402
from LiverTumorSegLib.synth.tumors import TUMOR_KINDS, insert_tumor_kind  # noqa: E402

SHARED = ROOT.parent / "shared" / "data"


def validation_cases(n_phantoms: int, kinds: list) -> list:
    """(name, tumour kind, CT, labels) of the validation cases."""
    cases = []
    for i in range(n_phantoms):
        seed, kind = 5002 + i, kinds[i % len(kinds)]
        ph = make_phantom(seed, spacing=(1.0, 1.0, 2.5) if i % 2 else (0.8, 0.8, 1.5), n_tumors=0)
        ct, labels, _ = insert_tumor_kind(ph.ct, sitk.Cast(ph.labels > 0, sitk.sitkUInt8), seed=seed, kind=kind)
        cases.append((f"phantom-{seed}", kind, ct, labels))
    folder = SHARED / "ts_upper_abdomen_3mm"
    if folder.exists():
        ct = sitk.Cast(load_volume(folder / "ct.nii.gz").image, sitk.sitkFloat32)
        liver = sitk.ReadImage(str(folder / "liver_reference.nii.gz"), sitk.sitkUInt8)
        liver.CopyInformation(ct)
        for index, kind in enumerate(kinds):
            seed = 20000 + index  # tumours the training never drew
            ct_t, labels_t, _ = insert_tumor_kind(ct, liver, seed=seed, kind=kind)
            cases.append((f"ts_upper+{kind}-{seed}", kind, ct_t, labels_t))
        cases.append(("ts_upper (tumour-free)", "none", ct, sitk.Cast(liver, sitk.sitkUInt8)))
    return cases


def score(pipeline: Pipeline, evidences: list, settings: PipelineSettings) -> dict:
    per_kind: dict = {}
    found, false_positives, free_ml = [], 0, 0.0
    for (name, kind, ct, labels), evidence in evidences:
        result = pipeline.finish(ct, evidence, settings)
        pred = sitk.GetArrayViewFromImage(result.labelmap) == 2
        ref = on_grid_of(labels, result.labelmap) == 2
        voxel_mm3 = float(np.prod(ct.GetSpacing()))
        if kind == "none":
            free_ml += float(pred.sum()) * voxel_mm3 / 1000.0
            continue
        per_kind.setdefault(kind, []).append(dice(pred, ref))
        detection = lesion_detection(pred, ref, voxel_mm3)
        found += [lesion["detected"] for lesion in detection["reference"] if lesion["diameter_mm"] >= 10.0]
        false_positives += detection["false_positives"]
    all_scores = [v for values in per_kind.values() for v in values]
    return {"tumor_dpc_mean": round(float(np.mean(all_scores)), 4),
            "worst_kind": round(min(float(np.mean(v)) for v in per_kind.values()), 4),
            "per_kind": {k: round(float(np.mean(v)), 3) for k, v in sorted(per_kind.items())},
            "lesions_ge_10mm_found": f"{sum(found)}/{len(found)}", "false_positive_lesions": false_positives,
            "tumor_ml_on_tumour_free_liver": round(free_ml, 2)}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", type=Path, default=ROOT / "Resources" / "Models")
    parser.add_argument("--phantoms", type=int, default=7)
    parser.add_argument("--thresholds", default="0.4,0.5")
    parser.add_argument("--grow-thresholds", default="none,0.3,0.2", help="'none' for no hysteresis")
    parser.add_argument("--min-lesion-ml", default="0.05,0.2")
    args = parser.parse_args()
    pipeline = Pipeline(PipelineSettings(device="cpu"), ModelRegistry([args.models]))
    cases = validation_cases(args.phantoms, list(TUMOR_KINDS))
    evidences = [(case, pipeline.tumor_evidence(case[2])) for case in cases]
    results = {}
    for threshold, grow, min_ml in itertools.product(
            map(float, args.thresholds.split(",")),
            [None if g == "none" else float(g) for g in args.grow_thresholds.split(",")],
            map(float, args.min_lesion_ml.split(","))):
        settings = replace(pipeline.settings, tumor_threshold=threshold, tumor_grow_threshold=grow,
                           min_lesion_ml=min_ml)
        key = f"threshold {threshold:g}, grow {grow}, min lesion {min_ml:g} mL"
        results[key] = score(pipeline, evidences, settings)
        print(key, json.dumps(results[key]), flush=True)
    print("\nbest first (mean tumor Dice per case):")
    for key, value in sorted(results.items(), key=lambda kv: -kv[1]["tumor_dpc_mean"]):
        print(f"  {value['tumor_dpc_mean']:.4f} worst kind {value['worst_kind']:.3f}  {key}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
