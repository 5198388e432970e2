"""One-click lesion edits (LiverTumorSegLib.edit): add the lesion at a clicked point, remove the
tumor component under it, and nothing else changes.

On the synthetic phantom with the tiny models (the tumor "model" flags voxels darker than
25-35 HU, so it sees the phantom's -60 HU lesion and nothing in a brighter one, which then goes
the HU fallback's way); on the real upper-abdomen CT with synthetic tumours inserted into its
liver and the embedded models (Dice against the inserted tumour)."""

from __future__ import annotations

import numpy as np
import pytest
import SimpleITK as sitk
from scipy import ndimage

from LiverTumorSegLib import edit
from LiverTumorSegLib.errors import LiverTumorSegError
from LiverTumorSegLib.geometry import Geometry, lps_to_ras
from LiverTumorSegLib.models.registry import ModelRegistry, embedded_models_dir

LESION_ML = 4.0 / 3.0 * np.pi * 10.0 ** 3 / 1000.0  # the phantom's lesion, radius 10 mm


@pytest.fixture(scope="module")
def editor(tiny_models_dir):
    return edit.LesionEditor(registry=ModelRegistry([tiny_models_dir]))


def _image(array: np.ndarray, like: sitk.Image) -> sitk.Image:
    image = sitk.GetImageFromArray(np.ascontiguousarray(array))
    image.CopyInformation(like)
    return image


def _case(helpers, direction="LPS", lesion_hu=None):
    """(ct, labelmap that misses the lesion, the true labels) of the phantom on a grid."""
    kw = {} if lesion_hu is None else {"lesion_hu": lesion_hu}
    ct = helpers.phantom_ct(direction=helpers.DIRECTIONS[direction], **kw)
    truth = helpers.analytic_labels_like(ct)
    missed = np.where(truth > 0, 1, 0).astype(np.uint8)
    return ct, _image(missed, ct), truth


def _ras(lps) -> list:
    return [float(v) for v in lps_to_ras(lps)]


def _index(image: sitk.Image, point_lps) -> tuple:
    return tuple(image.TransformPhysicalPointToIndex(tuple(float(v) for v in point_lps)))[::-1]


def _labels(image: sitk.Image) -> np.ndarray:
    return sitk.GetArrayFromImage(image)


def _assert_only_the_lesion_changed(before: np.ndarray, result: edit.LesionEdit, new_label: int) -> np.ndarray:
    """Every changed voxel is in ``result.changed`` (inside its box) and now has ``new_label``;
    nothing else moved. Returns the changed voxels on the whole grid."""
    after = _labels(result.labelmap)
    diff = after != before
    reported = np.zeros_like(diff)
    reported[result.box] = result.changed
    np.testing.assert_array_equal(diff, reported)
    assert np.all(after[diff] == new_label)
    assert result.voxels_changed == int(diff.sum())
    return diff


@pytest.mark.parametrize("direction", ["LPS", "RAS", "oblique"])
def test_add_draws_the_missed_lesion_and_changes_nothing_else(helpers, editor, direction):
    ct, labelmap, truth = _case(helpers, direction)
    before = _labels(labelmap)
    result = edit.add_lesion(ct, labelmap, _ras(helpers.LESION_CENTER_LPS), editor=editor)
    diff = _assert_only_the_lesion_changed(before, result, 2)
    assert result.action == "add" and result.method == "model"
    assert helpers.dice(diff, truth == 2) > 0.8
    # the lesion's own measurements: volume, centroid at the click, diameter about 20 mm
    assert result.lesion.volume_ml == pytest.approx(LESION_ML, rel=0.3)
    np.testing.assert_allclose(result.lesion.centroid_ras_mm, _ras(helpers.LESION_CENTER_LPS), atol=3.5)
    assert 14.0 < result.lesion.longest_axial_diameter_mm < 26.0
    assert result.lesion.mean_hu < 0
    assert result.max_probability_near_click > 0.9
    # the tumor is part of the liver, the labelmap stays on the CT's grid
    assert Geometry.of(result.labelmap).matches(Geometry.of(ct))
    assert result.labelmap.GetPixelID() == sitk.sitkUInt8


