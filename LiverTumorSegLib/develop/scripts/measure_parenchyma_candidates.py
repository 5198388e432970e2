#!/usr/bin/env python
"""Measure the parenchyma prior (LiverTumorSegLib.stages.parenchyma) against the tumor ensemble
alone, on VALIDATION data only: the real CTs ts_upper_abdomen_3mm and chaos_ct_1 with synthetic
tumours of each kind inserted (seeds 71000+), and the tumour-free real livers ts_upper_abdomen_3mm,
chaos_ct_1 and ts_abdomen_3mm for false positives. Never ts_dicom_upper_abdomen, never phantom
seeds >= 9000 (held out for evaluate_embedded.py).

Two steps, so the map's numbers can be tuned without running the models again:

  cache     runs the pipeline's own stages (liver, crop, liver refinement, tumor ensemble, tumor
            search region) per case and stores the crop, region, reference tumour and the
            ensemble's probability in --cache (npz);
  evaluate  post-processes (as pipeline.py does) the model alone, the map alone and the combined
            probabilities (variants below) and prints tumour Dice per case, lesion detection
            (>= 10 mm) and false-positive mL, per tumour kind;
  render    writes PNG overlays (model alone | combined | map) of some cases under --png.

    nice .venv/bin/python scripts/measure_parenchyma_candidates.py cache --seeds 2
    nice .venv/bin/python scripts/measure_parenchyma_candidates.py evaluate --json /tmp/parenchyma.json
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from dataclasses import asdict, replace
from pathlib import Path
from typing import Dict, List, Tuple

import numpy as np
import SimpleITK as sitk

from LiverTumorSegLib.develop.synth.shared_cases import load_shared_case, shared_data_dir
from LiverTumorSegLib.metrics import lesion_detection
from LiverTumorSegLib.postprocess.active_contour import refine_lesions
from LiverTumorSegLib.postprocess.cleanup import remove_small_lesions, tumor_inside_liver
from LiverTumorSegLib.postprocess.interslice import interslice_consistency
from LiverTumorSegLib.stages.parenchyma import (ParenchymaPrior, combine_with_model,
                                                parenchyma_candidates)
from LiverTumorSegLib.develop.scripts import checkout_root

ROOT = checkout_root()
# Validation CTs: (name, CT path, reference liver path or None). Held-out ts_dicom_upper_abdomen is absent on purpose.
SHARED = shared_data_dir(ROOT)
TUMOR_CTS = ["ts_upper_abdomen_3mm", "chaos_ct_1"]  # shared cases (synth.shared_cases)
FREE_CTS = TUMOR_CTS + ["ts_abdomen_3mm"]
SEED_BASE = 71000  # validation insertion seeds; evaluate_embedded holds out 9000+ on the held-out CT
# Tumour kinds used when synth.tumors has no TUMOR_KINDS yet (size range, count).
FALLBACK_KINDS = {"large": ((50.0, 120.0), 1), "medium": ((15.0, 40.0), 3), "small": ((5.0, 12.0), 4)}


def tumour_kinds() -> List[str]:
    try:
        from LiverTumorSegLib.develop.synth.tumors import TUMOR_KINDS
        return list(TUMOR_KINDS)
    except ImportError:
        return list(FALLBACK_KINDS)


def insert(ct: sitk.Image, liver: sitk.Image, seed: int, kind: str) -> Tuple[sitk.Image, sitk.Image, List[dict]]:
    try:
        from LiverTumorSegLib.develop.synth.tumors import insert_tumor_kind
        return insert_tumor_kind(ct, liver, seed=seed, kind=kind)
    except ImportError:
        from LiverTumorSegLib.develop.synth.tumors import insert_tumors_image
        size, count = FALLBACK_KINDS[kind]
        return insert_tumors_image(ct, liver, seed=seed, n_tumors=count, size_range_mm=size, hyper_fraction=0.0)


# --- cache: the pipeline's own stages -----------------------------------------------------------------

def run_stages(pipeline, ct: sitk.Image) -> Dict[str, np.ndarray]:
    """What the pipeline computes before post-processing (Pipeline.tumor_evidence), as arrays."""
    from LiverTumorSegLib.geometry import Geometry

    evidence = pipeline.tumor_evidence(ct)
    geometry = Geometry.of(ct)
    return {"hu": sitk.GetArrayFromImage(evidence.ct_crop).astype(np.int16),
            "region": evidence.region.astype(np.uint8), "probability": evidence.probability.astype(np.float16),
            "box": np.array([[b.start, b.stop] for b in evidence.box]),
            "spacing_kji": np.array(tuple(reversed(geometry.spacing))), "axial": np.array(geometry.axial_array_axis()),
            "liver_full_ml": np.array(float(evidence.liver.sum()) * geometry.voxel_volume_ml)}


def cache(args: argparse.Namespace) -> None:
    import torch
    from LiverTumorSegLib.pipeline import Pipeline, PipelineSettings
    torch.set_num_threads(args.threads)
    pipeline = Pipeline(PipelineSettings(device="cpu"))
    args.cache.mkdir(parents=True, exist_ok=True)
    kinds = args.kinds.split(",") if args.kinds else tumour_kinds()
    for name in FREE_CTS:
        ct, ref = load_shared_case(SHARED, name)
        jobs = [("free", 0)]
        if name in TUMOR_CTS:
            jobs += [(kind, SEED_BASE + 100 * k + i) for k, kind in enumerate(kinds) for i in range(args.seeds)]
        for kind, seed in jobs:
            out = args.cache / f"{name}__{kind}__{seed}.npz"
            if out.exists():
                continue
            start = time.perf_counter()
            if kind == "free":
                ct_case, tumor_full, infos = ct, np.zeros(sitk.GetArrayViewFromImage(ct).shape, np.uint8), []
            else:
                ct_case, labels, infos = insert(ct, ref, seed, kind)
                tumor_full = (sitk.GetArrayFromImage(labels) == 2).astype(np.uint8)
            data = run_stages(pipeline, ct_case)
            box = tuple(slice(int(a), int(b)) for a, b in data["box"])
            data["tumor"] = tumor_full[box]
            data["tumor_total"] = np.array(int(tumor_full.sum()))
            data["infos"] = np.array(json.dumps([{k: v for k, v in i.items() if k in
                                                  ("diameter_mm", "delta_hu", "volume_ml", "at_surface", "contrast")}
                                                 for i in infos]))
            np.savez_compressed(out, **data)
            print(f"{out.name}: {len(infos)} tumours, {tumor_full.sum()} voxels, "
                  f"{time.perf_counter() - start:.1f} s", flush=True)


# --- evaluate ---------------------------------------------------------------------------------------

def postprocess(probability: np.ndarray, region: np.ndarray, hu: np.ndarray, spacing_kji, axial: int,
                voxel_ml: float, settings) -> np.ndarray:
    """The pipeline's post-processing of the tumor probability (pipeline.py, 'postprocess')."""
    s = settings
    tumor = (probability >= s.tumor_threshold).astype(np.uint8)
    if s.tumor_inside_liver:
        tumor = tumor_inside_liver(tumor, region)
    if s.interslice:
        tumor = interslice_consistency(tumor, axial)
    if s.active_contour and tumor.any():
        tumor = refine_lesions(hu, tumor, region, spacing_kji, iterations=s.active_contour_iterations)
    if s.min_lesion_ml > 0:
        tumor = remove_small_lesions(tumor, voxel_ml, s.min_lesion_ml)
    if s.tumor_inside_liver:
        tumor = tumor_inside_liver(tumor, region)
    return tumor


