"""One training run (``livertumorseg train``): cases of any layout, a patient-level k-fold split,
batches from MONAI transforms, the chosen network and loss, validation with Dice per case, best
and last checkpoints (network, optimizer, scheduler, AMP scaler, RNG), resume, a CSV log,
optionally greedy parameter averaging, and at the end a model card + safetensors weights that
``segment --liver-model/--tumor-model`` load. Under ``torchrun`` the processes train one network
with distributed data parallel (``distributed``).

The output folder holds: ``config.json`` (the settings), ``split.json`` (the fold's cases),
``training_log.csv`` (loss per step, validation Dice at validation steps), ``validation.csv``
(Dice per validation case and step), ``checkpoint_last.pt`` and ``checkpoint_best.pt``,
``gpa/`` (GPA candidates), ``NAME.safetensors`` and ``NAME.json``.
"""

from __future__ import annotations

import csv
import json
import logging
import math
import os
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

import numpy as np
import SimpleITK as sitk
import torch

from ...errors import LiverTumorSegError
from ...metrics import dice
from ...models.card import ModelCard, write_card
from ...inference import WINDOW_PADDING, WINDOWS_PER_BATCH, forward_batched
from ...models.networks import build_network
from ...models.weights import load_weights, save_weights
from ...pipeline import PipelineSettings
from ...preprocess import model_grid
from ...sliding_window import sliding_window_probability
from ...stages.crop import crop_image, liver_box
from .architectures import architecture_for
from .bd_loss import category_weights
from .cases import TrainingCase, kfold_split, open_training_cases
from .config import TrainingConfig, spacing_patch_window
from .data import mask_on_model_grid, prepare_sample
from .distributed import Distributed
from .gpa import greedy_average
from .history import describe_training
from .loss_terms import one_hot
from .losses import build_loss
from .mixed_labels import compose_labels, pseudo_liver_probability
from .patches import PatchBatches, PreparedCase
from .tlvr import TlvrRegression, case_tlvr, smooth_tumor_target
from .vae_loss import network_loss

log = logging.getLogger(__name__)

CHECKPOINT_FORMAT = "livertumorseg-checkpoint/1"
LAST_CHECKPOINT, BEST_CHECKPOINT = "checkpoint_last.pt", "checkpoint_best.pt"
CONFIG_FILE, SPLIT_FILE = "config.json", "split.json"
LOG_FILE, VALIDATION_FILE, GPA_DIR = "training_log.csv", "validation.csv", "gpa"
LOG_COLUMNS = ["step", "loss", "segmentation_loss", "vae_loss", "learning_rate", "validation_dice", "seconds"]
CLASSES = {"liver": {"0": "background", "1": "liver (tumors included)"},
           "tumor": {"0": "background", "1": "liver tumor"}}


@dataclass
class RunEvent:
    """What the run reports: ``prepare`` (per case), ``step``, ``validation``, ``done``."""

    kind: str
    step: int
    total: int
    info: Dict[str, Any] = field(default_factory=dict)


# ---------------------------------------------------------------------------------------------
# Cases on the model's grid
# ---------------------------------------------------------------------------------------------

def _mask_on_grid(mask: np.ndarray, reference: sitk.Image, box: Optional[tuple], grid: sitk.Image) -> np.ndarray:
    """A 0/1 mask on ``reference``'s grid -> the model grid (cropped to ``box`` first), as
    ``prepare_sample`` puts the target there (linear, >= 0.5)."""
    image = sitk.GetImageFromArray(mask.astype(np.float32))
    image.CopyInformation(reference)
    if box is not None:
        image = crop_image(image, box)
    return mask_on_model_grid(image, grid).astype(np.uint8)


