#!/usr/bin/env python
"""Tune the tumor post-processing (seed and grow thresholds, minimum lesion volume, the lesion-candidate filter) of the
embedded models on VALIDATION data only: phantoms of seeds 5002+ (the ones the ensemble
weights are fitted on), the tumour members' real training livers (ts_upper_abdomen_3mm, native;
chaos_ct_1, portal venous) with synthetic tumours of every kind under other seeds, and the same
livers with a broad tumour-free darkening (synth.perfusion), alone and under lesions; never on
the held-out evaluation data (phantom seeds 10000+, ts_dicom_upper_abdomen, real-liver tumour
seeds 9000+).

The models run once per case (Pipeline.tumor_evidence); each setting only re-runs the
post-processing (Pipeline.finish). With --ensembles each tumour member runs alone once per case
and every ensemble named is the average of its members' cached evidence, as the pipeline averages
them, so ensembles of any members compare at the cost of running each member once. Prints the
mean tumor Dice per case, per tumour kind, the lesions >= 10 mm and < 10 mm found and the
false-positive lesions of each setting, best first.
"""

from __future__ import annotations

import argparse
import hashlib
import itertools
import json
import pickle
import sys
from dataclasses import replace
from pathlib import Path
from typing import Dict, Iterator, List, Optional, Sequence, Tuple

import numpy as np
import SimpleITK as sitk

from LiverTumorSegLib.inference import WINDOW_PADDING
from LiverTumorSegLib.metrics import dice, lesion_detection, on_grid_of
from LiverTumorSegLib.models.registry import ModelRegistry
from LiverTumorSegLib.pipeline import Pipeline, PipelineSettings, TumorEvidence
from LiverTumorSegLib.stages.parenchyma import ParenchymaPrior
from LiverTumorSegLib.stages.tumor import needs_hypodensity
from LiverTumorSegLib.develop.synth.perfusion import add_perfusion_variation
from LiverTumorSegLib.develop.synth.shared_cases import (SLAB_MM, VALIDATION_PHANTOM_SEED,
                                                         VALIDATION_PHANTOM_SPACINGS, has_shared_case,
                                                         load_shared_case, phantom_with_tumor_kind, shared_data_dir,
                                                         slab_around_tumours)
from LiverTumorSegLib.develop.synth.tumors import TUMOR_KINDS, insert_tumor_kind
from LiverTumorSegLib.develop.scripts import checkout_root

ROOT = checkout_root()
SHARED = shared_data_dir(ROOT)


TRAINING_LIVERS = (("ts_upper", "ts_upper_abdomen_3mm"), ("chaos", "chaos_ct_1"))


def validation_cases(n_phantoms: int, kinds: list) -> list:
    """(name, tumour kind, CT, labels) of the validation cases."""
    cases = []
    for i in range(n_phantoms):
        seed, kind = VALIDATION_PHANTOM_SEED + i, kinds[i % len(kinds)]
        ct, labels, _ = phantom_with_tumor_kind(seed, kind, VALIDATION_PHANTOM_SPACINGS[i % 2])
        cases.append((f"phantom-{seed}", kind, ct, labels))
    # The tumour members' real training livers, under tumours training never drew: the native
    # ts_upper_abdomen_3mm and the portal-venous chaos_ct_1 (the phase of most clinical CTs).
    for short, name in TRAINING_LIVERS:
        if not has_shared_case(SHARED, name):
            continue
        ct, liver = load_shared_case(SHARED, name)
        for index, kind in enumerate(kinds):
            seed = 20000 + index  # tumours the training never drew
            ct_t, labels_t, _ = insert_tumor_kind(ct, liver, seed=seed, kind=kind)
            cases.append((f"{short}+{kind}-{seed}", kind, ct_t, labels_t))
        if short == "ts_upper":
            cases.append(("ts_upper (tumour-free)", "none", ct, liver))
    cases += perfusion_cases()
    return cases


