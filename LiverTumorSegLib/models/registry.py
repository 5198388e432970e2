"""Find models by name: embedded (Resources/Models), a user cache, or a card file imported by path;
weights a card names by URL are downloaded into the user cache on first use.

Search order: directories in ``$LIVERTUMORSEG_MODELS`` (os.pathsep-separated), the embedded
``Resources/Models`` beside this package, then the user cache (``$LIVERTUMORSEG_CACHE`` or
``~/.cache/livertumorseg/models``). The first card with the requested name wins.

The cache holds one folder per model, ``<cache>/<name>/<name>.json`` with its weights file beside
it, so that models whose weights files share a name (``model.safetensors``) never overwrite each
other; cards of the older flat layout (``<cache>/<card>.json``) are still read.

Finding and listing cards reads JSON only and never imports PyTorch (``weights``, which does, is
imported by the methods that hash or check weights files), so the Slicer module lists the
models in its own process.
"""

from __future__ import annotations

import os
import sys
import shutil
import tempfile
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Union

from ..errors import LiverTumorSegError
from ..settings_schema import DEFAULT_LIVER_MODEL, DEFAULT_TUMOR_MODEL  # noqa: F401 (declared with the settings)
from .card import EnsembleCard, ModelCard, read_card

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

    def _cache(self) -> Path:
        return Path(self.cache_dir or user_cache_dir())

    def _card_files(self, directory: Path) -> List[Path]:
        """The JSON files of a search folder; in the cache also those of its per-model folders
        (listed first: they replace cards of the older flat layout)."""
        files = sorted(directory.glob("*.json"))
        if directory == self._cache():
            folders = sorted(p for p in directory.iterdir() if p.is_dir() and not p.name.startswith("."))
            files = [f / f"{f.name}.json" for f in folders if (f / f"{f.name}.json").is_file()] + files
        return files

    def cards(self) -> Dict[str, Card]:
        """All cards found, by name (first directory wins)."""
        found: Dict[str, Card] = {}
        for directory in self.search_dirs:
            if not directory.is_dir():
                continue
            for path in self._card_files(directory):
                try:
                    card = read_card(path)
                except LiverTumorSegError:
                    continue  # not a card (or a broken one): 'models verify' reports it
                found.setdefault(card.name, card)
        return found

    def list_cards(self) -> List[Dict[str, Any]]:
        """Every card found, as JSON-ready dictionaries with their ``location`` (the card file):
        what ``models list --json`` prints and the Slicer module shows."""
        return [dict(card.to_dict(), location=card.card_path) for card in self.cards().values()]

    def broken_cards(self) -> Dict[str, str]:
        """Card-like JSON files that fail to parse, with the reason (for 'models verify')."""
        broken: Dict[str, str] = {}
        for directory in self.search_dirs:
            if directory.is_dir():
                for path in self._card_files(directory):
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
        """The model cards an ensemble names (a single model is its own one-member ensemble); a
        member whose card ``<name>.json`` lies beside the ensemble's card is that one, any other is
        found by name."""
        if isinstance(card, ModelCard):
            return [card]
        members = []
        for member in card.members:
            beside = Path(card.card_path).parent / f"{member.model}.json" if card.card_path else None
            resolved = read_card(beside) if beside is not None and beside.is_file() else None
            if resolved is None or resolved.name != member.model:
                resolved = self.resolve(member.model, task=card.task)
            elif resolved.task != card.task:
                raise LiverTumorSegError(f"ensemble '{card.name}' names '{member.model}', a {resolved.task} model; "
                                         f"its members must be {card.task} models")
            if not isinstance(resolved, ModelCard):
                raise LiverTumorSegError(f"ensemble '{card.name}' names '{member.model}', which is itself "
                                         "an ensemble; members must be single models")
            members.append(resolved)
        return members

    def with_weights(self, card: ModelCard, on_progress: Optional[Callable[[float], None]] = None) -> ModelCard:
        """``card`` with its weights on disk: beside the card, already downloaded into the cache, or
        downloaded now from the card's URL (sha256 checked)."""
        from .weights import sha256_of

        if card.weights_path.is_file():
            return card
        for cached in self._cached_copies(card):
            if cached.weights_path.is_file() and sha256_of(cached.weights_path) == card.weights_sha256:
                return cached
        if not card.weights_url:
            raise LiverTumorSegError(f"the weights file {card.weights_path} of model '{card.name}' is missing; "
                                     "import the model with 'livertumorseg models import CARD.json'")
        from .download import fetch_weights

        return fetch_weights(card, self.model_folder(card.name), on_progress)

    def model_folder(self, name: str) -> Path:
        """The cache folder that holds model ``name`` (its card and weights, nothing else)."""
        return self._cache() / name

    def _cached_copies(self, card: ModelCard) -> List[ModelCard]:
        """Where ``card``'s downloaded weights may lie: its cache folder, then the older flat layout."""
        return [replace(card, card_path=str(self.model_folder(card.name) / f"{card.name}.json")),
                replace(card, card_path=str(self._cache() / f"{card.name}.json"))]

    def verify(self, card: ModelCard) -> Optional[str]:
        """None when the weights file exists and matches the card's sha256, else the problem."""
        from .weights import sha256_of

        path = card.weights_path
        if not path.is_file() and card.weights_url:
            path = next((c.weights_path for c in self._cached_copies(card) if c.weights_path.is_file()),
                        self._cached_copies(card)[0].weights_path)
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
        """Copy a card and its weights file into their own folder of the user cache, after checking
        the sha256 and that the weights are a safetensors file holding the card's network; a refused
        import leaves the cache as it was."""
        from .weights import check_weights_fit

        card = read_card(Path(card_file))
        cache = Path(destination or self._cache())
        registry = replace(self, cache_dir=cache)
        weights: Optional[Path] = None
        if isinstance(card, ModelCard):
            problem = registry.verify(card)
            if problem:
                raise LiverTumorSegError(f"cannot import '{card.name}': {problem}")
            weights = card.weights_path if card.weights_path.is_file() else \
                next(c.weights_path for c in registry._cached_copies(card) if c.weights_path.is_file())
            try:
                check_weights_fit(weights, card.architecture, card.architecture_args)
            except LiverTumorSegError as exc:
                raise LiverTumorSegError(f"cannot import '{card.name}': {exc}") from None
        target = registry.model_folder(card.name)
        flat = self._flat_cards(cache, card.name)  # the same model in the older flat layout
        if (target.exists() or flat) and not force:
            raise LiverTumorSegError(f"model '{card.name}' already exists in the cache "
                                     f"({target if target.exists() else flat[0]}); use --force to replace it")
        retired: Optional[Path] = None
        staging: Optional[Path] = None
        try:
            cache.mkdir(parents=True, exist_ok=True)
            staging = Path(tempfile.mkdtemp(dir=cache, prefix=f".import-{card.name}."))
            if weights is not None:
                shutil.copy2(weights, staging / card.weights_file)
            shutil.copy2(card_file, staging / f"{card.name}.json")
            if target.exists():
                retired = cache / f".retired{staging.name}"
                os.replace(target, retired)
            try:
                os.replace(staging, target)
            except OSError:
                if retired is not None:
                    os.replace(retired, target)
                raise
            for old in flat:
                old.unlink()  # the folder replaces it (its weights file may belong to another flat card)
        except OSError as exc:
            raise LiverTumorSegError(f"cannot import '{card.name}' into the model cache {cache} "
                                     f"({exc.strerror or exc}); set LIVERTUMORSEG_CACHE to a writable folder") from None
        finally:
            for leftover in (staging, retired):
                if leftover is not None:
                    shutil.rmtree(leftover, ignore_errors=True)
        return read_card(target / f"{card.name}.json")

    @staticmethod
    def _flat_cards(cache: Path, name: str) -> List[Path]:
        """Cards of model ``name`` in the older flat cache layout (``<cache>/<card>.json``)."""
        found = []
        for path in sorted(cache.glob("*.json")) if cache.is_dir() else []:
            try:
                if read_card(path).name == name:
                    found.append(path)
            except LiverTumorSegError:
                continue
        return found