def test_other_lesions_and_the_inputs_are_untouched(helpers, editor):
    ct, labelmap, truth = _case(helpers)
    labels = _labels(labelmap)
    other = np.zeros(labels.shape, bool)  # a lesion elsewhere in the liver, already found
    k, j, i = _index(ct, (-30.0, -5.0, -20.0))  # 30 mm from the phantom's lesion
    other[k - 1:k + 2, j - 1:j + 2, i - 1:i + 2] = True
    assert np.all(labels[other] == 1)
    labels[other] = 2
    labelmap = _image(labels, ct)
    ct_before, labels_before = sitk.GetArrayFromImage(ct), sitk.GetArrayFromImage(labelmap)
    result = editor.add(ct, labelmap, _ras(helpers.LESION_CENTER_LPS))
    after = _labels(result.labelmap)
    assert np.all(after[other] == 2)
    _assert_only_the_lesion_changed(labels_before, result, 2)
    np.testing.assert_array_equal(sitk.GetArrayFromImage(ct), ct_before)
    np.testing.assert_array_equal(sitk.GetArrayFromImage(labelmap), labels_before)


def test_a_click_off_centre_still_finds_the_lesion(helpers, editor):
    ct, labelmap, truth = _case(helpers)
    point = np.asarray(helpers.LESION_CENTER_LPS) + np.array([6.0, -4.0, 3.0])  # within the 10 mm radius
    result = editor.add(ct, labelmap, _ras(point))
    assert helpers.dice(_labels(result.labelmap) == 2, truth == 2) > 0.8


class _UnsureOnHalf(edit.LesionEditor):
    """An ensemble unsure of the lesion (0.35) that sees only the half of it at i below the click."""

    def __init__(self, truth_image: sitk.Image, click_i: int, **kw) -> None:
        super().__init__(**kw)
        self.truth_image, self.click_i = truth_image, click_i

    def probability(self, ct_crop: sitk.Image, region: np.ndarray) -> np.ndarray:
        from LiverTumorSegLib.preprocess import resample_to

        truth = sitk.GetArrayFromImage(resample_to(self.truth_image, ct_crop, sitk.sitkNearestNeighbor, 0)) == 2
        origin_i = int(round(ct_crop.TransformPhysicalPointToContinuousIndex(
            self.truth_image.TransformIndexToPhysicalPoint((self.click_i, 0, 0)))[0]))
        half = truth.copy()
        half[:, :, origin_i + 1:] = False
        return np.where(half, 0.35, 0.02).astype(np.float32)


@pytest.mark.parametrize("lesion_hu, expected", [(60, "hu_region"), (160, "model")])
def test_an_unsure_ensemble_gives_way_to_the_lesion_of_like_density_that_holds_its_part(
        helpers, tiny_models_dir, lesion_hu, expected):
    ct, labelmap, truth = _case(helpers, lesion_hu=lesion_hu)  # 160 HU: as dense as the liver, nothing to grow
    truth_image = _image(truth, ct)
    click_i = _index(ct, helpers.LESION_CENTER_LPS)[2]
    unsure = _UnsureOnHalf(truth_image, click_i, registry=ModelRegistry([tiny_models_dir]))
    result = unsure.add(ct, labelmap, _ras(helpers.LESION_CENTER_LPS))
    assert result.method == expected and 0.3 < result.max_probability_near_click < edit.UNSURE_BELOW
    if expected == "hu_region":  # the whole lesion, not the model's half
        assert helpers.dice(_labels(result.labelmap) == 2, truth == 2) > 0.8


def test_a_lesion_larger_than_the_first_cube_is_run_again_on_a_larger_one(helpers, tiny_models_dir):
    ct, labelmap, truth = _case(helpers)
    small_cube = edit.LesionEditor(registry=ModelRegistry([tiny_models_dir]), patch_mm=15.0)
    result = small_cube.add(ct, labelmap, _ras(helpers.LESION_CENTER_LPS))
    assert helpers.dice(_labels(result.labelmap) == 2, truth == 2) > 0.8
    assert small_cube.patch_mm == 15.0


