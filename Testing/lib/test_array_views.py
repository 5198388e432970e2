"""A NumPy view of a SimpleITK image reads the image's own buffer and does not keep the image
alive: a view of a temporary image (``sitk.GetArrayViewFromImage(f(...))``) reads freed memory
once the call returns. It made a pipeline test flaky (a tumour mask of 99 voxels, then 97), so
no code or test may take a view of an image that nothing holds."""

from __future__ import annotations

import ast
from pathlib import Path

import numpy as np
import SimpleITK as sitk

ROOT = Path(__file__).resolve().parents[2]
SOURCES = ("LiverTumorSegLib", "LiverTumorSeg", "Testing", "benchmarks", "scripts")


def _views_of_temporaries(path: Path, root: Path = ROOT) -> list:
    """Lines where GetArrayViewFromImage's argument is computed by a call (a temporary)."""
    found = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), filename=str(path))):
        if not isinstance(node, ast.Call) or not node.args:
            continue
        name = node.func.attr if isinstance(node.func, ast.Attribute) else getattr(node.func, "id", "")
        if name == "GetArrayViewFromImage" and any(isinstance(n, ast.Call) for n in ast.walk(node.args[0])):
            found.append(f"{path.relative_to(root)}:{node.lineno}")
    return found


def test_no_view_of_a_temporary_image():
    files = [p for folder in SOURCES for p in sorted((ROOT / folder).rglob("*.py"))]
    assert len(files) > 50
    offenders = [line for path in files for line in _views_of_temporaries(path)]
    assert offenders == [], "GetArrayViewFromImage of a temporary image (use GetArrayFromImage): " + ", ".join(offenders)


def test_the_rule_catches_a_view_of_a_temporary(tmp_path):
    bad = tmp_path / "bad.py"
    bad.write_text("import SimpleITK as sitk\nv = sitk.GetArrayViewFromImage(make().labelmap) == 2\n"
                   "w = sitk.GetArrayViewFromImage(image)\n", encoding="utf-8")
    assert _views_of_temporaries(bad, tmp_path) == ["bad.py:2"]


def test_a_copy_survives_its_temporary_image():
    """GetArrayFromImage copies: the array stays right after the image is gone and its memory reused."""
    array = sitk.GetArrayFromImage(sitk.Image([64, 64, 8], sitk.sitkUInt8) + 2)
    _others = [sitk.Image([64, 64, 8], sitk.sitkUInt8) + 7 for _ in range(4)]
    assert np.all(array == 2)
