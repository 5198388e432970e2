"""The development side of LiverTumorSegLib: what trains, measures and tunes models, and nothing
that ``segment``, ``measure``, ``lesion`` or ``models`` need.

* ``synth/``: synthetic CT phantoms, synthetic tumours and perfusion darkenings, the shared real
  cases with tumour kinds;
* ``training/``: ``livertumorseg train`` and ``ensemble``, the losses and methods, the embedded
  models' trainer;
* ``datasets.py``: the public dataset layouts (MSD Task03, LiTS, HCC-TACE-Seg) and clinical tables;
* ``evaluation.py``: ``livertumorseg evaluate``; ``render.py``: PNG overlays;
* ``commands.py``: the command-line parsers and runs of train, evaluate and ensemble;
* ``scripts/``: train, measure and tune the embedded demo models (``python -m
  LiverTumorSegLib.develop.scripts.NAME``, or ``python scripts/NAME.py`` in a checkout).

This package may import the runtime library; the runtime never imports it (a test blocks it and
runs the runtime). The Slicer extension does not package it; the wheel does (``pip install
'LiverTumorSegLib[train]'`` adds the optional packages its dataset readers, YAML configs and plots use).
"""