# What is compared: the model alone, the map alone (its kept candidates at their map value) and
# combinations, each a set of ParenchymaPrior fields ("member": the map as an ensemble member of
# weight a, p' = (1 - a) p + a map inside kept candidates).
DEFAULT_VARIANTS = {
    "model": {}, "map": {},
    "floor 0.5 f2%": {"model_floor": 0.5, "min_support_fraction": 0.02},
    "floor 0.5 f5%": {"model_floor": 0.5, "min_support_fraction": 0.05},  # the default ParenchymaPrior
    "floor 0.5 any": {"model_floor": 0.5, "min_support_fraction": 0.0},
    "floor 0.2 any": {"model_floor": 0.2, "min_support_fraction": 0.0},
    "f2% reach 15 mm": {"model_floor": 0.5, "min_support_fraction": 0.02, "reach_mm": 15.0},
    "member a=0.5": {"member": 0.5},
}


def probabilities(p: np.ndarray, hu: np.ndarray, region: np.ndarray, spacing_kji, prior: ParenchymaPrior,
                  names: Dict[str, dict]) -> Tuple[Dict[str, np.ndarray], np.ndarray, object]:
    """The tumor probability of each variant, computed as apply_parenchyma_prior does."""
    hypo, label_sets, stats, cands = parenchyma_candidates(hu, region, spacing_kji, prior)
    kept = np.any([labels > 0 for labels in label_sets], axis=0) if label_sets else np.zeros(hu.shape, bool)
    out = {}
    for name, v in names.items():
        if name == "model":
            out[name] = p
        elif name == "map":
            out[name] = np.where(kept, hypo, 0.0).astype(np.float32)
        elif "member" in v:
            out[name] = ((1 - v["member"]) * p + v["member"] * np.where(kept, hypo, 0.0)).astype(np.float32)
        else:
            out[name] = combine_with_model(p, hypo, label_sets, replace(prior, **v), spacing_kji)
    return out, hypo, (stats, cands)