def slab_cases(cases: list) -> list:
    """Each tumour case of ``cases`` cut to a 40 mm slab around its tumours, its kind marked as a
    slab's: a scan covering part of the liver (the held-out real DICOM case is one), which the
    models see with its edge slices repeated over their windows."""
    slabs = []
    for name, kind, ct, labels in cases:
        if kind == "none":
            continue
        slab_ct, slab_labels = slab_around_tumours(ct, labels)
        slabs.append((f"{name} {SLAB_MM:g} mm slab", f"{kind} ({SLAB_MM:g} mm slab)", slab_ct, slab_labels))
    return slabs


def perfusion_cases() -> list:
    """The real training livers with a broad tumour-free darkening (synth.perfusion, seeds 21000+
    that training never drew): alone (false tumour there) and under metastases, a large iso-dense
    lesion, a surface lesion or classic lesions (lesions must not merge with it; the surface and
    classic ones lie on a dependent darkening, where a posterior lesion touches it), the hard
    negative the held-out real liver showed."""
    cases = []
    for short, name in TRAINING_LIVERS:
        if not has_shared_case(SHARED, name):
            continue
        ct, liver = load_shared_case(SHARED, name)
        for index, kind in enumerate(("none", "metastases", "large_isodense", "none", "surface", "classic")):
            seed = 21000 + index
            ct_p, info = add_perfusion_variation(ct, liver, seed)
            if kind == "none":
                cases.append((f"{short}+perfusion-{info['pattern']}-{seed} (tumour-free)", "none", ct_p, liver))
                continue
            ct_t, labels_t, _ = insert_tumor_kind(ct_p, liver, seed=seed, kind=kind)
            cases.append((f"{short}+perfusion+{kind}-{seed}", f"{kind} on perfusion", ct_t, labels_t))
    return cases


def score(pipeline: Pipeline, evidences: list, settings: PipelineSettings, per_case: bool = False) -> dict:
    """The measures ``main`` prints of one setting; ``per_case``: each tumour case's [Dice, tumour
    mL outside the reference liver] too."""
    per_kind: dict = {}
    case_scores: dict = {}
    found, small_found, false_positives, free_ml, outside_ml = [], [], 0, {}, 0.0
    for (name, kind, ct, labels), evidence in evidences:
        result = pipeline.finish(ct, evidence, settings)
        pred = sitk.GetArrayViewFromImage(result.labelmap) == 2
        reference = on_grid_of(labels, result.labelmap)
        ref = reference == 2
        voxel_mm3 = float(np.prod(ct.GetSpacing()))
        case_outside_ml = float((pred & (reference == 0)).sum()) * voxel_mm3 / 1000.0
        outside_ml += case_outside_ml
        if kind == "none":
            free_ml[name] = round(float(pred.sum()) * voxel_mm3 / 1000.0, 2)
            continue
        case_dice = dice(pred, ref)
        per_kind.setdefault(kind, []).append(case_dice)
        case_scores[name] = [round(case_dice, 3), round(case_outside_ml, 2)]
        detection = lesion_detection(pred, ref, voxel_mm3)
        found += [lesion["detected"] for lesion in detection["reference"] if lesion["diameter_mm"] >= 10.0]
        small_found += [lesion["detected"] for lesion in detection["reference"] if lesion["diameter_mm"] < 10.0]
        false_positives += detection["false_positives"]
    all_scores = [v for values in per_kind.values() for v in values]
    return {"tumor_dpc_mean": round(float(np.mean(all_scores)), 4),
            "worst_kind": round(min(float(np.mean(v)) for v in per_kind.values()), 4),
            "per_kind": {k: round(float(np.mean(v)), 3) for k, v in sorted(per_kind.items())},
            "lesions_ge_10mm_found": f"{sum(found)}/{len(found)}",
            "lesions_under_10mm_found": f"{sum(small_found)}/{len(small_found)}",
            "false_positive_lesions": false_positives,
            "tumor_ml_outside_reference_liver": round(outside_ml, 2),
            "tumor_ml_on_tumour_free_livers": free_ml,
            "tumor_ml_on_tumour_free_max": max(free_ml.values(), default=0.0),
            **({"per_case": case_scores} if per_case else {})}


