"""The minimal trainer of the embedded models: MONAI network, transforms and Dice+CE loss.

It trains one model card on prepared samples with random patches (foreground-biased),
flips, intensity and affine augmentation, and writes safetensors weights plus the card.
The full training pipeline (BD loss, GPA, ensembles fitted on validation data, ...) grows
from here.
"""

from __future__ import annotations

import logging
import math
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Callable, Dict, List, NamedTuple, Optional, Sequence, Tuple

import numpy as np
import torch

from ...errors import LiverTumorSegError
from ...models.card import HYPODENSITY_CHANNEL, ModelCard, write_card
from ...models.networks import build_network, forward_logits
from ...models.weights import load_weights, save_weights
from .data import TrainingSample
from .patches import intensity_transforms
from .prior import PriorSimulation

log = logging.getLogger(__name__)


@dataclass
class TrainConfig:
    steps: int = 1000
    batch_size: int = 2
    learning_rate: float = 2e-3
    weight_decay: float = 1e-5
    positive_fraction: float = 0.67  # of patches centred on the foreground
    # of patches centred on a sample's hard-negative region (when it has one), out of the rest
    hard_negative_fraction: float = 0.0
    # of the patches centred on the foreground, the share centred on one of the sample's lesions
    # (connected components) drawn uniformly, then on a voxel of it, rather than on a voxel drawn
    # uniformly from all of them: a 5 mm metastasis then leads a patch as often as a 15 cm mass
    # beside it, where by voxel it would lead about one in 27 000
    lesion_balanced_fraction: float = 0.0
    seed: int = 0
    affine: bool = True
    threads: Optional[int] = None
    init_from: Optional[ModelCard] = None  # fine-tune: start from this card's (sha256-checked) weights
    prior_simulation: PriorSimulation = field(default_factory=PriorSimulation)  # liver_refine models only
    # of patches thinned to a slab of ``slab_mm`` along the axial axis, the rest of the patch its edge
    # slices repeated: what the pipeline's sliding window shows a network on a scan thinner than its
    # window (inference.WINDOW_PADDING)
    slab_fraction: float = 0.0
    slab_mm: Tuple[float, float] = (30.0, 100.0)


def _augmentations(patch_size_kji: Sequence[int], affine: bool, extra_channels: Sequence[str] = ()):
    """Spatial transforms on the CT, the label and the extra input channels (``prior``,
    ``hypodensity``) alike; intensity transforms on the CT only."""
    from monai.transforms import Compose, RandAffined, RandFlipd

    keys = ["image", "label"] + list(extra_channels)
    modes = ("bilinear", "nearest") + ("bilinear",) * len(extra_channels)
    transforms = []
    if affine:
        transforms.append(RandAffined(keys=keys, prob=0.5, rotate_range=(0.15, 0.15, 0.15),
                                      scale_range=(0.15, 0.15, 0.15), mode=modes,
                                      padding_mode="border", spatial_size=tuple(patch_size_kji)))
    transforms.append(RandFlipd(keys=keys, prob=0.5, spatial_axis=2))  # inference.TRAINING_FLIP_AXES
    return Compose(transforms + intensity_transforms(channel_wise=False))


class Patch(NamedTuple):
    """One training patch of a sample's arrays, their edge repeated where it leaves the volume (as
    the pipeline's sliding window pads a volume thinner than its window); the optional ones are
    None where the sample has none."""

    image: np.ndarray
    target: np.ndarray
    prior_distance: Optional[np.ndarray]
    hypodensity: Optional[np.ndarray]
    hard_negative: Optional[np.ndarray]


def sample_patch(sample: TrainingSample, patch_kji: Sequence[int], rng: np.random.Generator,
                 positive: bool, hard_negative: bool = False, by_lesion: bool = False) -> Patch:
    """A patch centred on a foreground voxel when ``positive`` and the sample has one (``by_lesion``:
    on a voxel of a lesion drawn uniformly among the sample's lesions), else on a voxel of its
    hard-negative region when ``hard_negative`` and it has one, else anywhere."""
    shape = np.array(sample.image.shape)
    patch = np.array(patch_kji)
    centres = None
    if positive and sample.target.any():
        if by_lesion:
            lesions = sample.lesion_voxels()
            centres = lesions[rng.integers(len(lesions))]
        else:
            centres = np.flatnonzero(sample.target)
    elif hard_negative and sample.hard_negative is not None and sample.hard_negative.any():
        centres = np.flatnonzero(sample.hard_negative)
    if centres is not None:
        centre = np.array(np.unravel_index(centres[rng.integers(len(centres))], sample.image.shape))
    else:
        centre = np.array([rng.integers(0, s) for s in shape])
    start = centre - patch // 2
    # index arrays clipped to the volume: the edge voxel repeats wherever the patch leaves it
    index = np.ix_(*[np.clip(np.arange(a, a + n), 0, s - 1) for a, n, s in zip(start, patch, shape)])

    def cut(array: Optional[np.ndarray]) -> Optional[np.ndarray]:
        return None if array is None else array[index]

    return Patch(cut(sample.image), cut(sample.target), cut(sample.prior_distance), cut(sample.hypodensity),
                 cut(sample.hard_negative))


