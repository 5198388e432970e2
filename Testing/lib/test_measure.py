"""Tests of LiverTumorSegLib.measure against analytic shapes on anisotropic, flipped and
oblique grids."""

import csv
import json
import math

import numpy as np
import pytest

from LiverTumorSegLib.geometry import Geometry, lps_to_ras
from LiverTumorSegLib.measure import (CSV_HEADER, Lesion, Measurements, measure_labelmap, measure_masks,
                                      write_lesions_csv)
from LiverTumorSegLib.postprocess.cleanup import compose_labelmap

IDENTITY = (1.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 1.0)


def _geometry(shape_kji, spacing_ijk, origin=(0.0, 0.0, 0.0), direction=IDENTITY):
    return Geometry(tuple(shape_kji[::-1]), tuple(spacing_ijk), tuple(origin), tuple(direction))


def _ras_of_voxels(geometry):
    """RAS mm of every voxel centre, shape (k, j, i, 3)."""
    shape = geometry.size[::-1]
    index = np.moveaxis(np.indices(shape, dtype=np.float64), 0, -1)
    return lps_to_ras(geometry.index_to_lps(index))


def _sphere(geometry, centre_ras, radius_mm):
    ras = _ras_of_voxels(geometry)
    return (np.sum((ras - np.asarray(centre_ras)) ** 2, axis=-1) <= radius_mm ** 2).astype(np.uint8)


def _cylinder_along_s(geometry, centre_ras, radius_mm, height_mm):
    ras = _ras_of_voxels(geometry)
    d = ras - np.asarray(centre_ras)
    inside = (d[..., 0] ** 2 + d[..., 1] ** 2 <= radius_mm ** 2) & (np.abs(d[..., 2]) <= height_mm / 2)
    return inside.astype(np.uint8)


def test_sphere_volume_centroid_and_diameter_on_an_anisotropic_grid():
    geometry = _geometry((24, 70, 80), (0.7, 0.8, 2.5), origin=(-20.0, -30.0, 100.0))
    centre_lps = geometry.index_to_lps(np.array([11.5, 35.2, 40.3]))
    centre_ras = lps_to_ras(centre_lps)
    tumor = _sphere(geometry, centre_ras, 20.0)
    liver = np.ones_like(tumor)
    result = measure_masks(liver, tumor, geometry)
    assert len(result.lesions) == 1
    lesion = result.lesions[0]
    assert lesion.volume_ml == pytest.approx(4 / 3 * math.pi * 20.0 ** 3 / 1000, rel=0.03)
    assert lesion.voxel_count == int(tumor.sum())
    assert lesion.volume_ml == pytest.approx(tumor.sum() * 0.7 * 0.8 * 2.5 / 1000)
    np.testing.assert_allclose(lesion.centroid_ras_mm, centre_ras, atol=0.5)
    # The equator slice is within half a slice (1.25 mm) of the centre: chord >= 2*sqrt(20^2-1.25^2).
    assert 39.9 - 0.8 <= lesion.longest_axial_diameter_mm <= 40.0 + 0.8
    assert result.tumor_volume_ml == pytest.approx(lesion.volume_ml)
    assert lesion.mean_hu is None


@pytest.mark.parametrize("diameter_mm", [8.0, 30.0])
def test_disk_diameter_matches_a_caliper(diameter_mm):
    # A cylinder taller than it is wide: the axial diameter must ignore the S extent.
    geometry = _geometry((20, 60, 64), (0.7, 0.9, 3.0))
    centre = lps_to_ras(geometry.index_to_lps(np.array([9.5, 29.3, 31.6])))
    tumor = _cylinder_along_s(geometry, centre, diameter_mm / 2, 45.0)
    result = measure_masks(np.ones_like(tumor), tumor, geometry)
    assert result.lesions[0].longest_axial_diameter_mm == pytest.approx(diameter_mm, abs=0.9)


def test_diameter_uses_the_longest_axis_of_an_ellipse():
    geometry = _geometry((3, 80, 80), (0.5, 0.5, 2.0))
    ras = _ras_of_voxels(geometry)
    centre = ras[1, 40, 40] + np.array([0.13, 0.21, 0.0])
    d = ras - centre
    # An ellipse with semi-axes 15 mm and 6 mm, rotated 30 degrees in the axial plane.
    angle = math.radians(30)
    u = d[..., 0] * math.cos(angle) + d[..., 1] * math.sin(angle)
    v = -d[..., 0] * math.sin(angle) + d[..., 1] * math.cos(angle)
    tumor = ((u / 15.0) ** 2 + (v / 6.0) ** 2 <= 1).astype(np.uint8)
    tumor[[0, 2]] = 0
    result = measure_masks(np.ones_like(tumor), tumor, geometry)
    assert result.lesions[0].longest_axial_diameter_mm == pytest.approx(30.0, abs=0.5)