def prepare_case(case: TrainingCase, card: ModelCard, pseudo_liver: Optional[Callable[[sitk.Image], np.ndarray]]
                 ) -> Tuple[PreparedCase, np.ndarray, float]:
    """(the case on ``card``'s grid with its known-voxel mask, its liver on that grid, its TLVR)."""
    ct, labels = case.case.load()
    raw = sitk.GetArrayFromImage(labels)
    pseudo = None
    if not case.structures.liver:
        if pseudo_liver is None:
            raise LiverTumorSegError(f"case {case.case_id} has no liver label: give a stage-1 liver model for its "
                                     "pseudo-labels with --pseudo-liver-model")
        pseudo = pseudo_liver(ct)
    composed, known = compose_labels(raw, case.structures, card.task, pseudo)
    if card.task == "tumor" and not composed.any():
        raise LiverTumorSegError(f"case {case.case_id} has no liver in its labels; a tumor model trains on the "
                                 "liver crop")
    labels_image = sitk.GetImageFromArray(composed)
    labels_image.CopyInformation(ct)
    margin = PipelineSettings.crop_margin_mm  # the tumor stage's crop, as the pipeline makes it
    sample = prepare_sample(case.case_id, ct, labels_image, card, crop_margin_mm=margin)
    box = liver_box(composed > 0, ct.GetSpacing()[::-1], margin) if card.task == "tumor" else None
    grid = model_grid(crop_image(ct, box) if box is not None else ct, card.spacing_mm, card.orientation)
    known_on_grid = _mask_on_grid(known, ct, box, grid)
    liver_on_grid = _mask_on_grid(composed > 0, ct, box, grid)
    if known_on_grid.shape != sample.target.shape:
        raise AssertionError("the known-voxel mask and the target are on different grids")
    prepared = PreparedCase(case.case_id, sample.image[None].astype(np.float32), sample.target.astype(np.float32),
                            known_on_grid)
    return prepared, liver_on_grid, case_tlvr(composed) if case.structures.tumor else float("nan")


# ---------------------------------------------------------------------------------------------
# Validation
# ---------------------------------------------------------------------------------------------

def validation_dice(network: torch.nn.Module, cases: Sequence[PreparedCase], patch_kji: Sequence[int],
                    device: torch.device, amp: bool = False) -> Dict[str, float]:
    """Dice per validation case (prediction p >= 0.5 against the target, over its known voxels),
    sliding-window inference on the case's model grid, as segment slides it."""
    was_training = network.training
    network.eval()

    def predictor(batch: torch.Tensor) -> torch.Tensor:
        with torch.autocast(device.type, dtype=torch.float16, enabled=amp):
            return torch.softmax(forward_batched(network, batch).float(), dim=1)[:, 1:2]

    scores: Dict[str, float] = {}
    try:
        with torch.no_grad():
            for case in cases:
                x = torch.from_numpy(case.image[None])
                probability = sliding_window_probability(x, tuple(patch_kji), predictor, overlap=0.25,
                                                         batch_size=WINDOWS_PER_BATCH, padding_mode=WINDOW_PADDING,
                                                         device=device)
                known = case.known > 0
                predicted = probability[0, 0].float().cpu().numpy() >= 0.5
                scores[case.name] = dice(predicted & known, (case.target >= 0.5) & known)
    finally:
        network.train(was_training)
    return scores


# ---------------------------------------------------------------------------------------------
# Files of the output folder
# ---------------------------------------------------------------------------------------------

def _save_atomic(obj: Any, path: Path) -> None:
    temporary = path.with_name(path.name + ".tmp")
    torch.save(obj, temporary)
    os.replace(temporary, path)


def _read_checkpoint(path: Path) -> Dict[str, Any]:
    try:
        checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # a truncated or foreign file
        raise LiverTumorSegError(f"checkpoint {path} cannot be read ({type(exc).__name__}); start the run again "
                                 "into a new --output") from None
    if not isinstance(checkpoint, dict) or checkpoint.get("format") != CHECKPOINT_FORMAT:
        raise LiverTumorSegError(f"{path} is not a livertumorseg training checkpoint")
    return checkpoint


def _write_json(path: Path, data: Any) -> None:
    path.write_text(json.dumps(data, indent=2) + "\n", encoding="utf-8")


