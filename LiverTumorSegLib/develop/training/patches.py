"""Training batches from prepared cases with MONAI's transforms: patches centred on the target or
on background (``RandCropByPosNegLabeld``, foreground and background voxels indexed once per
case), then affine, flip and intensity augmentation.

Batch ``s`` depends only on (seed, s): its cases and every transform's random state are drawn from
``numpy.random.default_rng([seed, s])``. So any number of loader workers gives the same batches,
and a resumed run sees exactly the batches the uninterrupted run would have seen. Under torchrun
process r > 0 draws from ``[seed, s, r]`` (``distributed``).
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass, field
from typing import Dict, List, Sequence

import numpy as np
import torch

MAX_CENTRES = 200_000  # patch centres kept per case and kind (foreground, background): memory stays small

@dataclass
class PreparedCase:
    """One case on its model's grid: the network input (C, k, j, i), the foreground target
    (float32, soft after label smoothing), the known-voxel mask and the case's loss weight; padded
    to at least one patch (padding: input 0, unknown)."""

    name: str
    image: np.ndarray
    target: np.ndarray
    known: np.ndarray
    weight: float = 1.0
    foreground_indices: np.ndarray = field(default=None, repr=False)  # type: ignore[assignment]
    background_indices: np.ndarray = field(default=None, repr=False)  # type: ignore[assignment]

    def pad_to(self, patch_kji: Sequence[int]) -> "PreparedCase":
        """Pad (after each side's end) to at least ``patch_kji`` and index the patch centres."""
        shape = self.target.shape
        pads = [(0, max(0, int(p) - s)) for p, s in zip(patch_kji, shape)]
        if any(after for _, after in pads):
            self.image = np.pad(self.image, [(0, 0)] + pads)
            self.target = np.pad(self.target, pads)
            self.known = np.pad(self.known, pads)
        foreground = (self.target >= 0.5) & (self.known > 0)
        rng = np.random.default_rng(0)
        self.foreground_indices = _at_most(np.flatnonzero(foreground), MAX_CENTRES, rng)
        self.background_indices = _at_most(np.flatnonzero(~foreground), MAX_CENTRES, rng)
        return self


def _at_most(indices: np.ndarray, count: int, rng: np.random.Generator) -> np.ndarray:
    """``indices``, or ``count`` of them drawn at random (sorted) when there are more."""
    if len(indices) > count:
        indices = np.sort(rng.choice(indices, size=count, replace=False))
    return indices.astype(np.int64)


def intensity_transforms(channel_wise: bool = True) -> list:
    """The intensity augmentation of the CT channel (key ``image``), shared with ``trainer``: scale
    by 1 + U(-0.15, 0.15) and shift by U(-0.08, 0.08) (normalised HU; one draw per channel with
    ``channel_wise``), each with probability 0.5; gamma U(0.8, 1.25) (0.3); Gaussian smoothing with
    σ U(0.3, 0.9) voxel per axis (0.2); Gaussian noise σ 0.03 (0.3)."""
    from monai.transforms import (RandAdjustContrastd, RandGaussianNoised, RandGaussianSmoothd, RandScaleIntensityd,
                                  RandShiftIntensityd)

    return [
        RandScaleIntensityd(keys="image", factors=0.15, prob=0.5, channel_wise=channel_wise),
        RandShiftIntensityd(keys="image", offsets=0.08, prob=0.5, channel_wise=channel_wise),
        RandAdjustContrastd(keys="image", gamma=(0.8, 1.25), prob=0.3),
        RandGaussianSmoothd(keys="image", sigma_x=(0.3, 0.9), sigma_y=(0.3, 0.9), sigma_z=(0.3, 0.9), prob=0.2),
        RandGaussianNoised(keys="image", std=0.03, prob=0.3),
    ]


def augmentations(patch_kji: Sequence[int], positive_fraction: float, affine: bool):
    """Crop (centred on the target with probability ``positive_fraction``), then spatial transforms
    on the input, target and known mask alike and intensity transforms on the CT channel only."""
    from monai.transforms import Compose, RandAffined, RandCropByPosNegLabeld, RandFlipd

    keys = ["image", "target", "known"]
    transforms = [RandCropByPosNegLabeld(keys=keys, label_key="target", spatial_size=tuple(patch_kji),
                                         pos=positive_fraction, neg=1.0 - positive_fraction, num_samples=1,
                                         fg_indices_key="fg_indices", bg_indices_key="bg_indices")]
    if affine:
        transforms.append(RandAffined(keys=keys, prob=0.5, rotate_range=(0.15, 0.15, 0.15),
                                      scale_range=(0.15, 0.15, 0.15), mode=("bilinear", "nearest", "nearest"),
                                      padding_mode="border", spatial_size=tuple(patch_kji)))
    transforms.append(RandFlipd(keys=keys, prob=0.5, spatial_axis=2))  # inference.TRAINING_FLIP_AXES
    return Compose(transforms + intensity_transforms(channel_wise=True))


class PatchBatches(torch.utils.data.Dataset):
    """Item ``s``: the batch of step ``s`` as tensors ``image`` (B, C, ...), ``target`` (B, 1, ...),
    ``known`` (B, 1, ...) and ``weight`` (B,); ``rank``: the distributed process drawing it."""

    def __init__(self, cases: Sequence[PreparedCase], patch_kji: Sequence[int], batch_size: int,
                 positive_fraction: float, affine: bool, seed: int, steps: int, rank: int = 0) -> None:
        self.cases = list(cases)
        self.batch_size, self.seed, self.steps, self.rank = batch_size, seed, steps, rank
        self.transforms = augmentations(patch_kji, positive_fraction, affine)

    def __len__(self) -> int:
        return self.steps

    def __getitem__(self, step: int) -> Dict[str, torch.Tensor]:
        rng = np.random.default_rng([self.seed, int(step)] + ([self.rank] if self.rank else []))
        images: List[torch.Tensor] = []
        targets: List[torch.Tensor] = []
        knowns: List[torch.Tensor] = []
        weights: List[float] = []
        for _ in range(self.batch_size):
            case = self.cases[int(rng.integers(len(self.cases)))]
            self.transforms.set_random_state(seed=int(rng.integers(2 ** 31 - 1)))
            item = {"image": case.image, "target": case.target[None], "known": case.known[None].astype(np.float32),
                    "fg_indices": case.foreground_indices, "bg_indices": case.background_indices}
            with warnings.catch_warnings():  # a tumour-free case has no foreground to centre on
                warnings.simplefilter("ignore")
                patch = self.transforms(item)
            patch = patch[0] if isinstance(patch, list) else patch
            images.append(torch.as_tensor(np.asarray(patch["image"]), dtype=torch.float32))
            targets.append(torch.as_tensor(np.asarray(patch["target"]), dtype=torch.float32))
            knowns.append(torch.as_tensor(np.asarray(patch["known"]) > 0.5, dtype=torch.float32))
            weights.append(case.weight)
        return {"image": torch.stack(images), "target": torch.stack(targets), "known": torch.stack(knowns),
                "weight": torch.tensor(weights, dtype=torch.float32)}
