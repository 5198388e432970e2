#!/usr/bin/env python
"""Train the embedded default models (non-clinical demos) with the project's own trainer.

Data, all made or shipped here:
  * synthetic abdominal CT phantoms (LiverTumorSegLib.develop.synth.phantom), seeds 0..N-1, with
    synthetic tumours of every kind (LiverTumorSegLib.develop.synth.tumors.TUMOR_KINDS);
  * the real CT ../shared/data/ts_upper_abdomen_3mm (its reference liver), with synthetic
    tumours of every kind inserted into its real liver;
  * for the tumor models only, also the real CT ../shared/data/chaos_ct_1 (CHAOS challenge,
    expert liver mask; CC BY-SA 4.0) with synthetic tumours. The liver models never see it: it
    is their held-out real case with an expert reference.
Held out of all training: the real DICOM case ../shared/data/ts_dicom_upper_abdomen (and the
abdomen/thorax/MR cases); the evaluation script uses them and phantom seeds >= 10000.

Writes <name>.safetensors + <name>.json per model and the ensemble card into --out.
"""

from __future__ import annotations

import argparse
import json
import logging
import shutil
import sys
import time
from dataclasses import replace
from pathlib import Path
from typing import Dict, List, Optional, Sequence

import numpy as np
import SimpleITK as sitk

from LiverTumorSegLib.errors import LiverTumorSegError
from LiverTumorSegLib.models.card import EnsembleCard, EnsembleMember, ModelCard, read_card, write_card
from LiverTumorSegLib.develop.synth.phantom import liver_neighbours, make_phantom
from LiverTumorSegLib.develop.synth.perfusion import add_perfusion_variation, darkened_region
from LiverTumorSegLib.develop.synth.shared_cases import VALIDATION_PHANTOM_SEED, load_shared_case, shared_data_dir
from LiverTumorSegLib.develop.synth.tumors import TUMOR_KINDS, insert_tumor_kind
from LiverTumorSegLib.develop.training.data import TrainingSample, prepare_sample
from LiverTumorSegLib.develop.training.ensemble_weights import fit_ensemble_weights
from LiverTumorSegLib.develop.training.history import describe_training
from LiverTumorSegLib.develop.training.trainer import TrainConfig, train_model
from LiverTumorSegLib.develop.scripts import checkout_root

ROOT = checkout_root()
SHARED = shared_data_dir(ROOT)
NON_CLINICAL = ("Demonstration model trained only on synthetic phantoms and real CTs with synthetic tumours (see "
                "trained_on). NOT FOR CLINICAL USE: not validated on real patients' tumours.")
log = logging.getLogger("train_embedded")
PHANTOM_VIEWS = ("abdomen", "abdomen", "upper_abdomen", "abdomen", "thorax")
LIVER_REFINE_NAME = "liver-refine-demo"
HELD_OUT = "ts_dicom_upper_abdomen"  # the real case no model is trained on
# Real training CTs per task (synth.shared_cases). chaos_ct_1 (expert liver mask) trains the
# tumor models only; the liver models keep it as their held-out expert case.
# --liver-real-cases may add chaos_ct_1 to the liver models' (then they have no held-out expert case).
REAL_FOR_TASK = {"liver": ("ts_upper_abdomen_3mm",), "liver_refine": ("ts_upper_abdomen_3mm",),
                 "tumor": ("ts_upper_abdomen_3mm", "chaos_ct_1")}
LIVER_REAL_CHOICES = ("ts_upper_abdomen_3mm", "chaos_ct_1")
# The default fraction of samples with a broad tumour-free darkening of part of the liver (synth.perfusion).
PERFUSION_FRACTION = 0.4
# How often each synthetic tumour kind is drawn (the shipped tumour members' round 7). Weighting
# large, metastatic and surface lesions up (2, 2, 1.5 against small 1 and arterial 0.5) bought
# them on validation but cost small and arterial-phase lesions; this mix keeps both. Lesions in
# the hilum's notch (a kind added since) are drawn as often as the surface ones.
KIND_MIX = {"classic": 2.0, "small": 2.0, "hypervascular_arterial": 1.0, "hypervascular_washout": 1.5,
            "large_isodense": 1.5, "metastases": 1.5, "surface": 1.5, "hilum": 1.5}