def test_the_model_seeing_nothing_falls_back_to_the_ct_around_the_click(helpers, editor):
    # A hyperdense lesion (260 HU in a 160 HU liver): the tiny tumor model only sees dark voxels.
    ct, labelmap, truth = _case(helpers, lesion_hu=260)
    before = _labels(labelmap)
    result = editor.add(ct, labelmap, _ras(helpers.LESION_CENTER_LPS))
    assert result.method == "hu_region"
    assert result.max_probability_near_click < editor.seed_threshold
    diff = _assert_only_the_lesion_changed(before, result, 2)
    assert helpers.dice(diff, truth == 2) > 0.8


def test_a_click_on_plain_liver_is_refused(helpers, editor):
    ct, labelmap, _ = _case(helpers)
    liver_point = np.asarray(helpers.LIVER_CENTER_LPS) + np.array([-15.0, 0.0, -20.0])  # far from the lesion
    with pytest.raises(LiverTumorSegError, match="that of the liver"):
        editor.add(ct, labelmap, _ras(liver_point))


@pytest.mark.parametrize("point_lps, expect", [
    ((45.0, 0.0, 0.0), "on background outside the liver"),  # in the body, left of the liver
    ((0.0, 60.0, 0.0), "on background outside the body"),  # air behind the body
    ((0.0, 0.0, 500.0), "outside the image"),
])
def test_add_outside_the_liver_or_the_image_is_refused(helpers, editor, point_lps, expect):
    ct, labelmap, _ = _case(helpers)
    with pytest.raises(LiverTumorSegError, match=expect):
        editor.add(ct, labelmap, _ras(point_lps))


def test_bad_labelmaps_are_refused(helpers, editor):
    ct, labelmap, _ = _case(helpers)
    other_grid = helpers.phantom_ct(size=(50, 44, 30))
    with pytest.raises(LiverTumorSegError, match="not on the CT's grid"):
        editor.add(ct, sitk.Cast(other_grid > 100, sitk.sitkUInt8), _ras(helpers.LESION_CENTER_LPS))
    threes = _image(_labels(labelmap) * 3, ct)
    with pytest.raises(LiverTumorSegError, match="other than 0"):
        editor.add(ct, threes, _ras(helpers.LESION_CENTER_LPS))
    empty = _image(np.zeros(_labels(labelmap).shape, np.uint8), ct)
    with pytest.raises(LiverTumorSegError, match="no liver"):
        editor.add(ct, empty, _ras(helpers.LESION_CENTER_LPS))
    with pytest.raises(LiverTumorSegError, match="three finite"):
        editor.add(ct, labelmap, [1.0, float("nan"), 2.0])