def test_a_single_voxel_lesion_measures_one_voxel():
    geometry = _geometry((5, 5, 5), (0.6, 0.8, 2.0))
    tumor = np.zeros((5, 5, 5), np.uint8)
    tumor[2, 2, 2] = 1
    result = measure_masks(tumor, tumor, geometry)
    assert result.lesions[0].longest_axial_diameter_mm == pytest.approx(0.8)
    assert result.lesions[0].volume_ml == pytest.approx(0.6 * 0.8 * 2.0 / 1000)


def test_flipped_direction_gives_the_same_volumes_and_the_true_ras_centroid():
    flipped = (-1.0, 0.0, 0.0, 0.0, -1.0, 0.0, 0.0, 0.0, -1.0)
    plain = _geometry((30, 40, 44), (0.9, 0.8, 1.5), origin=(10.0, 20.0, -50.0))
    mirror = _geometry((30, 40, 44), (0.9, 0.8, 1.5), origin=(50.0, 60.0, 0.0), direction=flipped)
    centre_ras = (-30.0, -40.0, -25.0)  # a point inside both grids
    for geometry in (plain, mirror):
        ras = _ras_of_voxels(geometry)
        assert ras[..., 0].min() < centre_ras[0] < ras[..., 0].max()
    results = []
    for geometry in (plain, mirror):
        tumor = _sphere(geometry, centre_ras, 8.0)
        liver = _sphere(geometry, centre_ras, 14.0)
        results.append(measure_masks(liver, tumor, geometry))
    for result in results:
        np.testing.assert_allclose(result.lesions[0].centroid_ras_mm, centre_ras, atol=0.3)
        assert result.tumor_volume_ml == pytest.approx(4 / 3 * math.pi * 8.0 ** 3 / 1000, rel=0.05)
        assert result.liver_volume_ml == pytest.approx(4 / 3 * math.pi * 14.0 ** 3 / 1000, rel=0.03)
    assert results[0].tumor_volume_ml == pytest.approx(results[1].tumor_volume_ml, rel=0.02)
    assert results[0].lesions[0].longest_axial_diameter_mm == pytest.approx(
        results[1].lesions[0].longest_axial_diameter_mm, abs=0.9)


def test_oblique_grid_whose_slices_run_along_another_array_axis():
    # Image axes: i -> R-L tilted by 20 degrees, j -> S (so the axial slices number along array
    # axis 1), k -> A-P tilted. The axial diameter of a cylinder standing along S is its width.
    a = math.radians(20)
    columns = np.array([[math.cos(a), math.sin(a), 0.0],   # i
                        [0.0, 0.0, 1.0],                   # j
                        [-math.sin(a), math.cos(a), 0.0]])  # k
    direction = tuple(columns.T.ravel())
    geometry = _geometry((50, 20, 50), (0.8, 3.0, 0.8), origin=(0.0, 0.0, 0.0), direction=direction)
    assert geometry.axial_array_axis() == 1
    ras = _ras_of_voxels(geometry)
    centre = ras[25, 10, 25] + np.array([0.17, 0.23, 0.0])
    tumor = _cylinder_along_s(geometry, centre, 12.0, 36.0)
    result = measure_masks(np.ones_like(tumor), tumor, geometry)
    assert result.lesions[0].longest_axial_diameter_mm == pytest.approx(24.0, abs=0.9)
    np.testing.assert_allclose(result.lesions[0].centroid_ras_mm, centre, atol=0.5)


def test_liver_volume_includes_tumor_and_tlvr_either_way():
    geometry = _geometry((10, 10, 10), (1.0, 2.0, 2.5))  # 5 mm^3 per voxel
    liver = np.zeros((10, 10, 10), np.uint8)
    liver[1:9, 1:9, 1:9] = 1                 # 512 voxels
    tumor = np.zeros_like(liver)
    tumor[2:4, 2:4, 2:4] = 1                 # 8 voxels, inside
    tumor[8:10, 8:10, 8:10] = 1              # 8 voxels, 1 inside the liver, 7 outside
    with_tumor = measure_masks(liver, tumor, geometry)
    without_tumor = measure_masks(liver & (tumor == 0), tumor, geometry)
    labelmap = measure_labelmap(compose_labelmap(liver, tumor), geometry)
    for result in (with_tumor, without_tumor, labelmap):
        assert result.liver_volume_ml == pytest.approx((512 + 7) * 0.005)
        assert result.tumor_volume_ml == pytest.approx(16 * 0.005)
        assert result.tlvr == pytest.approx(16 / 519)
        assert [lesion.voxel_count for lesion in result.lesions] == [8, 8]


def test_lesions_are_ordered_by_volume_with_mean_hu():
    geometry = _geometry((12, 12, 12), (1.0, 1.0, 1.0))
    tumor = np.zeros((12, 12, 12), np.uint8)
    tumor[1:3, 1:3, 1:3] = 1      # 8 voxels
    tumor[5:9, 5:9, 5:9] = 1      # 64 voxels
    tumor[10, 10:12, 0] = 1       # 2 voxels
    ct = np.full((12, 12, 12), 100, np.int16)
    ct[1:3, 1:3, 1:3] = -20
    ct[5:9, 5:9, 5:7] = 30
    ct[5:9, 5:9, 7:9] = 50
    result = measure_masks(np.ones_like(tumor), tumor, geometry, ct_hu=ct)
    assert [lesion.id for lesion in result.lesions] == [1, 2, 3]
    assert [lesion.voxel_count for lesion in result.lesions] == [64, 8, 2]
    assert [lesion.mean_hu for lesion in result.lesions] == pytest.approx([40.0, -20.0, 100.0])
    assert result.lesions[2].centroid_ras_mm == pytest.approx((0.0, -10.5, 10.0))


