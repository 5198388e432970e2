"""Results into real MRML (PyPI slicer-core): segmentation node, terminology, reference geometry,
subject hierarchy, table node, edit detection, recomputed measurements, export through the library's
writers (and DICOM SEG through the library's writer, from the DICOM database's files)."""

from __future__ import annotations

import csv
import json
import math

import numpy as np
import pytest
import SimpleITK as sitk
import slicer
import vtk

from LiverTumorSegModuleLib import export, mrml, presentation
from mrml_helpers import (SHAPE_KJI, add_ct_volume, liver_with_two_tumors, oblique_ijk_to_ras, paint,
                          subject_hierarchy_with_study, volume_fingerprint)

from LiverTumorSegLib.geometry import Geometry
from LiverTumorSegLib.io.terminology import LIVER, TUMOR
from LiverTumorSegLib.measure import measure_labelmap


@pytest.fixture
def scene():
    return slicer.vtkMRMLScene()


def write_result_files(tmp_path, volume_node, labels, report=None):
    """What the CLI leaves behind: a labelmap on the input grid (via the input file) and a report."""
    ct_path = tmp_path / "ct.nrrd"
    mrml.write_volume_file(volume_node, ct_path)
    ct = sitk.ReadImage(str(ct_path))
    image = sitk.GetImageFromArray(labels)
    image.CopyInformation(ct)
    sitk.WriteImage(image, str(tmp_path / "ct.nii.gz"))
    if report is None:
        report = measure_labelmap(labels, Geometry.of(ct), sitk.GetArrayFromImage(ct)).to_dict()
        report.update({"models": [{"name": "liver-demo", "non_clinical": True}], "device": "cpu",
                       "seconds_per_stage": {"liver": 1.0}})
    (tmp_path / "ct.json").write_text(json.dumps(report))
    return {"labelmap": tmp_path / "ct.nii.gz", "report": tmp_path / "ct.json"}


def test_write_volume_file_keeps_the_node_unchanged(scene, tmp_path):
    volume, voxels = add_ct_volume(scene)
    before = volume_fingerprint(volume)
    path = tmp_path / "input.nrrd"
    mrml.write_volume_file(volume, path)
    assert volume_fingerprint(volume) == before
    image = sitk.ReadImage(str(path))
    assert np.array_equal(sitk.GetArrayFromImage(image), voxels)
    assert Geometry.of(image).matches(mrml.geometry_of_volume(volume))


def test_geometry_of_volume_matches_itk_lps(scene, tmp_path):
    volume, _ = add_ct_volume(scene)
    geometry = mrml.geometry_of_volume(volume)
    assert geometry.size == SHAPE_KJI[::-1]
    assert geometry.spacing == pytest.approx((0.8, 0.9, 2.5))
    # voxel (i, j, k) = (3, 4, 5) in RAS through MRML, and in LPS through the library's geometry
    matrix = oblique_ijk_to_ras()
    ras = matrix.MultiplyPoint((3, 4, 5, 1))[:3]
    lps = geometry.index_to_lps(np.array([5, 4, 3]))
    assert lps == pytest.approx([-ras[0], -ras[1], ras[2]])