def ct_digest(ct: sitk.Image) -> str:
    """A digest of the CT's voxels and geometry: a case of the same name drawn anew (the
    synthesis changed) is another case."""
    digest = hashlib.sha256(sitk.GetArrayViewFromImage(ct).tobytes())
    digest.update(repr((ct.GetSpacing(), ct.GetOrigin(), ct.GetDirection())).encode())
    return digest.hexdigest()[:16]


def evidence_key(pipeline: Pipeline, case_name: str, ct: sitk.Image) -> str:
    """What the models' evidence of a case depends on: the case (its name and its CT's voxels),
    every model's weights, the ensemble's weights, the models' sliding windows and the settings
    the models run under (crop margin, overlap, TTA, the liver refinement and how far it may grow
    the liver) and how windows are padded."""
    s = pipeline.settings
    models = [str(m.get("sha256", ""))[:12] for m in pipeline.model_summaries]
    loaded = [pipeline.liver_model, pipeline.liver_refine_model, *pipeline.tumor_members]
    windows = [m.card.inference_patch_size_kji for m in loaded if m is not None]  # the same weights, other windows
    weights = [round(float(w), 6) for w in pipeline.tumor_weights]
    if not all(pipeline.tumor_member_tta):  # keys from before the per-member switch stay valid
        weights.append(tuple(pipeline.tumor_member_tta))
    settings = (s.crop_margin_mm, s.overlap, s.use_tta, s.refine_liver, s.liver_threshold, s.fill_liver_holes,
                s.keep_largest_liver, s.parenchyma if needs_hypodensity(pipeline.tumor_members) else None,
                s.refine_growth_mm)
    if WINDOW_PADDING != "constant":  # keys from before the padding became a choice stay valid for zero padding
        windows.append(WINDOW_PADDING)
    if s.use_tta:  # since TTA covers the liver models too, their masks differ from older keys'
        windows.append("liver models under TTA")
    windows.append("model grids repeat the scan's edge")  # since the fix of the air past a scan's last slice
    case = f"{case_name}|{ct_digest(ct)}"
    return hashlib.sha256(f"{case}|{models}|{weights}|{settings}|{windows}".encode()).hexdigest()[:16]


def cached_evidence(pipeline: Pipeline, case: tuple, cache: Optional[Path]):
    """The models' evidence of ``case`` (Pipeline.tumor_evidence), kept in ``cache`` (a pickle of
    this script's own results, keyed by :func:`evidence_key`)."""
    if cache is None:
        return pipeline.tumor_evidence(case[2])
    path = cache / f"{evidence_key(pipeline, case[0], case[2])}.pkl"
    if path.exists():
        with open(path, "rb") as handle:
            return pickle.load(handle)
    evidence = pipeline.tumor_evidence(case[2])
    cache.mkdir(parents=True, exist_ok=True)
    with open(path.with_suffix(".tmp"), "wb") as handle:
        pickle.dump(evidence, handle)
    path.with_suffix(".tmp").replace(path)
    return evidence


def parse_ensembles(text: str) -> Dict[str, List[Tuple[str, float]]]:
    """The ensembles of ``--ensembles``: ';'-separated, each its members joined by '+', a member
    ``NAME`` (weight 1) or ``NAME*W`` (weight W > 0); each ensemble as (name, weight) pairs."""
    ensembles = {}
    for item in text.split(";"):
        members = []
        for part in item.split("+"):
            name, star, weight_text = part.strip().partition("*")
            if not name.strip():
                continue
            try:
                weight = float(weight_text) if star else 1.0
            except ValueError:
                raise SystemExit(f"error: --ensembles: '{part.strip()}' is not NAME or NAME*WEIGHT") from None
            if not weight > 0:
                raise SystemExit(f"error: --ensembles: the weight of {name.strip()} must be > 0")
            members.append((name.strip(), weight))
        if not members:
            raise SystemExit(f"error: --ensembles: '{text}' holds an empty ensemble")
        ensembles["+".join(name if weight == 1.0 else f"{name}*{weight:g}" for name, weight in members)] = members
    return ensembles


