"""Knowledge-informed label smoothing with a tumour-to-liver volume ratio (TLVR) regressed from
clinical variables (seeds 001/004: Mao et al., "SmoothSegNet", HCC-TACE-Seg).

1. A linear regression learns, across the training patients, the TLVR from clinical variables
   (numeric columns of the clinical table, standardised; a missing value takes the column mean):

       TLVR_i = tumour volume_i / liver volume_i (liver includes tumour), from the reference labels
       beta   = argmin sum_i (TLVR_i - [1, z_i] . beta)^2 + ridge * |beta_1..|^2
       t_i    = clip([1, z_i] . beta, 0, 1)                  (the case's clinical TLVR, a weak label)

2. Label smoothing replaces the uniform prior of ordinary label smoothing, y' = (1 - a) y + a / K,
   by this knowledge: within the liver a voxel is tumour with probability t_i, outside it never,
   so the tumour target of case i becomes

       y'_v = (1 - a) y_v + a * t_i * liver_v                (a = ``alpha``, 0.1 by default)

   and the network fits these denoised soft labels (the background channel is 1 - y').
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Dict, List, Mapping, Optional, Sequence

import numpy as np

from ... import LIVER_LABEL, TUMOR_LABEL
from ...errors import LiverTumorSegError

DEFAULT_ALPHA = 0.1


def case_tlvr(labels: np.ndarray) -> float:
    """Tumour voxels / liver voxels (the liver includes its tumours) of a 0/1/2 labelmap; 0 without liver."""
    liver = int(np.count_nonzero((labels == LIVER_LABEL) | (labels == TUMOR_LABEL)))
    return float(np.count_nonzero(labels == TUMOR_LABEL)) / liver if liver else 0.0


def _number(value: Any) -> Optional[float]:
    if isinstance(value, bool) or value is None:
        return None
    if isinstance(value, (int, float)):
        return float(value) if math.isfinite(value) else None
    try:
        number = float(str(value).strip())
    except ValueError:
        return None
    return number if math.isfinite(number) else None


def numeric_columns(records: Sequence[Mapping[str, Any]], exclude: Sequence[str] = ("TCIA_ID",)) -> List[str]:
    """Columns whose values are numbers in at least half of ``records`` and never text."""
    names = sorted({name for record in records for name in record if name not in exclude})
    chosen = []
    for name in names:
        values = [record.get(name) for record in records]
        numbers = [_number(v) for v in values]
        text = [v for v, n in zip(values, numbers) if n is None and v not in (None, "")]
        if not text and sum(n is not None for n in numbers) * 2 >= len(records):
            chosen.append(name)
    return chosen


@dataclass
class TlvrRegression:
    """The fitted regression: standardisation of each column and beta (intercept first)."""

    columns: List[str]
    means: List[float]
    scales: List[float]
    coefficients: List[float]

    @classmethod
    def fit(cls, records: Sequence[Mapping[str, Any]], tlvr: Sequence[float],
            columns: Optional[Sequence[str]] = None, ridge: float = 1e-3) -> "TlvrRegression":
        """Least squares (ridge on the slopes) of ``tlvr`` on ``columns`` of ``records`` (default:
        every numeric column)."""
        if len(records) != len(tlvr) or len(records) < 2:
            raise LiverTumorSegError("the TLVR regression needs the clinical records of at least two training cases")
        columns = list(columns) if columns is not None else numeric_columns(records)
        missing = [c for c in columns if all(_number(r.get(c)) is None for r in records)]
        if not columns or missing:
            raise LiverTumorSegError(f"the clinical table has no numeric values in {missing or 'any column'} for "
                                     "the training cases; choose numeric columns with --clinical-columns")
        raw = np.array([[_number(r.get(c)) if _number(r.get(c)) is not None else np.nan for c in columns]
                        for r in records], dtype=np.float64)
        means = np.nanmean(raw, axis=0)
        filled = np.where(np.isnan(raw), means, raw)
        scales = filled.std(axis=0)
        scales[scales == 0] = 1.0
        design = np.hstack([np.ones((len(records), 1)), (filled - means) / scales])
        penalty = ridge * np.eye(design.shape[1])
        penalty[0, 0] = 0.0
        beta = np.linalg.solve(design.T @ design + penalty, design.T @ np.asarray(tlvr, dtype=np.float64))
        return cls(columns, means.tolist(), scales.tolist(), beta.tolist())

    def predict(self, record: Mapping[str, Any]) -> float:
        """t = clip([1, z] . beta, 0, 1) for one clinical record (missing values: the training mean)."""
        z = [((_number(record.get(c)) if _number(record.get(c)) is not None else m) - m) / s
             for c, m, s in zip(self.columns, self.means, self.scales)]
        value = self.coefficients[0] + float(np.dot(self.coefficients[1:], z))
        return float(min(1.0, max(0.0, value)))

    def to_dict(self) -> Dict[str, Any]:
        return {"columns": self.columns, "means": self.means, "scales": self.scales,
                "coefficients": self.coefficients}


def smooth_tumor_target(target: np.ndarray, liver: np.ndarray, clinical_tlvr: float,
                        alpha: float = DEFAULT_ALPHA) -> np.ndarray:
    """y' = (1 - alpha) y + alpha * t * liver (float32), for a 0/1 tumour ``target`` and a 0/1 ``liver``."""
    if not 0.0 <= alpha <= 1.0:
        raise LiverTumorSegError(f"the label smoothing strength must lie in [0, 1], got {alpha}")
    soft = (1.0 - alpha) * np.asarray(target, np.float32) + alpha * clinical_tlvr * np.asarray(liver, np.float32)
    return soft.astype(np.float32)
