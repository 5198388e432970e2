#!/usr/bin/env python
"""Train the embedded default models (non-clinical demos) with the project's own trainer.

The code is ``LiverTumorSegLib.develop.scripts.train_embedded`` (also ``python -m
LiverTumorSegLib.develop.scripts.train_embedded``); this file runs it from a checkout, with the library
installed (``pip install -e .``). ``--help`` tells the rest.
"""

import sys

from LiverTumorSegLib.develop.scripts.train_embedded import main

if __name__ == "__main__":
    sys.exit(main())
