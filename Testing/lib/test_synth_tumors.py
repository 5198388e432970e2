"""Tests of LiverTumorSegLib.develop.synth.tumors: synthetic tumours land inside the liver, away from
vessels, with the sizes and contrasts asked, blended edges, the inputs untouched; the image
wrapper keeps geometry and pixel type; it works on a real CT's liver."""

from __future__ import annotations

import numpy as np
import pytest
import SimpleITK as sitk
from scipy import ndimage

from LiverTumorSegLib import LIVER_LABEL, TUMOR_LABEL
from LiverTumorSegLib.errors import LiverTumorSegError
from LiverTumorSegLib.develop.synth.tumors import insert_tumors, insert_tumors_image

SPACING = (2.0, 1.5, 1.5)  # (k, j, i) mm
LIVER_HU = 100.0
VESSEL_HU = 190.0


@pytest.fixture(scope="module")
def liver_case():
    """A noisy ellipsoidal 'liver' (~100 HU) in soft tissue, crossed by a bright vessel."""
    shape = (48, 96, 96)
    k, j, i = np.meshgrid(*[np.arange(n) * s for n, s in zip(shape, SPACING)], indexing="ij", sparse=True)
    center = [n * s / 2 for n, s in zip(shape, SPACING)]
    rho2 = ((k - center[0]) / 42.0) ** 2 + ((j - center[1]) / 66.0) ** 2 + ((i - center[2]) / 66.0) ** 2
    liver = (rho2 <= 1.0).astype(np.uint8)
    rng = np.random.default_rng(11)
    ct = np.where(liver > 0, LIVER_HU, 40.0) + rng.normal(0.0, 10.0, shape)
    vessel = ((j - center[1]) ** 2 + (k - center[0]) ** 2 <= 4.0 ** 2) & (liver > 0)
    ct[vessel] = VESSEL_HU + rng.normal(0.0, 10.0, int(vessel.sum()))
    return ct.astype(np.int16), liver, vessel


def run(case, seed: int = 0, n: int = 4, **kw):
    ct, liver, _ = case
    return insert_tumors(ct, liver, SPACING, np.random.default_rng(seed), n, **kw)


def components_of(mask: np.ndarray, infos):
    """Each tumour's own voxels: the connected component holding its centre."""
    labelled, _ = ndimage.label(mask)
    return [labelled == labelled[tuple(info["center_kji"])] for info in infos]


def test_inputs_are_not_modified_and_results_are_new_arrays(liver_case):
    ct, liver, _ = liver_case
    ct_before, liver_before = ct.copy(), liver.copy()
    new_ct, mask, infos = run(liver_case)
    np.testing.assert_array_equal(ct, ct_before)
    np.testing.assert_array_equal(liver, liver_before)
    assert new_ct.dtype == np.float32 and mask.dtype == np.uint8 and mask.shape == ct.shape
    assert not np.shares_memory(new_ct, ct)
    assert len(infos) == 4 and mask.any()


def test_same_seed_gives_the_same_tumours(liver_case):
    first, second, other = run(liver_case, seed=5), run(liver_case, seed=5), run(liver_case, seed=6)
    np.testing.assert_array_equal(first[0], second[0])
    np.testing.assert_array_equal(first[1], second[1])
    assert first[2] == second[2]
    assert not np.array_equal(first[1], other[1])


def test_tumours_and_every_changed_voxel_lie_inside_the_liver(liver_case):
    ct, liver, _ = liver_case
    for seed in range(4):
        new_ct, mask, infos = run(liver_case, seed=seed, n=5)
        changed = new_ct != ct.astype(np.float32)
        assert not (changed & (liver == 0)).any()
        assert not (ndimage.binary_dilation(mask > 0) & (liver == 0)).any()
        for info, own in zip(infos, components_of(mask, infos)):
            assert mask[tuple(info["center_kji"])] == 1
            assert own.sum() == info["n_voxels"]
            assert info["volume_ml"] == pytest.approx(own.sum() * np.prod(SPACING) / 1000.0)