def test_import_labelmap_segments_names_colors_terminology_geometry(scene):
    volume, _ = add_ct_volume(scene)
    before = volume_fingerprint(volume)
    labels = liver_with_two_tumors()
    node = mrml.import_labelmap(scene, volume, labels)

    segmentation = node.GetSegmentation()
    assert segmentation.GetNumberOfSegments() == 2
    liver, tumor = segmentation.GetSegment(LIVER.segment_id), segmentation.GetSegment(TUMOR.segment_id)
    assert liver.GetName() == "Liver" and tumor.GetName() == "Liver tumor"
    assert liver.GetColor() == pytest.approx(LIVER.color_rgb) and tumor.GetColor() == pytest.approx(TUMOR.color_rgb)
    liver_terms = mrml.segment_terminology_string(liver)
    tumor_terms = mrml.segment_terminology_string(tumor)
    assert "SCT^10200004^Liver" in liver_terms.split("~")[2]  # type: liver
    tumor_fields = tumor_terms.split("~")
    assert tumor_fields[1].startswith("SCT^49755003")  # category: morphologically altered structure
    assert tumor_fields[2].startswith("SCT^108369006^Neoplasm")  # type
    assert tumor_fields[5].startswith("SCT^10200004^Liver")  # anatomic region

    # reference geometry is the input volume's; the volume is referenced and untouched
    expected = slicer.vtkSegmentationConverter.SerializeImageGeometry(
        mrml._reference_geometry_image(volume))
    assert node.GetSegmentation().GetConversionParameter(
        slicer.vtkSegmentationConverter.GetReferenceImageGeometryParameterName()) == expected
    assert node.GetNodeReference(node.GetReferenceImageGeometryReferenceRole()) is volume
    assert mrml.input_volume_node(node) is volume
    assert volume_fingerprint(volume) == before

    assert np.array_equal(mrml.segmentation_labelmap(node, volume), labels)
    # "Liver" is the whole liver, tumor included; "Liver tumor" overlaps it
    assert np.array_equal(mrml.segment_mask(node, LIVER, volume), labels > 0)
    assert np.array_equal(mrml.segment_mask(node, TUMOR, volume), labels == 2)
    assert node.GetDisplayNode() is not None


def test_import_keeps_other_segments_and_follows_the_volume_transform(scene):
    volume, _ = add_ct_volume(scene)
    transform = scene.AddNewNodeByClass("vtkMRMLLinearTransformNode", "shift")
    shift = vtk.vtkMatrix4x4()
    shift.SetElement(0, 3, 15.0)
    transform.SetMatrixTransformToParent(shift)
    volume.SetAndObserveTransformNodeID(transform.GetID())

    node = scene.AddNewNodeByClass("vtkMRMLSegmentationNode", "mine")
    node.CreateDefaultDisplayNodes()
    mrml.ensure_segmentation_converters()
    node.GetSegmentation().AddEmptySegment("vein", "Portal vein", (0.0, 0.0, 1.0))
    labels = liver_with_two_tumors()
    mrml.import_labelmap(scene, volume, labels, node)
    assert node.GetTransformNodeID() == transform.GetID()
    names = sorted(node.GetSegmentation().GetNthSegment(n).GetName()
                   for n in range(node.GetSegmentation().GetNumberOfSegments()))
    assert names == ["Liver", "Liver tumor", "Portal vein"]

    # a second import replaces our two segments only
    labels2 = np.zeros_like(labels)
    labels2[3:5, 4:8, 5:9] = 1
    mrml.import_labelmap(scene, volume, labels2, node)
    assert node.GetSegmentation().GetNumberOfSegments() == 3
    assert np.array_equal(mrml.segmentation_labelmap(node, volume), labels2)

    # centroids in the volume's own coordinates go to world through the same transform
    assert mrml.local_to_world_ras(volume, (1.0, 2.0, 3.0)) == pytest.approx((16.0, 2.0, 3.0))