def test_remove_takes_exactly_the_clicked_lesion(helpers):
    ct = helpers.phantom_ct()
    truth = helpers.analytic_labels_like(ct)
    labels = truth.copy()
    false_positive = np.zeros(labels.shape, bool)
    spacing_kji = ct.GetSpacing()[::-1]
    liver = np.argwhere((truth == 1) & (ndimage.distance_transform_edt(truth != 2, sampling=spacing_kji) > 20))
    corner = liver[len(liver) // 3]
    false_positive[tuple(slice(c, c + 2) for c in corner)] = True
    false_positive &= truth == 1
    labels[false_positive] = 2
    labelmap = _image(labels, ct)
    labels_before = _labels(labelmap)
    point = _ras(Geometry.of(ct).index_to_lps(np.asarray(corner, float)))
    result = edit.remove_lesion(ct, labelmap, point)
    np.testing.assert_array_equal(_labels(result.labelmap), truth)  # exactly the false positive went
    assert result.action == "remove" and result.voxels_changed == int(false_positive.sum())
    _assert_only_the_lesion_changed(labels_before, result, 1)
    assert result.lesion.volume_ml == pytest.approx(false_positive.sum() * Geometry.of(ct).voxel_volume_ml)
    np.testing.assert_array_equal(_labels(labelmap), labels_before)  # the input is untouched
    # removing the true lesion leaves a liver without tumor
    gone = edit.remove_lesion(ct, result.labelmap, _ras(helpers.LESION_CENTER_LPS))
    np.testing.assert_array_equal(_labels(gone.labelmap), np.where(truth > 0, 1, 0))


@pytest.mark.parametrize("point_lps, expect", [
    ((-15.0, 0.0, -25.0), "on the liver, not on a tumor"),
    ((45.0, 0.0, 0.0), "on background"),
    ((0.0, 0.0, -500.0), "outside the image"),
])
def test_remove_where_there_is_no_tumor_is_refused(helpers, point_lps, expect):
    ct = helpers.phantom_ct()
    labelmap = _image(helpers.analytic_labels_like(ct), ct)
    with pytest.raises(LiverTumorSegError, match=expect):
        edit.remove_lesion(ct, labelmap, _ras(point_lps))


def test_summary_is_json_ready(helpers, editor):
    import json

    ct, labelmap, _ = _case(helpers)
    summary = editor.add(ct, labelmap, _ras(helpers.LESION_CENTER_LPS)).summary()
    assert json.loads(json.dumps(summary))["lesion"]["volume_ml"] == pytest.approx(LESION_ML, rel=0.3)


# ---------------------------------------------------------------------------------------------
# Real CT with synthetic tumours and the embedded models
# ---------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def real_case(shared_data):
    from LiverTumorSegLib.io.volume import load_volume

    folder = shared_data("ts_upper_abdomen_3mm")
    ct = load_volume(folder / "ct.nii.gz").image
    liver = sitk.Cast(sitk.ReadImage(str(folder / "liver_reference.nii.gz")), sitk.sitkUInt8)
    return ct, liver


@pytest.fixture(scope="module")
def real_editor():
    return edit.LesionEditor(registry=ModelRegistry([embedded_models_dir()]))


# (insertion, seed): classic tumours 10-60 mm (hypo- and hyperdense), and hypervascular lesions in
# the arterial phase, which the tumor ensemble mostly does not see (the HU fallback draws them).
REAL_CASES = [("classic", 5), ("hypervascular_arterial", 1)]


@pytest.mark.parametrize("kind, seed", REAL_CASES)
def test_real_ct_each_missed_lesion_is_drawn_with_one_click(real_case, real_editor, kind, seed):
    from LiverTumorSegLib.develop.synth.tumors import insert_tumor_kind, insert_tumors_image

    ct, liver = real_case
    if kind == "classic":
        ct_t, truth_image, infos = insert_tumors_image(ct, liver, seed=seed, n_tumors=3, size_range_mm=(10.0, 60.0))
    else:
        ct_t, truth_image, infos = insert_tumor_kind(ct, liver, seed=seed, kind=kind)
    truth = sitk.GetArrayFromImage(truth_image)
    lesions, _ = ndimage.label(truth == 2, structure=np.ones((3, 3, 3)))
    before = sitk.GetArrayFromImage(liver)
    dices = []
    for info in infos:
        if info["diameter_mm"] < 10.0:
            continue
        reference = lesions == lesions[info["center_kji"]]
        result = real_editor.add(ct_t, liver, _ras(info["center_lps_mm"]))  # the labelmap misses every tumour
        diff = _assert_only_the_lesion_changed(before, result, 2)
        dice = 2.0 * np.count_nonzero(diff & reference) / (diff.sum() + reference.sum())
        dices.append((round(info["diameter_mm"]), info["contrast"], result.method, round(dice, 3)))
    assert dices
    assert all(d[-1] >= 0.7 for d in dices), dices
    np.testing.assert_array_equal(sitk.GetArrayFromImage(liver), before)


def test_real_ct_a_false_positive_is_removed_exactly(real_case):
    ct, liver = real_case
    labels = sitk.GetArrayFromImage(liver)
    deep = ndimage.distance_transform_edt(labels) > 12.0 / 3.0
    center = np.argwhere(deep)[len(np.argwhere(deep)) // 2]
    false_positive = np.zeros(labels.shape, bool)
    false_positive[tuple(slice(c - 1, c + 2) for c in center)] = True
    with_fp = labels.copy()
    with_fp[false_positive] = 2
    labelmap = _image(with_fp, ct)
    result = edit.remove_lesion(ct, labelmap, _ras(Geometry.of(ct).index_to_lps(center.astype(float))))
    np.testing.assert_array_equal(_labels(result.labelmap), labels)
    assert result.voxels_changed == 27


# ---------------------------------------------------------------------------------------------
# Reading the labelmap to edit
# ---------------------------------------------------------------------------------------------

@pytest.mark.parametrize("direction", ["LPS", "oblique"])
def test_load_labelmap_reads_seg_nrrd_and_nifti_also_cropped_like_slicer_saves_them(helpers, tmp_path, direction):
    from LiverTumorSegLib.io.writers import write_seg_nrrd
    from LiverTumorSegLib.stages.crop import crop_image

    ct = helpers.phantom_ct(direction=helpers.DIRECTIONS[direction])
    truth = helpers.analytic_labels_like(ct)
    full = _image(truth, ct)
    box = tuple(slice(int(a.min()), int(a.max()) + 1) for a in np.nonzero(truth))  # cropped to the segments
    cropped = crop_image(full, box)
    for name, image in (("full", full), ("cropped", cropped)):
        seg = tmp_path / f"{name}.seg.nrrd"
        write_seg_nrrd(_labels(image), Geometry.of(image), seg)
        nifti = tmp_path / f"{name}.nii.gz"
        sitk.WriteImage(image, str(nifti))
        for path in (seg, nifti):
            loaded = edit.load_labelmap(path, ct)
            assert Geometry.of(loaded).matches(Geometry.of(ct)), path
            np.testing.assert_array_equal(_labels(loaded), truth, err_msg=str(path))

    shifted = sitk.Image(cropped)
    shifted.SetOrigin(tuple(np.asarray(cropped.GetOrigin()) + 0.5 * np.asarray(cropped.GetSpacing()[0])))
    sitk.WriteImage(shifted, str(tmp_path / "shifted.nii.gz"))
    with pytest.raises(LiverTumorSegError, match="shifted"):
        edit.load_labelmap(tmp_path / "shifted.nii.gz", ct)
    fours = _image((truth * 2).astype(np.uint8), ct)
    sitk.WriteImage(fours, str(tmp_path / "fours.nii.gz"))
    with pytest.raises(LiverTumorSegError, match="other than 0"):
        edit.load_labelmap(tmp_path / "fours.nii.gz", ct)
    (tmp_path / "broken.seg.nrrd").write_text("not a segmentation\n")
    with pytest.raises(LiverTumorSegError, match="cannot be read"):
        edit.load_labelmap(tmp_path / "broken.seg.nrrd", ct)


@pytest.mark.parametrize("along", [0, 1, 2])
def test_the_search_region_on_a_box_is_the_pipelines_on_the_whole_volume(helpers, along):
    from LiverTumorSegLib.stages.liver import tumor_search_region

    liver, tunnel = helpers.pierced_cube(24, slice(3, 21), slice(10, 14), along)  # a vessel through the liver
    liver[8:12, 8:12, 8:12] = 0  # and a cavity enclosed in 3-D
    labels = liver.copy()
    labels[14:17, 5:8, 5:8] = 2  # a tumor at the edge counts as liver
    whole = tumor_search_region(labels > 0, along).astype(bool)
    for axial in (0, 1, 2):
        expected = tumor_search_region(labels > 0, axial).astype(bool)
        for box in [(slice(2, 12), slice(5, 20), slice(0, 24)), (slice(9, 13),) * 3, (slice(0, 24),) * 3]:
            np.testing.assert_array_equal(edit._search_region(labels, box, axial), expected[box])
    inside = list(tunnel)
    inside[along] = slice(3, 21)
    assert whole[tuple(inside)].all()  # the tunnel through the liver is an in-slice hole across its own axis


@pytest.fixture(scope="module")
def held_out_case(shared_data):
    """The real CT the embedded tumor models never saw (DICOM, 0.98 x 0.98 x 2 mm) and its liver."""
    from LiverTumorSegLib.io.volume import load_volume

    folder = shared_data("ts_dicom_upper_abdomen")
    ct = load_volume(folder / "dicom").image
    liver = sitk.Cast(sitk.ReadImage(str(folder / "liver_reference.nii.gz")) > 0, sitk.sitkUInt8)
    liver.CopyInformation(ct)
    return ct, liver


def test_held_out_real_ct_lesions_are_drawn_and_a_lesion_nobody_can_see_is_refused(held_out_case, real_editor):
    from LiverTumorSegLib.develop.synth.tumors import insert_tumors_image

    ct, liver = held_out_case
    before = sitk.GetArrayFromImage(liver)
    ct_t, truth_image, infos = insert_tumors_image(ct, liver, seed=4, n_tumors=3, size_range_mm=(10.0, 30.0))
    lesions, _ = ndimage.label(sitk.GetArrayFromImage(truth_image) == 2, structure=np.ones((3, 3, 3)))
    dices = []
    for info in infos:
        reference = lesions == lesions[info["center_kji"]]
        result = real_editor.add(ct_t, liver, _ras(info["center_lps_mm"]))
        diff = _assert_only_the_lesion_changed(before, result, 2)
        dices.append(round(2.0 * np.count_nonzero(diff & reference) / (diff.sum() + reference.sum()), 3))
    assert len(dices) == 3 and min(dices) >= 0.7, dices
    # A 14 mm lesion 26 HU below the liver's median, placed where the liver itself is 20 HU darker:
    # the models see nothing and its density runs on into the liver. Refused, not painted over it.
    ct_t, _, infos = insert_tumors_image(ct, liver, seed=5, n_tumors=3, size_range_mm=(10.0, 30.0))
    with pytest.raises(LiverTumorSegError, match="spreads into the liver"):
        real_editor.add(ct_t, liver, _ras(infos[2]["center_lps_mm"]))


def test_add_gives_members_that_take_the_parenchyma_map_the_map_around_the_click(helpers, tmp_path):
    """A member that sees only the map (channel 1 above 0.5): the lesion 50 HU below the liver is
    drawn by the model path only if the editor computed the map of the cube around the click."""
    member = helpers.write_map_member(tmp_path)
    editor = edit.LesionEditor(tumor_model=member, registry=ModelRegistry([tmp_path]))
    ct, labelmap, truth = _case(helpers, lesion_hu=110)
    result = edit.add_lesion(ct, labelmap, _ras(helpers.LESION_CENTER_LPS), editor=editor)
    diff = _assert_only_the_lesion_changed(_labels(labelmap), result, 2)
    assert result.method == "model"
    assert helpers.dice(diff, truth == 2) > 0.8


def test_a_weakly_seen_small_lesion_is_drawn_at_its_edge_not_at_the_faint_halo():
    """A 12 mm lesion at 3 mm voxels that the model sees at 0.6 with a wide faint halo: the
    lesion's HU comes from its core relative to what the model detects (its seed-threshold
    mask), not from a quarter of the halo, which would put the edge a voxel out (twice the volume)."""
    shape = (24, 24, 24)
    spacing = (3.0, 3.0, 3.0)
    grid = np.indices(shape).astype(np.float32)
    distance = np.sqrt(((grid - 12.0) ** 2).sum(axis=0)) * 3.0  # mm from the centre
    lesion = distance <= 6.0
    rng = np.random.default_rng(0)
    hu = np.where(lesion, 160.0, 100.0) + rng.normal(0, 4, shape)
    hu = ndimage.gaussian_filter(hu, 0.5)
    probability = (0.62 * np.exp(-(distance / 9.0) ** 2)).astype(np.float32)  # a halo well past the lesion
    allowed = np.ones(shape, bool)
    liver = np.ones(shape, bool)
    region, best, _ = edit.grow_from_probability(probability, allowed, liver, hu, (12, 12, 12), spacing)
    assert best == pytest.approx(0.62, abs=0.01)
    dice = 2 * np.count_nonzero(region & lesion) / (region.sum() + lesion.sum())
    assert dice >= 0.8, (int(region.sum()), int(lesion.sum()), dice)


def test_without_the_model_the_lesion_is_grown_from_the_ct(helpers):
    """``use_model=False`` (3D Slicer without PyTorch): the HU path alone, the same refusals."""
    editor = edit.LesionEditor(use_model=False)
    assert not editor.uses_model and editor.model_summaries() == []
    ct, labelmap, truth = _case(helpers)
    result = editor.add(ct, labelmap, _ras(helpers.LESION_CENTER_LPS))
    assert result.method == "hu_region" and result.max_probability_near_click is None
    diff = _assert_only_the_lesion_changed(_labels(labelmap), result, 2)
    assert helpers.dice(diff, truth == 2) > 0.8
    assert result.summary()["max_probability_near_click"] is None
    with pytest.raises(LiverTumorSegError, match="outside the liver"):
        editor.add(ct, labelmap, _ras((40.0, 30.0, 0.0)))