def test_hypodense_tumours_are_darker_than_the_patients_own_liver(liver_case):
    ct, liver, _ = liver_case
    for offset in (0, 60):  # the contrast follows the liver measured in this CT
        shifted = (ct + np.where(liver > 0, offset, 0)).astype(np.int16)
        new_ct, mask, infos = insert_tumors(shifted, liver, SPACING, np.random.default_rng(1), 4,
                                            size_range_mm=(10.0, 30.0), hyper_fraction=0.0)
        assert infos and all(info["contrast"] == "hypo" for info in infos)
        for info, own in zip(infos, components_of(mask, infos)):
            assert info["liver_median_hu"] == pytest.approx(LIVER_HU + offset, abs=3.0)
            assert -90.0 <= info["delta_hu"] <= -15.0
            assert new_ct[own].mean() < LIVER_HU + offset - 12.0


def test_hyperdense_tumours_are_brighter(liver_case):
    new_ct, mask, infos = run(liver_case, seed=2, n=3, size_range_mm=(10.0, 30.0), hyper_fraction=1.0)
    assert infos and all(info["contrast"] == "hyper" for info in infos)
    for own in components_of(mask, infos):
        assert new_ct[own].mean() > LIVER_HU + 10.0


def test_sizes_follow_the_requested_range(liver_case):
    diameters = []
    for seed in range(6):
        _, mask, infos = run(liver_case, seed=seed, n=3, size_range_mm=(4.0, 40.0))
        for info, own in zip(infos, components_of(mask, infos)):
            assert 3.0 <= info["diameter_mm"] <= 40.0
            diameters.append(info["diameter_mm"])
            if info["diameter_mm"] >= 12.0:  # equivalent-sphere diameter of the label, coarse voxels aside
                equivalent = (6.0 * own.sum() * np.prod(SPACING) / np.pi) ** (1.0 / 3.0)
                assert 0.6 * info["diameter_mm"] < equivalent < 1.4 * info["diameter_mm"]
    assert min(diameters) < 10.0 and max(diameters) > 20.0
    _, mask, infos = run(liver_case, seed=9, n=3, size_range_mm=(20.0, 20.0))
    assert all(info["diameter_mm"] == pytest.approx(20.0) for info in infos)


def test_small_tumours_stay_clear_of_vessels(liver_case):
    ct, liver, _ = liver_case
    ct = ct.copy()
    k, j, _ = np.meshgrid(*[np.arange(n) * s for n, s in zip(ct.shape, SPACING)], indexing="ij", sparse=True)
    lattice = ((np.mod(k, 14.0) - 7.0) ** 2 + (np.mod(j, 14.0) - 7.0) ** 2 <= 2.5 ** 2) & (liver > 0)
    ct[lattice] = VESSEL_HU
    hits = {True: 0, False: 0}
    for seed in range(4):
        for avoid in (True, False):
            _, mask, infos = insert_tumors(ct, liver, SPACING, np.random.default_rng(seed), 6,
                                           size_range_mm=(4.0, 9.0), avoid_vessels=avoid)
            assert infos
            hits[avoid] += int((mask.astype(bool) & lattice).sum())
    assert hits[True] == 0
    assert hits[False] > 0


def test_edges_blend_into_the_liver_and_texture_is_not_flat(liver_case):
    ct = np.full(liver_case[0].shape, LIVER_HU, dtype=np.int16)  # noise-free, to see the blend itself
    liver = liver_case[1]
    new_ct, mask, infos = insert_tumors(ct, liver, SPACING, np.random.default_rng(4), 1,
                                        size_range_mm=(25.0, 25.0), hyper_fraction=0.0)
    own = mask > 0
    rim = ndimage.binary_dilation(own, iterations=2) & ~own
    partial = rim & (new_ct < LIVER_HU - 1.0)
    assert partial.sum() > 0.3 * rim.sum(), "the edge should fade out, not stop"
    assert new_ct[own].std() > 2.0, "the tumour should carry a texture"
    depth = ndimage.distance_transform_edt(own)
    assert new_ct[depth >= 3].mean() < new_ct[rim].mean()


