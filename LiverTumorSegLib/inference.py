"""Sliding-window inference of one model card, with optional flip test-time augmentation."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Callable, List, Optional, Sequence

import numpy as np
import torch

from .errors import LiverTumorSegError
from .models.card import HYPODENSITY_CHANNEL, ModelCard
from .models.networks import build_network, forward_logits
from .models.weights import load_weights
from .preprocess import normalize_hu
from .settings_schema import setting
from .sliding_window import sliding_window_probability

log = logging.getLogger(__name__)

# Test-time augmentation applies the flips training applies (develop.training.patches and develop.training.trainer:
# RandFlipd along the array's spatial axis 2, i, the patient's left-right), so the networks see only
# inputs of a kind they learned from: the identity and each training flip, over the tensor axes
# (2, 3, 4) = (k, j, i).
TRAINING_FLIP_AXES: Sequence[int] = (2,)  # spatial array axes (k, j, i) that training flips
TTA_FLIPS: List[Sequence[int]] = [()] + [(2 + axis,) for axis in TRAINING_FLIP_AXES]

# PyTorch (2.x) runs a 3-D convolution on a batch of one through its reference CPU kernel
# (aten::slow_conv3d_forward) and a batch of two or more through oneDNN, 4-6 times faster per window on
# these networks. So the sliding window sends windows in batches, and a lone window on the CPU is sent
# twice (benchmarks/bench_pipeline.py shows the stages' times).
WINDOWS_PER_BATCH = 4
MIN_CPU_BATCH = 2

# A volume thinner than a model's window (a scan covering 40 mm of the liver, a short liver crop) is
# padded to the window by repeating its edge slices, so the network sees tissue continue rather than a
# slab of the HU window's floor, which no real scan has next to the liver. On 40 mm slabs of chaos_ct_1
# with synthetic tumours, zero padding cut the tumour Dice from 0.77 to 0.03 (large iso-dense) and
# lost the whole liver of one slab; repeated edges kept 0.67. Volumes as large as the window are not padded.
WINDOW_PADDING = "replicate"


def forward_batched(network: torch.nn.Module, batch: torch.Tensor) -> torch.Tensor:
    """``forward_logits`` of a batch of windows; on the CPU a batch smaller than ``MIN_CPU_BATCH`` is
    padded with copies of its first window (their outputs are dropped) to stay on the fast kernel."""
    count = batch.shape[0]
    if batch.device.type == "cpu" and count < MIN_CPU_BATCH:
        padded = torch.cat([batch] + [batch[:1]] * (MIN_CPU_BATCH - count))
        return forward_logits(network, padded)[:count]
    return forward_logits(network, batch)


def resolve_device(requested: str) -> torch.device:
    """The device setting (settings_schema) as a torch device: ``auto`` picks CUDA when available;
    ``cuda`` without a GPU is a user error."""
    requested = setting("device").check(requested)
    if requested == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if requested == "cuda" and not torch.cuda.is_available():
        raise LiverTumorSegError("--device cuda was requested but no CUDA GPU is available; "
                                 "use --device cpu or auto")
    return torch.device(requested)


@dataclass
class LoadedModel:
    card: ModelCard
    network: torch.nn.Module

    @classmethod
    def load(cls, card: ModelCard) -> "LoadedModel":
        """Build the network from the card and load its checked safetensors weights (CPU)."""
        network = build_network(card.architecture, card.architecture_args, inference=True)
        state = load_weights(card.weights_path, card.weights_sha256)
        try:
            network.load_state_dict(state, strict=True)
        except RuntimeError as exc:
            first = str(exc).splitlines()[0]
            raise LiverTumorSegError(f"weights of model '{card.name}' do not fit its architecture "
                                     f"({first}); the card and weights file do not belong together") from None
        network.eval()
        return cls(card, network)


def _is_out_of_memory(exc: BaseException) -> bool:
    text = str(exc).lower()
    return isinstance(exc, (MemoryError, torch.cuda.OutOfMemoryError)) or "out of memory" in text \
        or "can't allocate memory" in text or "not enough memory" in text


def model_input(card: ModelCard, hu: np.ndarray, prior: Optional[np.ndarray] = None,
                hypodensity: Optional[np.ndarray] = None) -> np.ndarray:
    """The network input (channels, k, j, i) float32 in the card's channel order: the CT with the
    card's HU window; for a ``liver_prior`` channel the liver mask so far (0..1, same grid); for a
    ``hypodensity`` channel the parenchyma map of the liver crop (0..1, same grid)."""
    channels = []
    for name in card.input_channels:
        if name == "ct":
            channels.append(normalize_hu(hu, card.hu_window))
        elif name == "liver_prior":
            if prior is None or prior.shape != hu.shape:
                raise ValueError(f"model '{card.name}' needs a liver prior of the CT's shape {hu.shape}")
            channels.append(np.clip(prior, 0.0, 1.0).astype(np.float32, copy=False))
        elif name == HYPODENSITY_CHANNEL:
            if hypodensity is None or hypodensity.shape != hu.shape:
                raise ValueError(f"model '{card.name}' needs a hypodensity map of the CT's shape {hu.shape}")
            channels.append(np.clip(hypodensity, 0.0, 1.0).astype(np.float32, copy=False))
        else:
            raise ValueError(f"model '{card.name}': unknown input channel '{name}'")
    return np.stack(channels)


def predict_foreground(model: LoadedModel, hu: np.ndarray, device: torch.device, overlap: float = 0.25,
                       tta: bool = False, sw_batch_size: int = WINDOWS_PER_BATCH,
                       on_progress: Optional[Callable[[float], None]] = None,
                       prior: Optional[np.ndarray] = None, hypodensity: Optional[np.ndarray] = None) -> tuple:
    """Foreground probability (float32, same shape as ``hu``) and, with ``tta``, the per-voxel
    standard deviation across the flips (else None). ``hu`` is the CT on the model's grid;
    ``prior`` the liver mask so far on the same grid, for models with a ``liver_prior`` channel;
    ``hypodensity`` the parenchyma map on the same grid, for models with a ``hypodensity`` channel."""
    card = model.card
    x = torch.from_numpy(model_input(card, hu, prior, hypodensity))[None]
    flips = TTA_FLIPS if tta else [()]
    network = model.network.to(device)
    total_steps = len(flips)
    results: List[np.ndarray] = []

    def predictor(batch: torch.Tensor) -> torch.Tensor:
        return torch.softmax(forward_batched(network, batch), dim=1)[:, 1:2]

    try:
        with torch.inference_mode():
            for step, flip in enumerate(flips):
                xin = torch.flip(x, dims=list(flip)) if flip else x
                prob = sliding_window_probability(xin, card.inference_patch_size_kji, predictor, overlap=overlap,
                                                  batch_size=sw_batch_size, padding_mode=WINDOW_PADDING,
                                                  device=device)
                if flip:
                    prob = torch.flip(prob, dims=list(flip))
                results.append(prob[0, 0].float().numpy())
                if on_progress is not None:
                    on_progress((step + 1) / total_steps)
    except (RuntimeError, MemoryError) as exc:
        if _is_out_of_memory(exc):
            raise MemoryError(str(exc)) from None
        raise
    finally:
        model.network.to("cpu")
        if device.type == "cuda":
            torch.cuda.empty_cache()
    if len(results) == 1:
        return results[0], None
    stack = np.stack(results)
    return stack.mean(axis=0).astype(np.float32), stack.std(axis=0).astype(np.float32)


def predict_image(ct: "sitk.Image", model: LoadedModel, device: torch.device, overlap: float = 0.25,
                  tta: bool = False, on_progress: Optional[Callable[[float], None]] = None,
                  prior: Optional["sitk.Image"] = None, hypodensity: Optional["sitk.Image"] = None) -> tuple:
    """Foreground probability of ``model`` for the CT region ``ct`` as images on the model's grid
    (probability, and TTA standard deviation or None). ``prior``: the liver mask so far (any grid
    covering ``ct``), for models with a ``liver_prior`` channel; ``hypodensity``: the parenchyma
    map (any grid covering ``ct``), for models with a ``hypodensity`` channel; both resampled
    linearly."""
    import SimpleITK as sitk

    from .preprocess import resample_ct_to_model, resample_to_model_grid

    on_model_grid = resample_ct_to_model(ct, model.card.spacing_mm, model.card.orientation)
    hu = sitk.GetArrayViewFromImage(on_model_grid)
    prior_array = None
    if prior is not None:
        prior_on_grid = resample_to_model_grid(prior, on_model_grid)
        prior_array = sitk.GetArrayFromImage(prior_on_grid)
    hypodensity_array = None
    if hypodensity is not None and HYPODENSITY_CHANNEL in model.card.input_channels:
        hypodensity_array = sitk.GetArrayFromImage(resample_to_model_grid(hypodensity, on_model_grid))
    prob, std = predict_foreground(model, hu, device, overlap=overlap, tta=tta, on_progress=on_progress,
                                   prior=prior_array, hypodensity=hypodensity_array)

    def as_image(array: np.ndarray) -> sitk.Image:
        image = sitk.GetImageFromArray(array)
        image.CopyInformation(on_model_grid)
        return image

    return as_image(prob), (as_image(std) if std is not None else None)