def test_edit_detection(scene):
    volume, _ = add_ct_volume(scene)
    labels = liver_with_two_tumors()
    node = mrml.import_labelmap(scene, volume, labels)
    assert not mrml.was_edited(node, volume)
    assert not mrml.needs_overwrite_confirmation(node, volume)

    blob = np.zeros(SHAPE_KJI, dtype=np.uint8)
    blob[8:9, 4:6, 5:7] = 1
    paint(node, TUMOR.segment_id, volume, blob)
    assert mrml.was_edited(node, volume)
    assert mrml.needs_overwrite_confirmation(node, volume)

    # the attribute is what survives a scene save: losing it means "unknown, ask"
    node.RemoveAttribute(mrml.ATTRIBUTE_CONTENT_HASH)
    assert mrml.was_edited(node, volume)

    # a user's own segmentation with a "Liver" segment is protected too; an empty node is not
    mine = scene.AddNewNodeByClass("vtkMRMLSegmentationNode", "manual")
    mine.GetSegmentation().AddEmptySegment("Liver", "Liver", (1.0, 0.0, 0.0))
    assert mrml.needs_overwrite_confirmation(mine, volume)
    empty = scene.AddNewNodeByClass("vtkMRMLSegmentationNode", "empty")
    assert not mrml.needs_overwrite_confirmation(empty, volume)
    other = scene.AddNewNodeByClass("vtkMRMLSegmentationNode", "vessels only")
    other.GetSegmentation().AddEmptySegment("vein", "Portal vein", (0.0, 0.0, 1.0))
    assert not mrml.needs_overwrite_confirmation(other, volume)


def test_erasing_a_tumor_leaves_the_liver_whole(scene):
    volume, _ = add_ct_volume(scene)
    labels = liver_with_two_tumors()
    node = mrml.import_labelmap(scene, volume, labels)
    # the user erases the small lesion (a false positive) from the tumor segment
    keep = ((labels == 2) & ~((np.arange(SHAPE_KJI[0]) == 7)[:, None, None])).astype(np.uint8)
    paint(node, TUMOR.segment_id, volume, keep, mode="replace")
    expected = labels.copy()
    expected[7] = np.where(labels[7] == 2, 1, labels[7])
    assert np.array_equal(mrml.segmentation_labelmap(node, volume), expected)


def test_liver_painted_over_a_tumor_keeps_the_tumor(scene):
    volume, _ = add_ct_volume(scene)
    labels = liver_with_two_tumors()
    node = mrml.import_labelmap(scene, volume, labels)
    blob = np.zeros(SHAPE_KJI, dtype=np.uint8)
    blob[4:8, 4:10, 5:11] = 1  # covers part of the large lesion and some liver
    paint(node, LIVER.segment_id, volume, blob)
    assert np.array_equal(mrml.segmentation_labelmap(node, volume), labels)


def test_import_results_table_and_subject_hierarchy(scene, tmp_path):
    volume, voxels = add_ct_volume(scene)
    hierarchy, study = subject_hierarchy_with_study(scene, volume)
    labels = liver_with_two_tumors()
    outputs = write_result_files(tmp_path, volume, labels)
    before = volume_fingerprint(volume)

    node, table = mrml.import_results(scene, volume, outputs, name="CT liver segmentation")
    assert node.GetName() == "CT liver segmentation"
    assert volume_fingerprint(volume) == before
    assert hierarchy.GetItemParent(hierarchy.GetItemByDataNode(node)) == study
    assert hierarchy.GetItemParent(hierarchy.GetItemByDataNode(table)) == study
    assert mrml.measurements_table_node(node) is table
    assert json.loads(node.GetAttribute(mrml.ATTRIBUTE_REPORT))["models"][0]["name"] == "liver-demo"

    rows = mrml.table_rows(table)
    report = json.loads(outputs["report"].read_text())
    assert [r[mrml.COLUMN_STRUCTURE] for r in rows] == [mrml.LIVER_ROW, mrml.TUMOR_ROW, "Lesion 1", "Lesion 2"]
    assert rows[0][mrml.COLUMN_VOLUME] == pytest.approx(report["liver_volume_ml"])
    assert rows[1][mrml.COLUMN_VOLUME] == pytest.approx(report["tumor_volume_ml"])
    assert rows[1][mrml.COLUMN_TLVR] == pytest.approx(100 * report["tlvr"])
    assert rows[2][mrml.COLUMN_VOXELS] == 48 and rows[3][mrml.COLUMN_VOXELS] == 4
    assert math.isnan(rows[0][mrml.COLUMN_DIAMETER]) and math.isnan(rows[0][mrml.COLUMN_CENTROID[0]])
    assert rows[2][mrml.COLUMN_MEAN_HU] == pytest.approx(voxels[4:7, 5:9, 6:10].mean())
    assert table.GetColumnUnitLabel(mrml.COLUMN_VOLUME) == "mL"

    cells = presentation.results_display_rows(rows)
    assert cells[0][0] == "Liver (tumor included)" and cells[0][2] == ""  # NaN shown empty
    assert cells[1][2] == f"{100 * report['tlvr']:.2f}"

    # lesion rows lead to their centroid, summary rows to nothing
    assert mrml.lesion_centroid_ras(table, 0) is None and mrml.lesion_centroid_ras(table, 1) is None
    centroid = mrml.lesion_centroid_ras(table, 2)
    kji = np.argwhere(labels[4:7, 5:9, 6:10] == 2).mean(axis=0) + (4, 5, 6)
    expected = oblique_ijk_to_ras().MultiplyPoint((kji[2], kji[1], kji[0], 1.0))[:3]
    assert centroid == pytest.approx(expected, abs=1e-3)
    assert mrml.lesion_centroid_ras(table, 99) is None