def combined_evidence(parts: Sequence[TumorEvidence], weights: Optional[Sequence[float]] = None) -> TumorEvidence:
    """The evidence of the ensemble of members whose own evidences (the same liver stages) are
    ``parts``, with ``weights`` (default equal): its probability and TTA spread are the members'
    weighted averages, as stages.tumor.ensemble_probability forms them."""
    first = parts[0]
    if any(part.box != first.box or part.probability.shape != first.probability.shape for part in parts[1:]):
        raise ValueError("the members' evidences come from different liver stages; they cannot be averaged")
    weights = [1.0] * len(parts) if weights is None else list(weights)
    if len(weights) != len(parts):
        raise ValueError("one weight per member evidence is needed")
    shares = [weight / float(sum(weights)) for weight in weights]
    probability = np.zeros_like(first.probability)
    for part, share in zip(parts, shares):
        probability += part.probability * share
    uncertainty = None
    if all(part.uncertainty is not None for part in parts):
        uncertainty = np.zeros_like(first.uncertainty)
        for part, share in zip(parts, shares):
            uncertainty += part.uncertainty * share
    return replace(first, probability=probability, uncertainty=uncertainty)


def parse_prior(text: str) -> ParenchymaPrior:
    """'on' (the defaults), 'off', or 'field=value+field=value' changes of the defaults."""
    if text == "on":
        return ParenchymaPrior()
    if text == "off":
        return ParenchymaPrior(enabled=False)
    changes = {}
    for item in text.split("+"):
        key, value = item.split("=")
        changes[key] = type(getattr(ParenchymaPrior(), key))(float(value))
    return replace(ParenchymaPrior(), **changes)


def parse_closing(text: str) -> dict:
    """The PipelineSettings fields of a lesion closing variant 'radius_mm/floor'."""
    try:
        radius, floor = (float(value) for value in text.split("/"))
    except ValueError:
        raise SystemExit(f"error: --lesion-closing: '{text}' is not radius_mm/floor (e.g. 10/0.1)")
    return dict(lesion_closing_mm=radius, lesion_closing_floor=floor)


def evidence_variants(args: argparse.Namespace, base: PipelineSettings, registry: ModelRegistry,
                      cases: list) -> Iterator[Tuple[str, Pipeline, list]]:
    """(label, pipeline, [(case, evidence)]) per ensemble to score: the models' own (label ''),
    or each of ``--ensembles`` from its members' cached evidence, one ensemble in memory at a time."""
    if not args.ensembles:
        pipeline = Pipeline(base, registry)
        yield "", pipeline, [(case, cached_evidence(pipeline, case, args.cache)) for case in cases]
        return
    ensembles = parse_ensembles(args.ensembles)
    names = list(dict.fromkeys(name for members in ensembles.values() for name, _ in members))
    members = {name: Pipeline(replace(base, tumor_model=name), registry) for name in names}
    for name, pipeline in members.items():  # each member once, into the cache
        for case in cases:
            cached_evidence(pipeline, case, args.cache)
    for label, chosen in ensembles.items():
        yield f"ensemble {label}, ", members[chosen[0][0]], [
            (case, combined_evidence([cached_evidence(members[name], case, args.cache) for name, _ in chosen],
                                     [weight for _, weight in chosen]))
            for case in cases]