def liver_card() -> ModelCard:
    return ModelCard(
        name="liver-demo", version="0.1.0", task="liver", architecture="UNet",
        architecture_args={"in_channels": 1, "out_channels": 2, "channels": [16, 32, 64, 128],
                           "strides": [2, 2, 2], "num_res_units": 1},
        spacing_mm=(3.0, 3.0, 3.0), patch_size=(80, 80, 48), hu_window=(-250.0, 350.0),
        # Windows 29 cm wide at inference (trained on 24 cm): chosen on validate_liver's phantoms
        # (round 12): Dice 0.9443 -> 0.9449 whole, 0.9343 -> 0.9372 on 40 mm slabs, spill beyond 3 mm
        # 25.2 -> 24.1 / 13.4 -> 11.4 mL, tumour kept inside the liver 0.948 -> 0.953 / 0.902 -> 0.915;
        # 96x96x56 and 96x96x64 scored alike, 112x112x64 and 128x128x80 spilled more on slabs.
        inference_patch_size=(96, 96, 48),
        weights_file="", weights_sha256="", classes={"0": "background", "1": "liver (tumors included)"},
        refine_model=LIVER_REFINE_NAME,
        description="Global-view liver model (whole CT at 3 mm).", non_clinical=True, intended_use=NON_CLINICAL,
        source="scripts/train_embedded.py (LiverTumorSegLib.develop.training.trainer)")


def liver_refine_card(spacing_mm: float = 1.5) -> ModelCard:
    """The liver-refinement card on an isotropic ``spacing_mm`` grid; the patch keeps about
    96 mm of context (64 voxels at 1.5 mm, 96 at 1.0 mm)."""
    side = int(round(96.0 / spacing_mm / 16.0)) * 16
    return ModelCard(
        name=LIVER_REFINE_NAME, version="0.1.0", task="liver_refine", architecture="UNet",
        architecture_args={"in_channels": 2, "out_channels": 2, "channels": [16, 32, 64, 128],
                           "strides": [2, 2, 2], "num_res_units": 1},
        spacing_mm=(spacing_mm,) * 3, patch_size=(side,) * 3, hu_window=(-150.0, 250.0),
        input_channels=["ct", "liver_prior"], weights_file="", weights_sha256="",
        classes={"0": "background", "1": "liver (tumors included)"},
        description=f"Local-view liver refinement (liver crop at {spacing_mm:g} mm; inputs: the CT and the liver stage's mask).",
        non_clinical=True, intended_use=NON_CLINICAL, source="scripts/train_embedded.py (LiverTumorSegLib.develop.training.trainer)")


# The tumour members' inputs: the CT alone (the shipped members), or the CT and the parenchyma
# map (how far each voxel lies below this scan's own liver parenchyma, stages.parenchyma).
TUMOR_INPUTS = {"ct": ["ct"], "ct,hypodensity": ["ct", "hypodensity"]}
DEFAULT_TUMOR_MEMBERS = ("tumor-demo-unet", "tumor-demo-unet-deep")
# A new member may start from another member's weights (same network, other grid).
WARM_START_FROM = {"tumor-demo-unet-wide": "tumor-demo-unet", "tumor-demo-unet-fine": "tumor-demo-unet",
                   "tumor-demo-unet-deep-fine": "tumor-demo-unet-deep"}


