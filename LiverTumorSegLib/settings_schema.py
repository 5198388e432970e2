"""The user-facing settings of a segmentation run and the stages it reports, each declared once.

Made from these declarations: the command line's ``segment`` options (:func:`add_argument`,
:func:`values_from_args`), the defaults of :class:`~LiverTumorSegLib.pipeline.PipelineSettings`
(:func:`default`), the command line the Slicer module sends (:func:`command_line`), the module's
options, parameter node and panel (``LiverTumorSegModuleLib/parameters.py``), the progress titles
and weights (:data:`STAGES`) and the numbers a tumor model card may tune (``postprocess``,
:func:`check_postprocess`).

Imports nothing but the standard library and ``errors``: the Slicer module reads it in Slicer's
own process, before PyTorch is installed.

Tuned numbers (``tuned=True``): their default here is the library's; a tumor model card's
``postprocess`` replaces it for that model (:class:`LibraryDefault` marks a value nobody gave), and
a value the user gives wins over both.
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass
from typing import Any, Dict, Iterable, List, Mapping, Optional, Tuple

from .errors import LiverTumorSegError

DEFAULT_LIVER_MODEL = "liver-demo"
DEFAULT_TUMOR_MODEL = "tumor-demo-ensemble"


class SettingError(LiverTumorSegError, ValueError):
    """A setting that does not exist, or a value outside what it allows."""


class LibraryDefault(float):
    """A tuned number's library default, as nobody gave it: acts as the float; a tumor model
    card's ``postprocess`` value replaces it (a value a user gives is a plain float and is kept)."""

    __slots__ = ()

    def __repr__(self) -> str:
        return float.__repr__(self)


@dataclass(frozen=True)
class Setting:
    """One user-facing setting. ``name`` is its name everywhere in Python (``SegmentOptions``,
    card ``postprocess``); ``field`` the :class:`PipelineSettings` attribute it sets."""

    name: str
    kind: type  # bool, float or str
    default: Any
    help: str  # a bool on by default: a noun phrase naming what its flag skips
    flag: Optional[str] = None  # on the command line; a bool's flag switches it away from its default
    metavar: Optional[str] = None
    choices: Tuple[Any, ...] = ()
    minimum: Optional[float] = None
    maximum: Optional[float] = None
    tuned: bool = False  # a tumor model card's "postprocess" may give its default
    parameter: str = ""  # the Slicer module's parameter (saved with scenes); "" = not in the module
    label: str = ""  # what the module's panel calls it
    shown: Tuple[Tuple[str, Any], ...] = ()  # the module's combo box items: (text shown, value)
    field: str = ""  # the PipelineSettings attribute, dotted into nested settings (default: name)

    @property
    def pipeline_field(self) -> str:
        return self.field or self.name

    def check(self, value: Any) -> Any:
        """``value`` when this setting allows it (numbers as float), else a :class:`SettingError`."""
        what = self.flag or self.name
        if self.kind is bool:
            if not isinstance(value, bool):
                raise SettingError(f"{self.name} is on or off (True or False), not {value!r}")
            return value
        if self.kind is float:
            if isinstance(value, bool) or not isinstance(value, (int, float)) or value != value:
                raise SettingError(f"{what} takes a number, not {value!r}")
            if self.minimum is not None and value < self.minimum:
                raise SettingError(f"{what} must be {self.minimum:g} or more")
            if self.maximum is not None and value > self.maximum:
                raise SettingError(f"{what} must be {self.maximum:g} or less")
            return value if isinstance(value, LibraryDefault) else float(value)
        if not isinstance(value, str):
            raise SettingError(f"{what} takes a name, not {value!r}")
        if self.choices and value not in self.choices:
            raise SettingError(f"unknown {self.name} '{value}'; use {', '.join(self.choices[:-1])} or "
                               f"{self.choices[-1]}")
        return value


