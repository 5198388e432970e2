"""Model cards: the self-describing JSON next to each weights file.

A *model card* describes one network (architecture, preprocessing, weights, provenance,
measured metrics). An *ensemble card* lists member model names with their weights.
Both are plain JSON so a person can read them and a registry can serve them.

The card named as the tumor model (a single model or an ensemble) may carry ``postprocess``: the
tuned numbers of ``settings_schema.TUNED`` (``{"tumor_threshold": 0.4, "min_lesion_ml": 0.1,
"crop_margin_mm": 20}``) that the pipeline uses for it unless the user gives them; without it the
library's defaults hold.
"""

from __future__ import annotations

import json
import re
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Optional, Tuple

from ..errors import LiverTumorSegError
from ..settings_schema import check_postprocess

CARD_FORMAT = "livertumorseg-model-card/1"
# liver: whole CT -> liver; liver_refine: liver crop + the liver stage's mask -> a finer liver;
# tumor: liver crop -> tumor.
TASKS = ("liver", "liver_refine", "tumor")
# What a model's input channels can be: the CT (HU window applied) and the liver mask so far.
# A model's input channels: the CT, then optionally the liver mask so far (liver refinement
# models) or the parenchyma map of the liver crop (tumor models, stages.parenchyma).
HYPODENSITY_CHANNEL = "hypodensity"
INPUT_CHANNELS = ("ct", "liver_prior", HYPODENSITY_CHANNEL)
# Model names become file and folder names in the cache: letters, digits, '.', '_', '-', not
# starting with '.' (no '/', '..', hidden files), at most 128 characters.
MODEL_NAME_PATTERN = re.compile(r"[A-Za-z0-9_-][A-Za-z0-9._-]{0,127}")


@dataclass
class ModelCard:
    """One network. Spacing and patch size are given in image axis order (x, y, z)."""

    name: str
    version: str
    task: str
    architecture: str
    architecture_args: Dict[str, Any]
    spacing_mm: Tuple[float, float, float]
    patch_size: Tuple[int, int, int]
    hu_window: Tuple[float, float]
    weights_file: str
    weights_sha256: str
    orientation: str = "LPS"
    weights_url: Optional[str] = None  # where the weights are downloaded from when not beside the card
    inference_patch_size: Optional[Tuple[int, int, int]] = None  # (x, y, z); larger windows = fewer of them
    input_channels: List[str] = field(default_factory=lambda: ["ct"])
    refine_model: Optional[str] = None  # liver models: a liver_refine model run on the crop after this one
    classes: Dict[str, str] = field(default_factory=dict)
    postprocess: Dict[str, float] = field(default_factory=dict)  # tumor models: tuned numbers (settings_schema.TUNED)
    description: str = ""
    trained_on: str = ""
    source: str = ""
    metrics: Dict[str, Any] = field(default_factory=dict)
    non_clinical: bool = True
    intended_use: str = ""
    card_path: Optional[str] = None  # where it was read from (not serialized)

    @property
    def kind(self) -> str:
        return "model"

    @property
    def weights_path(self) -> Path:
        if self.card_path is None:
            raise LiverTumorSegError(f"model '{self.name}' has no location; load it through the registry")
        return Path(self.card_path).parent / self.weights_file

    @property
    def patch_size_kji(self) -> Tuple[int, int, int]:
        return tuple(int(v) for v in self.patch_size[::-1])  # type: ignore[return-value]

    @property
    def inference_patch_size_kji(self) -> Tuple[int, int, int]:
        """The sliding-window size at inference (the training patch unless the card says otherwise)."""
        size = self.inference_patch_size or self.patch_size
        return tuple(int(v) for v in size[::-1])  # type: ignore[return-value]

    def to_dict(self) -> Dict[str, Any]:
        return _card_dict(self, "model")

    def summary(self) -> Dict[str, Any]:
        """Name, version and weights hash: what a report records of a model it ran."""
        return {"name": self.name, "version": self.version, "task": self.task,
                "architecture": self.architecture, "sha256": self.weights_sha256,
                "non_clinical": self.non_clinical}