def test_liver_too_small_places_fewer_tumours(liver_case):
    ct = liver_case[0]
    tiny = np.zeros(ct.shape, dtype=np.uint8)
    tiny[20:24, 40:44, 40:44] = 1
    _, mask, infos = insert_tumors(ct, tiny, SPACING, np.random.default_rng(0), 3, size_range_mm=(30.0, 60.0))
    assert len(infos) < 3
    assert not (mask.astype(bool) & (tiny == 0)).any()


@pytest.mark.parametrize("kwargs, words", [
    (dict(liver=np.zeros((48, 96, 96), np.uint8)), "empty"),
    (dict(liver=np.ones((10, 10, 10), np.uint8)), "one shape"),
    (dict(spacing_kji=(0.0, 1.0, 1.0)), "spacing"),
    (dict(size_range_mm=(10.0, 5.0)), "size_range_mm"),
    (dict(hyper_fraction=1.5), "hyper_fraction"),
    (dict(n_tumors=-2), "n_tumors"),
])
def test_bad_inputs_raise_a_clear_error(liver_case, kwargs, words):
    ct, liver, _ = liver_case
    arguments = dict(ct_hu=ct, liver=liver, spacing_kji=SPACING, rng=np.random.default_rng(0), n_tumors=2)
    arguments.update(kwargs)
    with pytest.raises(LiverTumorSegError, match=words):
        insert_tumors(**arguments)


def _image(array: np.ndarray, like_spacing, origin, direction) -> sitk.Image:
    image = sitk.GetImageFromArray(array)
    image.SetSpacing(like_spacing)
    image.SetOrigin(origin)
    image.SetDirection(direction)
    return image


def test_image_wrapper_keeps_geometry_pixel_type_and_labels(liver_case):
    ct, liver, _ = liver_case
    spacing_xyz = tuple(reversed(SPACING))
    origin, direction = (12.5, -140.0, 300.0), (-1, 0, 0, 0, -1, 0, 0, 0, 1)  # RAS-stored, like NIfTI
    ct_image = _image(ct, spacing_xyz, origin, direction)
    liver_image = _image(liver, spacing_xyz, origin, direction)
    new_ct, labels, infos = insert_tumors_image(ct_image, liver_image, seed=3, n_tumors=3)
    for image in (new_ct, labels):
        assert image.GetSize() == ct_image.GetSize()
        np.testing.assert_allclose(image.GetSpacing(), spacing_xyz)
        np.testing.assert_allclose(image.GetOrigin(), origin)
        np.testing.assert_allclose(image.GetDirection(), direction)
    assert new_ct.GetPixelID() == sitk.sitkInt16 and labels.GetPixelID() == sitk.sitkUInt8
    label_array = sitk.GetArrayFromImage(labels)
    assert set(np.unique(label_array)) == {0, LIVER_LABEL, TUMOR_LABEL}
    np.testing.assert_array_equal(label_array > 0, liver > 0)
    for info in infos:
        index = labels.TransformPhysicalPointToIndex(info["center_lps_mm"])
        assert label_array[index[2], index[1], index[0]] == TUMOR_LABEL
    np.testing.assert_array_equal(sitk.GetArrayFromImage(ct_image), ct)  # input image untouched
    again = insert_tumors_image(ct_image, liver_image, seed=3, n_tumors=3)
    np.testing.assert_array_equal(sitk.GetArrayFromImage(again[0]), sitk.GetArrayFromImage(new_ct))


def test_image_wrapper_refuses_a_mask_on_another_grid(liver_case):
    ct, liver, _ = liver_case
    ct_image = _image(ct, (1.5, 1.5, 2.0), (0.0, 0.0, 0.0), (1, 0, 0, 0, 1, 0, 0, 0, 1))
    liver_image = _image(liver, (1.5, 1.5, 2.0), (5.0, 0.0, 0.0), (1, 0, 0, 0, 1, 0, 0, 0, 1))
    with pytest.raises(LiverTumorSegError, match="grid"):
        insert_tumors_image(ct_image, liver_image, seed=0, n_tumors=1)


