#!/usr/bin/env python
"""Measure the parenchyma prior against the tumor ensemble alone, on validation data.

The code is ``LiverTumorSegLib.develop.scripts.measure_parenchyma_candidates`` (also ``python -m
LiverTumorSegLib.develop.scripts.measure_parenchyma_candidates``); this file runs it from a checkout, with the library
installed (``pip install -e .``). ``--help`` tells the rest.
"""

import sys

from LiverTumorSegLib.develop.scripts.measure_parenchyma_candidates import main

if __name__ == "__main__":
    sys.exit(main())
