#!/usr/bin/env python
"""Compare liver models (the liver model and its refinement) on validation phantoms, whole and as 40 mm slabs.

The code is ``LiverTumorSegLib.develop.scripts.validate_liver`` (also ``python -m
LiverTumorSegLib.develop.scripts.validate_liver``); this file runs it from a checkout, with the library
installed (``pip install -e .``). ``--help`` tells the rest.
"""

import sys

from LiverTumorSegLib.develop.scripts.validate_liver import main

if __name__ == "__main__":
    sys.exit(main())