def test_tumours_in_a_real_ct_liver(shared_data):
    folder = shared_data("ts_upper_abdomen_3mm")
    ct = sitk.ReadImage(str(folder / "ct.nii.gz"))
    liver = sitk.ReadImage(str(folder / "liver_reference.nii.gz"))
    liver.CopyInformation(ct)
    new_ct, labels, infos = insert_tumors_image(ct, liver, seed=0, n_tumors=4, hyper_fraction=0.0)
    assert len(infos) == 4
    before = sitk.GetArrayFromImage(ct)
    after = sitk.GetArrayFromImage(new_ct)
    label_array = sitk.GetArrayFromImage(labels)
    liver_array = sitk.GetArrayFromImage(liver) > 0
    assert new_ct.GetPixelID() == ct.GetPixelID()
    np.testing.assert_array_equal(after[~liver_array], before[~liver_array])
    tumor = label_array == TUMOR_LABEL
    assert tumor.any() and not (tumor & ~liver_array).any()
    liver_median = float(np.median(before[liver_array]))
    assert infos[0]["liver_median_hu"] == pytest.approx(liver_median, abs=3.0)  # native CT: ~47 HU
    assert after[tumor].mean() < liver_median - 10.0


# --- tumour kinds (recipes) ----------------------------------------------------------------------

from dataclasses import replace  # noqa: E402

from LiverTumorSegLib.develop.synth.tumors import TUMOR_KINDS, TumorRecipe, insert_tumor_kind  # noqa: E402


@pytest.fixture(scope="module")
def real_liver(shared_data):
    folder = shared_data("ts_upper_abdomen_3mm")
    ct = sitk.ReadImage(str(folder / "ct.nii.gz"))
    liver = sitk.ReadImage(str(folder / "liver_reference.nii.gz"))
    liver.CopyInformation(ct)
    return ct, liver


@pytest.mark.parametrize("kind", sorted(TUMOR_KINDS))
def test_every_kind_keeps_its_tumours_in_the_liver_label(real_liver, kind):
    ct, liver = real_liver
    new_ct, labels, infos = insert_tumor_kind(ct, liver, seed=3, kind=kind)
    recipe = TUMOR_KINDS[kind]
    label_array = sitk.GetArrayFromImage(labels)
    liver_array = sitk.GetArrayFromImage(liver) > 0
    assert infos and all(info["kind"] == kind for info in infos)
    assert (label_array == TUMOR_LABEL).any()
    assert not (liver_array & (label_array == 0)).any()  # the liver never shrinks; tumours are liver
    outside = (label_array > 0) & ~liver_array
    assert not (outside & (label_array != TUMOR_LABEL)).any()  # what grew is tumour
    if recipe.outside_mm == 0:
        assert not outside.any()
    else:  # a bulge stays near the surface: soft tissue in a 2 mm shell, beyond it fat only
        distance = ndimage.distance_transform_edt(~liver_array, sampling=ct.GetSpacing()[::-1])
        assert distance[outside].max(initial=0.0) <= recipe.outside_mm + 0.01
        before = sitk.GetArrayFromImage(ct)
        assert (before[outside] >= -200).all() and (before[outside] <= 200).all()
        smooth = ndimage.gaussian_filter(before.astype(np.float32), sigma=[1.0 / s for s in ct.GetSpacing()[::-1]],
                                         mode="nearest")
        assert (smooth[outside & (distance > 2.0)] <= -20.0).all()  # not into kidney, spleen or muscle
        to_bone = ndimage.distance_transform_edt(before <= 300, sampling=ct.GetSpacing()[::-1])
        assert to_bone[outside].min(initial=np.inf) >= 10.0 - 1e-6  # and not around a rib
    # the CT changes only in the liver and in a tumour's partial-volume edge just beyond it (up to
    # a diagonal of two to three of this CT's 3 mm voxels)
    changed = sitk.GetArrayFromImage(new_ct) != sitk.GetArrayFromImage(ct)
    to_tumour_mm = ndimage.distance_transform_edt(label_array != TUMOR_LABEL, sampling=ct.GetSpacing()[::-1])
    assert to_tumour_mm[changed & (label_array == 0)].max(initial=0.0) <= 9.0


