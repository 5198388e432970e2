"""Command line: ``livertumorseg segment|models|measure|lesion|train|evaluate|ensemble`` (also
``python -m LiverTumorSegLib``).

A user mistake ends in one ``error: ...`` line on stderr and exit code 1, never a traceback.
With ``--progress json`` each progress event is one JSON object per line on stdout, the
protocol the Slicer module reads.
"""

from __future__ import annotations

import argparse
import json
import logging
import re
import signal
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Sequence

from . import __version__, settings_schema
from .errors import CancelledError, LiverTumorSegError
from .progress import ProgressEvent

log = logging.getLogger("livertumorseg")
VERBOSE_HELP = "show the log of this library and the ones it uses (INFO and DEBUG); by default only warnings"


class _JsonLines:
    """Progress and results as JSON lines on stdout (the background-process protocol)."""

    def __call__(self, event: ProgressEvent) -> None:
        self.emit(event.to_dict())

    @staticmethod
    def emit(obj: Dict) -> None:
        sys.stdout.write(json.dumps(obj) + "\n")
        sys.stdout.flush()


class _Bars:
    """One tqdm bar per stage on stderr when it is a terminal; otherwise one plain line per
    finished stage (no half-drawn bars in logs). A failed stage's bar is cleared."""

    def __init__(self, prefix: str = "") -> None:
        from tqdm import tqdm

        self._tqdm = tqdm
        self.prefix = prefix
        self.interactive = sys.stderr.isatty()
        self.bar = None
        self.stage: Optional[str] = None
        self.started = 0.0

    def __call__(self, event: ProgressEvent) -> None:
        if event.stage != self.stage:
            self.close()
            self.stage = event.stage
            self.started = time.perf_counter()
            if self.interactive:
                self.bar = self._tqdm(total=100, desc=f"{self.prefix}{event.stage:<28}", unit="%", leave=True,
                                      bar_format="{desc} {bar} {n:3.0f}% {elapsed}", file=sys.stderr,
                                      mininterval=0.5)
        if self.bar is not None:
            percent = round(100 * event.fraction)
            if percent > self.bar.n:
                self.bar.update(percent - self.bar.n)
        elif event.fraction >= 1.0 and self.stage is not None:
            print(f"{self.prefix}{self.stage:<28} done ({time.perf_counter() - self.started:.1f} s)",
                  file=sys.stderr, flush=True)
            self.stage = None

    def close(self, failed: bool = False) -> None:
        if self.bar is not None:
            if failed:
                self.bar.leave = False
            self.bar.close()
            self.bar = None
        self.stage = None


class _JsonLogHandler(logging.Handler):
    def emit(self, record: logging.LogRecord) -> None:
        _JsonLines.emit({"event": "log", "level": record.levelname.lower(), "message": record.getMessage()})


def _configure_logging(progress_mode: str, verbose: bool) -> None:
    root = logging.getLogger()
    root.handlers.clear()
    handler: logging.Handler
    if progress_mode == "json":
        handler = _JsonLogHandler()
    else:
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(logging.Formatter("%(levelname)s: %(message)s"))
    root.addHandler(handler)
    # Quiet by default: warnings and errors only, from this library and from the ones it uses
    # (highdicom alone logs ~9 INFO lines per DICOM SEG); --verbose shows everything.
    root.setLevel(logging.DEBUG if verbose else logging.WARNING)
    for noisy in ("monai", "torch", "matplotlib"):  # their DEBUG output is noise even with --verbose
        logging.getLogger(noisy).setLevel(logging.WARNING)


# The pipeline's settings as ``segment`` options, in this order (declared in settings_schema).
SEGMENT_SETTINGS = ("device", "fast", "liver_model", "tumor_model", "tta", "refine_liver", "active_contour",
                    "interslice", "parenchyma_prior", "min_lesion_ml", "crop_margin_mm")


def _add_segment_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("segment", help="segment the liver and liver tumors of CT volumes",
                       description="Segment the liver and liver tumors of one or more CTs (NIfTI, NRRD, MHA/MHD "
                                   "files or DICOM series folders). Writes NAME.seg.nrrd, NAME.nii.gz, NAME.json "
                                   "and NAME_lesions.csv per input into --output.")
    p.add_argument("inputs", nargs="+", type=Path, metavar="INPUT")
    p.add_argument("--output", "-o", type=Path, required=True, metavar="DIR")
    p.add_argument("--force", action="store_true", help="overwrite existing output files")
    for name in SEGMENT_SETTINGS:
        settings_schema.add_argument(p, name)
    p.add_argument("--dicom-seg", action="store_true",
                   help="also write NAME_seg.dcm, a DICOM SEG referencing the input series (DICOM folder "
                        "inputs only; needs highdicom: pip install 'LiverTumorSegLib[dicom]')")
    p.add_argument("--progress", choices=["bar", "json", "none"], default="bar")


