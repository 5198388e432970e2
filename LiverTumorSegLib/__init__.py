"""LiverTumorSegLib: liver and liver-tumor segmentation of abdominal CT, independent of 3D Slicer.

The one entry point for every front end is :class:`LiverTumorSegLib.pipeline.Pipeline`.
Label values used everywhere: 0 background, 1 liver, 2 liver tumor.
"""

__version__ = "0.1.0"

BACKGROUND_LABEL = 0
LIVER_LABEL = 1
TUMOR_LABEL = 2