def tumor_cards(inputs: str = "ct") -> list:
    """Every tumour member the script can train, with ``inputs`` (a TUMOR_INPUTS key)."""
    channels = TUMOR_INPUTS[inputs]
    common = dict(task="tumor", version="0.1.0", input_channels=channels,
                  hu_window=(-100.0, 250.0), weights_file="", weights_sha256="", non_clinical=True,
                  classes={"0": "background", "1": "liver tumor"}, intended_use=NON_CLINICAL,
                  source="scripts/train_embedded.py (LiverTumorSegLib.develop.training.trainer)")
    return [
        # Residual U-Nets of different depth, width and view: on a CPU a SegResNet member costs
        # about ten times more per window (measured), too slow for the embedded default.
        ModelCard(name="tumor-demo-unet", architecture="UNet", spacing_mm=(1.5, 1.5, 1.5),
                  architecture_args={"in_channels": len(channels), "out_channels": 2, "channels": [16, 32, 64, 128],
                                     "strides": [2, 2, 2], "num_res_units": 2}, patch_size=(64, 64, 64),
                  description="Local-view tumor model (liver crop at 1.5 mm), residual U-Net member.", **common),
        ModelCard(name="tumor-demo-unet-deep", architecture="UNet", spacing_mm=(1.5, 1.5, 1.5),
                  architecture_args={"in_channels": len(channels), "out_channels": 2,
                                     "channels": [8, 16, 32, 64, 128], "strides": [2, 2, 2, 2], "num_res_units": 1},
                  patch_size=(64, 64, 64),
                  description="Local-view tumor model (liver crop at 1.5 mm), deeper residual U-Net member "
                              "(wider receptive field for large lesions).", **common),
        # The same network as tumor-demo-unet on a 3 mm grid: its 19 cm window holds most of a
        # liver, so a large mildly hypodense lesion is seen whole, with parenchyma around it,
        # where the 1.5 mm members' 9.6 cm window sees only its inside.
        ModelCard(name="tumor-demo-unet-wide", architecture="UNet", spacing_mm=(3.0, 3.0, 3.0),
                  architecture_args={"in_channels": len(channels), "out_channels": 2, "channels": [16, 32, 64, 128],
                                     "strides": [2, 2, 2], "num_res_units": 2}, patch_size=(64, 64, 64),
                  description="Wide-view tumor model (liver crop at 3 mm: a 19 cm window sees a large lesion "
                              "whole), residual U-Net member.", **common),
        # The same network on a 1 mm grid: a 5 mm lesion spans 5 voxels instead of 3, and resampling
        # to the grid blurs a small lesion's contrast less; 3.4 times the voxels of a 1.5 mm member.
        ModelCard(name="tumor-demo-unet-fine", architecture="UNet", spacing_mm=(1.0, 1.0, 1.0),
                  architecture_args={"in_channels": len(channels), "out_channels": 2, "channels": [16, 32, 64, 128],
                                     "strides": [2, 2, 2], "num_res_units": 2}, patch_size=(64, 64, 64),
                  description="Fine-grid tumor model (liver crop at 1 mm: small lesions keep more of their "
                              "contrast), residual U-Net member.", **common),
        # The deeper member on the same 1 mm grid: its four stride-2 levels see more of the 64 mm
        # window around a lesion than the fine member's three.
        ModelCard(name="tumor-demo-unet-deep-fine", architecture="UNet", spacing_mm=(1.0, 1.0, 1.0),
                  architecture_args={"in_channels": len(channels), "out_channels": 2,
                                     "channels": [8, 16, 32, 64, 128], "strides": [2, 2, 2, 2], "num_res_units": 1},
                  patch_size=(64, 64, 64),
                  description="Fine-grid tumor model (liver crop at 1 mm), deeper residual U-Net member.", **common),
    ]


def real_case(name: str) -> tuple:
    """A real training CT (float32 HU) and its reference liver (uint8, on the CT's grid)."""
    return load_shared_case(SHARED, name)


def draw_kind(seed: int, mix: Optional[Dict[str, float]] = None) -> str:
    """A tumour kind drawn from ``mix`` (default KIND_MIX), reproducibly from ``seed``."""
    mix = KIND_MIX if mix is None else mix
    names = list(mix)
    weights = np.array([mix[n] for n in names])
    return str(np.random.default_rng([seed, 31]).choice(names, p=weights / weights.sum()))


# Kinds whose lesions may be hyperdense in the portal phase (hypervascular metastases, HCC that
# keeps its enhancement): --hyperdense-share sets their share of hyperdense lesions in training.
HYPERDENSE_KINDS = ("classic", "small", "metastases")


def hyper_fraction_for(kind: str, share: Optional[float]) -> Optional[float]:
    """The hyperdense share a training sample of ``kind`` draws with: ``share`` for the kinds of
    HYPERDENSE_KINDS, the recipe's own (None) for the rest or without ``share``."""
    return share if share is not None and kind in HYPERDENSE_KINDS else None


def with_perfusion_variation(seed: int, fraction: float = PERFUSION_FRACTION) -> bool:
    """Whether a sample gets a broad tumour-free darkening of part of its liver (synth.perfusion),
    drawn for ``fraction`` of the seeds: the models learn that darker than the parenchyma is not
    tumour by itself."""
    return bool(np.random.default_rng([seed, 91]).random() < fraction)


def phantom_spacing(seed: int) -> tuple:
    rng = np.random.default_rng(seed + 777)
    inplane = float(rng.choice([0.8, 1.0, 1.5, 2.0, 3.0]))
    return (inplane, inplane, float(rng.choice([1.5, 2.0, 3.0, 5.0])))