def _settings_from_args(args: argparse.Namespace):
    """The pipeline's settings from the parsed options; a tuned number not given is the tumor
    model card's (else the library default)."""
    from .pipeline import PipelineSettings

    return PipelineSettings.from_values(settings_schema.values_from_args(args, SEGMENT_SETTINGS))


def _check_dicom_seg_possible(inputs: Sequence[Path]) -> None:
    """Before any work: a DICOM SEG needs DICOM folder inputs and highdicom."""
    files = [p for p in inputs if not p.is_dir()]
    if files:
        raise LiverTumorSegError(f"--dicom-seg needs DICOM folder inputs (a DICOM SEG references the CT's "
                                 f"DICOM series); {files[0]} is a file")
    from .io.dicom_seg import require_highdicom

    require_highdicom()


def cmd_segment(args: argparse.Namespace) -> int:
    from .io.volume import load_volume, output_name
    from .io.writers import check_not_overwriting, write_outputs
    from .pipeline import Pipeline
    from .progress import Progress

    names = [output_name(p) for p in args.inputs]
    duplicates = sorted({n for n in names if names.count(n) > 1})
    if duplicates:
        raise LiverTumorSegError(f"several inputs would write outputs named '{duplicates[0]}'; "
                                 "segment them into different --output folders")
    for name in names:
        check_not_overwriting(args.output, name, args.force, args.dicom_seg)
    for path in args.inputs:
        if not path.exists():
            raise LiverTumorSegError(f"{path} does not exist")
    if args.dicom_seg:
        _check_dicom_seg_possible(args.inputs)

    pipeline = Pipeline(_settings_from_args(args))
    failures = 0
    for index, path in enumerate(args.inputs):
        prefix = f"[{index + 1}/{len(args.inputs)}] " if len(args.inputs) > 1 else ""
        callback: Callable[[ProgressEvent], None]
        bars = None
        if args.progress == "json":
            callback = _JsonLines()
        elif args.progress == "bar":
            bars = _Bars(prefix)
            callback = bars
        else:
            callback = lambda event: None  # noqa: E731
        progress = Progress(callback)
        try:
            progress.report("load", 0.0, str(path))
            volume = load_volume(path)
            progress.report("load", 1.0)
            result = pipeline.run(volume.image, progress)
            progress.report("write", 0.0)
            outputs = write_outputs(result, path, volume.name, volume.source, args.output, force=args.force,
                                    dicom_seg_source=path if args.dicom_seg else None)
            progress.report("write", 1.0)
        except BaseException as exc:
            if bars is not None:
                bars.close(failed=True)
            if not isinstance(exc, LiverTumorSegError) or isinstance(exc, CancelledError) or len(args.inputs) == 1:
                raise
            failures += 1
            print(f"error: {path}: {exc}", file=sys.stderr)
            continue
        if bars is not None:
            bars.close()
        m = result.measurements
        if args.progress == "json":
            _JsonLines.emit({"event": "result", "input": str(path), "name": volume.name, "outputs": outputs})
        else:
            tlvr = "n/a" if m.tlvr is None else f"{100 * m.tlvr:.2f} %"
            print(f"{volume.name}: liver {m.liver_volume_ml:.1f} mL (tumor included), tumor {m.tumor_volume_ml:.1f} mL, "
                  f"TLVR {tlvr}, {len(m.lesions)} lesion(s) -> {outputs['segmentation']}")
        for warning in result.warnings:
            log.warning(warning)
    if failures:
        print(f"error: {failures} of {len(args.inputs)} inputs failed (see above)", file=sys.stderr)
        return 1
    return 0