def test_import_results_refuses_a_result_of_another_grid(scene, tmp_path):
    volume, _ = add_ct_volume(scene)
    outputs = write_result_files(tmp_path, volume, liver_with_two_tumors())
    other, _ = add_ct_volume(scene, "other", matrix=oblique_ijk_to_ras(origin=(0.0, 0.0, 0.0)))
    count = scene.GetNumberOfNodesByClass("vtkMRMLSegmentationNode")
    with pytest.raises(ValueError, match="not on the volume's grid"):
        mrml.import_results(scene, other, outputs)
    smaller, _ = add_ct_volume(scene, "small", shape_kji=(6, 20, 24))
    with pytest.raises(ValueError, match="voxels"):
        mrml.import_results(scene, smaller, outputs)
    assert scene.GetNumberOfNodesByClass("vtkMRMLSegmentationNode") == count


def test_recompute_measurements_after_an_edit(scene, tmp_path):
    volume, voxels = add_ct_volume(scene)
    labels = liver_with_two_tumors()
    node, table = mrml.import_results(scene, volume, write_result_files(tmp_path, volume, labels))

    blob = np.zeros(SHAPE_KJI, dtype=np.uint8)
    blob[3:4, 12:15, 4:6] = 1  # a third lesion, 6 voxels, away from the others
    paint(node, TUMOR.segment_id, volume, blob)
    assert mrml.was_edited(node, volume)

    measurements, table2 = mrml.recompute_measurements(scene, node, volume)
    assert table2 is table
    assert not mrml.was_edited(node, volume)
    assert node.GetAttribute(mrml.ATTRIBUTE_MEASUREMENTS_SOURCE) == "recomputed"
    edited = labels.copy()
    edited[blob > 0] = 2
    expected = measure_labelmap(edited, mrml.geometry_of_volume(volume), voxels)
    assert measurements.tumor_volume_ml == pytest.approx(expected.tumor_volume_ml)
    assert len(measurements.lesions) == 3
    voxel_ml = 0.8 * 0.9 * 2.5 / 1000
    assert measurements.tumor_volume_ml == pytest.approx((48 + 4 + 6) * voxel_ml)
    assert measurements.liver_volume_ml == pytest.approx(int((edited > 0).sum()) * voxel_ml)
    rows = mrml.table_rows(table)
    assert len(rows) == 2 + 3 and rows[1][mrml.COLUMN_VOLUME] == pytest.approx(measurements.tumor_volume_ml)


