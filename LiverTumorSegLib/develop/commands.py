"""The development package's commands: ``livertumorseg train``, ``evaluate`` and ``ensemble``.

``LiverTumorSegLib.cli`` lists them (their one-line help is ``cli.DEVELOP_COMMANDS``) and builds
their parsers from here only when one of them runs, so ``segment``, ``measure``, ``lesion`` and
``models`` never import this package; the Slicer extension does not ship it.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any, Callable, Dict, List

from .. import __version__, settings_schema
from ..cli import DEVELOP_COMMANDS
from ..errors import CancelledError, LiverTumorSegError
from .training.architectures import ARCHITECTURE_PRESETS
from .training.config import LOSS_NAMES, TASK_DEFAULTS, build_config, parse_numbers, read_config_file, split_names


def add_parsers(sub: argparse._SubParsersAction) -> List[argparse.ArgumentParser]:
    """The parsers of train, evaluate and ensemble (in ``DEVELOP_COMMANDS``' order)."""
    return [_add_train_parser(sub), _add_evaluate_parser(sub), _add_ensemble_parser(sub)]


def _add_train_parser(sub: argparse._SubParsersAction) -> argparse.ArgumentParser:
    p = sub.add_parser("train", help=DEVELOP_COMMANDS["train"],
                       description="Train a liver or tumor model on MSD Task03, LiTS, HCC-TACE-Seg or a plain "
                                   "images/ + labels/ folder (detected from --data). Writes NAME.json + "
                                   "NAME.safetensors (load them with segment --liver-model/--tumor-model), the "
                                   "split, a CSV log and checkpoints into --output. Settings come from the flags, "
                                   "else from --config FILE (JSON or YAML, keys as the flags), else the defaults.")
    p.add_argument("--config", type=Path, default=None, metavar="FILE", help="settings file (JSON or YAML)")
    p.add_argument("--data", default=None, metavar="DIR", help="the labelled dataset folder")
    p.add_argument("--task", choices=list(TASK_DEFAULTS), default=None)
    p.add_argument("--output", "-o", default=None, metavar="DIR")
    p.add_argument("--architecture", choices=list(ARCHITECTURE_PRESETS), default=None,
                   help="default unet")
    p.add_argument("--architecture-args", default=None, metavar="JSON",
                   help="network arguments merged onto the architecture's defaults, e.g. '{\"channels\": [8, 16]}'")
    p.add_argument("--loss", choices=list(LOSS_NAMES), default=None,
                   help="Dice+CE (default), generalized Dice + focal, or balanced Dice (+CE)")
    p.add_argument("--gpa", action="store_true", default=None,
                   help="greedy parameter averaging of the checkpoints of the second half of the run")
    p.add_argument("--gpa-start", type=float, default=None, metavar="FRACTION",
                   help="checkpoints from this fraction of the run on are GPA candidates (default 0.5)")
    p.add_argument("--folds", type=int, default=None, help="patient-level folds (default 5; 1: no validation)")
    p.add_argument("--fold", type=int, default=None, help="the validation fold, 0-based (default 0)")
    p.add_argument("--steps", type=int, default=None, help="optimizer steps (default 1000)")
    p.add_argument("--epochs", type=int, default=None, help="instead of --steps: passes over the training cases")
    p.add_argument("--validate-every", type=int, default=None, metavar="N", help="steps (default a tenth of the run)")
    p.add_argument("--batch-size", type=int, default=None)
    p.add_argument("--learning-rate", type=float, default=None)
    p.add_argument("--weight-decay", type=float, default=None)
    p.add_argument("--positive-fraction", type=float, default=None,
                   help="share of patches centred on the target (default 0.67)")
    p.add_argument("--no-affine", dest="affine", action="store_false", default=None,
                   help="no random rotation and scaling")
    p.add_argument("--vae-weight", type=float, default=None, help="weight of SegResNetVAE's VAE loss (default 0.1)")
    p.add_argument("--patch-size", default=None, metavar="X,Y,Z")
    p.add_argument("--spacing", default=None, metavar="X,Y,Z", help="model grid spacing in mm")
    p.add_argument("--hu-window", default=None, metavar="LOW,HIGH")
    p.add_argument("--seed", type=int, default=None)
    p.add_argument("--name", default=None, help="the model's name (default TASK-ARCHITECTURE[-foldI])")
    p.add_argument("--device", choices=["auto", "cpu", "cuda"], default=None)
    p.add_argument("--amp", action="store_true", default=None, help="mixed precision (CUDA)")
    p.add_argument("--workers", type=int, default=None, help="data loader worker processes (default 0)")
    p.add_argument("--resume", action="store_true", default=None, help="continue the run saved in --output")
    p.add_argument("--init-from", default=None, metavar="NAME|CARD.json", help="fine-tune this model (its network, grid, HU window and patch size are used)")
    p.add_argument("--label-smoothing", choices=["tlvr"], default=None,
                   help="knowledge-informed label smoothing with a TLVR regressed from clinical variables")
    p.add_argument("--smoothing-alpha", type=float, default=None, help="label smoothing strength (default 0.1)")
    p.add_argument("--clinical", default=None, metavar="TABLE", help="clinical table (.csv/.xlsx) keyed by TCIA_ID")
    p.add_argument("--clinical-columns", default=None, metavar="A,B", help="regression variables (default: "
                                                                           "every numeric column)")
    p.add_argument("--category-column", default=None, metavar="COLUMN",
                   help="clinical column with the tumour category each case belongs to (balanced Dice loss)")
    p.add_argument("--pseudo-liver-model", default=None, metavar="NAME|CARD.json",
                   help="liver model giving liver pseudo-labels to cases without a liver label")
    p.add_argument("--progress", choices=["bar", "none"], default="bar")
    return p


def _train_flags(args: argparse.Namespace) -> Dict[str, Any]:
    """The settings given as flags (None where not given)."""
    architecture_args = None
    if args.architecture_args is not None:
        try:
            architecture_args = json.loads(args.architecture_args)
        except ValueError:
            architecture_args = None
        if not isinstance(architecture_args, dict):
            raise LiverTumorSegError(f"--architecture-args takes a JSON object, e.g. '{{\"channels\": [8, 16]}}'; got "
                                     f"{args.architecture_args!r}")
    return {"data": args.data, "task": args.task, "output": args.output, "architecture": args.architecture,
            "architecture_args": architecture_args, "loss": args.loss, "gpa": args.gpa, "folds": args.folds,
            "fold": args.fold, "steps": args.steps, "epochs": args.epochs, "validate_every": args.validate_every,
            "batch_size": args.batch_size, "learning_rate": args.learning_rate, "weight_decay": args.weight_decay,
            "positive_fraction": args.positive_fraction, "affine": args.affine, "vae_weight": args.vae_weight,
            "gpa_start": args.gpa_start,
            "patch_size": parse_numbers(args.patch_size, 3, int, "--patch-size") if args.patch_size else None,
            "spacing_mm": parse_numbers(args.spacing, 3, float, "--spacing") if args.spacing else None,
            "hu_window": parse_numbers(args.hu_window, 2, float, "--hu-window") if args.hu_window else None,
            "seed": args.seed, "name": args.name, "device": args.device, "amp": args.amp, "workers": args.workers,
            "resume": args.resume, "init_from": args.init_from, "label_smoothing": args.label_smoothing,
            "smoothing_alpha": args.smoothing_alpha, "clinical": args.clinical,
            "clinical_columns": split_names(args.clinical_columns), "category_column": args.category_column,
            "pseudo_liver_model": args.pseudo_liver_model}


class _TrainingProgress:
    """A tqdm bar over the steps on a terminal; otherwise one line per validation."""

    def __init__(self, enabled: bool) -> None:
        self.enabled = enabled
        self.interactive = sys.stderr.isatty()
        self.bar = None

    def __call__(self, event) -> None:  # noqa: ANN001 (training.run.RunEvent)
        if not self.enabled:
            return
        if event.kind == "prepare":
            print(f"preparing case {event.step + 1}/{event.total}: {event.info['case']}", file=sys.stderr, flush=True)
        elif event.kind == "step" and self.interactive:
            if self.bar is None:
                from tqdm import tqdm

                self.bar = tqdm(total=event.total, initial=event.step - 1, desc="train", unit="step", file=sys.stderr,
                                mininterval=0.5)
            self.bar.update(event.step - self.bar.n)
            self.bar.set_postfix(loss=f"{event.info['loss']:.4f}", refresh=False)
        elif event.kind == "validation":
            line = f"step {event.step}/{event.total}: validation Dice {event.info['dice']:.4f} " \
                   f"(best {event.info['best']:.4f})"
            if self.bar is not None:
                self.bar.write(line, file=sys.stderr)
            else:
                print(line, file=sys.stderr, flush=True)
        elif event.kind == "done":
            self.close()

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None


def cmd_train(args: argparse.Namespace) -> int:
    """Train one model from a dataset folder; print where its card is."""
    from .training.run import TrainingRun  # PyTorch

    settings = read_config_file(args.config) if args.config else {}
    config = build_config(settings, _train_flags(args))
    progress = _TrainingProgress(args.progress == "bar")
    try:
        card = TrainingRun(config, progress).run()
    except (KeyboardInterrupt, CancelledError):
        checkpoint = config.output_dir / "checkpoint_last.pt"
        where = f"; continue it from its last checkpoint with --resume" if checkpoint.is_file() else ""
        raise CancelledError(f"training was stopped before its last step{where}") from None
    finally:
        progress.close()
    if card is None:  # a process other than 0 of a distributed run: process 0 reports
        return 0
    validation = card.metrics.get("validation", {})
    score = f", validation Dice per case {validation['dice_per_case_mean']:.4f}" if validation else ""
    print(f"{card.name}: {card.task} model ({card.architecture}, {card.metrics['selected_weights']} weights{score}) "
          f"-> {card.card_path}")
    return 0


def _add_evaluate_parser(sub: argparse._SubParsersAction) -> argparse.ArgumentParser:
    p = sub.add_parser("evaluate", help=DEVELOP_COMMANDS["evaluate"],
                       description="Segment every case of a labelled dataset (any layout train reads) with the full "
                                   "pipeline and compare with its labels by physical position: Dice per case with a "
                                   "bootstrap 95% CI, global Dice, HD95, ASSD, lesion-wise recall/precision by size "
                                   "(<10, 10-20, >20 mm). Writes evaluation.json, evaluation_cases.csv, "
                                   "evaluation_lesions.csv and evaluation.png into --output.")
    p.add_argument("--data", required=True, type=Path, metavar="DIR", help="the labelled dataset folder")
    p.add_argument("--output", "-o", required=True, type=Path, metavar="DIR")
    p.add_argument("--liver-model", default=None, metavar="NAME|CARD.json")
    p.add_argument("--tumor-model", default=None, metavar="NAME|CARD.json")
    settings_schema.add_argument(p, "tta")
    settings_schema.add_argument(p, "fast")
    p.add_argument("--split", type=Path, default=None, metavar="SPLIT.json",
                   help="evaluate only the validation cases of this split (the split.json of a train run)")
    p.add_argument("--device", choices=["auto", "cpu", "cuda"], default="auto")
    p.add_argument("--bootstrap", type=int, default=2000, metavar="N", help="bootstrap resamples of the CIs")
    p.add_argument("--seed", type=int, default=0, help="seed of the bootstrap")
    p.add_argument("--force", action="store_true", help="overwrite existing output files")
    p.add_argument("--progress", choices=["bar", "none"], default="bar")
    return p


def cmd_evaluate(args: argparse.Namespace) -> int:
    """Score the pipeline on a labelled dataset; print the summary's headline numbers."""
    from .evaluation import check_outputs, run_evaluation, select_cases, summarize, write_evaluation
    from ..pipeline import Pipeline, PipelineSettings
    from .training.cases import open_training_cases

    if args.bootstrap < 1:
        raise LiverTumorSegError(f"--bootstrap must be 1 or more, got {args.bootstrap}")
    paths = check_outputs(args.output, args.force)
    layout, cases = open_training_cases(args.data)
    cases = select_cases(cases, args.split)
    settings = PipelineSettings(device=args.device, fast=args.fast, tta=args.tta)
    if args.liver_model:
        settings.liver_model = args.liver_model
    if args.tumor_model:
        settings.tumor_model = args.tumor_model
    pipeline = Pipeline(settings)

    def on_case(index: int, total: int, scores: Dict[str, Any]) -> None:
        if args.progress == "none":
            return
        parts = [f"{s} Dice {scores[s]['dice']:.3f}" for s in ("liver", "tumor") if scores.get(s)]
        failed = f" (pipeline failed: {scores['error']})" if scores.get("error") else ""
        print(f"[{index + 1}/{total}] {scores['case']}: {', '.join(parts) or 'nothing annotated'}, "
              f"{scores['seconds']:.1f} s{failed}", file=sys.stderr, flush=True)

    results = run_evaluation(cases, pipeline, on_case)
    summary = summarize(results, args.bootstrap, args.seed)
    record = {"data": str(Path(args.data).absolute()), "layout": layout,
              "split": str(args.split) if args.split else None, "models": pipeline.model_summaries,
              "pipeline": {"tta": settings.use_tta, "fast": args.fast, "device": pipeline.device.type},
              "bootstrap": {"resamples": args.bootstrap, "seed": args.seed}, "version": __version__}
    written = write_evaluation(paths, results, summary, record)
    headline = []
    for structure in ("liver", "tumor"):
        entry = summary[structure]
        if entry:
            per_case = entry["dice_per_case"]
            low, high = per_case["ci95"]
            headline.append(f"{structure} Dice per case {per_case['mean']:.4f} [95% CI {low:.4f}-{high:.4f}], "
                            f"global {entry['dice_global']:.4f}")
    print(f"{len(results)} case(s): {'; '.join(headline)} -> {written['report']}")
    return 0


def _add_ensemble_parser(sub: argparse._SubParsersAction) -> argparse.ArgumentParser:
    p = sub.add_parser("ensemble", help=DEVELOP_COMMANDS["ensemble"],
                       description="Fit the weights of a tumor ensemble on the validation cases of --data (those of "
                                   "the members' split.json, of --split, or with --all-cases every case) and write "
                                   "its card; members given as card files are copied beside it, so segment "
                                   "--tumor-model CARD loads it as it is.")
    p.add_argument("--members", nargs="+", required=True, metavar="NAME|CARD.json", help="tumor models (two or more)")
    p.add_argument("--data", required=True, type=Path, metavar="DIR", help="the labelled dataset folder")
    p.add_argument("--output", "-o", required=True, type=Path, metavar="CARD.json", help="the ensemble card to write")
    p.add_argument("--split", type=Path, default=None, metavar="SPLIT.json",
                   help="fit on this split's validation cases (default: those of the members' split.json)")
    p.add_argument("--all-cases", action="store_true", help="fit on every case of --data (held-out data only)")
    p.add_argument("--step", type=float, default=0.1, help="grid step of the weights (default 0.1)")
    p.add_argument("--name", default=None, help="the ensemble's name (default: the card file's name)")
    p.add_argument("--device", choices=["auto", "cpu", "cuda"], default="auto")
    p.add_argument("--force", action="store_true", help="overwrite an existing card")
    p.add_argument("--progress", choices=["bar", "none"], default="bar")
    return p


def cmd_ensemble(args: argparse.Namespace) -> int:
    """Fit an ensemble's weights; print them and where its card is."""
    import shlex

    from .training.ensemble import EnsembleRequest, build_ensemble

    if args.split is not None and args.all_cases:
        raise LiverTumorSegError("give --split or --all-cases, not both")

    def on_case(index: int, total: int, case: str) -> None:
        if args.progress == "bar":
            print(f"[{index + 1}/{total}] {case}", file=sys.stderr, flush=True)

    words = ["livertumorseg", "ensemble", "--members", *args.members, "--data", str(Path(args.data).absolute()),
             "--output", str(args.output), "--step", f"{args.step:g}"]
    words += ["--split", str(args.split)] if args.split else (["--all-cases"] if args.all_cases else [])
    request = EnsembleRequest(members=list(args.members), data=args.data, output=args.output, split=args.split,
                              all_cases=args.all_cases, step=args.step, name=args.name, device=args.device,
                              force=args.force, command_line=" ".join(shlex.quote(w) for w in words))
    card = build_ensemble(request, on_case=on_case)
    validation = card.metrics["validation"]
    weights = ", ".join(f"{m.model} {m.weight:g}" for m in card.members)
    print(f"{card.name}: tumor ensemble ({weights}; Dice per case {validation['dice_per_case_mean']:.4f} on "
          f"{validation['cases']} case(s)) -> {card.card_path}")
    return 0


COMMANDS: Dict[str, Callable[[argparse.Namespace], int]] = {
    "train": cmd_train, "evaluate": cmd_evaluate, "ensemble": cmd_ensemble}