def cmd_models(args: argparse.Namespace) -> int:
    from .models.registry import ModelRegistry

    registry = ModelRegistry.default()
    if args.models_command == "list":
        cards = registry.cards()
        if args.json:
            print(json.dumps([dict(c.to_dict(), location=c.card_path) for c in cards.values()], indent=2))
        else:
            for card in cards.values():
                badge = "  [NON-CLINICAL]" if card.non_clinical else ""
                detail = (", ".join(f"{m.model}×{m.weight:g}" for m in card.members) if card.kind == "ensemble"
                          else card.architecture)
                print(f"{card.name:<28} {card.version:<8} {card.task:<6} {card.kind:<9} {detail}{badge}")
            if not cards:
                print("no models installed")
        return 0
    if args.models_command == "verify":
        cards = registry.cards()
        names = args.names or sorted(cards)
        problems = 0
        checked = set()
        for name in names:
            card = registry.resolve(name)
            members = registry.ensemble_members(card)
            for member in members:
                if member.name in checked:  # a member of an ensemble is also listed on its own
                    continue
                checked.add(member.name)
                problem = registry.verify(member)
                if problem:
                    problems += 1
                    print(f"FAIL {member.name}: {problem}")
                else:
                    print(f"ok   {member.name} (sha256 {member.weights_sha256[:12]}...)")
        for path, reason in registry.broken_cards().items():
            if not args.names:
                problems += 1
                print(f"FAIL {path}: {reason}")
        if problems:
            print(f"error: {problems} model problem(s) found; reinstall or re-import those models", file=sys.stderr)
            return 1
        return 0
    if args.models_command == "import":
        card = registry.import_card(args.card, force=args.force)
        print(f"imported {card.name} {card.version} into {Path(card.card_path).parent}")
        return 0
    raise AssertionError(args.models_command)


def cmd_measure(args: argparse.Namespace) -> int:
    """Recompute measurements from an (edited) labelmap, optionally with its CT for mean HU."""
    import SimpleITK as sitk

    from .geometry import Geometry
    from .io.volume import load_volume, output_name, read_labelmap
    from .measure import measure_labelmap, write_lesions_csv

    labelmap_path = Path(args.labelmap)
    labelmap = read_labelmap(labelmap_path)
    labels = sitk.GetArrayFromImage(labelmap)
    ct_hu = None
    if args.ct:
        ct = load_volume(args.ct).image
        if not Geometry.of(ct).matches(Geometry.of(labelmap)):
            raise LiverTumorSegError("the labelmap and the CT are not on the same grid; give the CT it was made from")
        ct_hu = sitk.GetArrayViewFromImage(ct)
    m = measure_labelmap(labels.astype("uint8"), Geometry.of(labelmap), ct_hu)
    name = output_name(labelmap_path)
    out_dir = Path(args.output)
    json_path, csv_path = out_dir / f"{name}_measurements.json", out_dir / f"{name}_lesions.csv"
    for p in (json_path, csv_path):
        if p.exists() and not args.force:
            raise LiverTumorSegError(f"output {p} already exists; use --force to overwrite it")
    out_dir.mkdir(parents=True, exist_ok=True)
    json_path.write_text(json.dumps(m.to_dict(), indent=2) + "\n", encoding="utf-8")
    write_lesions_csv(csv_path, m)
    print(json.dumps({k: v for k, v in m.to_dict().items() if k != "lesions"}))
    return 0


def _parse_point(text: str) -> tuple:
    """``R,A,S`` in mm -> three floats; a clear error otherwise."""
    parts = [p.strip() for p in str(text).split(",")]
    try:
        values = tuple(float(p) for p in parts)
    except ValueError:
        values = ()
    if len(values) != 3 or not all(v == v and abs(v) != float("inf") for v in values):
        raise LiverTumorSegError(f"--at needs the point as R,A,S in mm (three numbers, as 3D Slicer shows them), "
                                 f"e.g. --at 12.5,-30,104; got '{text}'")
    return values


def _add_lesion_parser(sub: argparse._SubParsersAction) -> argparse.ArgumentParser:
    p = sub.add_parser("lesion", help="add the lesion at a point, or remove the tumor under it (one click)",
                       description="Correct a segmentation at one point: 'add' segments the lesion there (tumor "
                                   "ensemble on a patch around the point, else the CT's own contrast) and adds it "
                                   "to the tumor; 'remove' turns the tumor lesion there into liver. Nothing else "
                                   "changes. Writes NAME.seg.nrrd, NAME.nii.gz, NAME.json and NAME_lesions.csv "
                                   "(NAME: the labelmap's name) with updated measurements into --output.")
    p.add_argument("action", choices=["add", "remove"])
    p.add_argument("ct", type=Path, metavar="CT", help="the CT (file or DICOM folder) the labelmap was made from")
    p.add_argument("labelmap", type=Path, metavar="LABELMAP",
                   help="the 0/1/2 labelmap (NIfTI, NRRD) or the .seg.nrrd written by 'segment'")
    p.add_argument("--at", required=True, metavar="R,A,S", help="the point, RAS mm as 3D Slicer shows it")
    p.add_argument("--output", "-o", type=Path, required=True, metavar="DIR")
    p.add_argument("--force", action="store_true", help="overwrite existing output files")
    settings_schema.add_argument(p, "tumor_model",
                                 help="the tumor model or ensemble that draws an added lesion (default: %(default)s)")
    return p