def test_export_through_the_library_writers(scene, tmp_path):
    volume, voxels = add_ct_volume(scene)
    labels = liver_with_two_tumors()
    (tmp_path / "run").mkdir()
    node, _ = mrml.import_results(scene, volume, write_result_files(tmp_path / "run", volume, labels))
    blob = np.zeros(SHAPE_KJI, dtype=np.uint8)
    blob[3:4, 12:15, 4:6] = 1
    paint(node, TUMOR.segment_id, volume, blob)
    edited = labels.copy()
    edited[blob > 0] = 2

    folder = tmp_path / "export"
    paths = mrml.export_results(node, volume, folder, "case 1")
    assert sorted(paths) == ["labelmap", "lesions_csv", "report", "segmentation", "table"]
    for path in paths.values():
        assert path.is_file(), path
    written = sorted(p.name for p in paths.values()) + ["case 1_measurements.schema.csv"]  # the table's column types
    assert sorted(p.name for p in folder.iterdir()) == sorted(written)  # nothing else, no temporary files

    # the NIfTI labelmap: 0/1/2 on the input grid
    nifti = sitk.ReadImage(str(paths["labelmap"]))
    assert np.array_equal(sitk.GetArrayFromImage(nifti), edited)
    assert Geometry.of(nifti).matches(mrml.geometry_of_volume(volume), tol=1e-3)

    # the .seg.nrrd reads back (through a storage node) with our names and terminology
    loaded = slicer.vtkMRMLSegmentationNode()
    scene.AddNode(loaded)
    storage = slicer.vtkMRMLSegmentationStorageNode()
    storage.SetFileName(str(paths["segmentation"]))
    assert storage.ReadData(loaded)
    names = {loaded.GetSegmentation().GetNthSegment(n).GetName()
             for n in range(loaded.GetSegmentation().GetNumberOfSegments())}
    assert names == {"Liver", "Liver tumor"}
    tumor = loaded.GetSegmentation().GetSegment(loaded.GetSegmentation().GetSegmentIdBySegmentName("Liver tumor"))
    assert "108369006" in mrml.segment_terminology_string(tumor)
    assert np.array_equal(mrml.segmentation_labelmap(loaded, volume), edited)

    report = json.loads(paths["report"].read_text())
    assert report["edited_after_segmentation"] is True and report["input_volume"] == volume.GetName()
    assert len(report["lesions"]) == 3 and report["models"][0]["name"] == "liver-demo"
    assert report["device"] == "cpu" and report["non_clinical"] is True
    assert report["lesions"][0]["volume_ml"] == pytest.approx(48 * 0.8 * 0.9 * 2.5 / 1000)
    with open(paths["lesions_csv"], newline="") as handle:
        lesion_rows = list(csv.DictReader(handle))
    assert len(lesion_rows) == 3
    with open(paths["table"], newline="") as handle:
        table_rows = list(csv.reader(handle))
    assert table_rows[0][0] == mrml.COLUMN_STRUCTURE and len(table_rows) == 1 + 2 + 3

    with pytest.raises(FileExistsError):
        mrml.export_results(node, volume, folder, "case 1")
    mrml.export_results(node, volume, folder, "case 1", overwrite=True)


def test_is_from_dicom(scene):
    volume, _ = add_ct_volume(scene)
    assert not mrml.is_from_dicom(volume)
    volume.SetAttribute("DICOM.instanceUIDs", "1.2.3 1.2.4")
    assert mrml.is_from_dicom(volume)


def test_table_rows_without_a_liver():
    rows = mrml.measurement_rows({"liver_volume_ml": 0.0, "tumor_volume_ml": 0.0, "tlvr": None, "lesions": []})
    assert math.isnan(rows[1][mrml.COLUMN_TLVR]) and rows[0][mrml.COLUMN_VOLUME] == 0.0


class DicomDatabaseFiles:
    """Slicer's DICOM database as the export sees it (``fileForInstance``), over files on disk;
    slicer-core has no ctkDICOMDatabase."""

    def __init__(self, files_by_uid):
        self.files_by_uid = files_by_uid

    def fileForInstance(self, uid):  # noqa: N802 (Slicer's name)
        return self.files_by_uid.get(uid, "")


