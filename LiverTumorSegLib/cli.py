"""Command line: ``livertumorseg segment|models|measure|lesion|train|evaluate|ensemble`` (also
``python -m LiverTumorSegLib``).

``train``, ``evaluate`` and ``ensemble`` are the development package's (``LiverTumorSegLib.develop``,
``develop.commands``), imported only when one of them runs; where this installation lacks it (the
Slicer extension) they end in one error line that says how to get it.

A user mistake ends in one ``error: ...`` line on stderr and exit code 1, never a traceback.
With ``--progress json`` each progress event is one JSON object per line on stdout, the
protocol the Slicer module reads.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import logging
import os
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
DEVELOP_PACKAGE = f"{__package__}.develop"
DEVELOP_COMMANDS = {"train": "train a liver or tumor model on a labelled dataset",
                    "evaluate": "run the pipeline on a labelled dataset and score it against its labels",
                    "ensemble": "a tumor ensemble card with member weights fitted on held-out cases"}


def develop_available() -> bool:
    """Whether this installation has the development package (training, evaluation, dataset
    readers); the Slicer extension ships only what segment, measure, lesion and models need."""
    try:
        return importlib.util.find_spec(DEVELOP_PACKAGE) is not None
    except ImportError:
        return False


def develop_missing_message(command: str) -> str:
    return (f"livertumorseg {command} needs the development package {DEVELOP_PACKAGE} (training, evaluation, "
            "dataset readers), which this installation does not include (the Slicer extension ships only what "
            "segment, measure, lesion and models need); install the library with pip to use it "
            "(from a checkout: pip install -e '.[train]')")


def _add_listed_parser(sub: argparse._SubParsersAction, command: str, available: bool) -> argparse.ArgumentParser:
    """A development command as ``livertumorseg --help`` lists it, without importing the
    development package; its own parser (``develop.commands``) is built only when it runs. Where
    the package is missing, running it ends in the one error line (cmd_unavailable)."""
    if available:
        return sub.add_parser(command, help=DEVELOP_COMMANDS[command])
    return sub.add_parser(command, help=f"{DEVELOP_COMMANDS[command]} (not in this installation)",
                          description=develop_missing_message(command))


def cmd_unavailable(args: argparse.Namespace) -> int:
    raise LiverTumorSegError(develop_missing_message(args.command))


def _command_of(argv: Sequence[str]) -> Optional[str]:
    """The command ``argv`` runs: its first word that is not an option (the options before the
    command take no value)."""
    return next((word for word in argv if not word.startswith("-")), None)


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
                    "interslice", "parenchyma_prior", "lesion_closing_mm", "min_lesion_ml", "min_lesion_confidence",
                    "crop_margin_mm")


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
    p.add_argument("--uncertainty-maps", action="store_true",
                   help="also write NAME_tumor_tta_mean, _std and _cv.nii.gz: the tumor ensemble's mean probability "
                        "over the test-time flips, its standard deviation and their ratio (not with --no-tta or "
                        "--fast)")
    # what --tta did before the flip TTA was on by default: TTA and its maps
    p.add_argument("--tta", dest="uncertainty_maps", action="store_true", help=argparse.SUPPRESS)
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
    if args.uncertainty_maps and not (args.tta and not args.fast):
        raise LiverTumorSegError("--uncertainty-maps needs the flip test-time augmentation: drop --no-tta and --fast")
    for name in names:
        check_not_overwriting(args.output, name, args.force, args.dicom_seg, args.uncertainty_maps)
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
                                    dicom_seg_source=path if args.dicom_seg else None,
                                    uncertainty_maps=args.uncertainty_maps)
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


def build_parser(command: Optional[str] = None) -> argparse.ArgumentParser:
    """The command line's parser; the parsers of the development commands (train, evaluate,
    ensemble) are built, from the development package, only when ``command`` is one of them."""
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
    available = develop_available()
    if available and command in DEVELOP_COMMANDS:
        from .develop import commands

        develop = commands.add_parsers(sub)
    else:
        develop = [_add_listed_parser(sub, name, available) for name in DEVELOP_COMMANDS]
    # --verbose is also accepted after the command
    for command in (sub.choices["segment"], lst, ver, imp, meas, lesion, *develop):
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
    argv = _attach_point_values(sys.argv[1:] if argv is None else argv)
    parser = build_parser(_command_of(argv))
    args, unknown = parser.parse_known_args(argv)
    available = develop_available()
    if unknown and (available or args.command not in DEVELOP_COMMANDS):
        parser.error(f"unrecognized arguments: {' '.join(unknown)}")  # what parse_args says
    _configure_logging(getattr(args, "progress", "bar"), args.verbose)
    try:
        signal.signal(signal.SIGTERM, _raise_on_sigterm)
    except ValueError:  # not the main thread
        pass
    commands: Dict[str, Callable[[argparse.Namespace], int]] = {
        "segment": cmd_segment, "models": cmd_models, "measure": cmd_measure, "lesion": cmd_lesion}
    if args.command in DEVELOP_COMMANDS:
        if available:
            from .develop.commands import COMMANDS as develop_commands

            commands.update(develop_commands)
        else:
            commands.update({command: cmd_unavailable for command in DEVELOP_COMMANDS})
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
    code = main()
    if _in_distributed_launch():
        # DistributedDataParallel keeps the gloo process group alive past destroy_process_group
        # (its reducer holds it: its threads still run at exit), and a gloo thread caught in the
        # interpreter's teardown now and then aborted a worker after a finished run (SIGABRT,
        # "terminate called without an active exception"). Everything is written and flushed by
        # now: the worker leaves without that teardown.
        logging.shutdown()
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)
    sys.exit(code)


def _in_distributed_launch() -> bool:
    """Whether this process is one of several started by torchrun (WORLD_SIZE > 1)."""
    try:
        return int(os.environ.get("WORLD_SIZE", "1")) > 1
    except ValueError:
        return False
