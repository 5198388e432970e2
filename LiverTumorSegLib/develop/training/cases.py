"""The labelled cases of a training folder, whichever layout it has, and their patient-level split.

Layouts: the public datasets ``develop.datasets`` reads (MSD Task03 Liver, LiTS, HCC-TACE-Seg) and a
plain folder: ``images/NAME.nii.gz`` with ``labels/NAME.nii.gz`` (any format ``load_volume`` reads,
matched by name) and an optional ``labels.json``::

    {"labels": {"0": "background", "1": "liver", "2": "tumor", "255": "ignore"},
     "annotated": {"NAME": ["tumor"]},       # cases whose labels cover only some structures
     "patients": {"NAME": "PATIENT"},        # several scans of one patient stay in one fold
     "categories": {"NAME": "HCC"}}          # tumour categories for the balanced Dice loss

Without ``labels.json`` the values are 0 background, 1 liver, 2 tumour (as in MSD and LiTS).
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np

from ... import BACKGROUND_LABEL, LIVER_LABEL, TUMOR_LABEL
from ...errors import LiverTumorSegError
from ..datasets import HCC_TACE_SEG, LabelledCase, detect_layout, open_dataset
from ...io.volume import output_name
from .mixed_labels import IGNORE_LABEL, AnnotatedStructures

PLAIN = "plain"
PLAIN_INDEX = "labels.json"
ROLE_NAMES = {"background": BACKGROUND_LABEL, "bg": BACKGROUND_LABEL, "liver": LIVER_LABEL, "tumor": TUMOR_LABEL,
              "tumour": TUMOR_LABEL, "cancer": TUMOR_LABEL, "lesion": TUMOR_LABEL, "ignore": IGNORE_LABEL,
              "unknown": IGNORE_LABEL}


@dataclass
class TrainingCase:
    """A labelled case with what training needs beyond its files."""

    case: LabelledCase
    patient: str
    structures: AnnotatedStructures
    category: Optional[str] = None

    @property
    def case_id(self) -> str:
        return self.case.case_id


def detect_training_layout(root: Path) -> str:
    """PLAIN for an images/ + labels/ folder, else the public layout ``develop.datasets`` detects."""
    root = Path(root)
    if root.is_dir() and not (root / "dataset.json").is_file() and (root / "images").is_dir() \
            and (root / "labels").is_dir():
        return PLAIN
    return detect_layout(root)


def _read_plain_index(root: Path) -> Dict:
    path = root / PLAIN_INDEX
    if not path.is_file():
        return {}
    try:
        index = json.loads(path.read_text(encoding="utf-8"))
    except (ValueError, UnicodeDecodeError) as exc:
        raise LiverTumorSegError(f"{path} is not valid JSON ({exc})") from None
    if not isinstance(index, dict):
        raise LiverTumorSegError(f"{path} must hold a JSON object with 'labels' (and optionally 'annotated', "
                                 "'patients', 'categories')")
    return index


def _label_values(index: Dict, path: Path) -> Dict[int, int]:
    names = index.get("labels", {"0": "background", "1": "liver", "2": "tumor"})
    values: Dict[int, int] = {}
    for value, name in names.items():
        role = ROLE_NAMES.get(str(name).strip().lower())
        if role is None or not str(value).strip().isdigit():
            raise LiverTumorSegError(f"{path}: label {value!r} -> {name!r} is not understood; map label values to "
                                     f"one of {', '.join(sorted(ROLE_NAMES))}")
        values[int(value)] = role
    return values


def _structures(roles: Sequence[int]) -> AnnotatedStructures:
    return AnnotatedStructures(liver=LIVER_LABEL in roles, tumor=TUMOR_LABEL in roles)


def open_plain(root: Path) -> List[TrainingCase]:
    """The image/label pairs of a plain folder (see the module docstring)."""
    root = Path(root)
    index = _read_plain_index(root)
    values = _label_values(index, root / PLAIN_INDEX)
    images = {output_name(p): p for p in sorted((root / "images").iterdir()) if not p.name.startswith(".")}
    labels = {output_name(p): p for p in sorted((root / "labels").iterdir()) if not p.name.startswith(".")}
    if not images:
        raise LiverTumorSegError(f"{root / 'images'} holds no images")
    missing = sorted(set(images) - set(labels))
    if missing:
        raise LiverTumorSegError(f"{images[missing[0]]} has no label file of the same name in {root / 'labels'} "
                                 f"({len(missing)} image(s) without labels)")
    annotated = index.get("annotated", {})
    cases = []
    for name in sorted(images):
        roles = [ROLE_NAMES.get(str(s).lower(), -1) for s in annotated[name]] if name in annotated \
            else list(values.values())
        if -1 in roles:
            raise LiverTumorSegError(f"{root / PLAIN_INDEX}: 'annotated' of {name} must list 'liver' and/or 'tumor'")
        case = LabelledCase(case_id=name, image_path=images[name], label_path=labels[name], dataset=PLAIN,
                            label_values=dict(values))
        cases.append(TrainingCase(case, str(index.get("patients", {}).get(name, name)), _structures(roles),
                                  index.get("categories", {}).get(name)))
    return cases


def _patient_of(case_id: str, ids: Sequence[str]) -> str:
    """HCC-TACE-Seg names a patient's second SEG PATIENT_2: those share the patient's fold."""
    match = re.fullmatch(r"(.+)_\d+", case_id)
    return match.group(1) if match and match.group(1) in ids else case_id


def open_training_cases(root: Path, category_column: Optional[str] = None) -> Tuple[str, List[TrainingCase]]:
    """(layout, cases) of a training folder; ``category_column`` names the clinical-table column
    holding each case's tumour category (HCC-TACE-Seg)."""
    layout = detect_training_layout(root)
    if layout == PLAIN:
        return layout, open_plain(root)
    labelled = open_dataset(root)
    ids = [c.case_id for c in labelled]
    cases = []
    for case in labelled:
        category = None
        if category_column is not None:
            value = (case.clinical or {}).get(category_column)
            category = None if value is None else str(value)
        patient = _patient_of(case.case_id, ids) if case.dataset == HCC_TACE_SEG else case.case_id
        cases.append(TrainingCase(case, patient, AnnotatedStructures(), category))
    return layout, cases