def test_dicom_seg_export_references_the_ct_instances(scene, tmp_path, helpers):
    pydicom = pytest.importorskip("pydicom")
    pytest.importorskip("highdicom")
    from LiverTumorSegLib.io.dicom_seg import read_dicom_seg

    volume, _ = add_ct_volume(scene)
    ct_path = tmp_path / "ct.nrrd"
    mrml.write_volume_file(volume, ct_path)
    series = helpers.write_dicom_series(tmp_path / "dicom", sitk.ReadImage(str(ct_path)))
    files_by_uid = {str(pydicom.dcmread(str(f), stop_before_pixels=True).SOPInstanceUID): str(f)
                    for f in sorted(series.iterdir())}
    volume.SetAttribute("DICOM.instanceUIDs", " ".join(files_by_uid))
    labels = liver_with_two_tumors()
    (tmp_path / "run").mkdir()
    node, _ = mrml.import_results(scene, volume, write_result_files(tmp_path / "run", volume, labels))
    before = {f: (series / f).read_bytes() for f in sorted(p.name for p in series.iterdir())}
    logs = []
    paths = export.export_results(scene, node, tmp_path / "export", "case 1", volume,
                                  log=lambda level, message: logs.append((level, message)),
                                  dicom_database=lambda: DicomDatabaseFiles(files_by_uid))
    assert logs == []
    seg_path = paths["dicom_seg"]
    assert seg_path == tmp_path / "export" / "case 1_seg.dcm"

    seg = pydicom.dcmread(str(seg_path))
    assert seg.Modality == "SEG"
    referenced = {str(item.ReferencedSOPInstanceUID) for series_item in seg.ReferencedSeriesSequence
                  for item in series_item.ReferencedInstanceSequence}
    assert referenced == set(files_by_uid)
    masks = read_dicom_seg(seg_path, sitk.ReadImage(str(paths["labelmap"])))
    assert np.array_equal(masks["Liver"] > 0, labels == 1)
    assert np.array_equal(masks["Liver tumor"] > 0, labels == 2)
    assert {f: (series / f).read_bytes() for f in before} == before  # the CT files are untouched
    assert sorted(p.name for p in series.iterdir()) == sorted(before)


def test_dicom_instance_files_names_what_is_missing(scene, tmp_path):
    volume, _ = add_ct_volume(scene)
    with pytest.raises(RuntimeError, match="not loaded from DICOM"):
        mrml.dicom_instance_files(volume, DicomDatabaseFiles({}))
    present = tmp_path / "a.dcm"
    present.write_bytes(b"x")
    volume.SetAttribute("DICOM.instanceUIDs", "1.2.3 1.2.4")
    with pytest.raises(RuntimeError, match="1 of the 2 DICOM files"):
        mrml.dicom_instance_files(volume, DicomDatabaseFiles({"1.2.3": str(present)}))


def test_a_dicom_seg_that_cannot_be_written_is_a_warning_and_the_other_files_stay(scene, tmp_path):
    pytest.importorskip("highdicom")
    volume, _ = add_ct_volume(scene)
    volume.SetAttribute("DICOM.instanceUIDs", "1.2.3 1.2.4")  # loaded from DICOM, files gone from the database
    (tmp_path / "run").mkdir()
    node, _ = mrml.import_results(scene, volume, write_result_files(tmp_path / "run", volume, liver_with_two_tumors()))
    logs = []
    paths = export.export_results(scene, node, tmp_path / "export", "case", volume,
                                  log=lambda level, message: logs.append((level, message)),
                                  dicom_database=lambda: DicomDatabaseFiles({}))
    assert "dicom_seg" not in paths and all(path.is_file() for path in paths.values())
    assert len(logs) == 1 and logs[0][0] == "warning" and "DICOM SEG export failed" in logs[0][1]
    assert "2 of the 2 DICOM files" in logs[0][1]
