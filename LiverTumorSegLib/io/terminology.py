"""Names, colors and standard (DICOM/SNOMED CT) terminology of the two output segments.

One source of truth for the .seg.nrrd writer, the DICOM SEG writer and the Slicer module.
Terminology strings use 3D Slicer's serialization:
``context~category~type~typeModifier~anatomicContext~anatomicRegion~anatomicRegionModifier``,
each code as ``scheme^value^meaning``.

The context must be a terminology list that holds the category and type, or Slicer's terminology
selector cannot find the entry: the liver is in Slicer's General Anatomy list; Neoplasm
(SCT 108369006) is only in the DICOM master list (General Anatomy has no Neoplasm). The DICOM SEG
writer uses the same category, type and anatomic region codes.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Tuple

from .. import LIVER_LABEL, TUMOR_LABEL

Code = Tuple[str, str, str]  # (coding scheme designator, code value, code meaning)

GENERAL_ANATOMY_CONTEXT = "Segmentation category and type - 3D Slicer General Anatomy list"
DICOM_MASTER_CONTEXT = "Segmentation category and type - DICOM master list"
CATEGORY_CONTEXT = GENERAL_ANATOMY_CONTEXT  # the default context of a SegmentTerminology
ANATOMIC_CONTEXT = "Anatomic codes - DICOM master list"


@dataclass(frozen=True)
class SegmentTerminology:
    """A segment as every output names it."""

    label: int
    segment_id: str
    name: str
    color_rgb: Tuple[float, float, float]  # 0..1
    category: Code
    type: Code
    anatomic_region: Code = ("", "", "")
    context: str = CATEGORY_CONTEXT  # the Slicer terminology list that holds category and type

    def slicer_string(self) -> str:
        """The ``SegmentN_Terminology`` value 3D Slicer reads from a .seg.nrrd header."""
        empty = "^".join(("", "", ""))
        return "~".join([
            self.context,
            "^".join(self.category),
            "^".join(self.type),
            empty,
            ANATOMIC_CONTEXT if any(self.anatomic_region) else "",
            "^".join(self.anatomic_region),
            empty,
        ])

    @property
    def color_rgb255(self) -> Tuple[int, int, int]:
        return tuple(int(round(c * 255)) for c in self.color_rgb)  # type: ignore[return-value]


LIVER = SegmentTerminology(
    label=LIVER_LABEL,
    segment_id="Liver",
    name="Liver",
    color_rgb=(221 / 255, 130 / 255, 101 / 255),  # Slicer's General Anatomy liver color
    category=("SCT", "123037004", "Anatomical Structure"),
    type=("SCT", "10200004", "Liver"),
)

TUMOR = SegmentTerminology(
    label=TUMOR_LABEL,
    segment_id="Liver_tumor",
    name="Liver tumor",
    color_rgb=(144 / 255, 238 / 255, 144 / 255),
    category=("SCT", "49755003", "Morphologically Altered Structure"),
    type=("SCT", "108369006", "Neoplasm"),
    anatomic_region=("SCT", "10200004", "Liver"),
    context=DICOM_MASTER_CONTEXT,  # General Anatomy has no Neoplasm
)

SEGMENTS: Tuple[SegmentTerminology, ...] = (LIVER, TUMOR)