def evaluate(args: argparse.Namespace) -> None:
    from LiverTumorSegLib.pipeline import PipelineSettings
    settings = PipelineSettings(device="cpu")
    prior = ParenchymaPrior(**json.loads(args.prior)) if args.prior else ParenchymaPrior()
    names = json.loads(args.variants) if args.variants else DEFAULT_VARIANTS
    rows = []
    for path in sorted(args.cache.glob("*.npz")):
        ct_name, kind, seed = path.stem.split("__")
        if args.only and not any(o in path.stem for o in args.only.split(",")):
            continue
        d = np.load(path)
        hu = d["hu"].astype(np.float32)
        region, ref = d["region"] > 0, d["tumor"] > 0
        spacing_kji = tuple(float(s) for s in d["spacing_kji"])
        voxel_ml = float(np.prod(spacing_kji)) / 1000.0
        probs, hypo, (stats, cands) = probabilities(d["probability"].astype(np.float32), hu, region, spacing_kji,
                                                    prior, names)
        total_ref = int(d["tumor_total"])
        row = {"ct": ct_name, "kind": kind, "seed": int(seed), "ref_ml": round(total_ref * voxel_ml, 2),
               "parenchyma_hu": stats.median_hu, "spread_hu": stats.spread_hu,
               "candidates": sum(c.kept for c in cands), "variants": {}}
        for name, prob in probs.items():
            tumor = postprocess(prob, region, hu, spacing_kji, int(d["axial"]), voxel_ml, settings).astype(bool)
            tp = int((tumor & ref).sum())
            score = 2.0 * tp / (tumor.sum() + total_ref) if tumor.sum() + total_ref else 1.0
            det = lesion_detection(tumor, ref, voxel_ml * 1000.0)
            big = [lesion for lesion in det["reference"] if lesion["diameter_mm"] >= 10.0]
            row["variants"][name] = {"dice": round(score, 4), "pred_ml": round(float(tumor.sum()) * voxel_ml, 2),
                                     "fp_ml": round(float((tumor & ~ref).sum()) * voxel_ml, 2),
                                     "found_10mm": f"{sum(x['detected'] for x in big)}/{len(big)}",
                                     "fp_lesions": det["false_positives"]}
        rows.append(row)
        print(json.dumps({k: row[k] for k in ("ct", "kind", "seed", "ref_ml", "parenchyma_hu", "spread_hu",
                                               "candidates")}), flush=True)
        for name, v in row["variants"].items():
            print(f"    {name:16s} {json.dumps(v)}", flush=True)
    summary = summarise(rows, list(names))
    print_summary(summary, list(names))
    if args.json:
        Path(args.json).write_text(json.dumps({"prior": asdict(prior), "rows": rows, "summary": summary}, indent=1))


