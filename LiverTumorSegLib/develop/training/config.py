"""The settings of one training run (``livertumorseg train``): from a JSON/YAML file, command-line
flags (which win), then the defaults of the task; recorded in the output folder and the card."""

from __future__ import annotations

import json
import shlex
from dataclasses import MISSING, asdict, dataclass, field, fields
from pathlib import Path
from typing import Any, Dict, List, Mapping, Optional, Tuple

from ...errors import LiverTumorSegError

TASK_DEFAULTS = {  # grid, window and patch (x, y, z) of the pipeline's embedded models
    "liver": {"spacing_mm": [3.0, 3.0, 3.0], "hu_window": [-250.0, 350.0], "patch_size": [96, 96, 64]},
    "tumor": {"spacing_mm": [1.5, 1.5, 1.5], "hu_window": [-100.0, 250.0], "patch_size": [96, 96, 96]},
}
LOSS_NAMES = ("dicece", "gdl-focal", "bd")  # training.losses builds them
# Settings that may change when a run is resumed (they do not change what it computes).
RESUMABLE = ("resume", "device", "workers")


@dataclass
class TrainingConfig:
    data: str
    task: str
    output: str
    architecture: str = "unet"
    architecture_args: Dict[str, Any] = field(default_factory=dict)  # merged onto the preset
    loss: str = "dicece"
    gpa: bool = False
    gpa_start: float = 0.5  # checkpoints from this fraction of the steps on are GPA candidates
    folds: int = 5
    fold: int = 0
    seed: int = 0
    steps: Optional[int] = None
    epochs: Optional[int] = None  # instead of steps: passes over the training cases
    batch_size: int = 2
    learning_rate: float = 1e-3
    weight_decay: float = 1e-5
    positive_fraction: float = 0.67  # of patches centred on the target
    validate_every: Optional[int] = None  # steps; default a tenth of the run
    patch_size: Optional[List[int]] = None  # (x, y, z) voxels
    spacing_mm: Optional[List[float]] = None  # (x, y, z)
    hu_window: Optional[List[float]] = None
    affine: bool = True
    device: str = "auto"
    amp: bool = False
    workers: int = 0
    resume: bool = False
    init_from: Optional[str] = None  # a model card (name or path) to fine-tune
    name: Optional[str] = None
    label_smoothing: Optional[str] = None  # "tlvr"
    smoothing_alpha: float = 0.1
    clinical: Optional[str] = None  # clinical table (TLVR regression, categories)
    clinical_columns: Optional[List[str]] = None
    category_column: Optional[str] = None  # tumour category per case (balanced Dice loss)
    pseudo_liver_model: Optional[str] = None  # stage-1 model for cases without a liver label
    vae_weight: float = 0.1

    def __post_init__(self) -> None:
        if self.task not in TASK_DEFAULTS:
            raise LiverTumorSegError(f"--task must be liver or tumor, not '{self.task}'")
        for key, value in TASK_DEFAULTS[self.task].items():
            if getattr(self, key) is None:
                setattr(self, key, list(value))
        if self.steps is not None and self.epochs is not None:
            raise LiverTumorSegError("give --steps or --epochs, not both")
        if self.steps is None and self.epochs is None:
            self.steps = 1000
        for name in ("steps", "epochs", "batch_size", "validate_every"):
            value = getattr(self, name)
            if value is not None and (not isinstance(value, int) or value < 1):
                raise LiverTumorSegError(f"--{name.replace('_', '-')} must be a positive whole number, got {value!r}")
        if self.loss not in LOSS_NAMES:
            raise LiverTumorSegError(f"unknown loss '{self.loss}'; choose one of {', '.join(LOSS_NAMES)}")
        if self.label_smoothing not in (None, "tlvr"):
            raise LiverTumorSegError(f"--label-smoothing knows only 'tlvr', not '{self.label_smoothing}'")
        if self.label_smoothing == "tlvr" and self.task != "tumor":
            raise LiverTumorSegError("--label-smoothing tlvr smooths tumour labels: use it with --task tumor")
        if len(self.patch_size) != 3 or len(self.spacing_mm) != 3 or len(self.hu_window) != 2:
            raise LiverTumorSegError("--patch-size and --spacing take three values (x,y,z), --hu-window two (low,high)")
        if not 0.0 <= self.gpa_start <= 1.0 or not 0.0 <= self.positive_fraction <= 1.0:
            raise LiverTumorSegError("gpa_start and positive_fraction must lie between 0 and 1")

    @property
    def output_dir(self) -> Path:
        return Path(self.output)

    def to_dict(self) -> Dict[str, Any]:
        return asdict(self)

    def differences(self, recorded: Mapping[str, Any]) -> List[str]:
        """The settings (outside RESUMABLE) in which this config differs from ``recorded``."""
        mine = self.to_dict()
        return [key for key in mine if key not in RESUMABLE and mine[key] != recorded.get(key)]

    def command_line(self) -> str:
        """The ``livertumorseg train`` command that repeats this run: the data, task, network, loss,
        split, steps and grid always, every other setting where it is not the default."""
        defaults = {f.name: (f.default_factory() if f.default_factory is not MISSING else f.default)  # type: ignore[misc]
                    for f in fields(self) if f.name not in ("data", "task", "output")}
        words = ["livertumorseg", "train"]
        for key, value in self.to_dict().items():
            if key in RESUMABLE or key == "architecture_args" or (key not in ALWAYS_RECORDED and
                                                                   value == defaults.get(key)):
                continue
            flag = "--" + FLAG_NAMES.get(key, key.replace("_", "-"))
            if key == "affine":
                words += [] if value else ["--no-affine"]
            elif value is True:
                words.append(flag)
            elif value is None or value is False:
                continue
            elif isinstance(value, list):
                words += [flag, ",".join(f"{v:g}" if isinstance(v, float) else str(v) for v in value)]
            else:
                words += [flag, str(value)]
        if self.architecture_args:
            words += ["--architecture-args", json.dumps(self.architecture_args, separators=(",", ":"))]
        return " ".join(shlex.quote(w) for w in words)


