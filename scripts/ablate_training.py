#!/usr/bin/env python
"""Ablation of the tumour-training methods (issue 13) on synthetic held-out cases.

The code is ``LiverTumorSegLib.develop.scripts.ablate_training`` (also ``python -m
LiverTumorSegLib.develop.scripts.ablate_training``); this file runs it from a checkout, with the
library installed (``pip install -e .``). ``--help`` tells the rest.
"""

import sys

from LiverTumorSegLib.develop.scripts.ablate_training import main

if __name__ == "__main__":
    sys.exit(main())