def summarise(rows: List[dict], names: List[str]) -> Dict[str, Dict[str, dict]]:
    """Per kind (tumour-free cases: per CT): mean Dice, found lesions >= 10 mm, FP mL."""
    groups: Dict[str, List[dict]] = {}
    for row in rows:
        key = f"free:{row['ct']}" if row["kind"] == "free" else row["kind"]
        groups.setdefault(key, []).append(row)
    summary = {}
    for key, members in groups.items():
        summary[key] = {}
        for name in names:
            vs = [m["variants"][name] for m in members]
            found = [tuple(map(int, v["found_10mm"].split("/"))) for v in vs]
            summary[key][name] = {"dice": round(float(np.mean([v["dice"] for v in vs])), 3),
                                  "found_10mm": f"{sum(f[0] for f in found)}/{sum(f[1] for f in found)}",
                                  "fp_ml": round(float(np.mean([v["fp_ml"] for v in vs])), 2), "n": len(vs)}
    return summary


def print_summary(summary: Dict[str, Dict[str, dict]], names: List[str]) -> None:
    for metric, title in (("dice", "mean tumour Dice per case"), ("found_10mm", "lesions >= 10 mm found"),
                          ("fp_ml", "mean false-positive mL per case")):
        print(f"\n{title}")
        print(f"{'kind (cases)':28s}" + "".join(f"{n[:18]:>19s}" for n in names))
        for key in sorted(summary):
            cells = "".join(f"{str(summary[key][n][metric]):>19s}" for n in names)
            print(f"{key + ' (' + str(summary[key][names[0]]['n']) + ')':28s}" + cells)


def candidate_table(args: argparse.Namespace) -> None:
    """One line per kept candidate: its measures, the model's probability in it and how much of
    it is reference tumour (to choose the combination's gate by measurement)."""
    from LiverTumorSegLib.stages.parenchyma import depth_mm
    prior = ParenchymaPrior(**json.loads(args.prior)) if args.prior else ParenchymaPrior()
    lines = []
    for path in sorted(args.cache.glob("*.npz")):
        if args.only and not any(o in path.stem for o in args.only.split(",")):
            continue
        d = np.load(path)
        hu = d["hu"].astype(np.float32)
        region, ref = d["region"] > 0, d["tumor"] > 0
        p = d["probability"].astype(np.float32)
        spacing_kji = tuple(float(s) for s in d["spacing_kji"])
        _, label_sets, _, cands = parenchyma_candidates(hu, region, spacing_kji, prior)
        depth = depth_mm(region, spacing_kji)
        for c in cands:
            if not c.kept:
                continue
            m = label_sets[c.scale] == c.label
            pm = p[m]
            line = {"case": path.stem, "scale": c.scale, "ml": round(c.volume_ml, 2), "thick": c.thickness_mm, "map": c.mean_map,
                    "delta": c.mean_delta_hu, "f_p05": round(float((pm >= 0.5).mean()), 3),
                    "p_max": round(float(pm.max()), 3), "p_mean": round(float(pm.mean()), 3),
                    "p_q90": round(float(np.quantile(pm, 0.9)), 3), "f_p02": round(float((pm >= 0.2).mean()), 3),
                    "depth_mean": round(float(depth[m].mean()), 1), "f_surf5": round(float((depth[m] <= 5).mean()), 2),
                    "tumour": round(float(ref[m].mean()), 3)}
            lines.append(line)
            print(json.dumps(line), flush=True)
    if args.json:
        Path(args.json).write_text(json.dumps(lines, indent=0))


