"""Scripts that train, measure and tune the embedded demo models and render synthetic examples,
run as ``python -m LiverTumorSegLib.develop.scripts.NAME`` (or ``python scripts/NAME.py`` in a
checkout, with the library installed: ``pip install -e .``).

They work on a source checkout: its ``Resources/Models`` and the shared data folder beside it
(``../shared/data``).
"""

from __future__ import annotations

from pathlib import Path


def checkout_root() -> Path:
    """The source checkout that holds this package (the source tree or an editable install);
    the current folder where the package is installed elsewhere (a wheel)."""
    root = Path(__file__).resolve().parents[3]
    return root if (root / "pyproject.toml").is_file() else Path.cwd()