def score_settings(args: argparse.Namespace, label: str, pipeline: Pipeline, evidences: list, results: dict) -> None:
    """Score every post-processing setting the arguments name on ``evidences`` into ``results``."""
    default_closing = f"{pipeline.settings.lesion_closing_mm:g}/{pipeline.settings.lesion_closing_floor:g}"
    bulges = args.tumor_bulge_mm or f"{pipeline.settings.tumor_bulge_mm:g}"
    for bulge, closing, prior_text, threshold, grow, min_ml, confidence in itertools.product(
            map(float, bulges.split(",")),
            (args.lesion_closing or default_closing).split(";"),
            args.priors.split(";"),
            map(float, args.thresholds.split(",")),
            [None if g == "none" else float(g) for g in args.grow_thresholds.split(",")],
            map(float, args.min_lesion_ml.split(",")),
            map(float, args.min_lesion_confidence.split(","))):
        settings = replace(pipeline.settings, tumor_threshold=threshold, tumor_grow_threshold=grow,
                           min_lesion_ml=min_ml, min_lesion_confidence=confidence,
                           parenchyma=parse_prior(prior_text), tumor_bulge_mm=bulge, **parse_closing(closing))
        key = (f"{label}prior {prior_text}, threshold {threshold:g}, grow {grow}, min lesion {min_ml:g} mL, "
               f"min confidence {confidence:g}, closing {closing}, bulge {bulge:g} mm")
        results[key] = score(pipeline, evidences, settings, args.per_case)
        print(key, json.dumps(results[key]), flush=True)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", type=Path, default=ROOT / "Resources" / "Models")
    parser.add_argument("--phantoms", type=int, default=7)
    parser.add_argument("--thresholds", default="0.4,0.5")
    parser.add_argument("--grow-thresholds", default="none,0.3,0.2", help="'none' for no hysteresis")
    parser.add_argument("--min-lesion-ml", default="0.05,0.2")
    parser.add_argument("--min-lesion-confidence", default="0",
                        help="lesion-candidate filter cut-offs (postprocess.lesion_filter), comma-separated")
    parser.add_argument("--lesion-closing", default=None,
                        help="lesion closing variants, ';'-separated 'radius_mm/floor' (e.g. '0/0;10/0.1'; "
                             "default: the pipeline's)")
    parser.add_argument("--cache", type=Path, default=None, metavar="DIR",
                        help="keep each case's model evidence here (keyed by the models' weights) for later sweeps")
    parser.add_argument("--priors", default="on", help="parenchyma prior variants, ';'-separated: on, off, or "
                        "field=value+field=value changes of its defaults (e.g. 'reach_mm=20')")
    parser.add_argument("--tumor-bulge-mm", default=None,
                        help="how far a lesion mostly inside the liver may bulge out of its mask, comma-separated mm "
                             "(default: the pipeline's)")
    parser.add_argument("--slabs", choices=("off", "add", "only"), default="off",
                        help="the tumour cases also (add) or only (only) as 40 mm slabs around their tumours")
    parser.add_argument("--no-tta", dest="tta", action="store_false",
                        help="the ensemble's evidence without flip test-time augmentation (segment --no-tta)")
    parser.add_argument("--overlap", type=float, default=PipelineSettings.window_overlap,
                        help="the models' sliding-window overlap for the evidence (default: the pipeline's); 0.5 "
                             "puts every voxel nearer a window's centre, so models compare with less luck of "
                             "window placement, at about 3 times the model time")
    parser.add_argument("--per-case", action="store_true",
                        help="print each tumour case's Dice and tumour mL outside the reference liver too")
    parser.add_argument("--ensembles", default=None,
                        help="tumour ensembles to compare, ';'-separated, each its members (tumour models in "
                             "--models) joined by '+', NAME*W weighting a member W times (default 1); each member runs "
                             "once per case into --cache")
    args = parser.parse_args()
    if args.ensembles and args.cache is None:
        parser.error("--ensembles averages the members' cached evidence: give --cache DIR")
    if not 0.0 <= args.overlap < 1.0:
        parser.error("--overlap must be at least 0 and less than 1")
    base = PipelineSettings(device="cpu", tta=args.tta, window_overlap=args.overlap)
    registry = ModelRegistry([args.models])
    cases = validation_cases(args.phantoms, list(TUMOR_KINDS))
    if args.slabs != "off":
        cases = (cases if args.slabs == "add" else []) + slab_cases(cases)
    results = {}
    for label, pipeline, evidences in evidence_variants(args, base, registry, cases):
        score_settings(args, label, pipeline, evidences, results)
        del evidences
    print("\nbest first (mean tumor Dice per case):")
    for key, value in sorted(results.items(), key=lambda kv: -kv[1]["tumor_dpc_mean"]):
        print(f"  {value['tumor_dpc_mean']:.4f} worst kind {value['worst_kind']:.3f} "
              f"tumour-free max {value['tumor_ml_on_tumour_free_max']:.1f} mL "
              f"outside the liver {value['tumor_ml_outside_reference_liver']:.1f} mL  {key}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
