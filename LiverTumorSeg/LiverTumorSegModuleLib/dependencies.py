"""The Python packages LiverTumorSegLib needs in Slicer's Python, and which of them are missing.

Kept in step with ``pyproject.toml``'s ``[project] dependencies`` (a test checks it). NumPy and
SimpleITK come with Slicer; PyTorch is installed through the PyTorch extension when it is there,
because the right wheel depends on the GPU and driver.
"""

from __future__ import annotations

import importlib.util
from typing import Callable, List, Optional, Tuple

TORCH_REQUIREMENT = "torch>=2.1,<3"

# (import name, pip requirement), PyTorch excluded.
REQUIREMENTS: Tuple[Tuple[str, str], ...] = (
    ("numpy", "numpy>=1.24"),
    ("scipy", "scipy>=1.10"),
    ("SimpleITK", "SimpleITK>=2.3"),
    ("skimage", "scikit-image>=0.21"),
    ("monai", "monai>=1.3,<2"),
    ("safetensors", "safetensors>=0.4"),
    ("slicerio", "slicerio>=1.1"),
    ("tqdm", "tqdm>=4.60"),
)


def is_importable(name: str) -> bool:
    try:
        return importlib.util.find_spec(name) is not None
    except (ImportError, ValueError):
        return False


def missing_requirements(importable: Optional[Callable[[str], bool]] = None) -> List[str]:
    """Pip requirements of the packages that cannot be imported (PyTorch not included)."""
    check = importable or is_importable
    return [requirement for name, requirement in REQUIREMENTS if not check(name)]


def torch_missing(importable: Optional[Callable[[str], bool]] = None) -> bool:
    return not (importable or is_importable)("torch")
