"""Tests of LiverTumorSegLib.models: cards, registry, weights (safetensors + sha256), networks,
and the ``models import|verify`` commands."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest
import torch

from LiverTumorSegLib.errors import LiverTumorSegError
from LiverTumorSegLib.inference import LoadedModel
from LiverTumorSegLib.models.card import (CARD_FORMAT, EnsembleCard, EnsembleMember, ModelCard, card_from_dict,
                                          read_card, write_card)
from LiverTumorSegLib.models.networks import ARCHITECTURES, build_network, forward_logits
from LiverTumorSegLib.models.registry import ModelRegistry, embedded_models_dir, user_cache_dir
from LiverTumorSegLib.models.weights import load_weights, save_weights, sha256_of


def _model_card(**overrides) -> ModelCard:
    values = dict(name="m", version="1.2", task="liver", architecture="UNet",
                  architecture_args={"in_channels": 1, "out_channels": 2, "channels": [4, 8], "strides": [2]},
                  spacing_mm=(1.5, 1.5, 3.0), patch_size=(32, 32, 16), hu_window=(-100.0, 250.0),
                  weights_file="m.safetensors", weights_sha256="0" * 64, classes={"0": "background", "1": "liver"},
                  description="d", trained_on="t", source="s", metrics={"dice": 0.9}, intended_use="research")
    values.update(overrides)
    return ModelCard(**values)


def _copy_models(src: Path, dst: Path, names) -> Path:
    dst.mkdir(parents=True, exist_ok=True)
    for name in names:
        card = read_card(src / f"{name}.json")
        shutil.copy2(src / f"{name}.json", dst / f"{name}.json")
        if isinstance(card, ModelCard):
            shutil.copy2(card.weights_path, dst / card.weights_file)
    return dst


# --- cards -----------------------------------------------------------------------------------

def test_model_card_round_trip(tmp_path):
    card = _model_card()
    path = tmp_path / "m.json"
    write_card(card, path)
    data = json.loads(path.read_text())
    assert data["format"] == CARD_FORMAT and data["kind"] == "model" and "card_path" not in data
    back = read_card(path)
    assert isinstance(back, ModelCard)
    assert back.to_dict() == card.to_dict()
    assert back.card_path == str(path) and back.weights_path == tmp_path / "m.safetensors"
    assert back.patch_size_kji == (16, 32, 32)
    assert back.summary() == {"name": "m", "version": "1.2", "task": "liver", "architecture": "UNet",
                              "sha256": "0" * 64, "non_clinical": True}


def test_ensemble_card_round_trip_and_weights(tmp_path):
    card = EnsembleCard(name="e", version="3", task="tumor",
                        members=[EnsembleMember("a", 3.0), EnsembleMember("b", 1.0)])
    write_card(card, tmp_path / "e.json")
    back = read_card(tmp_path / "e.json")
    assert isinstance(back, EnsembleCard) and back.kind == "ensemble"
    assert back.to_dict() == card.to_dict()
    assert back.normalized_weights() == [0.75, 0.25]


def test_an_ensemble_member_can_run_without_the_flip_and_its_card_says_so_only_then(tmp_path):
    card = EnsembleCard(name="e", version="3", task="tumor",
                        members=[EnsembleMember("a", 1.0), EnsembleMember("b", 1.0, tta=False)])
    write_card(card, tmp_path / "e.json")
    written = json.loads((tmp_path / "e.json").read_text())
    assert written["members"] == [{"model": "a", "weight": 1.0}, {"model": "b", "weight": 1.0, "tta": False}]
    back = read_card(tmp_path / "e.json")
    assert [m.tta for m in back.members] == [True, False]
    assert back.summary()["members"] == written["members"]


@pytest.mark.parametrize("tta", ["no", 0, None])
def test_an_ensemble_members_tta_must_be_a_boolean(tta):
    data = {"format": CARD_FORMAT, "kind": "ensemble", "name": "e", "version": "1", "task": "tumor",
            "members": [{"model": "a", "weight": 1.0, "tta": tta}]}
    with pytest.raises(LiverTumorSegError, match="member 'a' has tta .*; use true or false"):
        card_from_dict(data, "e.json")


def test_refinement_cards_round_trip(tmp_path):
    """A liver card names its refinement model; the refinement card takes the CT and the liver prior."""
    liver = _model_card(refine_model="r")
    refine = _model_card(name="r", task="liver_refine", input_channels=["ct", "liver_prior"])
    for card in (liver, refine):
        write_card(card, tmp_path / f"{card.name}.json")
        assert read_card(tmp_path / f"{card.name}.json").to_dict() == card.to_dict()
    assert read_card(tmp_path / "m.json").refine_model == "r"
    assert read_card(tmp_path / "r.json").input_channels == ["ct", "liver_prior"]
    data = _model_card().to_dict()
    del data["refine_model"], data["input_channels"]  # cards written before these fields
    old = card_from_dict(data)
    assert old.refine_model is None and old.input_channels == ["ct"]


def test_card_without_location_has_no_weights_path():
    with pytest.raises(LiverTumorSegError, match="no location"):
        _ = _model_card().weights_path


REQUIRED_MODEL_FIELDS = ("name", "version", "task", "architecture", "spacing_mm", "patch_size", "hu_window",
                         "weights_file", "weights_sha256")


@pytest.mark.parametrize("field", REQUIRED_MODEL_FIELDS)
def test_card_missing_a_required_field_names_it(field):
    data = _model_card().to_dict()
    del data[field]
    with pytest.raises(LiverTumorSegError, match=f"missing the field '{field}'"):
        card_from_dict(data, "x.json")


@pytest.mark.parametrize("change, fragment", [
    ({"format": "something-else/1"}, "not a LiverTumorSeg model card"),
    ({"task": "spleen"}, "task 'spleen'"),
    ({"spacing_mm": [1.0, 1.0]}, "malformed"),
    ({"patch_size": [32, 32]}, "malformed"),
    ({"hu_window": [250.0, -100.0]}, "malformed"),
    ({"input_channels": ["liver_prior", "ct"]}, "expected 'ct' first"),
    ({"input_channels": ["ct", "ct"]}, "expected 'ct' first"),
    ({"input_channels": ["ct", "pet"]}, "expected 'ct' first"),
    ({"input_channels": []}, "expected 'ct' first"),
    ({"input_channels": ["ct", "liver_prior"]}, "only it takes 'liver_prior'"),  # a liver model with a prior
    ({"input_channels": ["ct", "hypodensity"]}, "only a tumor model takes the 'hypodensity' channel"),
    ({"task": "liver_refine"}, "a liver_refine model takes"),  # a refinement model without its prior
    ({"name": "../x"}, "model name '../x'; a model name uses only"),
    ({"name": "a/b"}, "model name 'a/b'; a model name uses only"),
    ({"name": "a\\b"}, "a model name uses only"),
    ({"name": ".hidden"}, "a model name uses only"),
    ({"name": ""}, "a model name uses only"),
    ({"name": "two words"}, "a model name uses only"),
    ({"name": "x" * 129}, "a model name uses only"),
    ({"name": 7}, "a model name uses only"),
    ({"refine_model": "../r"}, "refine_model '../r'"),
    ({"weights_file": "../m.safetensors"}, "weights_file '../m.safetensors'; it must be the name of a file beside"),
    ({"weights_file": "sub/m.safetensors"}, "it must be the name of a file beside"),
    ({"weights_file": "/tmp/m.safetensors"}, "it must be the name of a file beside"),
    ({"weights_file": ".."}, "it must be the name of a file beside"),
])
def test_malformed_model_card(change, fragment):
    data = _model_card().to_dict()
    data.update(change)
    with pytest.raises(LiverTumorSegError, match=fragment):
        card_from_dict(data, "x.json")


@pytest.mark.parametrize("name", ["liver-demo", "m", "Tumor_v1.2-final", "0", "a" * 128])
def test_safe_model_names_are_accepted(name):
    assert card_from_dict(dict(_model_card().to_dict(), name=name), "x.json").name == name


def test_ensemble_member_names_are_checked():
    data = {"format": CARD_FORMAT, "kind": "ensemble", "name": "e", "version": "1", "task": "tumor",
            "members": [{"model": "a", "weight": 1.0}, {"model": "../b", "weight": 1.0}]}
    with pytest.raises(LiverTumorSegError, match="member name '../b'; a model name uses only"):
        card_from_dict(data, "e.json")


@pytest.mark.parametrize("members", [[], [{"model": "a", "weight": -1.0}, {"model": "b", "weight": 2.0}],
                                     [{"model": "a", "weight": 0.0}]])
def test_malformed_ensemble_card(members):
    data = {"format": CARD_FORMAT, "kind": "ensemble", "name": "e", "version": "1", "task": "tumor",
            "members": members}
    with pytest.raises(LiverTumorSegError, match="non-negative weights"):
        card_from_dict(data, "e.json")


def test_unreadable_card_files(tmp_path):
    with pytest.raises(LiverTumorSegError, match="does not exist"):
        read_card(tmp_path / "none.json")
    (tmp_path / "bad.json").write_text("{ not json")
    with pytest.raises(LiverTumorSegError, match="not readable JSON"):
        read_card(tmp_path / "bad.json")
    (tmp_path / "list.json").write_text("[1, 2]")
    with pytest.raises(LiverTumorSegError, match="not a LiverTumorSeg model card"):
        read_card(tmp_path / "list.json")


# --- registry --------------------------------------------------------------------------------

def test_registry_resolves_by_name_and_by_card_path(tiny_registry, tiny_models):
    liver = tiny_registry.resolve(tiny_models.liver, task="liver")
    assert isinstance(liver, ModelCard) and liver.name == tiny_models.liver
    by_path = ModelRegistry([]).resolve(str(tiny_models.directory / f"{tiny_models.liver}.json"), task="liver")
    assert by_path.to_dict() == liver.to_dict()
    ensemble = tiny_registry.resolve(tiny_models.tumor, task="tumor")
    members = tiny_registry.ensemble_members(ensemble)
    assert [m.name for m in members] == list(tiny_models.members)
    assert tiny_registry.ensemble_members(liver) == [liver]


def test_registry_task_mismatch(tiny_registry, tiny_models):
    with pytest.raises(LiverTumorSegError, match="is a liver model, but a tumor model is needed"):
        tiny_registry.resolve(tiny_models.liver, task="tumor")


def test_registry_unknown_name_lists_the_known_ones(tiny_registry, tiny_models):
    with pytest.raises(LiverTumorSegError) as info:
        tiny_registry.resolve("no-such-model")
    message = str(info.value)
    assert "'no-such-model' not found" in message and "models import" in message
    for name in (tiny_models.liver, tiny_models.tumor, *tiny_models.members):
        assert name in message
    with pytest.raises(LiverTumorSegError, match="none installed"):
        ModelRegistry([]).resolve("liver-demo")


def test_first_directory_wins_and_broken_cards_are_listed(tmp_path, tiny_models):
    first = _copy_models(tiny_models.directory, tmp_path / "first", [tiny_models.liver])
    card = json.loads((first / f"{tiny_models.liver}.json").read_text())
    card["version"] = "9.9"
    (first / f"{tiny_models.liver}.json").write_text(json.dumps(card))
    (first / "broken.json").write_text('{"format": "livertumorseg-model-card/1", "task": "liver"}')
    registry = ModelRegistry([first, tiny_models.directory])
    assert registry.resolve(tiny_models.liver).version == "9.9"
    assert registry.resolve(tiny_models.tumor).name == tiny_models.tumor  # still found in the second folder
    broken = registry.broken_cards()
    assert list(broken) == [str(first / "broken.json")] and "missing the field 'name'" in broken[str(first / "broken.json")]


def test_ensemble_members_must_be_known_single_models(tmp_path, tiny_models):
    folder = _copy_models(tiny_models.directory, tmp_path / "m", [tiny_models.tumor, *tiny_models.members])
    write_card(EnsembleCard(name="nested", version="1", task="tumor", members=[EnsembleMember(tiny_models.tumor, 1)]),
               folder / "nested.json")
    write_card(EnsembleCard(name="dangling", version="1", task="tumor", members=[EnsembleMember("gone", 1)]),
               folder / "dangling.json")
    registry = ModelRegistry([folder])
    with pytest.raises(LiverTumorSegError, match="itself an ensemble"):
        registry.ensemble_members(registry.resolve("nested"))
    with pytest.raises(LiverTumorSegError, match="'gone' not found"):
        registry.ensemble_members(registry.resolve("dangling"))


def test_default_registry_search_order(monkeypatch, tmp_path):
    monkeypatch.setenv("LIVERTUMORSEG_MODELS", os.pathsep.join([str(tmp_path / "a"), str(tmp_path / "b")]))
    monkeypatch.setenv("LIVERTUMORSEG_CACHE", str(tmp_path / "cache"))
    assert ModelRegistry.default().search_dirs == [tmp_path / "a", tmp_path / "b", embedded_models_dir(),
                                                   tmp_path / "cache"]
    monkeypatch.delenv("LIVERTUMORSEG_CACHE")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert user_cache_dir() == tmp_path / "xdg" / "livertumorseg" / "models"
    assert embedded_models_dir() == Path(__file__).resolve().parents[2] / "Resources" / "Models"


def test_verify_reports_missing_and_modified_weights(tmp_path, tiny_models):
    folder = _copy_models(tiny_models.directory, tmp_path / "m", [tiny_models.liver])
    registry = ModelRegistry([folder])
    card = registry.resolve(tiny_models.liver)
    assert registry.verify(card) is None
    with open(card.weights_path, "r+b") as handle:
        handle.seek(-4, os.SEEK_END)
        handle.write(b"\x00\x01\x02\x03")
    assert "sha256" in registry.verify(card)
    card.weights_path.unlink()
    assert "missing" in registry.verify(card)


# --- weights ---------------------------------------------------------------------------------

def test_weights_round_trip_with_sha256(tmp_path):
    state = {"a": torch.arange(6, dtype=torch.float32).reshape(2, 3), "b": torch.ones(4, dtype=torch.int64)}
    sha = save_weights(state, tmp_path / "w.safetensors")
    assert sha == sha256_of(tmp_path / "w.safetensors") and len(sha) == 64
    loaded = load_weights(tmp_path / "w.safetensors", sha)
    assert set(loaded) == {"a", "b"}
    assert torch.equal(loaded["a"], state["a"]) and torch.equal(loaded["b"], state["b"])


def test_weights_sha256_mismatch_is_a_clear_error(tmp_path):
    sha = save_weights({"a": torch.zeros(3)}, tmp_path / "w.safetensors")
    with pytest.raises(LiverTumorSegError, match="corrupt or does not belong to its model card"):
        load_weights(tmp_path / "w.safetensors", "f" * 64)
    with pytest.raises(LiverTumorSegError, match="missing"):
        load_weights(tmp_path / "gone.safetensors", sha)


@pytest.mark.parametrize("damage", ["truncate", "garbage_header"])
def test_corrupt_safetensors_with_matching_sha_is_a_clear_error(tmp_path, damage):
    """Even when the card's sha256 was made from the damaged file, reading it fails cleanly."""
    path = tmp_path / "w.safetensors"
    save_weights({"a": torch.zeros(64), "b": torch.ones(64)}, path)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2] if damage == "truncate" else b"\xff" * 8 + data[8:])
    with pytest.raises(LiverTumorSegError, match="cannot be read as safetensors"):
        load_weights(path, sha256_of(path))


