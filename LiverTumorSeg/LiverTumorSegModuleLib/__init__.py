"""Helpers of the LiverTumorSeg Slicer module that do not need the Slicer GUI.

- ``process``: runs the LiverTumorSegLib command line in a background process (no Qt, no MRML).
- ``mrml``: results into MRML and back (segmentation, table, measurements, export); runs on
  PyPI's ``slicer-core`` as well as inside Slicer.
- ``task``: one segmentation from a volume node to imported nodes (process + mrml).
- ``dependencies``: which Python packages the library needs and which are missing.

They live in this sub-package because Slicer tries to load every ``.py`` file at the top of a
scripted-module folder as a module.
"""

import sys

from .process import library_root


def ensure_library_importable() -> None:
    """Put the folder that holds ``LiverTumorSegLib`` on ``sys.path`` (needed in a source checkout)."""
    root = str(library_root())
    if root not in sys.path:
        sys.path.insert(0, root)  # the bundled library wins, as in the background process


ensure_library_importable()