def build_samples(card: ModelCard, n_phantoms: int, n_real_variants: int, seed_base: int,
                  perfusion_fraction: float = PERFUSION_FRACTION,
                  real_cases: Optional[Sequence[str]] = None,
                  kind_mix: Optional[Dict[str, float]] = None,
                  neighbour_leaks: bool = False, hyperdense_share: Optional[float] = None) -> List[TrainingSample]:
    """Phantoms (two thirds of them with tumours of a drawn kind instead of their classic ones)
    and ``n_real_variants`` variants of each real training CT of the card's task (two thirds with
    tumours for a tumor model, every other one for a liver model). A tumor model's darkened
    samples carry the darkened region as their hard negative; with ``neighbour_leaks`` a phantom
    sample of a liver or liver-refinement model carries the neighbour organs beside its liver
    (synth.phantom.liver_neighbours), where a liver model spills and a refinement's simulated
    liver-stage mask may leak. ``hyperdense_share``: the share of hyperdense lesions in the kinds of
    HYPERDENSE_KINDS (default: each recipe's own)."""
    samples = []
    for seed in range(seed_base, seed_base + n_phantoms):
        with_kind = seed % 3 != 0
        n_tumors = 0 if with_kind else ((1, 6) if card.task == "tumor" else (0, 2))
        z_extent = float(np.random.default_rng(seed + 99).choice([90.0, 150.0, 200.0, 240.0]))
        # The liver model also sees chests and upper abdomens with the heart on the liver: what is
        # not liver above the diaphragm.
        view = "abdomen" if card.task == "tumor" else PHANTOM_VIEWS[seed % len(PHANTOM_VIEWS)]
        ph = make_phantom(seed, size_mm=(360, 300, z_extent), spacing=phantom_spacing(seed), n_tumors=n_tumors,
                          view=view)
        labels = ph.labels
        has_liver = bool(np.any(sitk.GetArrayViewFromImage(labels)))
        if card.task != "liver" and not has_liver:
            continue  # a chest view with no liver: nothing to crop (the pipeline stops before the crop)
        ct, dark = ph.ct, None
        if has_liver and with_perfusion_variation(seed, perfusion_fraction):
            ct, _ = add_perfusion_variation(ph.ct, sitk.Cast(labels > 0, sitk.sitkUInt8), seed)
            dark = darkened_region(ph.ct, ct) if card.task == "tumor" else None
        if with_kind and has_liver:
            kind = draw_kind(seed, kind_mix)
            ct, labels, _ = insert_tumor_kind(ct, sitk.Cast(labels > 0, sitk.sitkUInt8), seed=seed + 300_000,
                                              kind=kind, hyper_fraction=hyper_fraction_for(kind, hyperdense_share))
        hard_negative = dark
        if neighbour_leaks and card.task in ("liver", "liver_refine") and has_liver:
            hard_negative = liver_neighbours(ph.organs)
        samples.append(prepare_sample(f"phantom-{seed}", ct, labels, card, hard_negative=hard_negative))
    for name in (REAL_FOR_TASK[card.task] if real_cases is None else real_cases):
        ct, liver = real_case(name)
        for variant in range(n_real_variants):
            seed = seed_base + 5000 + variant + 100 * (name != "ts_upper_abdomen_3mm")
            # every third real variant of a tumor model stays tumour-free: real livers' own dark spots,
            # edges and vessels are what it must learn to leave alone
            darkened = with_perfusion_variation(seed, perfusion_fraction)
            ct_v = add_perfusion_variation(ct, liver, seed)[0] if darkened else ct
            # a tumour model's hard-negative patches go where the darkening is (--tumor-hard-negative-fraction)
            dark = darkened_region(ct, ct_v) if darkened and card.task == "tumor" else None
            if (card.task == "tumor" and variant % 3) or (card.task != "tumor" and variant % 2):
                kind = draw_kind(seed, kind_mix)
                ct_v, labels_v, _ = insert_tumor_kind(ct_v, liver, seed=seed, kind=kind,
                                                      hyper_fraction=hyper_fraction_for(kind, hyperdense_share))
            else:
                labels_v = liver
            samples.append(prepare_sample(f"{name}-{variant}", ct_v, labels_v, card, hard_negative=dark))
    return samples


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=ROOT / "Resources" / "Models")
    parser.add_argument("--phantoms", type=int, default=24)
    parser.add_argument("--real-variants", type=int, default=8)
    parser.add_argument("--liver-steps", type=int, default=1500)
    parser.add_argument("--tumor-steps", type=int, default=1500)
    parser.add_argument("--refine-steps", type=int, default=1500)
    parser.add_argument("--refine-spacing", type=float, default=1.5, metavar="MM",
                        help="the liver-refinement model's grid (isotropic mm); a finer grid follows the liver's "
                             "boundary closer at more inference time")
    parser.add_argument("--refine-neighbour-fraction", type=float, default=0.0, metavar="F",
                        help="share of the liver-refinement model's patches centred on a neighbour organ beside "
                             "the liver (phantoms: bowel, IVC, stomach, ...); with it, the simulated liver-stage "
                             "mask claims part of such a neighbour as liver, as a real liver stage does, so the "
                             "refinement learns to take it back out")
    parser.add_argument("--liver-neighbour-fraction", type=float, default=0.0, metavar="F",
                        help="share of the liver model's patches centred on a neighbour organ beside the liver "
                             "(phantoms: stomach, bowel, gallbladder, kidney, ...): the hard negatives it spills into")
    parser.add_argument("--learning-rate", type=float, default=TrainConfig.learning_rate,
                        help="peak learning rate (linear warm-up, cosine decay); lower it to fine-tune")
    parser.add_argument("--validation-phantoms", type=int, default=4)
    parser.add_argument("--perfusion-fraction", type=float, default=PERFUSION_FRACTION,
                        help="fraction of samples with a tumour-free perfusion darkening (synth.perfusion)")
    parser.add_argument("--tumor-positive-fraction", type=float, default=0.6,
                        help="fraction of a tumor model's patches centred on a tumour (the rest anywhere)")
    parser.add_argument("--tumor-hard-negative-fraction", type=float, default=0.0,
                        help="fraction of a tumor model's patches centred in a sample's tumour-free darkened "
                             "region (synth.perfusion), taken from the patches placed anywhere")
    parser.add_argument("--tumor-lesion-balanced-fraction", type=float, default=0.0, metavar="F",
                        help="share of a tumor model's tumour-centred patches centred on a lesion drawn uniformly "
                             "among the sample's lesions (else on a tumour voxel drawn uniformly, which favours "
                             "the large ones)")
    parser.add_argument("--slab-fraction", type=float, default=0.0, metavar="F",
                        help="share of every trained model's patches thinned to a 30-100 mm slab, the rest of the "
                             "patch its edge slices repeated: what the pipeline shows a network on a scan thinner "
                             "than its window (a scan covering part of the liver)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--tasks", default="liver,liver_refine,tumor",
                        help="which models to train, comma-separated: liver, liver_refine, tumor")
    parser.add_argument("--liver-real-cases", default="ts_upper_abdomen_3mm",
                        help="real CTs the liver and liver-refinement models train on, comma-separated "
                             f"({', '.join(LIVER_REAL_CHOICES)})")
    parser.add_argument("--kind-mix", default=None,
                        help="how often each tumour kind is drawn for the tumour members, 'kind=weight,...' "
                             "(default: " + ",".join(f"{k}={w:g}" for k, w in KIND_MIX.items()) + ")")
    parser.add_argument("--hyperdense-share", type=float, default=None, metavar="F",
                        help="share of hyperdense lesions the tumour members see in the kinds that may be bright in "
                             f"the portal phase ({', '.join(HYPERDENSE_KINDS)}; default: each recipe's own, "
                             "0.05-0.15); validation and held-out cases keep the recipes")
    parser.add_argument("--tumor-inputs", choices=sorted(TUMOR_INPUTS), default="ct",
                        help="the tumour members' input channels")
    parser.add_argument("--tumor-members", default=",".join(DEFAULT_TUMOR_MEMBERS),
                        help="tumour members to train, comma-separated (tumor-demo-unet, tumor-demo-unet-deep, "
                             "tumor-demo-unet-wide, tumor-demo-unet-fine, tumor-demo-unet-deep-fine)")
    parser.add_argument("--tumor-patch", type=int, default=None, metavar="N",
                        help="the trained tumour members' patch side in voxels (a multiple of 16; default: each "
                             "card's 64): a larger patch shows a large lesion with more liver around it, in "
                             "training and in the pipeline's sliding window")
    parser.add_argument("--ensemble", default=None,
                        help="the ensemble's members, comma-separated (default: --tumor-members); one not "
                             "trained now is taken from --out or --init-from")
    parser.add_argument("--init-from", type=Path, default=None, metavar="DIR",
                        help="fine-tune: start each model from DIR/<name>.json's weights (e.g. Resources/Models)")
    parser.add_argument("--member-suffix", default="", metavar="SUFFIX",
                        help="write the trained tumour members as <name>SUFFIX (e.g. --member-suffix=-r10; still "
                             "fine-tuned from --init-from's <name>), so a new round can join the members it started "
                             "from in one --ensemble")
    parser.add_argument("--equal-weights", action="store_true",
                        help="weight the --ensemble members equally instead of fitting the weights on the "
                             "validation phantoms (for weights chosen with scripts/tune_postprocess.py)")
    args = parser.parse_args()
    if not 0.0 <= args.slab_fraction <= 1.0:
        parser.error("--slab-fraction must lie between 0 and 1")
    if args.hyperdense_share is not None and not 0.0 <= args.hyperdense_share <= 1.0:
        parser.error("--hyperdense-share must lie between 0 and 1")
    for flag, value in (("--refine-neighbour-fraction", args.refine_neighbour_fraction),
                        ("--liver-neighbour-fraction", args.liver_neighbour_fraction)):
        if not 0.0 <= value <= 1.0 - TrainConfig.positive_fraction:
            parser.error(f"{flag} must lie between 0 and {1.0 - TrainConfig.positive_fraction:.2f} "
                         f"(the rest of the model's patches are centred on the liver)")
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    started = time.time()

    tasks = set(args.tasks.split(","))
    if "liver" in tasks:
        train_liver(args)
    if "liver_refine" in tasks:
        train_liver_refine(args)
    if "tumor" in tasks:
        train_tumor_ensemble(args)
    log.info("done in %.0f s", time.time() - started)
    return 0