class _CreatesMarker:
    """Unpickling this runs ``open(marker, 'w')``: a stand-in for arbitrary code in a pickle."""

    def __init__(self, marker: str) -> None:
        self.marker = marker

    def __reduce__(self):
        return (open, (self.marker, "w"))


def test_pickled_checkpoint_renamed_to_safetensors_is_refused_without_running_it(tmp_path):
    marker = tmp_path / "pickle_code_ran"
    path = tmp_path / "evil.safetensors"
    torch.save({"weight": torch.zeros(2), "payload": _CreatesMarker(str(marker))}, path)
    with pytest.raises(LiverTumorSegError, match="cannot be read as safetensors"):
        load_weights(path, sha256_of(path))
    assert not marker.exists(), "loading weights executed pickled code"
    # The file really is dangerous: an unsafe pickle load of the same bytes runs the payload.
    as_checkpoint = tmp_path / "evil.pt"
    as_checkpoint.write_bytes(path.read_bytes())
    torch.load(as_checkpoint, weights_only=False)
    assert marker.exists()


def test_pickled_checkpoint_through_a_card_is_refused(tmp_path, tiny_models):
    marker = tmp_path / "pickle_code_ran"
    weights = tmp_path / "evil.safetensors"
    torch.save({"payload": _CreatesMarker(str(marker))}, weights)
    card = read_card(tiny_models.directory / f"{tiny_models.liver}.json")
    card.weights_file, card.weights_sha256 = weights.name, sha256_of(weights)
    write_card(card, tmp_path / "evil.json")
    with pytest.raises(LiverTumorSegError):
        LoadedModel.load(read_card(tmp_path / "evil.json"))
    assert not marker.exists()


