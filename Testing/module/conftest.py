"""Make the Slicer module's helper package (LiverTumorSeg/LiverTumorSegModuleLib) importable."""

import sys
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[2]
MODULE_DIR = REPO_ROOT / "LiverTumorSeg"
if str(MODULE_DIR) not in sys.path:
    sys.path.insert(0, str(MODULE_DIR))