def initial_card(args: argparse.Namespace, name: str):
    """The card to fine-tune ``name`` from (``--init-from``), or None to start from scratch."""
    if args.init_from is None:
        return None
    path = args.init_from / f"{name}.json"
    if not path.exists() and name in WARM_START_FROM:
        path = args.init_from / f"{WARM_START_FROM[name]}.json"
    if not path.exists():
        log.info("%s: no card in %s to fine-tune from; training from scratch", name, args.init_from)
        return None
    return read_card(path)


def train_single_model(args: argparse.Namespace, card: ModelCard, steps: int, seed: int, data: str,
                       hard_negative_fraction: float = 0.0) -> None:
    """Train one (non-ensemble) model card on the phantoms and the real training case; ``data``
    opens the card's ``trained_on`` text. With ``hard_negative_fraction`` > 0 (a liver or
    refinement card) the phantoms carry their liver's neighbours and that share of the patches is
    centred on them."""
    started = time.time()
    samples = build_samples(card, args.phantoms, args.real_variants, seed_base=0,
                            perfusion_fraction=args.perfusion_fraction, real_cases=liver_real_cases(args),
                            neighbour_leaks=hard_negative_fraction > 0)
    log.info("%s: %d samples prepared (%.0f s)", card.name, len(samples), time.time() - started)
    start = initial_card(args, card.name)
    trained = train_model(card, samples, args.out, TrainConfig(steps=steps, seed=seed, init_from=start,
                                                                    learning_rate=args.learning_rate,
                                                                    hard_negative_fraction=hard_negative_fraction,
                                                                    slab_fraction=args.slab_fraction))
    trained.trained_on = describe_training(f"{data}{slab_text(args)}; {steps} steps, peak learning rate "
                                           f"{args.learning_rate:g}", start, HELD_OUT)
    write_card(trained, args.out / f"{trained.name}.json")