def test_large_isodense_tumours_are_large_and_subtle(real_liver):
    ct, liver = real_liver
    found = []
    for seed in range(3):
        _, labels, infos = insert_tumor_kind(ct, liver, seed=seed, kind="large_isodense")
        found += infos
    biggest = max(info["diameter_mm"] for info in found)
    assert biggest >= 50.0
    for info in found:
        assert -40.0 <= info["delta_hu"] <= -8.0
    # iso- to mildly hypodense: the tumour's mean stays within 45 HU of the liver's median
    assert all(abs(info["mean_hu"] - info["liver_median_hu"]) < 45.0 for info in found)


def test_metastases_are_many_and_some_confluent(liver_case):
    ct, liver, _ = liver_case
    recipe = TUMOR_KINDS["metastases"]
    _, mask, infos = insert_tumors(ct, liver, SPACING, np.random.default_rng(4), 20, recipe=recipe)
    assert len(infos) >= 12
    confluent = [info for info in infos if info["confluent"]]
    assert confluent
    _, n_components = ndimage.label(mask, structure=np.ones((3, 3, 3)))
    assert n_components < len(infos)  # confluent lesions merge


def test_surface_lesions_bulge_the_outline(liver_case):
    ct, liver, _ = liver_case
    _, mask, infos = insert_tumors(ct, liver, SPACING, np.random.default_rng(2), 3, recipe=TUMOR_KINDS["surface"])
    assert infos and all(info["at_surface"] for info in infos)
    assert sum(info["outside_ml"] for info in infos) > 0.0
    assert (mask.astype(bool) & ~liver.astype(bool)).any()


def test_a_bulge_stays_clear_of_the_ribs(liver_case):
    """Bone (a rib along one side of the liver) keeps bulges 10 mm away: a lesion at the rib cage
    pushes the liver in rather than growing around the rib; elsewhere the outline still bulges."""
    ct, liver, _ = liver_case
    ribbed = ct.copy()
    outside = ndimage.distance_transform_edt(liver == 0, sampling=SPACING)
    rib = (outside > 4.0) & (outside < 9.0)
    rib[:, :, 48:] = False  # one side only
    ribbed[rib] = 700
    to_bone = ndimage.distance_transform_edt(~rib, sampling=SPACING)
    bulges = []
    for seed in range(4):
        _, mask, infos = insert_tumors(ribbed, liver, SPACING, np.random.default_rng(seed), 4,
                                       recipe=TUMOR_KINDS["surface"])
        bulge = mask.astype(bool) & (liver == 0)
        assert to_bone[bulge].min(initial=np.inf) >= 10.0 - 1e-6
        bulges.append(bulge)
    assert np.any(bulges, axis=0)[:, :, 48:].sum() > 50  # the side without a rib still bulges


def test_a_bulge_cut_by_its_neighbours_is_not_placed():
    """A tumour centred on the surface must keep its round shape outside the liver: where bone or
    air would cut off more than a sliver of it, it is not placed there (it is not poured into the
    gaps), while the same tumour with room to bulge is."""
    from LiverTumorSegLib.develop.synth.tumors import _TumorShape, _try_place

    spacing = np.array([1.0, 1.0, 1.0])
    liver = np.zeros((40, 40, 40), dtype=bool)
    liver[:, :, :20] = True
    shape = _TumorShape(radius=8.0, axes=np.ones(3), rotation=np.eye(3), distortion=0.0,
                        distortion_scale_mm=3.0, edge_mm=0.5)
    room = np.ones(liver.shape, dtype=np.float32)
    placed = _try_place(np.random.default_rng(0), shape, (20, 20, 16), liver, room, None, None, spacing)
    assert placed is not None and (placed[3] & ~liver[placed[0]]).any()
    walled = room.copy()
    walled[:, :, 20:] = 0.0  # bone or air right at the surface
    assert _try_place(np.random.default_rng(0), shape, (20, 20, 16), liver, walled, None, None, spacing) is None


