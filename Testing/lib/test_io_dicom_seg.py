"""DICOM SEG: written on a CT series (synthetic ones written with pydicom, and the real series of
../shared/data), checked as DICOM with pydicom, and read back onto the series' grid and others."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

pydicom = pytest.importorskip("pydicom")
pytest.importorskip("highdicom")

from LiverTumorSegLib import LIVER_LABEL, TUMOR_LABEL, __version__  # noqa: E402
from LiverTumorSegLib.errors import LiverTumorSegError  # noqa: E402
from LiverTumorSegLib.geometry import Geometry  # noqa: E402
from LiverTumorSegLib.io.dicom_seg import (SEGMENTATION_STORAGE, read_dicom_seg, referenced_series_uids,  # noqa: E402
                                          write_dicom_seg, write_dicom_seg_masks)
from LiverTumorSegLib.io.terminology import LIVER, TUMOR, SegmentTerminology  # noqa: E402
from LiverTumorSegLib.io.volume import load_volume  # noqa: E402

# Rows x columns (35 x 41) is not a multiple of 8: frames share bytes in the packed pixel data.
SERIES_SIZE = (41, 35, 14)
SERIES_SPACING = (4.0, 4.0, 5.0)


def _series(tmp_path_factory, helpers, orientation: str):
    folder = tmp_path_factory.mktemp(f"ct_{orientation}") / "series"
    ct = helpers.phantom_ct(size=SERIES_SIZE, spacing=SERIES_SPACING, direction=helpers.DIRECTIONS[orientation])
    helpers.write_dicom_series(folder, ct, series_description=f"synthetic {orientation}")
    image = load_volume(folder).image
    labelmap = sitk.GetImageFromArray(helpers.analytic_labels_like(image))
    labelmap.CopyInformation(image)
    return folder, image, labelmap


@pytest.fixture(scope="module", params=["LPS", "oblique"])
def series(request, tmp_path_factory, helpers):
    """(folder of a synthetic CT series, its image, its analytic labelmap 0/1/2)."""
    return _series(tmp_path_factory, helpers, request.param)


def _source_headers(folder: Path):
    return [pydicom.dcmread(str(p), stop_before_pixels=True) for p in sorted(folder.iterdir())]


def test_round_trip_gives_back_the_labelmap(series, tmp_path):
    folder, image, labelmap = series
    expected = sitk.GetArrayFromImage(labelmap)
    assert {0, LIVER_LABEL, TUMOR_LABEL} <= set(np.unique(expected).tolist())
    path = tmp_path / "seg.dcm"
    write_dicom_seg(labelmap, folder, path)
    masks = read_dicom_seg(path, image)
    assert set(masks) == {"Liver", "Liver tumor"}
    for mask in masks.values():
        assert mask.dtype == np.uint8 and mask.shape == expected.shape
    np.testing.assert_array_equal(masks["Liver"], expected == LIVER_LABEL)
    np.testing.assert_array_equal(masks["Liver tumor"], expected == TUMOR_LABEL)


def test_written_seg_is_a_valid_segmentation_of_the_series(series, tmp_path):
    folder, image, labelmap = series
    path = tmp_path / "seg.dcm"
    write_dicom_seg(labelmap, folder, path)
    seg = pydicom.dcmread(str(path))
    sources = _source_headers(folder)
    assert seg.SOPClassUID == SEGMENTATION_STORAGE == seg.file_meta.MediaStorageSOPClassUID
    assert seg.Modality == "SEG" and seg.SegmentationType == "BINARY" and seg.BitsAllocated == 1
    for keyword in ("SOPInstanceUID", "StudyInstanceUID", "SeriesInstanceUID", "FrameOfReferenceUID", "ImageType",
                    "ContentLabel", "ContentDate", "ContentTime", "InstanceNumber", "SeriesNumber", "Manufacturer",
                    "NumberOfFrames", "Rows", "Columns", "SegmentSequence", "SharedFunctionalGroupsSequence",
                    "PerFrameFunctionalGroupsSequence", "DimensionIndexSequence", "DimensionOrganizationSequence",
                    "ReferencedSeriesSequence", "PixelData", "SoftwareVersions"):
        assert keyword in seg and str(seg.data_element(keyword).value) != "", keyword
    assert "PatientID" in seg and "PatientName" in seg  # type 2: present (may be empty)
    assert "non-clinical" in seg.SeriesDescription
    assert seg.StudyInstanceUID == sources[0].StudyInstanceUID
    assert seg.FrameOfReferenceUID == sources[0].FrameOfReferenceUID
    assert seg.SeriesInstanceUID != sources[0].SeriesInstanceUID
    assert (seg.Rows, seg.Columns) == (SERIES_SIZE[1], SERIES_SIZE[0])

    # The source series and its instances are referenced.
    assert referenced_series_uids(seg) == [sources[0].SeriesInstanceUID]
    referenced = {item.ReferencedSOPInstanceUID for item in seg.ReferencedSeriesSequence[0].ReferencedInstanceSequence}
    assert referenced <= {ds.SOPInstanceUID for ds in sources} and referenced

    # Segments: names, SNOMED CT codes, algorithm.
    segments = list(seg.SegmentSequence)
    assert [s.SegmentNumber for s in segments] == [1, 2]
    assert [s.SegmentLabel for s in segments] == ["Liver", "Liver tumor"]
    for item, terms in zip(segments, (LIVER, TUMOR)):
        category, kind = item.SegmentedPropertyCategoryCodeSequence[0], item.SegmentedPropertyTypeCodeSequence[0]
        assert (category.CodingSchemeDesignator, category.CodeValue) == terms.category[:2]
        assert (kind.CodingSchemeDesignator, kind.CodeValue) == terms.type[:2]
        assert item.SegmentAlgorithmType == "AUTOMATIC" and item.SegmentAlgorithmName == "LiverTumorSeg"
        algorithm = item.SegmentationAlgorithmIdentificationSequence[0]
        assert algorithm.AlgorithmName == "LiverTumorSeg" and algorithm.AlgorithmVersion == __version__
        assert len(item.RecommendedDisplayCIELabValue) == 3
    assert segments[1].AnatomicRegionSequence[0].CodeValue == "10200004"
    assert segments[0].SegmentedPropertyTypeCodeSequence[0].CodeValue == "10200004"
    assert segments[1].SegmentedPropertyTypeCodeSequence[0].CodeValue == "108369006"

    # Shared groups: the series' orientation and pixel spacing; per frame: a series slice position.
    direction = np.asarray(image.GetDirection()).reshape(3, 3)
    shared = seg.SharedFunctionalGroupsSequence[0]
    iop = [float(v) for v in shared.PlaneOrientationSequence[0].ImageOrientationPatient]
    np.testing.assert_allclose(iop, list(direction[:, 0]) + list(direction[:, 1]), atol=1e-5)
    np.testing.assert_allclose([float(v) for v in shared.PixelMeasuresSequence[0].PixelSpacing],
                               [SERIES_SPACING[1], SERIES_SPACING[0]])
    slice_positions = np.array([[float(v) for v in ds.ImagePositionPatient] for ds in sources])
    by_uid = {ds.SOPInstanceUID: np.array([float(v) for v in ds.ImagePositionPatient]) for ds in sources}
    assert seg.NumberOfFrames == len(seg.PerFrameFunctionalGroupsSequence)
    for frame in seg.PerFrameFunctionalGroupsSequence:
        position = np.array([float(v) for v in frame.PlanePositionSequence[0].ImagePositionPatient])
        assert np.min(np.abs(slice_positions - position).max(axis=1)) < 1e-3
        source = frame.DerivationImageSequence[0].SourceImageSequence[0].ReferencedSOPInstanceUID
        np.testing.assert_allclose(by_uid[source], position, atol=1e-3)
        assert frame.SegmentIdentificationSequence[0].ReferencedSegmentNumber in (1, 2)


def test_seg_covering_part_of_the_series_lands_on_its_slices(series, tmp_path):
    folder, image, labelmap = series
    partial = sitk.GetArrayFromImage(labelmap)
    partial[:5] = 0
    partial[9:] = 0
    partial_image = sitk.GetImageFromArray(partial)
    partial_image.CopyInformation(labelmap)
    path = tmp_path / "partial.dcm"
    write_dicom_seg(partial_image, folder, path)
    seg = pydicom.dcmread(str(path), stop_before_pixels=True)
    assert seg.NumberOfFrames < 2 * SERIES_SIZE[2]  # empty slices have no frames
    masks = read_dicom_seg(path, image)
    np.testing.assert_array_equal(masks["Liver"] + TUMOR_LABEL * masks["Liver tumor"], partial)


def test_seg_referencing_a_subset_of_instances_is_read_onto_the_whole_series(series, tmp_path):
    folder, image, labelmap = series
    subset_folder = tmp_path / "subset"
    subset_folder.mkdir()
    k_range = range(4, 10)
    for source in folder.iterdir():  # copy the slices 4..9 of the series
        ds = pydicom.dcmread(str(source), stop_before_pixels=True)
        position = np.array([float(v) for v in ds.ImagePositionPatient])
        k = image.TransformPhysicalPointToIndex(tuple(position))[2]
        if k in k_range:
            shutil.copy(source, subset_folder / source.name)
    sub_labels = labelmap[:, :, k_range.start:k_range.stop]
    path = tmp_path / "subset.dcm"
    write_dicom_seg(sub_labels, subset_folder, path)
    masks = read_dicom_seg(path, image)
    expected = np.zeros(sitk.GetArrayViewFromImage(labelmap).shape, np.uint8)
    expected[k_range.start:k_range.stop] = sitk.GetArrayViewFromImage(sub_labels)
    np.testing.assert_array_equal(masks["Liver"] + TUMOR_LABEL * masks["Liver tumor"], expected)


def test_read_onto_another_grid_is_by_physical_position(series, tmp_path):
    folder, image, labelmap = series
    path = tmp_path / "seg.dcm"
    write_dicom_seg(labelmap, folder, path)
    # A coarser grid, shifted by a quarter voxel so no voxel centre falls on a tie.
    coarse = sitk.Image([s // 2 for s in image.GetSize()], sitk.sitkFloat32)
    coarse.SetSpacing([2 * s for s in image.GetSpacing()])
    coarse.SetDirection(image.GetDirection())
    d = np.asarray(image.GetDirection()).reshape(3, 3)
    coarse.SetOrigin(tuple(np.asarray(image.GetOrigin()) + d @ (0.25 * np.asarray(image.GetSpacing()))))
    masks = read_dicom_seg(path, coarse)
    expected = sitk.GetArrayFromImage(sitk.Resample(labelmap, coarse, sitk.Transform(), sitk.sitkNearestNeighbor,
                                                    0, sitk.sitkUInt8))
    assert masks["Liver"].shape == expected.shape
    np.testing.assert_array_equal(masks["Liver"], expected == LIVER_LABEL)
    np.testing.assert_array_equal(masks["Liver tumor"], expected == TUMOR_LABEL)
    assert masks["Liver tumor"].any()


def test_overlapping_custom_segments_round_trip(series, tmp_path):
    folder, image, labelmap = series
    labels = sitk.GetArrayFromImage(labelmap)
    mass = SegmentTerminology(label=3, segment_id="Mass", name="Mass", color_rgb=(1.0, 1.0, 0.0),
                              category=("SCT", "49755003", "Morphologically Altered Structure"),
                              type=("SCT", "4147007", "Mass"))
    whole_liver, tumor = (labels > 0).astype(np.uint8), (labels == TUMOR_LABEL).astype(np.uint8)
    masks = []
    for array in (whole_liver, tumor):
        mask = sitk.GetImageFromArray(array)
        mask.CopyInformation(labelmap)
        masks.append(mask)
    path = tmp_path / "overlap.dcm"
    write_dicom_seg_masks(masks, [LIVER, mass], folder, path)
    read = read_dicom_seg(path, image)
    np.testing.assert_array_equal(read["Liver"], whole_liver)
    np.testing.assert_array_equal(read["Mass"], tumor)


def _blank_uids(folder: Path, copy: Path, keywords) -> Path:
    """A copy of the series in ``folder`` whose slices have the attributes ``keywords`` blanked
    (as anonymisers do; the file meta keeps the instance UID)."""
    shutil.copytree(folder, copy)
    for path in copy.iterdir():
        ds = pydicom.dcmread(str(path))
        for keyword in keywords:
            setattr(ds, keyword, "")
        ds.save_as(str(path))
    return copy


@pytest.mark.parametrize("blanked", [(), ("SOPInstanceUID",), ("SeriesInstanceUID", "StudyInstanceUID"),
                                     ("SOPInstanceUID", "SeriesInstanceUID", "StudyInstanceUID",
                                      "FrameOfReferenceUID")])
def test_series_without_its_uids_gets_a_seg_with_a_warning_that_pacs_cannot_link_it(blanked, series, tmp_path,
                                                                                     caplog):
    """The SEG still references the slices (by the file meta's instance UIDs, and UIDs derived for
    the blank series/study); the slices themselves do not carry those UIDs, which the warning says."""
    folder, image, labelmap = series
    source = _blank_uids(folder, tmp_path / "anonymised", blanked)
    path = tmp_path / "seg.dcm"
    with caplog.at_level("WARNING", logger="LiverTumorSegLib.io.dicom_seg"):
        write_dicom_seg(labelmap, source, path)
    warnings = [r.getMessage() for r in caplog.records if r.levelname == "WARNING"]
    seg = pydicom.dcmread(str(path), stop_before_pixels=True)
    slices = _source_headers(source)
    referenced = {i.ReferencedSOPInstanceUID for i in seg.ReferencedSeriesSequence[0].ReferencedInstanceSequence}
    carried = {str(ds.SOPInstanceUID) for ds in slices} | {str(ds.SeriesInstanceUID) for ds in slices}
    if not blanked:
        assert warnings == [] and referenced <= carried and referenced_series_uids(seg)[0] in carried
        return
    assert not (referenced | set(referenced_series_uids(seg))) <= carried  # what PACS could not resolve
    assert len(warnings) == 1, warnings
    assert "a PACS or DICOM viewer cannot link the SEG to this series" in warnings[0] and str(source) in warnings[0]
    assert all(keyword in warnings[0] for keyword in blanked)
    np.testing.assert_array_equal(read_dicom_seg(path, image)["Liver"], sitk.GetArrayFromImage(labelmap) == LIVER_LABEL)


def test_empty_labelmap_writes_a_readable_seg(series, tmp_path):
    folder, image, labelmap = series
    empty = sitk.Image(labelmap.GetSize(), sitk.sitkUInt8)
    empty.CopyInformation(labelmap)
    path = tmp_path / "empty.dcm"
    write_dicom_seg(empty, folder, path)
    masks = read_dicom_seg(path, image)
    assert set(masks) == {"Liver", "Liver tumor"} and not any(m.any() for m in masks.values())


def test_labelmap_off_the_series_grid_is_refused(series, tmp_path):
    folder, image, labelmap = series
    shifted = sitk.Image(labelmap)
    shifted.SetOrigin(tuple(o + 2.0 for o in labelmap.GetOrigin()))
    with pytest.raises(LiverTumorSegError, match="does not match any DICOM series"):
        write_dicom_seg(shifted, folder, tmp_path / "seg.dcm")
    assert not (tmp_path / "seg.dcm").exists()
    with pytest.raises(LiverTumorSegError, match="does not exist"):
        write_dicom_seg(labelmap, tmp_path / "nowhere", tmp_path / "seg.dcm")


def test_unknown_label_values_are_refused(series, tmp_path):
    folder, _, labelmap = series
    array = sitk.GetArrayFromImage(labelmap)
    array[0, 0, 0] = 7
    bad = sitk.GetImageFromArray(array)
    bad.CopyInformation(labelmap)
    with pytest.raises(LiverTumorSegError, match=r"\[7\]"):
        write_dicom_seg(bad, folder, tmp_path / "seg.dcm")


def test_reading_a_file_that_is_not_a_seg_is_refused(series, tmp_path):
    folder, image, _ = series
    with pytest.raises(LiverTumorSegError, match="not a DICOM Segmentation"):
        read_dicom_seg(next(folder.iterdir()), image)
    text = tmp_path / "notes.dcm"
    text.write_text("not dicom")
    with pytest.raises(LiverTumorSegError, match="cannot be read as DICOM"):
        read_dicom_seg(text, image)
    with pytest.raises(LiverTumorSegError, match="does not exist"):
        read_dicom_seg(tmp_path / "missing.dcm", image)


def test_real_series_round_trip(shared_data, tmp_path, caplog):
    """The real 20-slice CT series (JPEG 2000, anonymised: blank study/series UIDs) with its liver
    reference, plus a block of tumor, written and read back unchanged."""
    folder = shared_data("ts_dicom_upper_abdomen/dicom")
    image = load_volume(folder).image
    reference = sitk.ReadImage(str(shared_data("ts_dicom_upper_abdomen/liver_reference.nii.gz")))
    assert Geometry.of(reference).matches(Geometry.of(image))
    labels = sitk.GetArrayFromImage(reference).astype(np.uint8)
    block = labels[8:12, 250:280, 150:180]
    block[block == LIVER_LABEL] = TUMOR_LABEL
    assert (labels == TUMOR_LABEL).any() and (labels == LIVER_LABEL).any()
    labelmap = sitk.GetImageFromArray(labels)
    labelmap.CopyInformation(image)
    path = tmp_path / "real_seg.dcm"
    with caplog.at_level("WARNING", logger="LiverTumorSegLib.io.dicom_seg"):
        write_dicom_seg(labelmap, folder, path)
    assert "cannot link the SEG" in caplog.text  # its slices carry no instance, series or study UIDs
    seg = pydicom.dcmread(str(path), stop_before_pixels=True)
    assert seg.SOPClassUID == SEGMENTATION_STORAGE and seg.StudyInstanceUID and seg.SeriesInstanceUID
    instances = {pydicom.dcmread(str(p), stop_before_pixels=True).file_meta.MediaStorageSOPInstanceUID
                 for p in folder.iterdir()}
    referenced = {i.ReferencedSOPInstanceUID for i in seg.ReferencedSeriesSequence[0].ReferencedInstanceSequence}
    assert referenced <= instances and referenced
    masks = read_dicom_seg(path, image)
    np.testing.assert_array_equal(masks["Liver"] + TUMOR_LABEL * masks["Liver tumor"], labels)


def test_seg_without_slice_spacing_and_with_gaps_keeps_its_slices(series, tmp_path):
    """Other writers may omit Spacing Between Slices; frames on slices 3 and 7 only must stay there."""
    folder, image, labelmap = series
    sparse = sitk.GetArrayFromImage(labelmap)
    keep = np.zeros(sparse.shape[0], bool)
    keep[[3, 7]] = True
    sparse[~keep] = 0
    sparse_image = sitk.GetImageFromArray(sparse)
    sparse_image.CopyInformation(labelmap)
    path = tmp_path / "sparse.dcm"
    write_dicom_seg(sparse_image, folder, path)
    seg = pydicom.dcmread(str(path))
    del seg.SharedFunctionalGroupsSequence[0].PixelMeasuresSequence[0].SpacingBetweenSlices
    seg.save_as(str(path))
    masks = read_dicom_seg(path, image)
    np.testing.assert_array_equal(masks["Liver"] + TUMOR_LABEL * masks["Liver tumor"], sparse)


def _other_writer_seg(series, path: Path, segmentation_type: str, pixel_array: np.ndarray, names) -> None:
    """A SEG made directly with highdicom, as another tool would (not through the library's writer)."""
    import highdicom as hd
    from pydicom.sr.codedict import codes
    from pydicom.uid import generate_uid

    folder, image, _ = series
    sources = sorted(_source_headers(folder),
                     key=lambda ds: image.TransformPhysicalPointToIndex(tuple(float(v) for v in ds.ImagePositionPatient))[2])
    for ds in sources:  # the synthetic series lacks type-2 patient/study attributes a SEG copies
        for keyword in ("PatientBirthDate", "PatientSex", "AccessionNumber", "StudyID", "StudyDate", "StudyTime"):
            setattr(ds, keyword, "")
    descriptions = [hd.seg.SegmentDescription(
        segment_number=number, segment_label=name,
        segmented_property_category=hd.sr.CodedConcept("123037004", "SCT", "Anatomical Structure"),
        segmented_property_type=hd.sr.CodedConcept("10200004", "SCT", "Liver"),
        algorithm_type="AUTOMATIC",
        algorithm_identification=hd.AlgorithmIdentificationSequence(
            name="other", family=codes.cid7162.ArtificialIntelligence, version="1"))
        for number, name in enumerate(names, start=1)]
    seg = hd.seg.Segmentation(source_images=sources, pixel_array=pixel_array, segmentation_type=segmentation_type,
                              segment_descriptions=descriptions, series_instance_uid=generate_uid(),
                              series_number=1, sop_instance_uid=generate_uid(), instance_number=1,
                              manufacturer="other", manufacturer_model_name="other", software_versions="1",
                              device_serial_number="1")
    seg.save_as(str(path))


def test_fractional_seg_is_thresholded_at_half(series, tmp_path):
    _, image, labelmap = series
    labels = sitk.GetArrayFromImage(labelmap)
    probability = np.where(labels > 0, 0.8, 0.0).astype(np.float32)
    probability[labels == TUMOR_LABEL] = 0.4  # below one half: not in the mask
    path = tmp_path / "fractional.dcm"
    _other_writer_seg(series, path, "FRACTIONAL", probability, ["Liver"])
    masks = read_dicom_seg(path, image)
    np.testing.assert_array_equal(masks["Liver"], labels == LIVER_LABEL)


def test_label_map_seg_is_read(series, tmp_path):
    """The label-map segmentation SOP class (pixel values are segment numbers)."""
    import highdicom as hd

    if not hasattr(hd.seg.SegmentationTypeValues, "LABELMAP"):
        pytest.skip("this highdicom cannot write label-map segmentations")
    _, image, labelmap = series
    labels = sitk.GetArrayFromImage(labelmap)
    path = tmp_path / "labelmap.dcm"
    _other_writer_seg(series, path, "LABELMAP", labels, ["Liver", "Tumor"])
    assert pydicom.dcmread(str(path), stop_before_pixels=True).SOPClassUID == "1.2.840.10008.5.1.4.1.1.66.7"
    masks = read_dicom_seg(path, image)
    np.testing.assert_array_equal(masks["Liver"] + TUMOR_LABEL * masks["Tumor"], labels)


def test_the_series_can_be_given_as_its_files(series, tmp_path):
    """As Slicer's DICOM database knows a series: its files, wherever they lie (here shuffled and
    among other files), not a folder of them."""
    folder, image, labelmap = series
    files = sorted(folder.iterdir(), reverse=True)
    path = tmp_path / "seg.dcm"
    write_dicom_seg(labelmap, files, path)
    seg = pydicom.dcmread(str(path), stop_before_pixels=True)
    referenced = {str(i.ReferencedSOPInstanceUID) for i in seg.ReferencedSeriesSequence[0].ReferencedInstanceSequence}
    assert referenced == {str(ds.SOPInstanceUID) for ds in _source_headers(folder)}
    masks = read_dicom_seg(path, image)
    np.testing.assert_array_equal(masks["Liver"] + TUMOR_LABEL * masks["Liver tumor"],
                                  sitk.GetArrayFromImage(labelmap))
    with pytest.raises(LiverTumorSegError, match="1 of the 2 DICOM files"):
        write_dicom_seg(labelmap, [files[0], tmp_path / "gone.dcm"], tmp_path / "other.dcm")
    with pytest.raises(LiverTumorSegError, match="does not match any DICOM series in the 3 given DICOM files"):
        write_dicom_seg(labelmap, files[:3], tmp_path / "other.dcm")
    assert not (tmp_path / "other.dcm").exists()
