"""Weights a card names by URL: downloaded into the cache on first use (sha256 checked, atomic),
reused offline afterwards, refused when the file differs, and a clear error when unreachable.
A real HTTP server on localhost serves the files."""

from __future__ import annotations

import functools
import http.server
import shutil
import socket
import threading
from dataclasses import replace
from pathlib import Path

import pytest

from LiverTumorSegLib.errors import LiverTumorSegError
from LiverTumorSegLib.models.card import read_card, write_card
from LiverTumorSegLib.models.registry import ModelRegistry
from LiverTumorSegLib.pipeline import Pipeline, PipelineSettings


class _QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args) -> None:  # noqa: D401 (keep test output clean)
        pass


@pytest.fixture
def server(tmp_path):
    """(folder served, base URL); stopped after the test."""
    folder = tmp_path / "served"
    folder.mkdir()
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0),
                                            functools.partial(_QuietHandler, directory=str(folder)))
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield folder, f"http://127.0.0.1:{httpd.server_address[1]}"
    httpd.shutdown()
    httpd.server_close()


@pytest.fixture
def remote_models(tmp_path, tiny_models_dir, tiny_models, server):
    """A copy of the tiny models whose first tumor member's weights live only on the server."""
    folder, base_url = server
    models = tmp_path / "models"
    shutil.copytree(tiny_models_dir, models)
    member = read_card(models / f"{tiny_models.members[0]}.json")
    shutil.move(str(member.weights_path), folder / member.weights_file)
    remote = replace(member, weights_url=f"{base_url}/{member.weights_file}")
    write_card(remote, models / f"{member.name}.json")
    return models, read_card(models / f"{member.name}.json"), folder


def _closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_weights_are_downloaded_once_then_used_from_the_cache(remote_models, tmp_path):
    models, card, served = remote_models
    cache = tmp_path / "cache"
    registry = ModelRegistry([models], cache_dir=cache)
    assert "not downloaded yet" in registry.verify(card)
    fractions = []
    fetched = registry.with_weights(card, on_progress=fractions.append)
    folder = cache / card.name  # the model's own folder in the cache
    assert fetched.weights_path == folder / card.weights_file
    assert registry.verify(fetched) is None and fractions[-1] == 1.0
    assert registry.verify(card) is None  # the card as found (weights not beside it): its cached copy counts
    assert read_card(folder / f"{card.name}.json").weights_sha256 == card.weights_sha256
    assert [p.name for p in cache.iterdir()] == [card.name]
    assert sorted(p.name for p in folder.iterdir()) == sorted([card.weights_file, f"{card.name}.json"])
    # Offline afterwards: the cached copy is used, nothing is fetched.
    (served / card.weights_file).unlink()
    assert registry.with_weights(card).weights_path == folder / card.weights_file


def test_downloads_whose_weights_files_share_a_name_do_not_overwrite_each_other(remote_models, tmp_path,
                                                                                tiny_models):
    """Two cards whose weights URLs both end in model.safetensors: each download keeps its own file."""
    models, card, served = remote_models
    second = read_card(models / f"{tiny_models.members[1]}.json")
    shutil.move(str(second.weights_path), served / "second.safetensors")
    shutil.move(str(served / card.weights_file), served / "first.safetensors")
    base = card.weights_url.rsplit("/", 1)[0]
    cards = [replace(c, weights_file="model.safetensors", weights_url=f"{base}/{served_name}")
             for c, served_name in ((card, "first.safetensors"), (second, "second.safetensors"))]
    registry = ModelRegistry([models], cache_dir=tmp_path / "cache")
    for remote in cards:
        registry.with_weights(remote)
    for remote in cards:
        assert registry.verify(remote) is None
        assert registry.with_weights(remote).weights_path == tmp_path / "cache" / remote.name / "model.safetensors"


def test_weights_downloaded_into_the_older_flat_cache_are_still_used(remote_models, tmp_path):
    models, card, served = remote_models
    cache = tmp_path / "cache"
    cache.mkdir()
    shutil.move(str(served / card.weights_file), cache / card.weights_file)  # <cache>/<weights>: the old layout
    registry = ModelRegistry([models], cache_dir=cache)
    assert registry.verify(card) is None
    assert registry.with_weights(card).weights_path == cache / card.weights_file  # offline: nothing to fetch


def test_pipeline_fetches_missing_member_weights(remote_models, tmp_path, tiny_models):
    models, card, _ = remote_models
    pipeline = Pipeline(PipelineSettings(device="cpu"), ModelRegistry([models], cache_dir=tmp_path / "cache"))
    assert [m.card.name for m in pipeline.tumor_members] == list(tiny_models.members)
    assert (tmp_path / "cache" / card.name / card.weights_file).is_file()


def test_a_different_file_on_the_server_is_refused_and_leaves_nothing(remote_models, tmp_path):
    models, card, served = remote_models
    (served / card.weights_file).write_bytes(b"not the weights the card describes")
    cache = tmp_path / "cache"
    with pytest.raises(LiverTumorSegError, match="not the one the card describes"):
        ModelRegistry([models], cache_dir=cache).with_weights(card)
    assert list(cache.iterdir()) == []


def test_unreachable_server_says_how_to_import_offline(remote_models, tmp_path):
    models, card, _ = remote_models
    offline = replace(card, weights_url=f"http://127.0.0.1:{_closed_port()}/{card.weights_file}")
    cache = tmp_path / "cache"
    with pytest.raises(LiverTumorSegError) as raised:
        ModelRegistry([models], cache_dir=cache).with_weights(offline)
    message = str(raised.value)
    assert "cannot download" in message and "livertumorseg models import" in message
    assert list(cache.iterdir()) == []


def test_missing_weights_without_url_names_the_import_command(remote_models, tmp_path):
    models, card, _ = remote_models
    local_only = replace(card, weights_url=None)
    with pytest.raises(LiverTumorSegError, match="is missing; import the model"):
        ModelRegistry([models], cache_dir=tmp_path / "cache").with_weights(local_only)