def test_a_bulge_pushes_into_fat_not_into_a_solid_neighbour(liver_case):
    """Beside fat a surface lesion bulges out; beside a solid organ (soft tissue) it stays within
    the 2 mm shell of the liver's boundary."""
    ct, liver, _ = liver_case
    outside = ndimage.distance_transform_edt(liver == 0, sampling=SPACING)
    fatty = ct.copy()
    fatty[(outside > 0) & (np.arange(ct.shape[2]) >= 48)[None, None, :]] = -100  # fat on one side only
    reach = {True: [], False: []}
    for seed in range(4):
        _, mask, _ = insert_tumors(fatty, liver, SPACING, np.random.default_rng(seed), 4,
                                   recipe=TUMOR_KINDS["surface"])
        bulge = mask.astype(bool) & (liver == 0)
        for fat_side, columns in ((True, slice(48, None)), (False, slice(None, 48))):
            reach[fat_side].append(outside[:, :, columns][bulge[:, :, columns]].max(initial=0.0))
    assert max(reach[False]) <= 2.0 + 1e-6
    assert max(reach[True]) > 4.0


def test_classic_tumours_never_leave_the_liver(liver_case):
    ct, liver, _ = liver_case
    _, mask, infos = insert_tumors(ct, liver, SPACING, np.random.default_rng(9), 6, size_range_mm=(20.0, 60.0))
    assert infos and not (mask.astype(bool) & ~liver.astype(bool)).any()
    assert all(info["outside_ml"] == 0.0 for info in infos)


def test_calcifications_are_bright_specks(liver_case):
    ct, liver, _ = liver_case
    recipe = replace(TUMOR_KINDS["classic"], calcification_probability=1.0, size_range_mm=(25.0, 30.0),
                     hyper_fraction=0.0)
    new_ct, mask, infos = insert_tumors(ct, liver, SPACING, np.random.default_rng(1), 1, recipe=recipe)
    assert infos[0]["calcified"]
    assert new_ct[mask > 0].max() > LIVER_HU + 120.0


def test_hypervascular_kinds_follow_the_phase(liver_case):
    ct, liver, _ = liver_case
    _, _, arterial = insert_tumors(ct, liver, SPACING, np.random.default_rng(3), 3,
                                   recipe=TUMOR_KINDS["hypervascular_arterial"])
    _, _, washout = insert_tumors(ct, liver, SPACING, np.random.default_rng(3), 3,
                                  recipe=TUMOR_KINDS["hypervascular_washout"])
    assert arterial and all(info["delta_hu"] > 0 for info in arterial)
    assert washout and all(-30.0 <= info["delta_hu"] < 0 for info in washout)


def test_a_kinds_hyperdense_share_can_be_overridden(real_liver):
    ct, liver = real_liver
    _, _, recipe_own = insert_tumor_kind(ct, liver, seed=4, kind="small")
    _, _, all_bright = insert_tumor_kind(ct, liver, seed=4, kind="small", hyper_fraction=1.0)
    assert len(all_bright) == len(recipe_own) >= 2
    assert all(info["contrast"] == "hyper" and info["delta_hu"] > 0 for info in all_bright)
    assert any(info["contrast"] == "hypo" for info in recipe_own)  # the recipe's 15 % would not make them all bright


def test_recipe_and_kind_are_checked(real_liver):
    ct, liver = real_liver
    with pytest.raises(LiverTumorSegError, match="unknown tumour kind"):
        insert_tumor_kind(ct, liver, seed=0, kind="banana")
    with pytest.raises(LiverTumorSegError, match="outside_mm"):
        TumorRecipe(outside_mm=-1.0)
    with pytest.raises(LiverTumorSegError, match="count"):
        TumorRecipe(count=(3, 1))