def slab_text(args: argparse.Namespace) -> str:
    """The ``trained_on`` words for ``--slab-fraction`` (empty without it)."""
    if args.slab_fraction <= 0:
        return ""
    low, high = TrainConfig.slab_mm
    return (f"; {args.slab_fraction:.0%} of the patches thinned to a {low:g}-{high:g} mm slab with its edge slices "
            "repeated (a scan covering part of the liver)")


def liver_real_cases(args: argparse.Namespace) -> List[str]:
    """The real CTs the liver and liver-refinement models train on (``--liver-real-cases``)."""
    return chosen_names(args.liver_real_cases, LIVER_REAL_CHOICES, "--liver-real-cases: unknown case(s)")


def chosen_names(text: str, choices: Sequence[str], what: str) -> List[str]:
    """The comma-separated names of ``text``, each one of ``choices``; else exits with one
    ``error:`` line naming ``what`` was wrong and the choices."""
    names = [n.strip() for n in text.split(",") if n.strip()]
    unknown = [n for n in names if n not in choices]
    if unknown or not names:
        raise SystemExit(f"error: {what} {', '.join(unknown) or '(none given)'}; choose from {', '.join(choices)}")
    return names


def describe_liver_real(args: argparse.Namespace) -> str:
    names = liver_real_cases(args)
    each = " each" if len(names) > 1 else ""
    return (f"the real CT{'s' if len(names) > 1 else ''} {' and '.join(names)} ({args.real_variants} variants{each}, "
            "half with synthetic tumours of every kind)")


def train_liver(args: argparse.Namespace) -> None:
    spills = args.liver_neighbour_fraction
    spill_text = (f"; {spills:.0%} of the patches centred on a neighbour organ beside the phantom's liver (stomach, "
                  "bowel, gallbladder, kidney, ...)" if spills > 0 else "")
    train_single_model(args, liver_card(), args.liver_steps, args.seed,
                       f"{args.phantoms} synthetic phantoms (seeds 0-{args.phantoms - 1}; two thirds with synthetic "
                       f"tumours of every kind) and {describe_liver_real(args)}; {args.perfusion_fraction:.0%} of the "
                       f"samples with a broad tumour-free darkening of part of the liver (synth.perfusion){spill_text}",
                       hard_negative_fraction=spills)