# --- networks and loading --------------------------------------------------------------------

def test_loaded_model_matches_the_saved_state(tiny_registry, tiny_models, helpers):
    card = tiny_registry.resolve(tiny_models.random_model)
    model = LoadedModel.load(card)
    expected = helpers.random_unet_state(0)
    state = model.network.state_dict()
    assert set(state) == set(expected)
    assert all(torch.equal(state[k], expected[k]) for k in expected)
    assert not model.network.training
    logits = forward_logits(model.network, torch.zeros(1, 1, 16, 16, 16))
    assert tuple(logits.shape) == (1, 2, 16, 16, 16)


def test_weights_that_do_not_fit_the_architecture(tmp_path, helpers):
    state = helpers.random_unet_state(0)
    args = dict(helpers.RANDOM_UNET_ARGS, channels=[8, 16])  # the card claims wider layers
    card_path = helpers.write_model(tmp_path, "misfit", "tumor", state, args, spacing=(5, 5, 5))
    with pytest.raises(LiverTumorSegError, match="do not fit its architecture"):
        LoadedModel.load(read_card(card_path))


def test_unknown_architecture_and_bad_arguments():
    with pytest.raises(LiverTumorSegError) as info:
        build_network("ResNet9000", {})
    assert all(name in str(info.value) for name in ARCHITECTURES)
    with pytest.raises(LiverTumorSegError, match="do not fit UNet"):
        build_network("UNet", {"in_channels": 1, "no_such_argument": 3})
    with pytest.raises(LiverTumorSegError, match="do not fit UNet"):  # MONAI's own check: a ValueError
        build_network("UNet", {"in_channels": 1, "out_channels": 2, "channels": [4], "strides": []})


