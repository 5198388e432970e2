#!/usr/bin/env python
"""Measure the embedded models through the full Pipeline, on data none of them was trained on.

The code is ``LiverTumorSegLib.develop.scripts.evaluate_embedded`` (also ``python -m
LiverTumorSegLib.develop.scripts.evaluate_embedded``); this file runs it from a checkout, with the library
installed (``pip install -e .``). ``--help`` tells the rest.
"""

import sys

from LiverTumorSegLib.develop.scripts.evaluate_embedded import main

if __name__ == "__main__":
    sys.exit(main())