@dataclass
class _EditResult:
    """What :func:`~LiverTumorSegLib.io.writers.write_outputs` writes for a lesion edit."""

    labelmap: Any
    measurements: Any
    models: List[Dict]
    device: str
    seconds_per_stage: Dict[str, float]
    settings: Dict
    warnings: List[str] = field(default_factory=list)
    tumor_uncertainty: Any = None


def cmd_lesion(args: argparse.Namespace) -> int:
    """Add the lesion at a point, or remove the tumor there, and write the four outputs."""
    import SimpleITK as sitk

    from . import edit
    from .geometry import Geometry
    from .io.volume import load_volume, output_name
    from .io.writers import check_not_overwriting, write_outputs
    from .measure import measure_labelmap

    point = _parse_point(args.at)
    name = output_name(args.labelmap)
    check_not_overwriting(args.output, name, args.force)
    if not Path(args.labelmap).is_file():
        raise LiverTumorSegError(f"{args.labelmap} does not exist")
    volume = load_volume(args.ct)
    labelmap = edit.load_labelmap(args.labelmap, volume.image)
    models: List[Dict] = []
    if args.action == "add":
        editor = edit.LesionEditor(tumor_model=args.tumor_model)
        result = editor.add(volume.image, labelmap, point)
        models = editor.model_summaries()
    else:
        result = edit.remove_lesion(volume.image, labelmap, point)
    labels = sitk.GetArrayViewFromImage(result.labelmap)
    measurements = measure_labelmap(labels, Geometry.of(result.labelmap), sitk.GetArrayViewFromImage(volume.image))
    summary = result.summary()
    report = _EditResult(labelmap=result.labelmap, measurements=measurements, models=models, device="cpu",
                         seconds_per_stage={f"lesion_{args.action}": round(result.seconds, 3)},
                         settings={"command": f"lesion {args.action}", "labelmap": str(args.labelmap),
                                   "at_ras_mm": list(point), "edit": summary})
    outputs = write_outputs(report, args.ct, name, volume.source, args.output, force=args.force)
    lesion = result.lesion
    done = "added" if args.action == "add" else "removed"
    how = f", {result.method}" if args.action == "add" else ""
    tlvr = "n/a" if measurements.tlvr is None else f"{100 * measurements.tlvr:.2f} %"
    print(f"{name}: {done} a lesion of {lesion.volume_ml:.2f} mL ({lesion.longest_axial_diameter_mm:.0f} mm{how}; "
          f"{result.voxels_changed} voxels changed); liver {measurements.liver_volume_ml:.1f} mL (tumor included), "
          f"tumor {measurements.tumor_volume_ml:.1f} mL, TLVR {tlvr}, {len(measurements.lesions)} lesion(s) "
          f"-> {outputs['segmentation']}")
    return 0