def test_forward_logits_unwraps_network_tuples():
    class VaeLike(torch.nn.Module):
        def forward(self, x):
            return x * 2, torch.tensor(0.5)

    x = torch.ones(1, 1, 2, 2, 2)
    assert torch.equal(forward_logits(VaeLike(), x), x * 2)


# --- models import / verify (command line, in process) ----------------------------------------

def test_models_import_into_the_user_cache_and_force(tmp_path, monkeypatch, tiny_models, capsys, cli_main):
    cache = tmp_path / "cache"
    monkeypatch.setenv("LIVERTUMORSEG_CACHE", str(cache))
    monkeypatch.setenv("LIVERTUMORSEG_MODELS", str(tmp_path / "nothing"))
    source = _copy_models(tiny_models.directory, tmp_path / "download", [tiny_models.random_model])
    card_file = source / f"{tiny_models.random_model}.json"

    assert cli_main(["models", "import", str(card_file)]) == 0
    assert "imported tiny-random-unet" in capsys.readouterr().out
    folder = cache / "tiny-random-unet"
    assert _tree(cache) == ["tiny-random-unet/tiny-random-unet.json", "tiny-random-unet/tiny-random-unet.safetensors"]
    imported = ModelRegistry.default().resolve(tiny_models.random_model)
    assert Path(imported.card_path).parent == folder
    LoadedModel.load(imported)

    before = (folder / "tiny-random-unet.json").read_text()
    data = json.loads(card_file.read_text())
    data["version"] = "2.0"
    card_file.write_text(json.dumps(data))
    assert cli_main(["models", "import", str(card_file)]) == 1
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "already exists" in err and "--force" in err
    assert (folder / "tiny-random-unet.json").read_text() == before

    assert cli_main(["models", "import", str(card_file), "--force"]) == 0
    assert ModelRegistry.default().resolve(tiny_models.random_model).version == "2.0"
    assert _tree(cache) == ["tiny-random-unet/tiny-random-unet.json", "tiny-random-unet/tiny-random-unet.safetensors"]