def as_thin_slab(item: Dict[str, np.ndarray], keys: Sequence[str], spacing_k_mm: float, rng: np.random.Generator,
                 slab_mm: Tuple[float, float]) -> Dict[str, np.ndarray]:
    """``item``'s arrays (channels, k, j, i) as a slab of ``slab_mm`` (drawn uniformly) along k at a
    random height, every slice outside it a copy of the slab's nearest edge slice: a scan covering
    only part of the organ, as the sliding window pads it. The target is thinned alike, so the
    repeated slices are labelled as what they repeat."""
    depth = next(iter(item[k] for k in keys)).shape[1]
    thickness = int(np.clip(round(rng.uniform(*slab_mm) / spacing_k_mm), 2, depth))
    first = int(rng.integers(0, depth - thickness + 1))
    rows = np.clip(np.arange(depth), first, first + thickness - 1)
    return {**item, **{key: np.asarray(item[key])[:, rows] for key in keys}}


def _load_initial_weights(network: torch.nn.Module, card: ModelCard, source: ModelCard) -> None:
    """Start from ``source``'s weights; it must be the same network as ``card``'s, or differ
    only in taking fewer input channels (a card that adds a channel, e.g. the parenchyma map, to
    a trained model): the new channels' input weights start at zero, so the network starts out
    computing exactly what ``source`` computed and learns to use them."""
    def without_inputs(args: dict) -> dict:
        return {k: v for k, v in args.items() if k != "in_channels"}

    if source.architecture != card.architecture or \
            without_inputs(source.architecture_args) != without_inputs(card.architecture_args) or \
            source.input_channels != card.input_channels[:len(source.input_channels)]:
        raise LiverTumorSegError(f"cannot fine-tune {card.name} from {source.name}: different networks "
                                 f"({source.architecture} {source.architecture_args} {source.input_channels} vs "
                                 f"{card.architecture} {card.architecture_args} {card.input_channels})")
    state = load_weights(source.weights_path, source.weights_sha256)
    own = network.state_dict()
    for key, value in state.items():
        target = own.get(key)
        if target is not None and target.shape != value.shape and target.ndim == value.ndim and target.ndim > 2 \
                and target.shape[0] == value.shape[0] and target.shape[2:] == value.shape[2:] \
                and target.shape[1] > value.shape[1]:
            widened = torch.zeros_like(target)
            widened[:, :value.shape[1]] = value
            state[key] = widened
    network.load_state_dict(state, strict=True)
    log.info("%s: starting from the weights of %s (%s)", card.name, source.name, source.weights_sha256[:12])