def test_classic_tumours_keep_at_least_15_hu_of_contrast_while_subtle_kinds_go_lower(liver_case):
    ct, liver, _ = liver_case
    tiny = [info for seed in range(4)
            for info in insert_tumors(ct, liver, SPACING, np.random.default_rng(seed), 10, size_range_mm=(4.0, 6.0))[2]]
    assert len(tiny) >= 30 and all(abs(info["delta_hu"]) >= 15.0 for info in tiny)
    _, _, washout = insert_tumors(ct, liver, SPACING, np.random.default_rng(7), 6,
                                  recipe=replace(TUMOR_KINDS["hypervascular_washout"], size_range_mm=(15.0, 25.0),
                                                 hypo_delta_hu=(8.0, 12.0)))
    assert washout and all(8.0 <= abs(info["delta_hu"]) <= 12.0 for info in washout)


@pytest.fixture(scope="module")
def notched_liver():
    """An ellipsoidal 'liver' with a notch in fat cut into one side along the whole axial extent
    (a hilum): the CT, the liver and the notch."""
    shape = (40, 96, 96)
    k, j, i = np.meshgrid(*[np.arange(n) * s for n, s in zip(shape, SPACING)], indexing="ij", sparse=True)
    center = [n * s / 2 for n, s in zip(shape, SPACING)]
    rho2 = ((k - center[0]) / 36.0) ** 2 + ((j - center[1]) / 66.0) ** 2 + ((i - center[2]) / 66.0) ** 2
    notch = ((j - center[1]) ** 2 + (i - center[2] + 60.0) ** 2 <= 15.0 ** 2) & (rho2 <= 1.3)
    liver = (rho2 <= 1.0) & ~notch
    rng = np.random.default_rng(5)
    ct = np.where(liver, LIVER_HU, 40.0) + rng.normal(0.0, 10.0, shape)
    ct[notch & ~liver] = -100.0 + rng.normal(0.0, 10.0, int((notch & ~liver).sum()))
    return ct.astype(np.int16), liver.astype(np.uint8), notch & ~liver


def test_hilum_lesions_sit_at_the_notch_of_the_outline(notched_liver):
    """The hilum kind centres its lesions where the outline is concave, their edge at the notch
    and most of them inside the liver; the surface kind's lesions are anywhere on the surface."""
    ct, liver, notch = notched_liver
    to_notch = ndimage.distance_transform_edt(~notch, sampling=SPACING)
    hilum, surface = [], []
    for seed in range(4):
        for recipe, found in ((TUMOR_KINDS["hilum"], hilum), (TUMOR_KINDS["surface"], surface)):
            _, mask, infos = insert_tumors(ct, liver, SPACING, np.random.default_rng(seed), 2, recipe=recipe)
            for info, own in zip(infos, components_of(mask, infos)):
                found.append((info, float(to_notch[tuple(info["center_kji"])]), own))
    assert hilum and surface
    for info, distance, own in hilum:
        assert info["at_concavity"] and info["kind"] == "hilum"
        assert distance <= info["radius_mm"] + 4.0  # reaches the notch (a 2 mm block's diagonal)
        assert np.count_nonzero(own & (liver > 0)) >= 0.75 * np.count_nonzero(own)
    assert not any(info["at_concavity"] for info, _, _ in surface)
    assert np.median([d for _, d, _ in hilum]) < np.median([d for _, d, _ in surface]) - 10.0


def test_hilum_lesions_fall_back_to_the_surface_of_a_convex_liver(liver_case):
    """An outline without a concave part: the hilum kind still places its lesions, at the surface."""
    ct, liver, _ = liver_case
    _, mask, infos = insert_tumors(ct, liver, SPACING, np.random.default_rng(1), 2, recipe=TUMOR_KINDS["hilum"])
    assert infos and mask.any()
    assert all(info["at_surface"] and not info["at_concavity"] for info in infos)


def test_concave_fraction_out_of_range_is_refused():
    with pytest.raises(LiverTumorSegError, match="concave_fraction"):
        TumorRecipe(concave_fraction=1.5)