def _truncate_csv(path: Path, last_step: int) -> None:
    """Keep the rows of steps up to ``last_step`` (those a resumed run has not redone)."""
    if not path.is_file():
        return
    with open(path, newline="", encoding="utf-8") as handle:
        rows = list(csv.reader(handle))
    kept = rows[:1] + [r for r in rows[1:] if r and int(r[0]) <= last_step]
    with open(path, "w", newline="", encoding="utf-8") as handle:
        csv.writer(handle).writerows(kept)


def _append_csv(path: Path, header: Sequence[str], rows: Sequence[Sequence[Any]]) -> None:
    new = not path.is_file()
    with open(path, "a", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        if new:
            writer.writerow(header)
        writer.writerows(rows)


# ---------------------------------------------------------------------------------------------
# The run
# ---------------------------------------------------------------------------------------------

def _start_card(config: TrainingConfig) -> Tuple[ModelCard, Optional[ModelCard]]:
    """The card to train (no weights yet) and the card fine-tuned from, if any."""
    spacing, patch, window = spacing_patch_window(config)
    if config.init_from:
        from ...models.registry import ModelRegistry

        source = ModelRegistry.default().resolve(config.init_from, task=config.task)
        if not isinstance(source, ModelCard):
            raise LiverTumorSegError(f"--init-from {config.init_from} is an ensemble; give one of its member models")
        if source.input_channels != ["ct"]:
            raise LiverTumorSegError(f"--init-from {source.name} takes the input channels {source.input_channels}; "
                                     "train fine-tunes models whose only input is the CT")
        name = config.name or f"{source.name}-finetuned"
        return replace(source, name=name, card_path=None, weights_file="", weights_sha256="", weights_url=None,
                       metrics={}), source
    architecture, args = architecture_for(config.architecture, 1, patch[::-1], config.architecture_args)
    suffix = f"-fold{config.fold}" if config.folds > 1 else ""
    name = config.name or f"{config.task}-{config.architecture}{suffix}"
    card = ModelCard(name=name, version="1.0.0", task=config.task, architecture=architecture,
                     architecture_args=args, spacing_mm=spacing, patch_size=patch, hu_window=window,
                     weights_file="", weights_sha256="", classes=dict(CLASSES[config.task]))
    return card, None


def _check_output(config: TrainingConfig) -> None:
    out = config.output_dir
    recorded = out / CONFIG_FILE
    if config.resume:
        if not (out / LAST_CHECKPOINT).is_file() or not recorded.is_file():
            raise LiverTumorSegError(f"--resume: {out} holds no training run to continue (no {LAST_CHECKPOINT})")
        previous = json.loads(recorded.read_text(encoding="utf-8"))
        changed = config.differences(previous)
        if changed:
            shown = ", ".join(f"{k} ({previous.get(k)!r} -> {getattr(config, k)!r})" for k in changed)
            raise LiverTumorSegError(f"--resume continues the run in {out} with its settings; these differ: {shown}. "
                                     "Give the same settings, or start a new run into another --output")
        return
    if (out / LAST_CHECKPOINT).exists() or recorded.exists():
        raise LiverTumorSegError(f"{out} already holds a training run; continue it with --resume or choose another "
                                 "--output")
    if out.exists() and not out.is_dir():
        raise LiverTumorSegError(f"--output {out} is a file, not a folder")


def _resolve_amp(config: TrainingConfig, device: torch.device) -> bool:
    if config.amp and device.type != "cuda":
        raise LiverTumorSegError("--amp (mixed precision) needs a CUDA GPU; train without --amp on the CPU")
    return config.amp


def _attach_clinical(config: TrainingConfig, cases: List[TrainingCase]) -> None:
    """Clinical records from --clinical (by patient or case id) for cases that have none."""
    if not config.clinical:
        return
    from ..datasets import read_clinical_table

    table = read_clinical_table(Path(config.clinical))
    for case in cases:
        record = table.get(case.patient) or table.get(case.case_id)
        if record is not None:
            case.case.clinical = record
        if config.category_column and record is not None and record.get(config.category_column) is not None:
            case.category = str(record[config.category_column])


class TrainingRun:
    """Prepare once, then ``run()``; ``on_event`` receives every RunEvent."""

    def __init__(self, config: TrainingConfig, on_event: Optional[Callable[[RunEvent], None]] = None) -> None:
        from ...inference import resolve_device

        self.config = config
        self.dist = Distributed.from_environment()
        self.on_event = (on_event if self.dist.main else None) or (lambda event: None)  # process 0 reports
        self.out = config.output_dir
        _check_output(config)
        self.device = self.dist.start(resolve_device(config.device))
        self.amp = _resolve_amp(config, self.device)
        self.layout, cases = open_training_cases(Path(config.data), config.category_column)
        _attach_clinical(config, cases)
        self.split = kfold_split(cases, config.folds, config.fold, config.seed)
        by_id = {c.case_id: c for c in cases}
        self.train_cases = [by_id[i] for i in self.split["train"]]
        self.validation_cases = [by_id[i] for i in self.split["validation"]]
        if not self.train_cases:
            raise LiverTumorSegError(f"no training cases left in {config.data} for fold {config.fold} of {config.folds}")
        self.card, self.source = _start_card(config)
        per_epoch = math.ceil(len(self.train_cases) / (config.batch_size * self.dist.world_size))
        self.total_steps = config.steps if config.steps is not None else config.epochs * per_epoch
        self.validate_every = config.validate_every or max(1, self.total_steps // 10)
        self.regression: Optional[TlvrRegression] = None
        unlabelled = [c.case_id for c in cases if not c.structures.liver]
        if unlabelled and not config.pseudo_liver_model:
            raise LiverTumorSegError(f"{len(unlabelled)} case(s) have no liver label ({', '.join(unlabelled[:3])}): "
                                     "give a stage-1 liver model for their pseudo-labels with --pseudo-liver-model")
        self.dist.barrier()  # every process has checked --output before process 0 writes into it

    # -- preparation ---------------------------------------------------------------------------

    def _pseudo_liver(self) -> Optional[Callable[[sitk.Image], np.ndarray]]:
        if not self.config.pseudo_liver_model:
            return None
        from ...inference import LoadedModel
        from ...models.registry import ModelRegistry

        card = ModelRegistry.default().resolve(self.config.pseudo_liver_model, task="liver")
        if not isinstance(card, ModelCard):
            raise LiverTumorSegError("--pseudo-liver-model must be a single liver model, not an ensemble")
        model = LoadedModel.load(card)
        return lambda ct: pseudo_liver_probability(ct, model, self.device)

    def prepare(self) -> Tuple[List[PreparedCase], List[PreparedCase]]:
        """The training and validation cases on the model grid (label smoothing and loss weights applied)."""
        pseudo = self._pseudo_liver()
        patch_kji = self.card.patch_size_kji
        everything = self.train_cases + self.validation_cases
        prepared: Dict[str, Tuple[PreparedCase, np.ndarray, float]] = {}
        for index, case in enumerate(everything):
            self.on_event(RunEvent("prepare", index, len(everything), {"case": case.case_id}))
            prepared[case.case_id] = prepare_case(case, self.card, pseudo)
        train = [prepared[c.case_id][0] for c in self.train_cases]
        if self.config.label_smoothing == "tlvr":
            self._smooth_labels(train, prepared)
        weights = category_weights([c.category or "unspecified" for c in self.train_cases])
        for case, sample in zip(self.train_cases, train):
            sample.weight = weights[case.category or "unspecified"]
        validation = [prepared[c.case_id][0] for c in self.validation_cases]
        return [c.pad_to(patch_kji) for c in train], [c.pad_to(patch_kji) for c in validation]

    def _smooth_labels(self, train: List[PreparedCase], prepared: Dict[str, Tuple[PreparedCase, np.ndarray, float]]
                       ) -> None:
        """TLVR label smoothing of the training targets (regression fitted on the training cases)."""
        fit = [(c.case.clinical, prepared[c.case_id][2]) for c in self.train_cases
               if c.case.clinical and not math.isnan(prepared[c.case_id][2])]
        if len(fit) < 2:
            raise LiverTumorSegError("--label-smoothing tlvr needs clinical records (HCC-TACE-Seg's table, or "
                                     "--clinical TABLE) for at least two tumour-annotated training cases")
        self.regression = TlvrRegression.fit([r for r, _ in fit], [t for _, t in fit], self.config.clinical_columns)
        if self.dist.main:
            _write_json(self.out / "tlvr_regression.json", self.regression.to_dict())
        for case, sample in zip(self.train_cases, train):
            clinical_tlvr = self.regression.predict(case.case.clinical or {})
            liver = prepared[case.case_id][1]
            sample.target = smooth_tumor_target(sample.target, liver, clinical_tlvr, self.config.smoothing_alpha)

    # -- training ------------------------------------------------------------------------------

    def _network(self) -> torch.nn.Module:
        torch.manual_seed(self.config.seed)
        network = build_network(self.card.architecture, self.card.architecture_args)
        if self.source is not None:
            network.load_state_dict(load_weights(self.source.weights_path, self.source.weights_sha256), strict=True)
        return network

    def _checkpoint(self, step: int, network, optimizer, scheduler, scaler, state: Dict[str, Any]) -> Dict[str, Any]:
        checkpoint = {"format": CHECKPOINT_FORMAT, "step": step, "network": network.state_dict(),
                      "optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(),
                      "scaler": scaler.state_dict(), "torch_rng": torch.get_rng_state(),
                      "config": json.dumps(self.config.to_dict()), "world_size": self.dist.world_size}
        if torch.cuda.is_available():
            checkpoint["cuda_rng"] = torch.cuda.get_rng_state_all()
        checkpoint.update(state)
        return checkpoint

    def run(self) -> Optional[ModelCard]:
        """Train to the last step (continuing the saved run with ``resume``); write the card and return
        it (None in the processes of a distributed run other than process 0)."""
        try:
            card = self._run()
            # every process waits until process 0 has written the card: a process that tore the group
            # down while another still used it was killed by an abort in gloo (SIGABRT, seen on a busy CPU)
            self.dist.barrier()
            return card
        finally:
            self.dist.stop()

    def _run(self) -> Optional[ModelCard]:
        config, out, main = self.config, self.out, self.dist.main
        if main:
            out.mkdir(parents=True, exist_ok=True)
        if not config.resume and main:
            _write_json(out / CONFIG_FILE, config.to_dict())
            _write_json(out / SPLIT_FILE, self.split)
        elif config.resume and json.loads((out / SPLIT_FILE).read_text(encoding="utf-8")) != self.split:
            raise LiverTumorSegError(f"the cases in {config.data} no longer give the split recorded in "
                                     f"{out / SPLIT_FILE}; resume with the same data or start a new run")
        train, validation = self.prepare()
        network = self._network().to(self.device)
        model = self.dist.wrap(network, self.device)  # forward through it; weights from the network itself
        optimizer = torch.optim.AdamW(network.parameters(), lr=config.learning_rate, weight_decay=config.weight_decay)
        total = self.total_steps
        warmup = max(1, total // 20)
        scheduler = torch.optim.lr_scheduler.LambdaLR(  # linear warm-up, then cosine decay
            optimizer, lambda s: min(1.0, (s + 1) / warmup) * 0.5 * (1 + math.cos(math.pi * s / total)))
        scaler = torch.amp.GradScaler("cuda", enabled=self.amp)
        loss_fn = build_loss(config.loss)
        state: Dict[str, Any] = {"best_score": float("-inf"), "best_step": 0, "running_loss": None,
                                 "seconds": 0.0, "gpa_candidates": []}
        step = 0
        if config.resume:
            checkpoint = _read_checkpoint(out / LAST_CHECKPOINT)
            if checkpoint.get("world_size", 1) != self.dist.world_size:
                raise LiverTumorSegError(f"--resume: the run in {out} trained with {checkpoint.get('world_size', 1)} "
                                         f"process(es), this one has {self.dist.world_size}; resume it with as many")
            network.load_state_dict(checkpoint["network"])
            optimizer.load_state_dict(checkpoint["optimizer"])
            scheduler.load_state_dict(checkpoint["scheduler"])
            scaler.load_state_dict(checkpoint["scaler"])
            torch.set_rng_state(checkpoint["torch_rng"])
            if "cuda_rng" in checkpoint and torch.cuda.is_available():
                torch.cuda.set_rng_state_all(checkpoint["cuda_rng"])
            state.update({k: checkpoint[k] for k in state})
            step = int(checkpoint["step"])
            for name in (LOG_FILE, VALIDATION_FILE):
                if main:
                    _truncate_csv(out / name, step)
            log.info("resuming %s at step %d of %d", out, step, total)
        batches = PatchBatches(train, self.card.patch_size_kji, config.batch_size, config.positive_fraction,
                               config.affine, config.seed, total, self.dist.rank)
        loader = torch.utils.data.DataLoader(batches, batch_size=None, sampler=range(step, total),
                                             num_workers=config.workers)
        started = time.perf_counter() - state["seconds"]
        network.train()
        for batch in loader:
            step += 1
            optimizer.zero_grad(set_to_none=True)
            with torch.autocast(self.device.type, dtype=torch.float16, enabled=self.amp):
                loss, parts = network_loss(model, batch["image"].to(self.device),
                                           one_hot(batch["target"].to(self.device)), loss_fn,
                                           batch["known"].to(self.device), batch["weight"].to(self.device),
                                           config.vae_weight)
            scaler.scale(loss).backward()
            scaler.step(optimizer)
            scaler.update()
            scheduler.step()
            value = float(loss.detach())
            if self.dist.enabled:  # the logged loss is the mean over the processes
                value, parts["segmentation"], vae = self.dist.mean([value, parts["segmentation"],
                                                                    parts.get("vae", 0.0)], self.device)
                parts.update({"vae": vae} if "vae" in parts else {})
            running = state["running_loss"]
            state["running_loss"] = value if running is None else 0.98 * running + 0.02 * value
            state["seconds"] = time.perf_counter() - started
            row: Dict[str, Any] = {"step": step, "loss": round(value, 6),
                                   "segmentation_loss": round(parts["segmentation"], 6),
                                   "vae_loss": round(parts["vae"], 6) if "vae" in parts else "",
                                   "learning_rate": f"{scheduler.get_last_lr()[0]:.3e}", "validation_dice": "",
                                   "seconds": round(state["seconds"], 1)}
            self.on_event(RunEvent("step", step, total, {"loss": state["running_loss"]}))
            if step % self.validate_every == 0 or step == total:
                row["validation_dice"] = self._validate(step, network, validation, state)
                if main:
                    _append_csv(out / LOG_FILE, LOG_COLUMNS, [[row[c] for c in LOG_COLUMNS]])
                    checkpoint = self._checkpoint(step, network, optimizer, scheduler, scaler, state)
                    if state["best_step"] == step:
                        _save_atomic(checkpoint, out / BEST_CHECKPOINT)
                    _save_atomic(checkpoint, out / LAST_CHECKPOINT)
            elif main:
                _append_csv(out / LOG_FILE, LOG_COLUMNS, [[row[c] for c in LOG_COLUMNS]])
        return self._finish(network, validation, state) if main else None

    def _validate(self, step: int, network: torch.nn.Module, validation: List[PreparedCase],
                  state: Dict[str, Any]) -> Any:
        """Dice per validation case (each process predicts its share); a new best; a GPA candidate.
        Returns the mean Dice ('' without validation)."""
        if not validation:
            state["best_step"] = step  # without validation the last checkpoint is the best one known
            return ""
        mine = validation_dice(network, self.dist.share(validation), self.card.patch_size_kji, self.device, self.amp)
        gathered = self.dist.gather(mine)
        scores = {case.name: gathered[case.name] for case in validation}
        mean = float(np.mean(list(scores.values())))
        if mean > state["best_score"]:
            state["best_score"], state["best_step"] = mean, step
        if not self.dist.main:
            return round(mean, 6)
        _append_csv(self.out / VALIDATION_FILE, ["step", "case", "dice"],
                    [[step, name, round(score, 6)] for name, score in scores.items()])
        if self.config.gpa and step >= self.config.gpa_start * self.total_steps:
            (self.out / GPA_DIR).mkdir(exist_ok=True)
            name = f"step_{step:07d}"
            save_weights(network.state_dict(), self.out / GPA_DIR / f"{name}.safetensors")
            state["gpa_candidates"] = [c for c in state["gpa_candidates"] if c[0] != name] + [[name, mean]]
        self.on_event(RunEvent("validation", step, self.total_steps, {"dice": mean, "per_case": scores,
                                                                    "best": state["best_score"]}))
        return round(mean, 6)

    def _finish(self, network: torch.nn.Module, validation: List[PreparedCase], state: Dict[str, Any]) -> ModelCard:
        """The card's weights: the GPA average, else the best checkpoint, else the last; then the card."""
        config, out = self.config, self.out
        weights = {k: v.detach().cpu() for k, v in network.state_dict().items()}
        selected, score, step = "last", None, self.total_steps
        if validation:
            best = _read_checkpoint(out / BEST_CHECKPOINT)
            weights, selected, score, step = best["network"], "best", state["best_score"], state["best_step"]
        if config.gpa and validation and state["gpa_candidates"]:
            evaluator = build_network(self.card.architecture, self.card.architecture_args).to(self.device)

            def evaluate(candidate: Dict[str, torch.Tensor]) -> float:
                evaluator.load_state_dict(candidate)
                scores = validation_dice(evaluator, validation, self.card.patch_size_kji, self.device, self.amp)
                return float(np.mean(list(scores.values())))

            candidates = [(name, float(mean), lambda name=name: _load_safetensors(out / GPA_DIR / f"{name}.safetensors"))
                          for name, mean in state["gpa_candidates"]]
            average = greedy_average(candidates, evaluate)
            weights, score = average.average(), average.score
            selected, step = f"gpa of {', '.join(average.members)}", None
        weights_path = out / f"{self.card.name}.safetensors"
        sha = save_weights(weights, weights_path)
        metrics: Dict[str, Any] = {"selected_weights": selected}
        if step is not None:
            metrics["step"] = step
        if validation:
            metrics["validation"] = {"dice_per_case_mean": round(float(score), 4), "cases": len(validation),
                                     "split": f"fold {config.fold} of {config.folds}, patient-level, seed {config.seed}"}
        held_out = (f"{len(validation)} validation case(s), fold {config.fold} of {config.folds}" if validation
                    else "")
        this_round = (f"{len(self.train_cases)} case(s) of the {self.layout} dataset {Path(config.data).name}, "
                      f"{self.total_steps} steps, {config.loss} loss" + (", GPA" if config.gpa else "")
                      + (f", {self.dist.world_size} processes (DDP, {self.dist.world_size} x {config.batch_size} "
                         "patches per step)" if self.dist.enabled else "")
                      + (", TLVR label smoothing" if self.regression is not None else ""))
        card = replace(self.card, weights_file=weights_path.name, weights_sha256=sha,
                       card_path=str(out / f"{self.card.name}.json"), metrics=metrics, source=config.command_line(),
                       trained_on=describe_training(this_round, self.source, held_out), non_clinical=True,
                       description=f"{config.task.capitalize()} model ({self.card.architecture}) trained with "
                                   "livertumorseg train.",
                       intended_use="Research model from livertumorseg train; not validated for clinical use.")
        write_card(card, out / f"{self.card.name}.json")
        self.on_event(RunEvent("done", self.total_steps, self.total_steps, {"card": card.card_path}))
        return card


def _load_safetensors(path: Path) -> Dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    return load_file(str(path), device="cpu")


def train(config: TrainingConfig, on_event: Optional[Callable[[RunEvent], None]] = None) -> Optional[ModelCard]:
    """Run ``config`` to the end; returns the written card (None in processes other than 0 of a
    distributed run)."""
    return TrainingRun(config, on_event).run()