def test_empty_tumor():
    geometry = _geometry((4, 4, 4), (1.0, 1.0, 2.0))
    liver = np.ones((4, 4, 4), np.uint8)
    result = measure_masks(liver, np.zeros_like(liver), geometry)
    assert result.tumor_volume_ml == 0.0 and result.tlvr == 0.0 and result.lesions == []
    assert result.liver_volume_ml == pytest.approx(64 * 0.002)


def test_empty_liver():
    geometry = _geometry((4, 4, 4), (1.0, 1.0, 1.0))
    empty = np.zeros((4, 4, 4), np.uint8)
    result = measure_labelmap(empty, geometry)
    assert result.liver_volume_ml == 0.0 and result.tumor_volume_ml == 0.0 and result.tlvr is None
    tumor = empty.copy()
    tumor[1, 1, 1] = 1
    only_tumor = measure_masks(empty, tumor, geometry)  # a tumor is liver too
    assert only_tumor.liver_volume_ml == pytest.approx(0.001) and only_tumor.tlvr == pytest.approx(1.0)


def test_custom_labels():
    geometry = _geometry((3, 3, 3), (1.0, 1.0, 1.0))
    labelmap = np.zeros((3, 3, 3), np.uint8)
    labelmap[0] = 5
    labelmap[1, 1, 1] = 7
    result = measure_labelmap(labelmap, geometry, liver_label=5, tumor_label=7)
    assert result.liver_volume_ml == pytest.approx(0.010) and result.tumor_volume_ml == pytest.approx(0.001)


def test_to_dict_is_json_ready_and_says_liver_includes_tumor():
    geometry = _geometry((6, 6, 6), (1.0, 1.0, 1.0))
    tumor = np.zeros((6, 6, 6), np.uint8)
    tumor[2:4, 2:4, 2:4] = 1
    result = measure_masks(np.ones_like(tumor), tumor, geometry, ct_hu=np.zeros((6, 6, 6), np.int16))
    data = json.loads(json.dumps(result.to_dict()))
    assert data["liver_volume_includes_tumor"] is True
    assert {"liver_volume_ml", "tumor_volume_ml", "tlvr", "lesions", "units"} <= set(data)
    assert data["units"]["volume"] == "mL"
    assert data["lesions"][0]["id"] == 1 and data["lesions"][0]["voxel_count"] == 8
    assert set(data["lesions"][0]) == {"id", "volume_ml", "longest_axial_diameter_mm", "centroid_ras_mm",
                                       "mean_hu", "voxel_count"}
    assert data["lesions"][0]["centroid_ras_mm"] == pytest.approx([-2.5, -2.5, 2.5])
    assert json.loads(json.dumps(Measurements(0.0, 0.0, None, []).to_dict()))["tlvr"] is None


def test_write_lesions_csv(tmp_path):
    measurements = Measurements(10.0, 1.5, 0.15, [
        Lesion(1, 1.25, 14.321, (1.0, -2.5, 30.25), 45.67, 1250),
        Lesion(2, 0.25, 5.0, (-4.0, 0.0, 12.0), None, 250),
    ])
    path = tmp_path / "lesions.csv"
    write_lesions_csv(path, measurements)
    with open(path, newline="") as handle:
        rows = list(csv.reader(handle))
    assert tuple(rows[0]) == CSV_HEADER == ("lesion_id", "volume_ml", "longest_axial_diameter_mm",
                                            "centroid_r_mm", "centroid_a_mm", "centroid_s_mm", "mean_hu")
    assert rows[1] == ["1", "1.2500", "14.32", "1.00", "-2.50", "30.25", "45.7"]
    assert rows[2][0] == "2" and rows[2][-1] == ""
    assert len(rows) == 3
    write_lesions_csv(path, Measurements(0.0, 0.0, None, []))
    assert path.read_text().strip() == ",".join(CSV_HEADER)


def test_rejects_arrays_off_the_grid():
    geometry = _geometry((4, 5, 6), (1.0, 1.0, 1.0))
    good = np.zeros((4, 5, 6), np.uint8)
    with pytest.raises(ValueError, match="does not match the grid"):
        measure_masks(good, np.zeros((6, 5, 4), np.uint8), geometry)
    with pytest.raises(ValueError, match="CT"):
        measure_masks(good, good, geometry, ct_hu=np.zeros((4, 5, 5)))
    with pytest.raises(ValueError):
        measure_labelmap(np.zeros((4, 5)), geometry)