@dataclass
class EnsembleMember:
    model: str
    weight: float
    # Whether the pipeline's flip test-time augmentation applies to this member (when TTA is on): a
    # member whose flip costs more time than it buys accuracy runs once.
    tta: bool = True


@dataclass
class EnsembleCard:
    """A weighted average of member models' foreground probabilities (weights sum to 1)."""

    name: str
    version: str
    task: str
    members: List[EnsembleMember]
    postprocess: Dict[str, float] = field(default_factory=dict)  # tuned numbers for the ensemble's probability
    description: str = ""
    trained_on: str = ""
    source: str = ""
    metrics: Dict[str, Any] = field(default_factory=dict)
    non_clinical: bool = True
    intended_use: str = ""
    card_path: Optional[str] = None

    @property
    def kind(self) -> str:
        return "ensemble"

    def normalized_weights(self) -> List[float]:
        total = sum(m.weight for m in self.members)
        return [m.weight / total for m in self.members]

    def to_dict(self) -> Dict[str, Any]:
        return _card_dict(self, "ensemble")

    def summary(self) -> Dict[str, Any]:
        return {"name": self.name, "version": self.version, "task": self.task,
                "members": [_member_summary(m) for m in self.members],
                "non_clinical": self.non_clinical}


AnyCard = "ModelCard | EnsembleCard"


def _member_summary(member: EnsembleMember) -> Dict[str, Any]:
    """A member as a report records it; ``tta`` only where the member runs without the flip."""
    entry: Dict[str, Any] = {"model": member.model, "weight": member.weight}
    if not member.tta:
        entry["tta"] = False
    return entry


def _card_dict(card: Any, kind: str) -> Dict[str, Any]:
    """The JSON form of a card: its fields without the in-memory ``card_path`` (and without an empty
    ``postprocess``: such cards read as before, and without a member's ``tta`` where it is the
    default), plus format and kind."""
    d = asdict(card)
    d.pop("card_path")
    if not d["postprocess"]:
        d.pop("postprocess")
    if kind == "ensemble":
        d["members"] = [_member_summary(m) for m in card.members]
    d["format"] = CARD_FORMAT
    d["kind"] = kind
    return d


def _member_tta(member: Dict[str, Any], path: str) -> bool:
    """An ensemble member's ``tta`` switch (default true); anything but a JSON boolean is an error."""
    tta = member.get("tta", True)
    if not isinstance(tta, bool):
        raise LiverTumorSegError(f"ensemble card {path}: member '{member.get('model')}' has tta {tta!r}; "
                                 "use true or false")
    return tta


def _require(d: Dict[str, Any], key: str, path: str) -> Any:
    if key not in d:
        raise LiverTumorSegError(f"model card {path} is missing the field '{key}'; "
                                 "re-export the model or fix the card")
    return d[key]


def check_model_name(name: Any, path: str = "<memory>", what: str = "model name") -> str:
    """``name`` when it is a safe model name (see MODEL_NAME_PATTERN), else a LiverTumorSegError."""
    if not isinstance(name, str) or not MODEL_NAME_PATTERN.fullmatch(name):
        raise LiverTumorSegError(f"model card {path} has the {what} {name!r}; a model name uses only letters, "
                                 "digits, '.', '_' and '-', does not start with '.' and has at most 128 characters")
    return name


def _check_weights_file(name: Any, path: str) -> str:
    """``name`` when it is a plain file name (the weights lie beside their card), else an error."""
    if not isinstance(name, str) or name in ("", ".", "..") or any(c in name for c in "/\\:\0"):
        raise LiverTumorSegError(f"model card {path} has the weights_file {name!r}; it must be the name of a "
                                 "file beside the card, without a folder")
    return name