def _tree(folder: Path) -> list:
    """Every file under ``folder`` (hidden ones too), relative, sorted."""
    return sorted(p.relative_to(folder).as_posix() for p in folder.rglob("*") if p.is_file()) \
        if folder.exists() else []


def _write_source_model(folder: Path, name: str, weights: bytes = b"", state=None, card_file: str = "card.json",
                        weights_file: str = "model.safetensors", **card_fields) -> Path:
    """A model as a training tool leaves it: ``card.json`` and ``model.safetensors`` in ``folder``
    (``state`` saved as safetensors, or the raw bytes ``weights``); returns the card file."""
    folder.mkdir(parents=True, exist_ok=True)
    if state is not None:
        save_weights(state, folder / weights_file)
    else:
        (folder / weights_file).write_bytes(weights)
    card = _model_card(name=name, task="tumor", weights_file=weights_file,
                       weights_sha256=sha256_of(folder / weights_file), **card_fields)
    write_card(card, folder / card_file)
    return folder / card_file


@pytest.fixture
def user_cache(tmp_path, monkeypatch) -> Path:
    """LIVERTUMORSEG_CACHE -> an empty folder; no other model folders."""
    monkeypatch.setenv("LIVERTUMORSEG_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("LIVERTUMORSEG_MODELS", str(tmp_path / "nothing"))
    return tmp_path / "cache"


@pytest.mark.parametrize("card_files", ["named after the model", "card.json"])
def test_models_whose_weights_files_share_a_name_do_not_overwrite_each_other(card_files, tmp_path, user_cache,
                                                                             helpers, capsys, cli_main):
    """Two models whose weights are both model.safetensors (as most training tools write them),
    with cards named after the models or also sharing one file name."""
    states = {"first": helpers.random_unet_state(1), "second": helpers.random_unet_state(2)}
    for name, state in states.items():
        card_file = _write_source_model(tmp_path / "downloads" / name, name, state=state,
                                        card_file="card.json" if card_files == "card.json" else f"{name}.json")
        assert cli_main(["models", "import", str(card_file)]) == 0, capsys.readouterr().err
    registry = ModelRegistry.default()
    for name, state in states.items():
        card = registry.resolve(name)
        assert registry.verify(card) is None
        loaded = LoadedModel.load(card).network.state_dict()
        assert all(torch.equal(loaded[k], state[k]) for k in state)
    assert cli_main(["models", "verify", "first", "second"]) == 0
    assert _tree(user_cache) == ["first/first.json", "first/model.safetensors",  # one folder per model
                                 "second/model.safetensors", "second/second.json"]


def test_the_older_flat_cache_layout_is_still_read_and_replaced_on_force(tmp_path, user_cache, tiny_models,
                                                                          capsys, cli_main):
    _copy_models(tiny_models.directory, user_cache, [tiny_models.random_model])  # <cache>/<name>.json + weights
    card = ModelRegistry.default().resolve(tiny_models.random_model)
    assert Path(card.card_path) == user_cache / "tiny-random-unet.json"
    LoadedModel.load(card)
    source = _copy_models(tiny_models.directory, tmp_path / "download", [tiny_models.random_model])
    assert cli_main(["models", "import", str(source / "tiny-random-unet.json")]) == 1
    assert "already exists" in capsys.readouterr().err
    assert cli_main(["models", "import", str(source / "tiny-random-unet.json"), "--force"]) == 0
    assert _tree(user_cache) == ["tiny-random-unet.safetensors",  # the flat card's weights stay (may be shared)
                                 "tiny-random-unet/tiny-random-unet.json",
                                 "tiny-random-unet/tiny-random-unet.safetensors"]
    assert Path(ModelRegistry.default().resolve(tiny_models.random_model).card_path).parent == \
        user_cache / "tiny-random-unet"


def _pickle_bytes(tmp_path: Path, marker: Path) -> bytes:
    """A torch checkpoint whose unpickling creates ``marker``."""
    torch.save({"weight": torch.zeros(2), "payload": _CreatesMarker(str(marker))}, tmp_path / "evil.pt")
    return (tmp_path / "evil.pt").read_bytes()


def _valid_weights(helpers) -> bytes:
    from safetensors.torch import save as save_bytes

    return save_bytes({k: v.contiguous() for k, v in helpers.random_unet_state(0).items()})


@pytest.mark.parametrize("kind, fragment", [
    ("pickle", "cannot be read as safetensors"),
    ("truncated", "cannot be read as safetensors"),
    ("text", "cannot be read as safetensors"),
    ("empty", "cannot be read as safetensors"),
    ("wrong_shapes", "with the wrong shape"),
    ("missing_tensor", "missing"),
    ("extra_tensor", "unexpected"),
    ("unknown_architecture", "unknown architecture"),
    ("bad_architecture_args", "arguments do not fit UNet"),
])
def test_models_import_refuses_weights_that_cannot_load(kind, fragment, tmp_path, user_cache, helpers, tiny_models,
                                                        capsys, cli_main):
    """The card's sha256 matches each of these files: only reading them shows they cannot load.
    The refusal is one error line and leaves the cache exactly as it was; a pickle is never unpickled."""
    from safetensors.torch import save as save_bytes

    source = _copy_models(tiny_models.directory, tmp_path / "installed", [tiny_models.random_model])
    assert cli_main(["models", "import", str(source / "tiny-random-unet.json")]) == 0
    before = {p: p.read_bytes() for p in user_cache.rglob("*") if p.is_file()}
    capsys.readouterr()

    marker = tmp_path / "pickle_code_ran"
    state = {k: v.contiguous() for k, v in helpers.random_unet_state(0).items()}
    card_fields = {}
    if kind == "pickle":
        weights = _pickle_bytes(tmp_path, marker)
    elif kind == "truncated":
        weights = _valid_weights(helpers)[:-100]
    elif kind == "text":
        weights = b"version https://git-lfs.github.com/spec/v1\noid sha256:0123\nsize 123\n"
    elif kind == "empty":
        weights = b""
    elif kind == "wrong_shapes":
        weights, card_fields = _valid_weights(helpers), {"architecture_args": dict(helpers.RANDOM_UNET_ARGS,
                                                                                   channels=[8, 16])}
    elif kind == "missing_tensor":
        weights = save_bytes(dict(list(state.items())[1:]))
    elif kind == "extra_tensor":
        weights = save_bytes(dict(state, extra=torch.zeros(3)))
    elif kind == "unknown_architecture":
        weights, card_fields = _valid_weights(helpers), {"architecture": "ResNet9000"}
    else:
        weights, card_fields = _valid_weights(helpers), {"architecture_args": dict(helpers.RANDOM_UNET_ARGS,
                                                                                   channels=[4], strides=[])}
    card_file = _write_source_model(tmp_path / "download", "incoming", weights, **card_fields)

    assert cli_main(["models", "import", str(card_file)]) == 1
    captured = capsys.readouterr()
    assert captured.err.startswith("error: cannot import 'incoming': ") and fragment in captured.err
    assert captured.err.count("\n") == 1 and "Traceback" not in captured.err and captured.out == ""
    assert {p: p.read_bytes() for p in user_cache.rglob("*") if p.is_file()} == before
    assert not marker.exists(), "importing the weights executed pickled code"
    if kind == "pickle":  # the file really is dangerous: an unsafe load runs its payload
        torch.load(tmp_path / "evil.pt", weights_only=False)
        assert marker.exists()


def test_models_import_accepts_weights_that_fit(tmp_path, user_cache, helpers, capsys, cli_main):
    """The checks above refuse only what cannot load: a safetensors file of the card's network passes."""
    card_file = _write_source_model(tmp_path / "download", "incoming", _valid_weights(helpers))
    assert cli_main(["models", "import", str(card_file)]) == 0, capsys.readouterr().err
    LoadedModel.load(ModelRegistry.default().resolve("incoming"))


@pytest.mark.parametrize("name", ["../escaped", "a/b", ".hidden"])
def test_models_import_refuses_unsafe_names(name, tmp_path, user_cache, helpers, capsys, cli_main):
    card_file = _write_source_model(tmp_path / "download" / "src", "placeholder", state=helpers.random_unet_state(0))
    data = json.loads(card_file.read_text())
    data["name"] = name
    card_file.write_text(json.dumps(data))
    assert cli_main(["models", "import", str(card_file)]) == 1
    err = capsys.readouterr().err
    assert err.startswith("error: model card ") and f"model name '{name}'" in err and err.count("\n") == 1
    assert _tree(user_cache) == [] and not (tmp_path / "escaped").exists() and not (tmp_path / "a").exists()


def test_models_import_refuses_mismatching_weights(tmp_path, monkeypatch, tiny_models, capsys, cli_main):
    cache = tmp_path / "cache"
    monkeypatch.setenv("LIVERTUMORSEG_CACHE", str(cache))
    source = _copy_models(tiny_models.directory, tmp_path / "download", [tiny_models.random_model])
    weights = source / "tiny-random-unet.safetensors"
    weights.write_bytes(weights.read_bytes()[:-16] + b"\x00" * 16)
    assert cli_main(["models", "import", str(source / "tiny-random-unet.json")]) == 1
    err = capsys.readouterr().err
    assert err.startswith("error: cannot import 'tiny-random-unet'") and "sha256" in err
    assert not cache.exists() or not any(cache.iterdir())


def test_models_verify_detects_a_corrupted_file(tmp_path, monkeypatch, tiny_models, capsys, cli_main):
    folder = _copy_models(tiny_models.directory, tmp_path / "models",
                          [tiny_models.liver, tiny_models.tumor, *tiny_models.members])
    monkeypatch.setenv("LIVERTUMORSEG_MODELS", str(folder))
    monkeypatch.setenv("LIVERTUMORSEG_CACHE", str(tmp_path / "cache"))
    names = [tiny_models.liver, tiny_models.tumor]
    assert cli_main(["models", "verify", *names]) == 0
    out = capsys.readouterr().out
    assert out.count("ok   ") == 3 and "FAIL" not in out

    member = folder / f"{tiny_models.members[1]}.safetensors"
    data = bytearray(member.read_bytes())
    data[-1] ^= 0xFF
    member.write_bytes(bytes(data))
    assert cli_main(["models", "verify", *names]) == 1
    captured = capsys.readouterr()
    assert f"FAIL {tiny_models.members[1]}" in captured.out and "sha256" in captured.out
    assert captured.err.startswith("error: 1 model problem")


def test_embedded_models_dir_source_tree_then_wheel_install(tmp_path, monkeypatch):
    """Source tree / Slicer extension: Resources/Models beside the package; a wheel install puts
    the models in <prefix>/share/livertumorseg/models (pyproject data-files)."""
    from LiverTumorSegLib.models import registry

    assert registry.embedded_models_dir() == Path(registry.__file__).resolve().parents[2] / "Resources" / "Models"
    site = tmp_path / "lib" / "site-packages" / "LiverTumorSegLib" / "models"
    site.mkdir(parents=True)
    monkeypatch.setattr(registry, "__file__", str(site / "registry.py"))
    installed = tmp_path / "share" / "livertumorseg" / "models"
    installed.mkdir(parents=True)
    monkeypatch.setattr(registry.sys, "prefix", str(tmp_path))
    assert registry.embedded_models_dir() == installed


def test_listing_cards_never_imports_torch(tmp_path, tiny_models):
    """The Slicer module lists the models in its own process, where PyTorch may not be installed."""
    import subprocess
    import sys

    script = ("import json, sys\n"
              "from LiverTumorSegLib.models.registry import ModelRegistry\n"
              "cards = ModelRegistry.default().list_cards()\n"
              "print(json.dumps({'torch': sorted(m for m in sys.modules if m.split('.')[0] in ('torch', 'monai', "
              "'safetensors')), 'names': sorted(c['name'] for c in cards)}))\n")
    env = dict(os.environ, LIVERTUMORSEG_MODELS=str(tiny_models.directory), LIVERTUMORSEG_CACHE=str(tmp_path / "cache"))
    completed = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=120)
    assert completed.returncode == 0, completed.stderr
    answer = json.loads(completed.stdout.strip().splitlines()[-1])
    assert answer["torch"] == []
    assert {tiny_models.liver, tiny_models.tumor, *tiny_models.members} <= set(answer["names"])


def test_list_cards_gives_each_card_with_its_location(tiny_registry, tiny_models):
    listed = {card["name"]: card for card in tiny_registry.list_cards()}
    assert set(listed) == set(tiny_registry.cards())
    for name, card in tiny_registry.cards().items():
        assert listed[name] == dict(card.to_dict(), location=card.card_path)
