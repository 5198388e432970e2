"""What 3D Slicer 5.6-5.8 need of our segments. PyPI's slicer-core is 5.11+, so where the 5.6 API
differs, a stand-in plays it: a segment that has only the old tag API (no Set/GetTerminology,
``GetTag(name, value)`` with a VTK reference), and an excerpt of Slicer's terminology lists."""

from __future__ import annotations

import inspect

import numpy as np
import pytest
import slicer

from LiverTumorSegLib.io import terminology
from LiverTumorSegLib.io.terminology import LIVER, SEGMENTS, TUMOR, SegmentTerminology
from LiverTumorSegModuleLib import mrml
from mrml_helpers import add_ct_volume, liver_with_two_tumors

GENERAL_ANATOMY = "Segmentation category and type - 3D Slicer General Anatomy list"
DICOM_MASTER = "Segmentation category and type - DICOM master list"
ANATOMIC_DICOM_MASTER = "Anatomic codes - DICOM master list"

# An excerpt of Slicer 5.6-5.8's terminology lists (Modules/Loadable/Terminologies/Resources/
# SegmentationCategoryTypeModifier-SlicerGeneralAnatomy.json and -DICOM-Master.json): context ->
# category code -> the type codes it offers, for the categories our segments could use. General
# Anatomy's "Morphologically Altered Structure" offers Mass but no Neoplasm.
SLICER_TERMINOLOGY_LISTS = {
    GENERAL_ANATOMY: {
        ("SCT", "123037004"): {("SCT", "10200004")},  # Anatomical Structure: Liver (and many more)
        ("SCT", "49755003"): {("SCT", "4147007")},  # Morphologically Altered Structure: Mass
    },
    DICOM_MASTER: {
        ("SCT", "49755003"): {("SCT", "4147007"), ("SCT", "27925004"), ("SCT", "367643001"),
                              ("SCT", "86049000"), ("SCT", "14799000"), ("SCT", "108369006")},
    },
}
ANATOMIC_LISTS = {ANATOMIC_DICOM_MASTER: {("SCT", "10200004")}}  # Liver


def fields(terminology_string: str) -> list:
    return terminology_string.split("~")


@pytest.mark.parametrize("term", SEGMENTS, ids=lambda t: t.name)
def test_each_segment_names_a_terminology_list_that_holds_its_codes(term: SegmentTerminology):
    context, category, kind, _, anatomic_context, region, _ = fields(term.slicer_string())
    offered = SLICER_TERMINOLOGY_LISTS.get(context, {})
    category_code = tuple(category.split("^")[:2])
    type_code = tuple(kind.split("^")[:2])
    assert type_code in offered.get(category_code, set()), \
        f"'{term.name}': Slicer's list '{context}' has no {category} / {kind}; the terminology selector cannot find it"
    if region.strip("^"):
        assert tuple(region.split("^")[:2]) in ANATOMIC_LISTS.get(anatomic_context, set())


def test_tumor_is_a_neoplasm_of_the_liver_in_the_dicom_master_list():
    assert fields(TUMOR.slicer_string())[:3] == [DICOM_MASTER, "SCT^49755003^Morphologically Altered Structure",
                                                 "SCT^108369006^Neoplasm"]
    assert fields(TUMOR.slicer_string())[4:6] == [ANATOMIC_DICOM_MASTER, "SCT^10200004^Liver"]
    assert fields(LIVER.slicer_string())[:3] == [GENERAL_ANATOMY, "SCT^123037004^Anatomical Structure",
                                                 "SCT^10200004^Liver"]


def test_every_writer_takes_the_codes_from_terminology_py(tmp_path):
    """One source: the imported Slicer segments, the .seg.nrrd writer and the DICOM SEG writer."""
    from LiverTumorSegLib.geometry import Geometry
    from LiverTumorSegLib.io import dicom_seg, writers

    assert inspect.signature(dicom_seg.write_dicom_seg).parameters["segments"].default is terminology.SEGMENTS
    assert writers.SEGMENTS is terminology.SEGMENTS

    scene = slicer.vtkMRMLScene()
    volume, _ = add_ct_volume(scene)
    node = mrml.import_labelmap(scene, volume, liver_with_two_tumors())
    for term in SEGMENTS:
        segment = node.GetSegmentation().GetSegment(term.segment_id)
        assert mrml.segment_terminology_string(segment) == term.slicer_string()

    labels = liver_with_two_tumors()
    path = tmp_path / "written.seg.nrrd"
    writers.write_seg_nrrd(labels.astype(np.uint8), Geometry(labels.shape[::-1], (1.0, 1.0, 1.0), (0.0, 0.0, 0.0),
                                                              (1.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 1.0)), path)
    read_back = slicer.vtkMRMLSegmentationNode()
    storage = slicer.vtkMRMLSegmentationStorageNode()
    storage.SetFileName(str(path))
    assert storage.ReadData(read_back)
    segmentation = read_back.GetSegmentation()
    for term in SEGMENTS:
        segment = segmentation.GetSegment(segmentation.GetSegmentIdBySegmentName(term.name))
        assert fields(mrml.segment_terminology_string(segment))[:3] == fields(term.slicer_string())[:3]


class Slicer56Segment:
    """A vtkSegment as Slicer 5.6-5.8 wrap it: no Set/GetTerminology; the terminology is the
    "TerminologyEntry" tag; ``GetTag`` is ``bool GetTag(std::string, std::string&)`` only."""

    def __init__(self) -> None:
        self.tags = {}
        self.name = ""
        self.color = None

    def SetName(self, name):
        self.name = name

    def SetColor(self, r, g, b):
        self.color = (r, g, b)

    def SetNameAutoGenerated(self, value):
        pass

    def SetColorAutoGenerated(self, value):
        pass

    def SetTag(self, name, value):
        self.tags[name] = str(value)

    def HasTag(self, name):
        return name in self.tags

    def GetTag(self, *args):
        if len(args) != 2:
            raise TypeError(f"GetTag() takes exactly 2 arguments ({len(args)} given)")
        name, value = args
        if name not in self.tags:
            return False
        value.set(self.tags[name])  # a vtk.reference (vtk.mutable in older VTK)
        return True


@pytest.mark.parametrize("term", SEGMENTS, ids=lambda t: t.name)
def test_terminology_round_trips_through_the_slicer_5_6_tag_api(term):
    segment = Slicer56Segment()
    assert not hasattr(segment, "SetTerminology") and not hasattr(segment, "GetTerminology")
    mrml.set_segment_terminology(segment, term)
    assert segment.tags == {"TerminologyEntry": term.slicer_string()}
    assert (segment.name, segment.color) == (term.name, term.color_rgb)
    assert mrml.segment_terminology_string(segment) == term.slicer_string()
    assert mrml.segment_terminology_string(Slicer56Segment()) == ""


def test_the_tag_name_is_slicers():
    assert slicer.vtkSegment.GetTerminologyEntryTagName() == mrml.TERMINOLOGY_TAG
    segment = slicer.vtkSegment()  # the real class reads a tag with the two-argument form too
    segment.SetTag("LiverTumorSeg.Test", "value")
    assert mrml.segment_tag(segment, "LiverTumorSeg.Test") == "value"
    assert mrml.segment_tag(segment, "absent") == ""
