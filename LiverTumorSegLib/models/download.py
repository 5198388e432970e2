"""Download a model's weights from the URL its card names, into the model's folder of the user cache.

The file is streamed to a temporary name beside its destination while its sha256 is computed,
and moved into place only when the hash matches the card: an interrupted or tampered download
leaves nothing behind. Offline, the error says how to import the model from a file instead.
"""

from __future__ import annotations

import hashlib
import logging
import os
import tempfile
import urllib.error
import urllib.request
from dataclasses import replace
from pathlib import Path
from typing import Callable, Optional

from ..errors import LiverTumorSegError
from .card import ModelCard, write_card

log = logging.getLogger(__name__)
CHUNK_BYTES = 1 << 20


def fetch_weights(card: ModelCard, cache_dir: Path, on_progress: Optional[Callable[[float], None]] = None,
                  timeout_s: float = 60.0) -> ModelCard:
    """Download ``card.weights_url`` into ``cache_dir``, check its sha256, write the card beside it
    and return that cached card."""
    if not card.weights_url:
        raise LiverTumorSegError(f"model '{card.name}' names no weights URL to download from")
    cache_dir = Path(cache_dir)
    created = not cache_dir.exists()
    try:
        cache_dir.mkdir(parents=True, exist_ok=True)
        handle = tempfile.NamedTemporaryFile(dir=cache_dir, prefix=f".{card.weights_file}.", suffix=".partial",
                                             delete=False)
    except OSError as exc:
        raise LiverTumorSegError(f"cannot write to the model cache {cache_dir} ({exc.strerror or exc}); "
                                 "set LIVERTUMORSEG_CACHE to a writable folder") from None
    partial = Path(handle.name)
    digest = hashlib.sha256()
    log.info("downloading the weights of %s from %s", card.name, card.weights_url)
    try:
        with handle, urllib.request.urlopen(card.weights_url, timeout=timeout_s) as response:  # noqa: S310
            total = int(response.headers.get("Content-Length") or 0)
            done = 0
            while True:
                chunk = response.read(CHUNK_BYTES)
                if not chunk:
                    break
                handle.write(chunk)
                digest.update(chunk)
                done += len(chunk)
                if on_progress is not None and total:
                    on_progress(min(1.0, done / total))
        actual = digest.hexdigest()
        if actual != card.weights_sha256:
            raise LiverTumorSegError(f"the weights downloaded for model '{card.name}' from {card.weights_url} have "
                                     f"sha256 {actual[:12]}..., the card expects {card.weights_sha256[:12]}...; "
                                     "the file on the server is not the one the card describes")
        os.replace(partial, cache_dir / card.weights_file)
    except (urllib.error.URLError, OSError, ValueError) as exc:
        reason = getattr(exc, "reason", None) or getattr(exc, "strerror", None) or exc
        raise LiverTumorSegError(f"cannot download the weights of model '{card.name}' from {card.weights_url} "
                                 f"({reason}); if this computer is offline, copy the card and its weights file "
                                 "here and run 'livertumorseg models import CARD.json'") from None
    finally:
        partial.unlink(missing_ok=True)
        if created and not (cache_dir / card.weights_file).exists():
            try:
                cache_dir.rmdir()  # a failed download leaves no (empty) model folder behind
            except OSError:
                pass
    cached = replace(card, card_path=str(cache_dir / f"{card.name}.json"))
    write_card(cached, cache_dir / f"{card.name}.json")
    if on_progress is not None:
        on_progress(1.0)
    return cached
