"""Find models by name: embedded (Resources/Models), a user cache, or a card file imported by path;
weights a card names by URL are downloaded into the user cache on first use.

Search order: directories in ``$LIVERTUMORSEG_MODELS`` (os.pathsep-separated), the embedded
``Resources/Models`` beside this package, then the user cache (``$LIVERTUMORSEG_CACHE`` or
``~/.cache/livertumorseg/models``). The first card with the requested name wins.
"""

from __future__ import annotations

import os
import sys
import shutil
import tempfile
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Callable, Dict, List, Optional, Union

from ..errors import LiverTumorSegError
from .card import EnsembleCard, ModelCard, read_card
from .weights import sha256_of

DEFAULT_LIVER_MODEL = "liver-demo"
DEFAULT_TUMOR_MODEL = "tumor-demo-ensemble"

Card = Union[ModelCard, EnsembleCard]


def embedded_models_dir() -> Path:
    """The embedded default models: ``Resources/Models`` beside the package (source tree, editable
    install, Slicer extension), else ``<prefix>/share/livertumorseg/models`` (wheel install)."""
    beside = Path(__file__).resolve().parents[2] / "Resources" / "Models"
    if beside.is_dir():
        return beside
    for prefix in (sys.prefix, sys.base_prefix):
        installed = Path(prefix) / "share" / "livertumorseg" / "models"
        if installed.is_dir():
            return installed
    return beside


def user_cache_dir() -> Path:
    env = os.environ.get("LIVERTUMORSEG_CACHE")
    if env:
        return Path(env)
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "livertumorseg" / "models"


@dataclass
class ModelRegistry:
    """Resolves model and ensemble names to cards; ``search_dirs`` in priority order."""

    search_dirs: List[Path]
    cache_dir: Optional[Path] = None  # where downloaded weights go (default: the user cache)

    @classmethod
    def default(cls) -> "ModelRegistry":
        dirs = [Path(p) for p in os.environ.get("LIVERTUMORSEG_MODELS", "").split(os.pathsep) if p]
        return cls(dirs + [embedded_models_dir(), user_cache_dir()])

    def cards(self) -> Dict[str, Card]:
        """All cards found, by name (first directory wins)."""
        found: Dict[str, Card] = {}
        for directory in self.search_dirs:
            if not directory.is_dir():
                continue
            for path in sorted(directory.glob("*.json")):
                try:
                    card = read_card(path)
                except LiverTumorSegError:
                    continue  # not a card (or a broken one): 'models verify' reports it
                found.setdefault(card.name, card)
        return found

    def broken_cards(self) -> Dict[str, str]:
        """Card-like JSON files that fail to parse, with the reason (for 'models verify')."""
        broken: Dict[str, str] = {}
        for directory in self.search_dirs:
            if directory.is_dir():
                for path in sorted(directory.glob("*.json")):
                    try:
                        read_card(path)
                    except LiverTumorSegError as exc:
                        broken[str(path)] = str(exc)
        return broken

    def resolve(self, name_or_path: str, task: Optional[str] = None) -> Card:
        """A card by registry name or by a path to a card file; checks the task when given."""
        candidate = Path(name_or_path)
        if candidate.suffix == ".json" and candidate.exists():
            card = read_card(candidate)
        else:
            cards = self.cards()
            if name_or_path not in cards:
                known = ", ".join(sorted(cards)) or "none installed"
                raise LiverTumorSegError(f"model '{name_or_path}' not found (known models: {known}); "
                                         "import it with 'livertumorseg models import CARD.json'")
            card = cards[name_or_path]
        if task is not None and card.task != task:
            raise LiverTumorSegError(f"model '{card.name}' is a {card.task} model, but a {task} model "
                                     "is needed here")
        return card

    def ensemble_members(self, card: Card) -> List[ModelCard]:
        """The model cards an ensemble names (a single model is its own one-member ensemble)."""
        if isinstance(card, ModelCard):
            return [card]
        members = []
        for member in card.members:
            resolved = self.resolve(member.model, task=card.task)
            if not isinstance(resolved, ModelCard):
                raise LiverTumorSegError(f"ensemble '{card.name}' names '{member.model}', which is itself "
                                         "an ensemble; members must be single models")
            members.append(resolved)
        return members

    def with_weights(self, card: ModelCard, on_progress: Optional[Callable[[float], None]] = None) -> ModelCard:
        """``card`` with its weights on disk: beside the card, already downloaded into the cache, or
        downloaded now from the card's URL (sha256 checked)."""
        if card.weights_path.is_file():
            return card
        cached = self._in_cache(card)
        if cached.weights_path.is_file() and sha256_of(cached.weights_path) == card.weights_sha256:
            return cached
        if not card.weights_url:
            raise LiverTumorSegError(f"the weights file {card.weights_path} of model '{card.name}' is missing; "
                                     "import the model with 'livertumorseg models import CARD.json'")
        from .download import fetch_weights

        return fetch_weights(card, Path(cached.card_path).parent, on_progress)

    def _in_cache(self, card: ModelCard) -> ModelCard:
        """``card`` as it is once its weights are downloaded into the cache."""
        cache_dir = Path(self.cache_dir or user_cache_dir())
        return replace(card, card_path=str(cache_dir / f"{card.name}.json"))

    def verify(self, card: ModelCard) -> Optional[str]:
        """None when the weights file exists and matches the card's sha256, else the problem."""
        path = card.weights_path
        if not path.is_file() and card.weights_url:
            path = self._in_cache(card).weights_path
            if not path.is_file():
                return f"weights file {card.weights_file} is not downloaded yet (fetched from {card.weights_url} " \
                       "on first use)"
        if not path.is_file():
            return f"weights file {path} is missing"
        actual = sha256_of(path)
        if actual != card.weights_sha256:
            return f"weights file {path} has sha256 {actual[:12]}..., the card expects {card.weights_sha256[:12]}..."
        return None

    def import_card(self, card_file: Path, destination: Optional[Path] = None, force: bool = False) -> Card:
        """Copy a card and its weights file into the user cache after checking the sha256."""
        card = read_card(Path(card_file))
        destination = destination or user_cache_dir()
        if isinstance(card, ModelCard):
            problem = self.verify(card)
            if problem:
                raise LiverTumorSegError(f"cannot import '{card.name}': {problem}")
        target_card = destination / Path(card_file).name
        if target_card.exists() and not force:
            raise LiverTumorSegError(f"{target_card} already exists; use --force to replace it")
        destination.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryDirectory(dir=destination) as tmp:
            if isinstance(card, ModelCard):
                shutil.copy2(card.weights_path, Path(tmp) / card.weights_file)
                os.replace(Path(tmp) / card.weights_file, destination / card.weights_file)
            shutil.copy2(card_file, Path(tmp) / target_card.name)
            os.replace(Path(tmp) / target_card.name, target_card)
        return read_card(target_card)
