"""Make the Slicer module's helper package (LiverTumorSeg/LiverTumorSegModuleLib) importable, and
the ``app`` fixture: LiverTumorSeg.py in a stand-in of the Slicer application."""

import sys
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[2]
MODULE_DIR = REPO_ROOT / "LiverTumorSeg"
MRML_TEST_DIR = REPO_ROOT / "Testing" / "mrml"  # mrml_helpers: the scene-building helpers the MRML tests use
for folder in (MODULE_DIR, MRML_TEST_DIR):
    if str(folder) not in sys.path:
        sys.path.insert(0, str(folder))


@pytest.fixture
def app(monkeypatch, tmp_path):
    """LiverTumorSeg.py loaded into a stand-in of the Slicer 5.6 application (slicer_app_standin.py);
    unloaded (widgets cleaned up, runs stopped) at the end of the test."""
    from slicer_app_standin import SlicerApp

    monkeypatch.delenv("LIVERTUMORSEG_TEST_CT", raising=False)
    standin = SlicerApp(monkeypatch, tmp_path)
    yield standin
    standin.close()