SETTINGS: Tuple[Setting, ...] = (
    Setting("device", str, "auto", "auto: the GPU (CUDA) when PyTorch sees one, else the CPU; on GPU out-of-memory "
            "the run is repeated on the CPU", flag="--device", choices=("auto", "cpu", "cuda"),
            parameter="device", label="Device", shown=(("auto", "auto"), ("GPU", "cuda"), ("CPU", "cpu"))),
    Setting("fast", bool, False, "less sliding-window overlap and no test-time augmentation: faster, coarser than "
            "the full-quality default",
            flag="--fast", parameter="quality", label="Quality", shown=(("full", False), ("fast", True))),
    Setting("liver_model", str, DEFAULT_LIVER_MODEL, "the model that finds the liver on the whole CT (global view)",
            flag="--liver-model", metavar="NAME|CARD.json", parameter="liverModel", label="Liver model"),
    Setting("tumor_model", str, DEFAULT_TUMOR_MODEL, "the model or weighted ensemble that finds tumors inside the "
            "liver crop (local view)", flag="--tumor-model", metavar="NAME|CARD.json", parameter="tumorModel",
            label="Tumor model"),
    # On since validation (30 cases, round-9 members): mean Dice per case 0.669 -> 0.674, small
    # lesions 0.472 -> 0.510, false-positive lesions 23 -> 21, at most 0.9 mL (1.25) on a
    # tumour-free liver; the tumor stage takes about twice as long.
    Setting("tta", bool, True, "the flip test-time augmentation of the liver models and the tumor ensemble (their "
            "mean over the patient's left-right flip, the flip training applies: more accurate, the model stages "
            "take about twice as long)",
            flag="--no-tta", parameter="tta",
            label="Flip test-time augmentation of the models (more accurate, slower)"),
    Setting("refine_liver", bool, True, "the liver refinement model (a local-view model on the liver crop, when the "
            "liver model has one; without it the liver stage's mask is used as it is)", flag="--no-liver-refine",
            parameter="liverRefine",
            label="Liver refinement (local-view model on the liver crop, when the liver model has one)"),
    Setting("active_contour", bool, True, "the active-contour refinement of lesion boundaries",
            flag="--no-active-contour", parameter="activeContour",
            label="Active-contour refinement of lesion boundaries"),
    Setting("interslice", bool, True, "the inter-slice consistency cleanup (drops single-slice specks, bridges "
            "one-slice gaps)", flag="--no-interslice", parameter="interslice",
            label="Inter-slice cleanup (drop single-slice specks, bridge one-slice gaps)"),
    Setting("parenchyma_prior", bool, True, "the parenchyma prior (without it tumors come from the model ensemble "
            "alone, its lesions not completed from this scan's liver parenchyma HU)", flag="--no-parenchyma-prior",
            field="parenchyma.enabled"),
    Setting("lesion_closing_mm", float, 10.0, "join the pieces of a lesion the models drew in fragments: a closing "
            "over this radius (mm) that adds only voxels they give at least 0.1 tumor probability (0 switches it "
            "off)", flag="--lesion-closing-mm", metavar="MM", minimum=0.0),
    Setting("min_lesion_ml", float, 0.05, "drop lesions smaller than this (mL)", flag="--min-lesion-ml",
            metavar="ML", minimum=0.0, tuned=True),
    Setting("crop_margin_mm", float, 15.0, "margin around the liver for the tumor crop (mm)", flag="--margin-mm",
            metavar="MM", minimum=0.0, tuned=True),
    Setting("tumor_threshold", float, 0.5, "a lesion needs voxels at least this probable (its seed)",
            minimum=0.0, maximum=1.0, tuned=True),
    Setting("min_lesion_confidence", float, 0.0, "drop lesions whose most confident tenth of voxels is less "
            "probable than this (the model ensemble's tumor probability; 0 keeps every lesion)",
            flag="--min-lesion-confidence", metavar="P", minimum=0.0, maximum=1.0, tuned=True),
)
BY_NAME: Dict[str, Setting] = {s.name: s for s in SETTINGS}
TUNED: Tuple[str, ...] = tuple(s.name for s in SETTINGS if s.tuned)
MODULE_SETTINGS: Tuple[Setting, ...] = tuple(s for s in SETTINGS if s.parameter)  # in the panel's order


def setting(name: str) -> Setting:
    try:
        return BY_NAME[name]
    except KeyError:
        raise SettingError(f"unknown setting '{name}'; the settings are {', '.join(BY_NAME)}") from None


def default(name: str) -> Any:
    """The library's default of a setting (a tuned number as a :class:`LibraryDefault`)."""
    s = setting(name)
    return LibraryDefault(s.default) if s.tuned else s.default


def checked_values(values: Mapping[str, Any]) -> Dict[str, Any]:
    """Every setting's value: those given (checked; ``None`` = not given), else the default (``None``
    for a tuned number: the tumor model's, else the library's)."""
    for name in values:
        setting(name)
    return {s.name: (None if s.tuned else s.default) if values.get(s.name) is None else s.check(values[s.name])
            for s in SETTINGS}


