"""``livertumorseg ensemble``: a tumor ensemble card whose member weights are fitted on held-out cases.

Each member predicts every fitting case's liver crop (the reference liver grown by the pipeline's
crop margin; members taking the parenchyma map get it as the pipeline computes it), its
probability is put on the crop's grid, and the weights are the grid search of
``ensemble_weights`` (mean Dice per case of Σ_m w_m p_m >= 0.5 against the reference tumour, over
the voxels whose label is known inside the liver's tumour search region, where the pipeline keeps
tumours). The cases: the validation cases of the members' ``split.json``
(beside their cards, written by ``train``; all members must agree), or those of ``--split``, or
with ``--all-cases`` every case of the data.

The card is written with the members it names: a member given as a card file is copied (card and
weights) beside the ensemble card, where the registry looks for an ensemble's members first, so
``segment --tumor-model ENSEMBLE.json`` loads it as it is.
"""

from __future__ import annotations

import logging
import shutil
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Callable, Dict, List, Optional, Sequence, Tuple

import numpy as np
import SimpleITK as sitk

from ... import TUMOR_LABEL
from ...errors import LiverTumorSegError
from ...geometry import Geometry
from ...models.card import EnsembleCard, EnsembleMember, ModelCard, check_model_name, read_card, write_card
from ...models.registry import ModelRegistry
from .cases import TrainingCase, open_training_cases, read_validation_ids
from .ensemble_weights import best_weights, grid_dice, weight_grid
from .mixed_labels import IGNORE_LABEL

log = logging.getLogger(__name__)

SPLIT_FILE = "split.json"


@dataclass
class EnsembleRequest:
    """What ``livertumorseg ensemble`` was asked for."""

    members: List[str]  # names or card files
    data: Path
    output: Path  # the ensemble card file (.json)
    split: Optional[Path] = None
    all_cases: bool = False
    step: float = 0.1
    name: Optional[str] = None
    device: str = "auto"
    force: bool = False
    command_line: str = ""


def resolve_members(names: Sequence[str], registry: ModelRegistry) -> List[ModelCard]:
    """The members' model cards (tumor models, single networks, distinct names)."""
    if len(names) < 2:
        raise LiverTumorSegError("an ensemble needs at least two --members")
    cards = []
    for name in names:
        card = registry.resolve(name, task="tumor")
        if not isinstance(card, ModelCard):
            raise LiverTumorSegError(f"--members {name} is itself an ensemble; give its member models")
        cards.append(card)
    seen: Dict[str, str] = {}
    for name, card in zip(names, cards):
        if card.name in seen:
            raise LiverTumorSegError(f"--members {seen[card.name]} and {name} are both named '{card.name}'; an "
                                     "ensemble names its members, so train them with different --name")
        seen[card.name] = name
    return cards


def fitting_case_ids(members: Sequence[ModelCard], split: Optional[Path], all_cases: bool) -> Optional[List[str]]:
    """The case ids to fit on (None: every case): ``split``'s validation cases, else those of the
    split.json beside every member's card (one and the same list)."""
    if all_cases:
        return None
    if split is not None:
        sources = [Path(split)]
    else:
        sources = []
        for card in members:
            path = Path(card.card_path).parent / SPLIT_FILE if card.card_path else None
            if path is None or not path.is_file():
                raise LiverTumorSegError(f"member '{card.name}' has no {SPLIT_FILE} beside its card to say which "
                                         "cases it did not train on; give --split FILE (a train run's split.json) "
                                         "or --all-cases (every case of --data: held-out data only)")
            sources.append(path)
    lists = [sorted(read_validation_ids(path)) for path in sources]
    if any(ids != lists[0] for ids in lists[1:]):
        raise LiverTumorSegError("the members were validated on different cases (their split.json files differ): no "
                                 "case is held out from all of them; give --split FILE or --all-cases with held-out "
                                 "data")
    return lists[0]


def _member_probabilities(case: TrainingCase, members: Sequence["LoadedModel"], device: "torch.device",  # noqa: F821
                          crop_margin_mm: float) -> Tuple[List[np.ndarray], np.ndarray, np.ndarray]:
    """(each member's tumour probability on the case's liver crop, the reference tumour, the voxels
    scored: known and inside the tumour search region of the reference liver)."""
    from ...stages.crop import crop_image, liver_box
    from ...stages.liver import tumor_search_region
    from ...stages.parenchyma import hypodensity_channel
    from ...stages.tumor import ensemble_probability, needs_hypodensity

    ct, labels = case.case.load()
    raw = sitk.GetArrayFromImage(labels)
    liver = (raw > 0) & (raw != IGNORE_LABEL)
    box = liver_box(liver, ct.GetSpacing()[::-1], crop_margin_mm)
    ct_crop = crop_image(ct, box)
    region = tumor_search_region(liver[box].astype(np.uint8), Geometry.of(ct_crop).axial_array_axis()) > 0
    hypodensity = None
    if needs_hypodensity(members):
        hu = sitk.GetArrayFromImage(ct_crop).astype(np.float32)
        hypodensity = sitk.GetImageFromArray(hypodensity_channel(hu, region, ct_crop.GetSpacing()[::-1]))
        hypodensity.CopyInformation(ct_crop)
    probabilities = [ensemble_probability(ct_crop, [member], [1.0], device, hypodensity=hypodensity)[0]
                     for member in members]
    return probabilities, raw[box] == TUMOR_LABEL, (raw[box] != IGNORE_LABEL) & region