def _add_train_parser(sub: argparse._SubParsersAction) -> argparse.ArgumentParser:
    from .develop.training.architectures import ARCHITECTURE_PRESETS
    from .develop.training.config import LOSS_NAMES, TASK_DEFAULTS

    p = sub.add_parser("train", help="train a liver or tumor model on a labelled dataset",
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
    from .develop.training.config import parse_numbers, split_names

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
    from .develop.training.config import build_config, read_config_file
    from .develop.training.run import TrainingRun

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
    p = sub.add_parser("evaluate", help="run the pipeline on a labelled dataset and score it against its labels",
                       description="Segment every case of a labelled dataset (any layout train reads) with the full "
                                   "pipeline and compare with its labels by physical position: Dice per case with a "
                                   "bootstrap 95% CI, global Dice, HD95, ASSD, lesion-wise recall/precision by size "
                                   "(<10, 10-20, >20 mm). Writes evaluation.json, evaluation_cases.csv, "
                                   "evaluation_lesions.csv and evaluation.png into --output.")
    p.add_argument("--data", required=True, type=Path, metavar="DIR", help="the labelled dataset folder")
    p.add_argument("--output", "-o", required=True, type=Path, metavar="DIR")
    p.add_argument("--liver-model", default=None, metavar="NAME|CARD.json")
    p.add_argument("--tumor-model", default=None, metavar="NAME|CARD.json")
    p.add_argument("--tta", action="store_true", help="flip test-time augmentation of the tumor ensemble")
    p.add_argument("--fast", action="store_true", help="less sliding-window overlap and no TTA")
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
    from .develop.evaluation import check_outputs, run_evaluation, select_cases, summarize, write_evaluation
    from .pipeline import Pipeline, PipelineSettings
    from .develop.training.cases import open_training_cases

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
    p = sub.add_parser("ensemble", help="a tumor ensemble card with member weights fitted on held-out cases",
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

    from .develop.training.ensemble import EnsembleRequest, build_ensemble

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


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="livertumorseg", description="Liver and liver-tumor segmentation of CT "
                                     "(LiverTumorSegLib). Embedded demo models are NOT for clinical use.")
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    parser.add_argument("--verbose", action="store_true", help=VERBOSE_HELP)
    parser.add_argument("--debug", action="store_true", help="show the traceback of internal errors")
    sub = parser.add_subparsers(dest="command", required=True)
    _add_segment_parser(sub)
    models = sub.add_parser("models", help="list, verify or import models")
    msub = models.add_subparsers(dest="models_command", required=True)
    lst = msub.add_parser("list", help="installed models and ensembles")
    lst.add_argument("--json", action="store_true")
    ver = msub.add_parser("verify", help="check weights files against their cards' sha256")
    ver.add_argument("names", nargs="*")
    imp = msub.add_parser("import", help="copy a model card and its weights into the user cache (each model in "
                                         "its own folder), after checking that the weights fit the card")
    imp.add_argument("card", type=Path)
    imp.add_argument("--force", action="store_true")
    meas = sub.add_parser("measure", help="recompute volumes, TLVR and the lesion table from a labelmap")
    meas.add_argument("labelmap", type=Path)
    meas.add_argument("--ct", type=Path, default=None, help="the CT, for the lesions' mean HU")
    meas.add_argument("--output", "-o", type=Path, required=True)
    meas.add_argument("--force", action="store_true")
    lesion = _add_lesion_parser(sub)
    train = _add_train_parser(sub)
    evaluate = _add_evaluate_parser(sub)
    ensemble = _add_ensemble_parser(sub)
    # --verbose is also accepted after the command
    for command in (sub.choices["segment"], lst, ver, imp, meas, lesion, train, evaluate, ensemble):
        command.add_argument("--verbose", action="store_true", default=argparse.SUPPRESS, help=VERBOSE_HELP)
    return parser


def _raise_on_sigterm(signum, frame) -> None:  # noqa: ANN001
    raise CancelledError("the run was stopped (SIGTERM); no output was written")


def _attach_point_values(argv: Sequence[str]) -> List[str]:
    """``--at -12.5,30,4`` -> ``--at=-12.5,30,4``: argparse takes a value starting with '-' that is
    not a plain number for an option, and RAS points are often negative."""
    out: List[str] = []
    items = list(argv)
    index = 0
    while index < len(items):
        item = items[index]
        if item == "--at" and index + 1 < len(items) and re.fullmatch(r"-[0-9.eE+,\s-]*", items[index + 1]):
            out.append(f"--at={items[index + 1]}")
            index += 2
            continue
        out.append(item)
        index += 1
    return out


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = build_parser()
    args = parser.parse_args(_attach_point_values(sys.argv[1:] if argv is None else argv))
    _configure_logging(getattr(args, "progress", "bar"), args.verbose)
    try:
        signal.signal(signal.SIGTERM, _raise_on_sigterm)
    except ValueError:  # not the main thread
        pass
    commands: Dict[str, Callable[[argparse.Namespace], int]] = {
        "segment": cmd_segment, "models": cmd_models, "measure": cmd_measure, "lesion": cmd_lesion,
        "train": cmd_train, "evaluate": cmd_evaluate, "ensemble": cmd_ensemble}
    try:
        return commands[args.command](args)
    except CancelledError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 130
    except LiverTumorSegError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("error: interrupted; no output was written", file=sys.stderr)
        return 130
    except Exception as exc:  # a bug, not a user mistake: say so, traceback only on request
        if args.debug:
            raise
        print(f"error: internal error ({type(exc).__name__}: {exc}); please report it, rerun with --debug "
              "for the details", file=sys.stderr)
        return 3


def entry_point() -> None:
    sys.exit(main())