def train_liver_refine(args: argparse.Namespace) -> None:
    leaks = args.refine_neighbour_fraction
    leak_text = (f"; the phantoms' simulated masks also leak into the neighbour organs beside the liver, "
                 f"{leaks:.0%} of the patches centred on such a neighbour" if leaks > 0 else "")
    train_single_model(args, liver_refine_card(args.refine_spacing), args.refine_steps, args.seed + 100,
                       f"liver crops of {args.phantoms} synthetic phantoms (seeds 0-{args.phantoms - 1}; two thirds "
                       f"with synthetic tumours of every kind) and of {describe_liver_real(args)}, "
                       f"{args.perfusion_fraction:.0%} of the samples with a broad tumour-free darkening of part of "
                       "the liver (synth.perfusion), with simulated liver-stage masks as the prior "
                       f"(LiverTumorSegLib.develop.training.prior){leak_text}", hard_negative_fraction=leaks)


def train_tumor_ensemble(args: argparse.Namespace) -> None:
    """Train the ``--tumor-members`` and fit the weights of the ``--ensemble`` members (a member
    not trained now is taken from ``--out``, else copied from ``--init-from``)."""
    cards = {card.name: card for card in tumor_cards(args.tumor_inputs)}
    kind_mix = parse_kind_mix(args.kind_mix)
    suffix = args.member_suffix
    to_train = chosen_names(args.tumor_members, list(cards), "unknown tumour member(s)")
    known = list(cards) + [name + suffix for name in cards if suffix]
    known += [name for name in saved_tumor_members(args.out, args.init_from) if name not in known]
    in_ensemble = chosen_names(args.ensemble or ",".join(name + suffix for name in to_train), known,
                               "unknown tumour member(s)")
    samples_by_grid: dict = {}
    trained_cards = {}
    for index, name in enumerate(to_train):
        member_card = replace(with_patch(cards[name], args.tumor_patch), name=name + suffix)
        grid_key = (tuple(member_card.spacing_mm), tuple(member_card.input_channels))
        if grid_key not in samples_by_grid:
            samples_by_grid[grid_key] = build_samples(member_card, args.phantoms, args.real_variants, seed_base=0,
                                                      perfusion_fraction=args.perfusion_fraction,
                                                      kind_mix=kind_mix, hyperdense_share=args.hyperdense_share)
        start = initial_card(args, name)
        trained = train_model(member_card, samples_by_grid[grid_key], args.out,
                              TrainConfig(steps=args.tumor_steps, seed=args.seed + index + 1,
                                          positive_fraction=args.tumor_positive_fraction, init_from=start,
                                          hard_negative_fraction=args.tumor_hard_negative_fraction,
                                          lesion_balanced_fraction=args.tumor_lesion_balanced_fraction,
                                          learning_rate=args.learning_rate, slab_fraction=args.slab_fraction))
        inputs = "the CT" if args.tumor_inputs == "ct" else "the CT and the parenchyma map"
        mix_text = ", ".join(f"{kind} {weight:g}" for kind, weight in kind_mix.items())
        if args.hyperdense_share is not None:
            mix_text += (f"; {args.hyperdense_share:.0%} of the lesions of the {', '.join(HYPERDENSE_KINDS)} kinds "
                         "hyperdense")
        lesion_text = (f" ({args.tumor_lesion_balanced_fraction:.0%} of those on a lesion drawn uniformly among "
                       f"the sample's lesions, whatever its size)" if args.tumor_lesion_balanced_fraction > 0 else "")
        hard_text = (f", {args.tumor_hard_negative_fraction:.0%} in a tumour-free darkened region"
                     if args.tumor_hard_negative_fraction > 0 else "")
        trained.trained_on = describe_training(
            f"liver crops of {args.phantoms} synthetic phantoms with synthetic tumours of every kind and of the "
            f"real CTs ts_upper_abdomen_3mm and chaos_ct_1 (CHAOS challenge, CC BY-SA 4.0), "
            f"{args.real_variants} variants each, two thirds with synthetic tumours (kinds, by weight: {mix_text}), "
            f"{args.perfusion_fraction:.0%} with a broad tumour-free darkening of part of the liver (synth.perfusion); "
            f"inputs: {inputs} on a {format_spacing(member_card.spacing_mm)} grid; "
            f"{tuple(member_card.patch_size)}-voxel patches, {args.tumor_positive_fraction:.0%} "
            f"of them centred on a tumour{lesion_text}{hard_text}{slab_text(args)}; "
            f"{args.tumor_steps} steps, peak learning rate {args.learning_rate:g}", start, HELD_OUT)
        write_card(trained, args.out / f"{trained.name}.json")
        trained_cards[trained.name] = trained
    members = [trained_cards.get(name) or _existing_member(args, name) for name in in_ensemble]

    if args.equal_weights:
        weights, metrics = [1.0 / len(members)] * len(members), {}
        how = "equal weights (chosen with scripts/tune_postprocess.py on its validation cases)"
    else:
        # validation seeds: never used in training
        validation = build_samples(members[0], args.validation_phantoms, 2, seed_base=VALIDATION_PHANTOM_SEED)
        weights, scores = fit_ensemble_weights(members, validation)
        metrics = {"validation_dice_by_weight": scores}
        how = ("weights fitted on validation data (phantom seeds 5000+, real training liver with other synthetic "
               "tumours)")
    trained_on = members[0].trained_on if len({m.trained_on for m in members}) == 1 else (
        "members trained apart; each member's card says what it saw (" + ", ".join(m.name for m in members) + ")")
    ensemble = EnsembleCard(
        name="tumor-demo-ensemble", version="0.1.0", task="tumor",
        members=[EnsembleMember(m.name, float(w)) for m, w in zip(members, weights)],
        description=f"Weighted average of the tumor members' probabilities; {how}.",
        trained_on=trained_on, metrics=metrics, non_clinical=True,
        intended_use=NON_CLINICAL, source="scripts/train_embedded.py")
    write_card(ensemble, args.out / "tumor-demo-ensemble.json")
    log.info("ensemble weights %s", json.dumps([float(w) for w in weights]))