def card_from_dict(d: Dict[str, Any], path: str = "<memory>") -> "ModelCard | EnsembleCard":
    """Build a card from parsed JSON, checking the fields a pipeline relies on."""
    if not isinstance(d, dict) or d.get("format") != CARD_FORMAT:
        raise LiverTumorSegError(f"{path} is not a LiverTumorSeg model card (expected \"format\": "
                                 f"\"{CARD_FORMAT}\")")
    task = _require(d, "task", path)
    if task not in TASKS:
        raise LiverTumorSegError(f"model card {path} has task '{task}'; expected one of {TASKS}")
    postprocess = check_postprocess(d.get("postprocess", {}), path)
    if postprocess and task != "tumor":
        raise LiverTumorSegError(f"model card {path}: only a tumor model's card has postprocess numbers "
                                 f"(got task {task})")
    common = dict(name=check_model_name(_require(d, "name", path), path), postprocess=postprocess,
                  version=str(_require(d, "version", path)), task=task,
                  description=d.get("description", ""), trained_on=d.get("trained_on", ""),
                  source=d.get("source", ""), metrics=d.get("metrics", {}),
                  non_clinical=bool(d.get("non_clinical", True)), intended_use=d.get("intended_use", ""),
                  card_path=None if path == "<memory>" else str(path))
    if d.get("kind") == "ensemble":
        members = [EnsembleMember(check_model_name(_require(m, "model", path), path, "member name"),
                                  float(_require(m, "weight", path)), _member_tta(m, path))
                   for m in _require(d, "members", path)]
        if len(members) < 1 or any(m.weight < 0 for m in members) or sum(m.weight for m in members) <= 0:
            raise LiverTumorSegError(f"ensemble card {path} needs members with non-negative weights "
                                     "that sum to more than 0")
        return EnsembleCard(members=members, **common)
    spacing = tuple(float(v) for v in _require(d, "spacing_mm", path))
    patch = tuple(int(v) for v in _require(d, "patch_size", path))
    window = tuple(float(v) for v in _require(d, "hu_window", path))
    if len(spacing) != 3 or len(patch) != 3 or len(window) != 2 or window[0] >= window[1]:
        raise LiverTumorSegError(f"model card {path} has a malformed spacing_mm, patch_size or hu_window")
    channels = [str(c) for c in d.get("input_channels", ["ct"])]
    if not channels or channels[0] != "ct" or any(c not in INPUT_CHANNELS for c in channels) \
            or len(set(channels)) != len(channels):
        raise LiverTumorSegError(f"model card {path} has input_channels {channels}; expected 'ct' first, then "
                                 f"any of {INPUT_CHANNELS[1:]} once each")
    if (task == "liver_refine") != ("liver_prior" in channels):
        raise LiverTumorSegError(f"model card {path}: a liver_refine model takes the channels ['ct', "
                                 f"'liver_prior'], and only it takes 'liver_prior' (got task {task}, {channels})")
    if HYPODENSITY_CHANNEL in channels and task != "tumor":
        raise LiverTumorSegError(f"model card {path}: only a tumor model takes the '{HYPODENSITY_CHANNEL}' channel "
                                 f"(got task {task})")
    return ModelCard(architecture=_require(d, "architecture", path),
                     architecture_args=dict(d.get("architecture_args", {})),
                     spacing_mm=spacing, patch_size=patch, hu_window=window,  # type: ignore[arg-type]
                     weights_file=_check_weights_file(_require(d, "weights_file", path), path),
                     weights_sha256=_require(d, "weights_sha256", path),
                     weights_url=d.get("weights_url") or None,
                     orientation=d.get("orientation", "LPS"),
                     inference_patch_size=(tuple(int(v) for v in d["inference_patch_size"])  # type: ignore[arg-type]
                                           if d.get("inference_patch_size") else None),
                     input_channels=channels,
                     refine_model=(check_model_name(d["refine_model"], path, "refine_model")
                                   if d.get("refine_model") else None),
                     classes=dict(d.get("classes", {})), **common)


def read_card(path: Path) -> "ModelCard | EnsembleCard":
    """Read and check a card file; a malformed file gives a :class:`LiverTumorSegError`."""
    try:
        text = Path(path).read_text(encoding="utf-8")
        data = json.loads(text)
    except FileNotFoundError:
        raise LiverTumorSegError(f"model card {path} does not exist") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise LiverTumorSegError(f"model card {path} is not readable JSON ({exc}); "
                                 "reinstall or re-import the model") from None
    return card_from_dict(data, str(path))


def write_card(card: "ModelCard | EnsembleCard", path: Path) -> None:
    Path(path).write_text(json.dumps(card.to_dict(), indent=2) + "\n", encoding="utf-8")
