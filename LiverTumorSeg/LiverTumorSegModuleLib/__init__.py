"""Helpers of the LiverTumorSeg Slicer module that do not need the Slicer GUI.

- ``widget``: the panel (GUI only; ``LiverTumorSeg.py`` gives it the Logic).
- ``process``: the library's command line in a background process: the injectable process
  (``ProcessProtocol``, ``Launcher``), its JSON-lines protocol, staged progress (no Qt, no MRML).
- ``runs``: one run's private temporary folder and process, and the cleanup of runs that outlive
  their owner (module unload, application quit, a crashed session).
- ``task``: one segmentation from a volume node to imported nodes (runs + mrml).
- ``mrml``: results into MRML and back (segmentation, table, measurements, export through the
  library's writers); runs on PyPI's ``slicer-core`` as well as inside Slicer.
- ``lesion``: one-click lesion edits on the segmentation node (the library's lesion editor in
  this process, undo) and the click as a markups point; runs on ``slicer-core`` too.
- ``export``: Export: the library's files, and DICOM SEG from the DICOM database's files.
- ``presentation``: the text the panel shows (results table, model card, model combo boxes).
- ``parameters``: the module's settings, made from the library's settings schema: the parameter
  node, the panel's widgets for them, the options of a run.
- ``dependencies``: which Python packages the library needs, which are missing, installing them.

They live in this sub-package because Slicer tries to load every ``.py`` file at the top of a
scripted-module folder as a module. Importing it puts the library on ``sys.path``, so its
submodules import ``LiverTumorSegLib`` (only its torch-free parts in Slicer's own process).
"""

import sys
from pathlib import Path


def library_root() -> Path:
    """The folder that holds the ``LiverTumorSegLib`` package: beside this package when installed
    (qt-scripted-modules/), the repository root in a source checkout."""
    module_dir = Path(__file__).resolve().parents[1]
    for candidate in (module_dir, module_dir.parent):
        if (candidate / "LiverTumorSegLib" / "__init__.py").is_file():
            return candidate
    raise FileNotFoundError(f"the LiverTumorSegLib package was not found beside {module_dir}; "
                            "reinstall the LiverTumorSeg extension")


def ensure_library_importable() -> None:
    """Put the folder that holds ``LiverTumorSegLib`` on ``sys.path`` (needed in a source checkout)."""
    root = str(library_root())
    if root not in sys.path:
        sys.path.insert(0, root)  # the bundled library wins, as in the background process


ensure_library_importable()