def kfold_split(cases: Sequence[TrainingCase], folds: int, fold: int, seed: int) -> Dict[str, object]:
    """Patient-level k-fold split: the patients shuffled with ``seed``, fold ``fold`` (0-based) of
    ``folds`` validates and the rest trains; with one fold everything trains."""
    patients = sorted({c.patient for c in cases})
    if folds < 1 or not 0 <= fold < folds:
        raise LiverTumorSegError(f"--fold must be between 0 and --folds - 1 (got fold {fold} of {folds})")
    if folds > len(patients):
        raise LiverTumorSegError(f"{folds} folds need at least {folds} patients; the data has {len(patients)}")
    order = [patients[i] for i in np.random.default_rng(seed).permutation(len(patients))]
    held_out = set(order[fold::folds]) if folds > 1 else set()
    return {"seed": seed, "folds": folds, "fold": fold,
            "train": [c.case_id for c in cases if c.patient not in held_out],
            "validation": [c.case_id for c in cases if c.patient in held_out],
            "patients": {c.case_id: c.patient for c in cases}}


def read_validation_ids(path: Path) -> List[str]:
    """The validation case ids a ``split.json`` (written by ``train``, see :func:`kfold_split`)
    lists; one clear error for a missing, unreadable or validation-less file."""
    path = Path(path)
    try:
        recorded = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise LiverTumorSegError(f"split file {path} does not exist") from None
    except (OSError, UnicodeDecodeError, ValueError) as exc:
        raise LiverTumorSegError(f"split file {path} is not readable JSON ({exc})") from None
    validation = recorded.get("validation") if isinstance(recorded, dict) else None
    if not isinstance(validation, list) or not validation:
        raise LiverTumorSegError(f"split file {path} lists no validation cases (a train run with --folds 1 holds "
                                 "none out); give the split.json of a train run with --folds 2 or more")
    return [str(name) for name in validation]