# ----------------------------------------------------------------------------------------------
# The command line


def add_argument(parser: argparse.ArgumentParser, name: str, **overrides: Any) -> None:
    """The setting's option on ``parser`` (``dest`` is the setting's name); a tuned number's
    default is None (not given)."""
    s = setting(name)
    if s.flag is None:
        raise SettingError(f"{name} has no command-line flag")
    if s.kind is bool:
        kwargs: Dict[str, Any] = dict(action="store_false" if s.default else "store_true", default=s.default,
                                      help=f"skip {s.help}" if s.default else s.help)
    else:
        kwargs = dict(type=float if s.kind is float else str, default=None if s.tuned else s.default, help=s.help)
        if s.choices:
            kwargs["choices"] = list(s.choices)
        if s.metavar:
            kwargs["metavar"] = s.metavar
    kwargs.update(overrides)
    parser.add_argument(s.flag, dest=s.name, **kwargs)


def values_from_args(args: argparse.Namespace, names: Iterable[str]) -> Dict[str, Any]:
    """The settings ``names`` as parsed, checked (a tuned number not given is None)."""
    return checked_values({name: getattr(args, name) for name in names})


def command_line(values: Mapping[str, Any]) -> List[str]:
    """The ``segment`` options that ask for ``values`` (setting name -> value; a value equal to the
    default, or None, needs no option)."""
    args: List[str] = []
    for name, value in checked_values(values).items():
        s = BY_NAME[name]
        if value is None or (value == s.default and not s.tuned):
            continue
        if s.flag is None:
            raise SettingError(f"{name} cannot be given on the command line")
        args += [s.flag] if s.kind is bool else [s.flag, repr(float(value)) if s.kind is float else str(value)]
    return args


# ----------------------------------------------------------------------------------------------
# Model cards


def check_postprocess(postprocess: Any, where: str) -> Dict[str, float]:
    """A tumor model card's ``postprocess`` (tuned number -> value), checked; ``where`` names the card."""
    if not isinstance(postprocess, dict):
        raise SettingError(f"model card {where}: postprocess must be an object of {', '.join(TUNED)}")
    checked = {}
    for name, value in postprocess.items():
        if name not in TUNED:
            raise SettingError(f"model card {where}: postprocess has '{name}'; a card may tune {', '.join(TUNED)}")
        try:
            checked[name] = BY_NAME[name].check(value)
        except SettingError as exc:
            raise SettingError(f"model card {where}: postprocess {name}: {exc}") from None
    return checked


# ----------------------------------------------------------------------------------------------
# Stages


@dataclass(frozen=True)
class Stage:
    """A step a run reports progress of: ``name`` in the progress events, ``title`` what a front
    end shows, ``weight`` its usual share of a run's time (an overall progress bar)."""

    name: str
    title: str
    weight: float


TUMOR_STAGE = "tumor"  # one stage per ensemble member, "tumor:<model name>"
STAGES: Tuple[Stage, ...] = (
    Stage("load", "Loading the CT", 0.04),
    Stage("liver", "Liver (global view)", 0.20),
    Stage("crop", "Cropping to the liver", 0.02),
    Stage("liver_refine", "Liver refinement (local view)", 0.10),
    Stage(TUMOR_STAGE, "Tumor model {member} ({number}/{count})", 0.38),
    Stage("postprocess", "Post-processing", 0.12),
    Stage("measure", "Measuring", 0.03),
    Stage("write", "Writing results", 0.03),
)


def member_stage(model_name: str) -> str:
    """The stage of one tumor ensemble member."""
    return f"{TUMOR_STAGE}:{model_name}"


def split_stage(stage: str) -> Tuple[str, Optional[str]]:
    """``"tumor:NAME"`` -> ``("tumor", "NAME")``; another stage -> ``(stage, None)``."""
    base, _, member = stage.partition(":")
    return (base, member) if base == TUMOR_STAGE and member else (stage, None)


def stage_title(stage: str, number: int = 1, count: int = 1, stages: Iterable[Stage] = STAGES) -> str:
    """What a front end shows for ``stage`` (a member: its ``number`` of ``count``); an unknown
    stage is shown by its name."""
    base, member = split_stage(stage)
    for s in stages:
        if s.name == base:
            return s.title.format(member=member or "ensemble", number=number, count=count)
    return stage
