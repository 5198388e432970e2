"""Tumor stage (local view): each ensemble member on the liver crop, weighted-averaged."""

from __future__ import annotations

from typing import Callable, List, Optional, Sequence, Tuple

import numpy as np
import SimpleITK as sitk
import torch

from ..inference import LoadedModel, predict_image
from ..models.card import HYPODENSITY_CHANNEL
from ..preprocess import resample_to
from ..settings_schema import member_stage

MemberProgress = Callable[[int, float], None]  # (member index, fraction of that member)


def ensemble_probability(ct_crop: sitk.Image, members: Sequence[LoadedModel], weights: Sequence[float],
                         device: torch.device, overlap: float = 0.25, tta: bool = False,
                         on_progress: Optional[MemberProgress] = None,
                         hypodensity: Optional[sitk.Image] = None,
                         member_tta: Optional[Sequence[bool]] = None) -> Tuple[np.ndarray, Optional[np.ndarray]]:
    """Weighted average of the members' tumor probabilities on the crop grid (float32, (k, j, i)),
    and, with ``tta``, the weighted average of their flip standard deviations (an uncertainty map).
    ``member_tta``: per member, whether ``tta`` applies to it (default: to all); the uncertainty map
    is then the weighted average over the members that ran the flip.
    ``hypodensity``: the parenchyma map on the crop grid, for members with that input channel."""
    if len(members) != len(weights) or not members:
        raise ValueError("one weight per ensemble member is needed")
    member_tta = [True] * len(members) if member_tta is None else list(member_tta)
    if len(member_tta) != len(members):
        raise ValueError("one TTA switch per ensemble member is needed")
    total = float(sum(weights))
    flipped_total = float(sum(w for w, flip in zip(weights, member_tta) if flip))
    prob_sum: Optional[np.ndarray] = None
    std_sum: Optional[np.ndarray] = None
    for index, (member, weight, flip) in enumerate(zip(members, weights, member_tta)):
        callback = (lambda f, index=index: on_progress(index, f)) if on_progress else None
        if callback is not None:
            callback(0.0)  # announce the member before its (long) inference
        prob_img, std_img = predict_image(ct_crop, member, device, overlap=overlap, tta=tta and flip,
                                           on_progress=callback, hypodensity=hypodensity)
        prob = sitk.GetArrayFromImage(resample_to(prob_img, ct_crop, sitk.sitkLinear, 0.0))
        prob *= weight / total
        prob_sum = prob if prob_sum is None else prob_sum + prob
        if std_img is not None and flipped_total > 0:
            std = sitk.GetArrayFromImage(resample_to(std_img, ct_crop, sitk.sitkLinear, 0.0))
            std *= weight / flipped_total
            std_sum = std if std_sum is None else std_sum + std
    assert prob_sum is not None
    return prob_sum.astype(np.float32, copy=False), std_sum


def tumor_mask(probability: np.ndarray, threshold: float = 0.5, grow_threshold: Optional[float] = None) -> np.ndarray:
    """uint8 0/1 tumor mask: voxels at least ``threshold`` probable; with ``grow_threshold``
    (hysteresis), also the voxels at least that probable that connect (6-neighbours) to such a
    voxel, so a lesion the models see with a confident core gets its fainter rim as well, while a
    faint region with no confident voxel stays out."""
    if grow_threshold is None or grow_threshold >= threshold:
        return (probability >= threshold).astype(np.uint8)
    from skimage.filters import apply_hysteresis_threshold

    # skimage compares with '>' on both thresholds; nudge them so 'at least' holds as documented
    low = np.nextafter(np.float32(grow_threshold), np.float32(-1))
    high = np.nextafter(np.float32(threshold), np.float32(-1))
    return apply_hysteresis_threshold(probability, low, high).astype(np.uint8)


def needs_hypodensity(members: Sequence[LoadedModel]) -> bool:
    """Whether any member takes the parenchyma map as an input channel."""
    return any(HYPODENSITY_CHANNEL in m.card.input_channels for m in members)


def member_stage_names(members: Sequence[LoadedModel]) -> List[str]:
    """Progress stage ids, one per member: ``tumor:<model name>``."""
    return [member_stage(m.card.name) for m in members]
