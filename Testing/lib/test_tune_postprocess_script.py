"""The post-processing tuning script's evidence cache: a key per thing the evidence depends on."""

from __future__ import annotations

import shutil

from LiverTumorSegLib.develop.scripts.tune_postprocess import evidence_key
from LiverTumorSegLib.models.card import read_card, write_card
from LiverTumorSegLib.models.registry import ModelRegistry
from LiverTumorSegLib.pipeline import Pipeline, PipelineSettings


def test_the_evidence_key_changes_with_the_ensemble_weights_and_the_model_run(tmp_path, tiny_models):
    """A re-weighted ensemble of the same members is other evidence (a cache that ignored the
    weights once returned one ensemble's numbers for another)."""
    reweighted = tmp_path / "reweighted"
    shutil.copytree(tiny_models.directory, reweighted)
    card = read_card(reweighted / f"{tiny_models.tumor}.json")
    for member in card.members:
        member.weight = 1.0
    write_card(card, reweighted / f"{tiny_models.tumor}.json")

    def key(directory, case="case-a", **settings) -> str:
        return evidence_key(Pipeline(PipelineSettings(**settings), ModelRegistry([directory])), case)

    base = key(tiny_models.directory)
    assert base == key(tiny_models.directory)  # stable
    assert base != key(reweighted)
    assert base != key(tiny_models.directory, case="case-b")
    assert base != key(tiny_models.directory, fast=True)
    assert base != key(tiny_models.directory, crop_margin_mm=30.0)
