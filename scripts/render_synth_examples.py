#!/usr/bin/env python
"""Render PNG overlays of synthetic phantoms and of real CTs with synthetic tumours.

The code is ``LiverTumorSegLib.develop.scripts.render_synth_examples`` (also ``python -m
LiverTumorSegLib.develop.scripts.render_synth_examples``); this file runs it from a checkout, with the library
installed (``pip install -e .``). ``--help`` tells the rest.
"""

import sys

from LiverTumorSegLib.develop.scripts.render_synth_examples import main

if __name__ == "__main__":
    sys.exit(main())