def _place_members(members: Sequence[ModelCard], folder: Path, given_as_file: Sequence[bool], force: bool,
                   registry: ModelRegistry) -> None:
    """Copy the members given as card files (card + weights) into ``folder`` unless they lie there."""
    for card, is_file in zip(members, given_as_file):
        if not is_file or Path(card.card_path).parent.resolve() == folder.resolve():
            continue
        local = registry.with_weights(card)
        target_card = folder / f"{card.name}.json"
        if target_card.exists() and not force:
            existing = read_card(target_card)
            if getattr(existing, "weights_sha256", None) != card.weights_sha256:
                raise LiverTumorSegError(f"{target_card} already holds another model named '{card.name}'; use --force "
                                         "to replace it or write the ensemble into another folder")
        shutil.copy2(local.weights_path, folder / card.weights_file)
        write_card(replace(card, card_path=None), target_card)


def build_ensemble(request: EnsembleRequest, registry: Optional[ModelRegistry] = None,
                   on_case: Optional[Callable[[int, int, str], None]] = None) -> EnsembleCard:
    """Fit the weights, write the card (and the members given as files beside it); returns the card."""
    from ...inference import LoadedModel, resolve_device
    from ...pipeline import PipelineSettings

    registry = registry or ModelRegistry.default()
    output = Path(request.output)
    if output.suffix.lower() != ".json":
        raise LiverTumorSegError(f"--output {output} must name the ensemble card file, ending in .json")
    if output.exists() and not request.force:
        raise LiverTumorSegError(f"output {output} already exists; use --force to overwrite it")
    name = check_model_name(request.name or output.stem, str(output), "ensemble name")
    if not 0.0 < request.step <= 0.5 or abs(round(1.0 / request.step) * request.step - 1.0) > 1e-9:
        raise LiverTumorSegError(f"--step must divide 1 into equal parts (0.5, 0.25, 0.2, 0.1, 0.05...), got "
                                 f"{request.step}")
    members = resolve_members(request.members, registry)
    device = resolve_device(request.device)
    layout, cases = open_training_cases(Path(request.data))
    wanted = fitting_case_ids(members, request.split, request.all_cases)
    by_id = {c.case_id: c for c in cases}
    if wanted is not None:
        missing = [i for i in wanted if i not in by_id]
        if missing:
            raise LiverTumorSegError(f"the fitting cases include {len(missing)} the data does not hold "
                                     f"({', '.join(missing[:3])}); give the --data the members were trained on")
        cases = [by_id[i] for i in wanted]
    usable = [c for c in cases if c.structures.liver and c.structures.tumor]
    if not usable:
        raise LiverTumorSegError("none of the fitting cases annotates both the liver and the tumours; the weights "
                                 "are fitted on cases that do")
    loaded = [LoadedModel.load(registry.with_weights(card)) for card in members]
    grid = weight_grid(len(members), request.step)
    per_case, case_ids = [], []
    margin = float(PipelineSettings().crop_margin_mm)
    for index, case in enumerate(usable):
        if on_case is not None:
            on_case(index, len(usable), case.case_id)
        probabilities, target, known = _member_probabilities(case, loaded, device, margin)
        per_case.append(grid_dice(probabilities, target, grid, known))
        case_ids.append(case.case_id)
    weights, scores = best_weights(grid, per_case)
    alone = {card.name: scores[",".join("1" if j == i else "0" for j in range(len(members)))]
             for i, card in enumerate(members)}
    fitted_on = (f"{len(case_ids)} case(s) of the {layout} dataset {Path(request.data).name}"
                 + (" (every case)" if wanted is None else " (held out from the members' training)"))
    card = EnsembleCard(
        name=name, version="1.0.0", task="tumor",
        members=[EnsembleMember(c.name, w) for c, w in zip(members, weights)],
        description="Tumor ensemble from livertumorseg ensemble: weighted mean of the members' probabilities.",
        trained_on=f"Weights fitted on {fitted_on}; members: "
                   + "; ".join(f"{c.name}: {c.trained_on}" for c in members),
        source=request.command_line,
        metrics={"validation": {"dice_per_case_mean": scores[",".join(f"{w:g}" for w in weights)],
                                "cases": len(case_ids), "case_ids": case_ids,
                                "members_alone": alone, "weights_tried": scores,
                                "criterion": "mean Dice per case of sum(w*p) >= 0.5 inside the reference liver's "
                                             f"tumour search region, grid step {request.step:g}"}},
        non_clinical=True,
        intended_use="Research ensemble from livertumorseg ensemble; not validated for clinical use.")
    output.parent.mkdir(parents=True, exist_ok=True)
    given_as_file = [Path(m).suffix.lower() == ".json" and Path(m).exists() for m in request.members]
    _place_members(members, output.parent, given_as_file, request.force, registry)
    write_card(card, output)
    return replace(card, card_path=str(output))