def train_model(card: ModelCard, samples: List[TrainingSample], output_dir: Path, config: TrainConfig,
                on_step: Optional[Callable[[int, float], None]] = None) -> ModelCard:
    """Train ``card``'s network on ``samples``; write ``<name>.safetensors`` and ``<name>.json``
    into ``output_dir`` and return the written card (with the weights' sha256)."""
    from monai.losses import DiceCELoss
    from monai.utils import set_determinism

    if not 0.0 <= config.slab_fraction <= 1.0:
        raise LiverTumorSegError(f"slab_fraction {config.slab_fraction} must lie between 0 and 1")
    if not 0.0 <= config.lesion_balanced_fraction <= 1.0:
        raise LiverTumorSegError(f"lesion_balanced_fraction {config.lesion_balanced_fraction} must lie between 0 and 1")
    if not 0.0 <= config.hard_negative_fraction <= 1.0 - config.positive_fraction:
        raise LiverTumorSegError(f"hard_negative_fraction {config.hard_negative_fraction} must lie between 0 and "
                                 f"1 - positive_fraction ({1.0 - config.positive_fraction:g})")
    if config.threads:
        torch.set_num_threads(config.threads)
    set_determinism(seed=config.seed)
    rng = np.random.default_rng(config.seed)
    network = build_network(card.architecture, card.architecture_args)
    if config.init_from is not None:
        _load_initial_weights(network, card, config.init_from)
    optimizer = torch.optim.AdamW(network.parameters(), lr=config.learning_rate, weight_decay=config.weight_decay)
    warmup = max(1, config.steps // 20)
    scheduler = torch.optim.lr_scheduler.LambdaLR(  # linear warm-up, then cosine decay
        optimizer, lambda step: min(1.0, (step + 1) / warmup) * 0.5 * (1 + math.cos(math.pi * step / config.steps)))
    loss_fn = DiceCELoss(to_onehot_y=True, softmax=True, squared_pred=True, smooth_nr=1e-4, smooth_dr=1e-4)
    with_prior = "liver_prior" in card.input_channels
    if with_prior and any(sample.prior_distance is None for sample in samples):
        raise LiverTumorSegError(f"{card.name} takes a liver prior: prepare its samples with prepare_sample "
                                 "for this card (they carry the reference's signed distance)")
    with_hypodensity = HYPODENSITY_CHANNEL in card.input_channels
    if with_hypodensity and any(sample.hypodensity is None for sample in samples):
        raise LiverTumorSegError(f"{card.name} takes the parenchyma map: prepare its samples with prepare_sample "
                                 "for this card (they carry the map)")
    # the extra channels in the card's order after the CT
    extra = [{"liver_prior": "prior", HYPODENSITY_CHANNEL: "hypodensity"}[name]
             for name in card.input_channels if name != "ct"]
    augment = _augmentations(card.patch_size_kji, config.affine, extra)
    network.train()
    started = time.perf_counter()
    running = None
    for step in range(config.steps):
        images, targets = [], []
        for _ in range(config.batch_size):
            sample = samples[rng.integers(len(samples))]
            draw = rng.random()  # one draw per patch, whatever the fractions
            positive = draw < config.positive_fraction
            hard = not positive and draw < config.positive_fraction + config.hard_negative_fraction
            by_lesion = positive and config.lesion_balanced_fraction > 0 and \
                rng.random() < config.lesion_balanced_fraction
            patch = sample_patch(sample, card.patch_size_kji, rng, positive, hard, by_lesion)
            item = {"image": patch.image[None], "label": patch.target[None].astype(np.float32)}
            if with_prior:
                # a refinement sample's hard-negative region is the neighbours a liver stage leaks into
                item["prior"] = config.prior_simulation(patch.prior_distance, card.spacing_mm[::-1], rng,
                                                        leak_region=patch.hard_negative)[None]
            if with_hypodensity:
                item["hypodensity"] = patch.hypodensity[None]
            item = augment(item)
            if config.slab_fraction > 0 and rng.random() < config.slab_fraction:
                item = as_thin_slab(item, ["image", "label"] + extra, card.spacing_mm[2], rng, config.slab_mm)
            channels = [torch.as_tensor(np.asarray(item[key]), dtype=torch.float32) for key in ["image"] + extra]
            images.append(torch.cat(channels))
            targets.append(torch.as_tensor(np.asarray(item["label"]), dtype=torch.float32))
        batch, target_batch = torch.stack(images), torch.stack(targets).round()
        optimizer.zero_grad(set_to_none=True)
        loss = loss_fn(forward_logits(network, batch), target_batch)
        loss.backward()
        optimizer.step()
        scheduler.step()
        value = float(loss.detach())
        running = value if running is None else 0.98 * running + 0.02 * value
        if on_step is not None:
            on_step(step, running)
        if step % 50 == 0 or step == config.steps - 1:
            log.info("%s step %d/%d loss %.4f (%.0f s)", card.name, step + 1, config.steps, running,
                     time.perf_counter() - started)
    network.eval()
    output_dir.mkdir(parents=True, exist_ok=True)
    weights_path = output_dir / f"{card.name}.safetensors"
    sha = save_weights(network.state_dict(), weights_path)
    written = replace(card, weights_file=weights_path.name, weights_sha256=sha,
                      card_path=str(output_dir / f"{card.name}.json"))
    write_card(written, output_dir / f"{card.name}.json")
    return written