ALWAYS_RECORDED = ("data", "task", "output", "architecture", "loss", "folds", "fold", "seed", "steps", "epochs",
                   "patch_size", "spacing_mm", "hu_window")
FLAG_NAMES = {"spacing_mm": "spacing"}
CONFIG_KEYS = {f.name for f in fields(TrainingConfig)}


def read_config_file(path: Path) -> Dict[str, Any]:
    """Settings from a JSON or YAML file (keys as the flags, '-' or '_'); unknown keys are errors."""
    path = Path(path)
    if not path.is_file():
        raise LiverTumorSegError(f"config file {path} does not exist")
    text = path.read_text(encoding="utf-8")
    if path.suffix.lower() in (".yaml", ".yml"):
        try:
            import yaml
        except ImportError:
            raise LiverTumorSegError(f"reading {path} needs PyYAML ('pip install pyyaml'), or write it as JSON") from None
        try:
            values = yaml.safe_load(text)
        except yaml.YAMLError as exc:
            raise LiverTumorSegError(f"config file {path} is not valid YAML ({exc})") from None
    else:
        try:
            values = json.loads(text)
        except ValueError as exc:
            raise LiverTumorSegError(f"config file {path} is not valid JSON ({exc})") from None
    if not isinstance(values, dict):
        raise LiverTumorSegError(f"config file {path} must hold a mapping of settings")
    settings = {str(k).replace("-", "_"): v for k, v in values.items()}
    unknown = sorted(set(settings) - CONFIG_KEYS - {"config"})
    if unknown:
        raise LiverTumorSegError(f"config file {path} has unknown settings: {', '.join(unknown)}")
    settings.pop("config", None)
    return settings


def build_config(file_settings: Mapping[str, Any], flag_settings: Mapping[str, Any]) -> TrainingConfig:
    """Defaults <- the file's settings <- the flags given (None = not given)."""
    merged = dict(file_settings)
    merged.update({k: v for k, v in flag_settings.items() if v is not None})
    missing = [k for k in ("data", "task", "output") if merged.get(k) in (None, "")]
    if missing:
        raise LiverTumorSegError(f"train needs {', '.join('--' + m for m in missing)} (as flags or in --config)")
    for key in ("data", "output", "clinical"):  # absolute: a resumed run from another folder is the same run
        if merged.get(key) is not None:
            merged[key] = str(Path(merged[key]).expanduser().absolute())
    try:
        return TrainingConfig(**merged)
    except TypeError as exc:
        raise LiverTumorSegError(f"bad training settings: {exc}") from None


def parse_numbers(text: str, count: int, kind: type, flag: str) -> List[Any]:
    """'96,96,64' -> [96, 96, 64] for a flag taking ``count`` numbers."""
    try:
        values = [kind(v) for v in str(text).split(",")]
    except ValueError:
        values = []
    if len(values) != count:
        raise LiverTumorSegError(f"{flag} takes {count} comma-separated numbers, got '{text}'")
    return values


def split_names(text: Optional[str]) -> Optional[List[str]]:
    return None if text is None else [n.strip() for n in text.split(",") if n.strip()]


def spacing_patch_window(config: TrainingConfig) -> Tuple[Tuple[float, ...], Tuple[int, ...], Tuple[float, float]]:
    return (tuple(float(v) for v in config.spacing_mm), tuple(int(v) for v in config.patch_size),
            (float(config.hu_window[0]), float(config.hu_window[1])))