def format_spacing(spacing_mm: Sequence[float]) -> str:
    """'1 mm' for an isotropic grid, '0.8 x 0.8 x 2 mm' otherwise."""
    values = [f"{float(v):g}" for v in spacing_mm]
    return f"{values[0]} mm" if len(set(values)) == 1 else " x ".join(values) + " mm"


def with_patch(card: ModelCard, side: Optional[int]) -> ModelCard:
    """``card`` with a cubic patch of ``side`` voxels (None: unchanged); exits with one ``error:``
    line unless every down-sampling level divides it."""
    if side is None:
        return card
    divisor = int(np.prod(card.architecture_args.get("strides", [1])))
    if side <= 0 or side % divisor:
        raise SystemExit(f"error: --tumor-patch {side}: {card.name} needs a positive multiple of {divisor}")
    return replace(card, patch_size=(side, side, side))


def parse_kind_mix(text: Optional[str]) -> Dict[str, float]:
    """``--kind-mix``: 'kind=weight,...' (kinds not named are not drawn); None gives KIND_MIX."""
    if not text:
        return dict(KIND_MIX)
    mix = {}
    for item in text.split(","):
        name, _, weight = item.partition("=")
        name = name.strip()
        if name not in TUMOR_KINDS:
            raise SystemExit(f"error: --kind-mix: unknown tumour kind '{name}'; choose from {', '.join(TUMOR_KINDS)}")
        try:
            mix[name] = float(weight)
        except ValueError:
            raise SystemExit(f"error: --kind-mix: '{item}' is not kind=weight") from None
        if mix[name] < 0:
            raise SystemExit(f"error: --kind-mix: the weight of {name} is negative")
    if sum(mix.values()) <= 0:
        raise SystemExit("error: --kind-mix: every weight is 0")
    return mix


def saved_tumor_members(*folders: Optional[Path]) -> List[str]:
    """Names of the tumour models (single-model cards) saved in ``folders`` (None or missing ones
    skipped): an ``--ensemble`` may take them beside the members trained now, such as an earlier
    round under another ``--member-suffix``."""
    names: List[str] = []
    for folder in folders:
        if folder is None or not folder.is_dir():
            continue
        for path in sorted(folder.glob("*.json")):
            try:
                card = read_card(path)
            except LiverTumorSegError:  # not a model card: other JSON files may sit beside them
                continue
            if isinstance(card, ModelCard) and card.task == "tumor" and card.name not in names:
                names.append(card.name)
    return names


def _existing_member(args: argparse.Namespace, name: str) -> ModelCard:
    """An ensemble member not trained in this run: its card in ``--out``, else copied there
    (card and weights) from ``--init-from``."""
    path = args.out / f"{name}.json"
    if not path.exists() and args.init_from is not None and (args.init_from / f"{name}.json").exists():
        source = read_card(args.init_from / f"{name}.json")
        shutil.copyfile(source.weights_path, args.out / source.weights_file)
        shutil.copyfile(args.init_from / f"{name}.json", path)
    if not path.exists():
        raise SystemExit(f"error: ensemble member {name} was neither trained now nor found in --out or --init-from")
    return read_card(path)


if __name__ == "__main__":
    sys.exit(main())