# --- render -------------------------------------------------------------------------------------------

def crop_geometry(ct_name: str, box: np.ndarray) -> sitk.Image:
    """An empty image with the geometry of the cached crop of CT ``ct_name``."""
    from LiverTumorSegLib.stages.crop import crop_image
    ct = load_shared_case(SHARED, ct_name)[0]
    return crop_image(ct, tuple(slice(int(a), int(b)) for a, b in box))


def render(args: argparse.Namespace) -> None:
    from LiverTumorSegLib.pipeline import PipelineSettings
    from LiverTumorSegLib.develop.render import axial_overlay, save_png, stack_rows
    settings = PipelineSettings(device="cpu")
    prior = ParenchymaPrior(**json.loads(args.prior)) if args.prior else ParenchymaPrior()
    names = {"model": {}, "map": {}, "combined": {}}
    for stem in args.cases.split(","):
        d = np.load(args.cache / f"{stem}.npz")
        hu = d["hu"].astype(np.float32)
        region, ref = d["region"] > 0, d["tumor"] > 0
        spacing_kji = tuple(float(s) for s in d["spacing_kji"])
        voxel_ml = float(np.prod(spacing_kji)) / 1000.0
        probs, hypo, _ = probabilities(d["probability"].astype(np.float32), hu, region, spacing_kji, prior, names)
        image = sitk.GetImageFromArray(hu)
        image.CopyInformation(crop_geometry(stem.split("__")[0], d["box"]))  # shown in radiological view
        reference = np.where(ref, 2, np.where(region, 1, 0)).astype(np.uint8)
        ref_img = sitk.GetImageFromArray(reference)
        ref_img.CopyInformation(image)
        rows = []
        for name, prob in probs.items():
            tumor = postprocess(prob, region, hu, spacing_kji, int(d["axial"]), voxel_ml, settings)
            pred = sitk.GetImageFromArray(np.where(tumor > 0, 2, np.where(region, 1, 0)).astype(np.uint8))
            pred.CopyInformation(image)
            rows.append(axial_overlay(image, pred, ref_img, n_slices=args.slices))
        # the map itself as a grey image (0 -> -160 HU, 1 -> 240 HU in the overlay's window)
        map_img = sitk.GetImageFromArray((hypo * 400.0 - 160.0).astype(np.float32))
        map_img.CopyInformation(image)
        rows.append(axial_overlay(map_img, ref_img, None, n_slices=args.slices))
        out = args.png / f"{stem}.png"
        save_png(stack_rows(rows), out)
        print(out, "rows: model | map alone | combined | hypodensity map (white = 1); reference contours "
              "blue/magenta, prediction orange/green")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("command", choices=["cache", "evaluate", "candidates", "render"])
    parser.add_argument("--cache", type=Path, default=Path("/tmp/parenchyma_cache"))
    parser.add_argument("--seeds", type=int, default=2, help="cases per tumour kind and CT")
    parser.add_argument("--kinds", default="", help="comma-separated tumour kinds (default: all)")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--prior", default="", help="JSON of ParenchymaPrior fields to change")
    parser.add_argument("--variants", default="",
                        help="JSON {name: ParenchymaPrior fields} (default: DEFAULT_VARIANTS)")
    parser.add_argument("--only", default="", help="comma-separated substrings of case names")
    parser.add_argument("--json", default="")
    parser.add_argument("--png", type=Path, default=Path("/tmp/parenchyma_png"))
    parser.add_argument("--cases", default="", help="render: comma-separated case names (file stems)")
    parser.add_argument("--slices", type=int, default=4)
    args = parser.parse_args()
    {"cache": cache, "evaluate": evaluate, "candidates": candidate_table, "render": render}[args.command](args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
