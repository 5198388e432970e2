#!/usr/bin/env python
"""Tune the tumor post-processing of the embedded models on validation data.

The code is ``LiverTumorSegLib.develop.scripts.tune_postprocess`` (also ``python -m
LiverTumorSegLib.develop.scripts.tune_postprocess``); this file runs it from a checkout, with the library
installed (``pip install -e .``). ``--help`` tells the rest.
"""

import sys

from LiverTumorSegLib.develop.scripts.tune_postprocess import main

if __name__ == "__main__":
    sys.exit(main())
