"""Lesion-candidate filter: drop lesions the model ensemble is not confident about.

A lesion's confidence is the ensemble's tumor probability in its most confident tenth of voxels
(the 90th percentile over the lesion). A false lesion is mostly a faint blob just above the
threshold; a real one has a confident core, also when the parenchyma prior or the active contour
grew its rim beyond the model's evidence, which a mean over the lesion would penalise. The
cut-off is tuned on validation data (scripts/tune_postprocess.py) and carried by the tumor model
card's ``postprocess`` values; 0 keeps every lesion.
"""

from __future__ import annotations

from typing import List, Tuple

import numpy as np
from scipy import ndimage

from .components import CONNECTIVITY_26, as_mask

CONFIDENCE_PERCENTILE = 90.0


def lesion_confidences(tumor: np.ndarray, probability: np.ndarray) -> List[float]:
    """Each 26-connected lesion's confidence (see the module), in ``ndimage.label`` order."""
    return _labelled_confidences(as_mask(tumor), probability)[2]


def drop_unconfident_lesions(tumor: np.ndarray, probability: np.ndarray, min_confidence: float) -> np.ndarray:
    """``tumor`` (uint8 0/1) without the lesions whose confidence is below ``min_confidence``;
    the input is not modified."""
    mask = as_mask(tumor)
    if min_confidence <= 0 or not mask.any():
        return mask.astype(np.uint8)
    labels, count, confidences = _labelled_confidences(mask, probability)
    keep = np.zeros(count + 1, bool)
    keep[1:] = np.asarray(confidences) >= min_confidence
    return keep[labels].astype(np.uint8)


def _labelled_confidences(mask: np.ndarray, probability: np.ndarray) -> Tuple[np.ndarray, int, List[float]]:
    if probability.shape != mask.shape:
        raise ValueError(f"tumor mask {mask.shape} and probability {probability.shape} differ in shape")
    labels, count = ndimage.label(mask, structure=CONNECTIVITY_26, output=np.int32)
    confidences = []
    for index, box in enumerate(ndimage.find_objects(labels), start=1):
        inside = labels[box] == index
        confidences.append(float(np.percentile(probability[box][inside], CONFIDENCE_PERCENTILE)))
    return labels, count, confidences
