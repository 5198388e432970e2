"""Tests of LiverTumorSegLib.develop.synth.phantom: deterministic, geometry as asked, anatomy where it
belongs in physical LPS coordinates (liver on the patient's right, heart above it on the
diaphragm, anterior and left), tumours inside the liver and darker than it when hypodense,
plausible HU per tissue, any orientation, chest and upper-abdomen fields of view, thin slabs;
the liver's neighbours (stomach in every filling, bowel) against it and never labelled liver."""

from __future__ import annotations

import numpy as np
import pytest
import SimpleITK as sitk
from scipy import ndimage

from LiverTumorSegLib import LIVER_LABEL, TUMOR_LABEL
from LiverTumorSegLib.errors import LiverTumorSegError
from LiverTumorSegLib.geometry import Geometry
from LiverTumorSegLib.develop.synth.phantom import ORGAN, STOMACH_FILLINGS, VIEWS, Phantom, make_phantom

SIZE_MM = (320.0, 260.0, 220.0)
SPACING = (4.0, 4.0, 4.0)
SEEDS = (0, 1, 2, 3, 4, 5)


def small(seed: int, **kw) -> Phantom:
    options = dict(size_mm=SIZE_MM, spacing=SPACING, n_tumors=3)
    options.update(kw)
    return make_phantom(seed, **options)


@pytest.fixture(scope="module")
def phantoms():
    return {seed: small(seed) for seed in SEEDS}


def arrays(phantom: Phantom):
    return (sitk.GetArrayFromImage(phantom.ct), sitk.GetArrayFromImage(phantom.labels),
            sitk.GetArrayFromImage(phantom.organs))


def centroid_lps(image: sitk.Image, mask: np.ndarray) -> np.ndarray:
    """Physical LPS centroid of a (k, j, i) mask on ``image``'s grid."""
    index_kji = np.argwhere(mask).mean(axis=0)
    return np.asarray(image.TransformContinuousIndexToPhysicalPoint([float(v) for v in index_kji[::-1]]))


def test_same_seed_gives_the_same_phantom_and_another_seed_another(phantoms):
    again = small(1)
    ct, labels, organs = arrays(phantoms[1])
    ct2, labels2, organs2 = arrays(again)
    np.testing.assert_array_equal(ct, ct2)
    np.testing.assert_array_equal(labels, labels2)
    np.testing.assert_array_equal(organs, organs2)
    assert again.tumors == phantoms[1].tumors
    assert again.properties == phantoms[1].properties
    assert not np.array_equal(ct, arrays(phantoms[2])[0])


def test_geometry_pixel_types_and_label_values(phantoms):
    for phantom in phantoms.values():
        geometry = Geometry.of(phantom.ct)
        assert geometry.size == tuple(int(round(e / s)) for e, s in zip(SIZE_MM, SPACING))
        np.testing.assert_allclose(geometry.spacing, SPACING)
        np.testing.assert_allclose(geometry.direction, np.eye(3).ravel())
        assert geometry.matches(Geometry.of(phantom.labels)) and geometry.matches(Geometry.of(phantom.organs))
        assert phantom.ct.GetPixelID() == sitk.sitkInt16
        assert phantom.labels.GetPixelID() == sitk.sitkUInt8
        ct, labels, _ = arrays(phantom)
        assert set(np.unique(labels)) <= {0, LIVER_LABEL, TUMOR_LABEL}
        assert ct.min() >= -1024 and ct.max() <= 3071
        assert ct.min() < -900 and ct.max() > 300  # air around the body, bone in it


def test_liver_lies_on_the_patients_right_and_spleen_on_the_left(phantoms):
    for phantom in phantoms.values():
        ct, labels, organs = arrays(phantom)
        body_x = centroid_lps(phantom.ct, ct > -500)[0]
        liver_x = centroid_lps(phantom.ct, labels > 0)[0]
        spleen_x = centroid_lps(phantom.ct, organs == ORGAN["spleen"])[0]
        assert liver_x < body_x - 30.0, "patient right is -x in LPS"
        assert spleen_x > body_x + 30.0
        assert 500.0 < phantom.properties["liver_volume_ml"] < 2600.0


def test_lungs_lie_above_the_liver_and_the_spine_behind_it(phantoms):
    for phantom in phantoms.values():
        _, labels, organs = arrays(phantom)
        liver = centroid_lps(phantom.ct, labels > 0)
        lung = centroid_lps(phantom.ct, organs == ORGAN["lung"])
        bone = centroid_lps(phantom.ct, organs == ORGAN["spinal_canal"])
        assert lung[2] > liver[2] + 20.0
        assert bone[1] > liver[1], "posterior is +y in LPS"


def test_tumours_lie_inside_the_liver_and_match_their_records(phantoms):
    count = 0
    for phantom in phantoms.values():
        _, labels, organs = arrays(phantom)
        tumor = labels == TUMOR_LABEL
        assert len(phantom.tumors) == phantom.properties["n_tumors"]
        if not phantom.tumors:
            continue
        grown = ndimage.binary_dilation(tumor)
        assert not (grown & (labels == 0)).any(), "a tumour touches the liver's outside"
        assert np.array_equal(tumor, organs == ORGAN["liver_tumor"])
        components, _ = ndimage.label(tumor)
        for info in phantom.tumors:
            count += 1
            index = phantom.labels.TransformPhysicalPointToIndex(info["center_lps_mm"])
            assert labels[index[2], index[1], index[0]] == TUMOR_LABEL
            assert tuple(info["center_kji"]) == tuple(reversed(index))
            own = components == components[index[2], index[1], index[0]]
            volume = own.sum() * np.prod(SPACING) / 1000.0
            assert volume == pytest.approx(info["volume_ml"], rel=1e-6)
            assert info["contrast"] in ("hypo", "hyper")
            assert 1.0 <= info["radius_mm"] <= 30.0
    assert count >= 10


def test_hypodense_tumours_are_darker_than_the_liver(phantoms):
    darker = 0
    for phantom in phantoms.values():
        ct, labels, _ = arrays(phantom)
        liver_median = float(np.median(ct[labels == LIVER_LABEL]))
        for info in phantom.tumors:
            if info["contrast"] != "hypo":
                continue
            # a tumour of a voxel or a few is diluted by partial volume: darker, by less
            assert info["mean_hu"] < info["liver_median_hu"] - (5.0 if info["n_voxels"] >= 8 else 0.0)
            index = phantom.labels.TransformPhysicalPointToIndex(info["center_lps_mm"])
            components, _ = ndimage.label(labels == TUMOR_LABEL)
            own = components == components[index[2], index[1], index[0]]
            if own.sum() >= 8:  # enough voxels for the noise to average out
                assert ct[own].mean() < liver_median
                darker += 1
    assert darker >= 3


def test_tissue_hounsfield_values_are_plausible(phantoms):
    for phantom in phantoms.values():
        ct, labels, organs = arrays(phantom)
        phase = phantom.properties["phase"]

        def median(name: str) -> float:
            mask = organs == ORGAN[name]
            core = ndimage.binary_erosion(mask)  # away from partial volume where the tissue is thick enough
            return float(np.median(ct[core if core.sum() >= 20 else mask]))

        assert median("air") < -950
        assert -130 < median("subcutaneous_fat") < -60
        assert 20 < median("muscle") < 80
        assert median("lung") < -700
        assert np.percentile(ct[organs == ORGAN["bone"]], 95) > 300
        liver = float(np.median(ct[labels == LIVER_LABEL]))
        assert 5 < liver < 150
        assert abs(liver - phantom.properties["liver_hu"]) < 15
        if phase in ("arterial", "portal_venous"):
            assert median("aorta") > liver + 10
        if phase == "native":
            assert abs(median("aorta") - liver) < 40


def test_contrast_phases_and_tumour_counts_vary_with_the_seed(phantoms):
    coarse = dict(spacing=(8.0, 8.0, 8.0))
    phases = {small(seed, n_tumors=0, **coarse).properties["phase"] for seed in range(10)}
    assert len(phases) >= 2
    assert small(0, n_tumors=0, **coarse).tumors == []
    counts = {len(small(seed, n_tumors=(0, 4), **coarse).tumors) for seed in range(6)}
    assert len(counts) >= 2 and max(counts) <= 4


@pytest.mark.parametrize("code", ["RAS", "LPI", "PIR"])
def test_other_orientations_hold_the_same_physical_image(code, phantoms):
    oriented = small(3, direction=code)
    reference = phantoms[3]
    expected = {"RAS": [-1, 0, 0, 0, -1, 0, 0, 0, 1], "LPI": [1, 0, 0, 0, 1, 0, 0, 0, -1],
                "PIR": [0, 0, -1, 1, 0, 0, 0, -1, 0]}[code]
    np.testing.assert_allclose(oriented.ct.GetDirection(), expected, atol=1e-12)
    for image, original in ((oriented.ct, reference.ct), (oriented.labels, reference.labels)):
        back = sitk.DICOMOrient(image, "LPS")
        np.testing.assert_array_equal(sitk.GetArrayFromImage(back), sitk.GetArrayFromImage(original))
        np.testing.assert_allclose(back.GetOrigin(), original.GetOrigin(), atol=1e-6)
    ct, labels, _ = arrays(oriented)
    assert centroid_lps(oriented.ct, labels > 0)[0] < centroid_lps(oriented.ct, ct > -500)[0] - 30.0
    for info in oriented.tumors:
        assert labels[tuple(info["center_kji"])] == TUMOR_LABEL


def test_noise_level_follows_noise_hu():
    quiet = sitk.GetArrayFromImage(small(4, noise_hu=0.0, n_tumors=0).ct).astype(np.float32)
    noisy = sitk.GetArrayFromImage(small(4, noise_hu=20.0, n_tumors=0).ct).astype(np.float32)
    inside = (quiet > -900) & (quiet < 3000) & (noisy < 3000)
    assert (noisy - quiet)[inside].std() == pytest.approx(20.0, rel=0.15)


@pytest.mark.parametrize("kwargs, words", [
    (dict(direction="XYZ"), "orientation code"),
    (dict(direction="LLS"), "orientation code"),
    (dict(spacing=(0.0, 1.0, 1.0)), "spacing"),
    (dict(size_mm=(20.0, 300.0, 200.0)), "fewer than 8 voxels"),
    (dict(n_tumors=(3, 1)), "n_tumors"),
    (dict(n_tumors=-1), "n_tumors"),
    (dict(noise_hu=-1.0), "noise_hu"),
    (dict(view="chest"), "field of view"),
    (dict(z_offset_mm=float("nan")), "z_offset_mm"),
])
def test_bad_arguments_raise_a_clear_error(kwargs, words):
    with pytest.raises(LiverTumorSegError, match=words):
        small(0, **kwargs)


# ----- chest and fields of view ---------------------------------------------------------------

HEART_SEEDS = (0, 1, 2, 3)


@pytest.fixture(scope="module")
def upper_abdomens():
    return {seed: small(seed, view="upper_abdomen", n_tumors=0) for seed in HEART_SEEDS}


def voxel_ml(phantom: Phantom) -> float:
    return float(np.prod(phantom.ct.GetSpacing())) / 1000.0


def test_the_heart_rests_on_the_diaphragm_above_the_liver_anterior_and_left(upper_abdomens):
    for seed, phantom in upper_abdomens.items():
        ct, labels, organs = arrays(phantom)
        heart = organs == ORGAN["heart"]
        liver = labels > 0
        assert heart.sum() * voxel_ml(phantom) > 250.0, f"seed {seed}: the heart is missing or tiny"
        centre = centroid_lps(phantom.ct, heart)
        body = centroid_lps(phantom.ct, ct > -500)
        canal = centroid_lps(phantom.ct, organs == ORGAN["spinal_canal"])
        assert centre[0] > body[0] + 5.0, "the heart lies left of the midline (+x in LPS)"
        assert centre[1] < canal[1] - 40.0, "the heart lies in front of the spine (-y in LPS)"
        assert centre[2] > centroid_lps(phantom.ct, liver)[2] + 40.0
        # in every column holding both, all of the heart lies above all of the liver
        both = heart.any(axis=0) & liver.any(axis=0)
        k = np.arange(ct.shape[0])[:, None, None]
        lowest_heart = np.where(heart, k, ct.shape[0]).min(axis=0)
        highest_liver = np.where(liver, k, -1).max(axis=0)
        assert both.sum() >= 10, f"seed {seed}: the heart does not sit over the liver"
        assert (lowest_heart[both] > highest_liver[both]).all()
        # and it rests on the diaphragm over the liver's left lobe: only the diaphragm in between
        distance = ndimage.distance_transform_edt(~heart, sampling=SPACING[::-1])
        gap = distance[liver].min()
        assert gap < 12.0, f"seed {seed}: the heart floats {gap:.0f} mm above the liver"
        under_heart = centroid_lps(phantom.ct, liver & (distance < 12.0))
        liver_centre = centroid_lps(phantom.ct, liver)
        assert under_heart[0] > liver_centre[0] + 30.0 and under_heart[1] < liver_centre[1], \
            "the heart lies over the left lobe (patient left and anterior of the liver's centre)"
        assert not (labels[heart | (organs == ORGAN["pericardial_fat"])]).any()


def test_the_heart_has_bright_chambers_when_contrast_is_given(upper_abdomens):
    contrast = 0
    for phantom in upper_abdomens.values():
        ct, labels, organs = arrays(phantom)
        heart = ct[organs == ORGAN["heart"]]
        liver = float(np.median(ct[labels == LIVER_LABEL]))
        if phantom.properties["phase"] in ("arterial", "portal_venous"):
            contrast += 1
            assert np.percentile(heart, 90) > liver + 20.0
            assert np.percentile(heart, 90) > 120.0
        elif phantom.properties["phase"] == "native":
            assert 20.0 < np.median(heart) < 70.0  # as dense as the liver: why a model must learn it
    assert contrast >= 1


def test_the_chest_has_great_vessels_airways_and_vessels_in_the_lungs():
    phantom = small(5, view="thorax", n_tumors=0)
    ct, _, organs = arrays(phantom)
    lung = organs == ORGAN["lung"]
    assert lung.sum() > 0.2 * (ct > -500).sum(), "a chest CT is largely lung"
    for name in ("aorta", "pulmonary_vessel", "airway", "esophagus", "mediastinal_fat", "heart"):
        assert (organs == ORGAN[name]).sum() > 20, name
    # pulmonary vessels reach into the lungs, and air fills the airways
    vessels = organs == ORGAN["pulmonary_vessel"]
    assert (vessels & ndimage.binary_dilation(lung)).sum() > 50
    assert np.median(ct[(organs == ORGAN["airway"]) & (ct < -500)]) < -850
    # the sternum: bone on the midline in front of the heart
    heart_y = centroid_lps(phantom.ct, organs == ORGAN["heart"])[1]
    bone = organs == ORGAN["bone"]
    k, j, i = np.nonzero(bone)
    points = np.array([phantom.ct.TransformIndexToPhysicalPoint((int(a), int(b), int(c)))
                       for a, b, c in zip(i, j, k)])
    body_x = centroid_lps(phantom.ct, ct > -500)[0]
    front = points[(np.abs(points[:, 0] - body_x) < 8.0) & (points[:, 1] < heart_y - 40.0)]
    assert len(front) >= 5, "no sternum"


def test_a_thorax_view_has_the_heart_and_much_less_liver_than_an_abdomen_view(phantoms):
    for seed in HEART_SEEDS:
        thorax = small(seed, view="thorax", n_tumors=0)
        _, labels, organs = arrays(thorax)
        abdomen_ml = phantoms[seed].properties["liver_volume_ml"]
        thorax_ml = float((labels > 0).sum()) * voxel_ml(thorax)
        assert thorax_ml == pytest.approx(thorax.properties["liver_volume_ml"], abs=1.0)
        assert thorax_ml < 0.35 * abdomen_ml, f"seed {seed}: {thorax_ml:.0f} vs {abdomen_ml:.0f} mL"
        assert (organs == ORGAN["heart"]).sum() * voxel_ml(thorax) > 250.0
        assert thorax.properties["view"] == "thorax"


def test_the_same_seed_is_the_same_patient_in_every_view(phantoms, upper_abdomens):
    """The view only moves the field of view: the body, the contrast phase and what fills the stomach stay."""
    for seed in HEART_SEEDS:
        thorax = small(seed, view="thorax", n_tumors=0)
        for other in (phantoms[seed], upper_abdomens[seed]):
            for key in ("phase", "body_semi_axes_mm", "liver_hu", "values_hu", "stomach_filling"):
                assert thorax.properties[key] == other.properties[key]
        assert thorax.properties["dome_z_mm"] < upper_abdomens[seed].properties["dome_z_mm"]


def test_z_offset_moves_the_anatomy_down_in_the_image():
    base = small(2, view="upper_abdomen", n_tumors=0, noise_hu=0.0)
    moved = small(2, view="upper_abdomen", n_tumors=0, noise_hu=0.0, z_offset_mm=40.0)
    np.testing.assert_allclose(moved.ct.GetOrigin(), base.ct.GetOrigin())
    assert moved.properties["dome_z_mm"] == pytest.approx(base.properties["dome_z_mm"] - 40.0, abs=0.11)
    assert moved.properties["z_offset_mm"] == 40.0
    heart_base = centroid_lps(base.ct, arrays(base)[2] == ORGAN["heart"])
    heart_moved = centroid_lps(moved.ct, arrays(moved)[2] == ORGAN["heart"])
    assert heart_moved[2] - heart_base[2] == pytest.approx(-40.0, abs=4.0)
    np.testing.assert_allclose(heart_moved[:2], heart_base[:2], atol=2.0)


@pytest.mark.parametrize("view", VIEWS)
def test_each_view_is_deterministic(view):
    first, second = small(7, view=view), small(7, view=view)
    for a, b in zip(arrays(first), arrays(second)):
        np.testing.assert_array_equal(a, b)
    assert first.properties == second.properties and first.tumors == second.tumors


@pytest.mark.parametrize("z_mm", [40.0, 60.0, 90.0])
def test_thin_slabs_work_for_every_view_and_seed(z_mm):
    """Any z extent from 40 mm works: parts out of view are skipped, never unpacked."""
    for view in VIEWS:
        for seed in range(6):
            phantom = make_phantom(seed, size_mm=(320.0, 260.0, z_mm), spacing=(8.0, 8.0, 4.0), view=view)
            ct, labels, _ = arrays(phantom)
            assert ct.shape == (int(round(z_mm / 4.0)), 32, 40)
            assert set(np.unique(labels)) <= {0, LIVER_LABEL, TUMOR_LABEL}
            assert len(phantom.tumors) == phantom.properties["n_tumors"]
            if not (labels > 0).any():
                assert phantom.tumors == []


# ----- the liver's neighbours: stomach fillings, touching, never liver ------------------------

LIVER_TISSUES = (ORGAN["liver"], ORGAN["hepatic_vessel"], ORGAN["liver_tumor"])


def gap_mm(phantom: Phantom, mask: np.ndarray, liver: np.ndarray) -> float:
    """Free space (mm) between two masks: the least centre distance minus one voxel (0: face to face)."""
    spacing = phantom.ct.GetSpacing()[::-1]
    distance = ndimage.distance_transform_edt(~liver, sampling=spacing)
    return float(distance[mask].min()) - max(spacing)


@pytest.fixture(scope="module")
def fillings():
    """One noise-free phantom per stomach filling, the first seed that draws it."""
    seeds = {}
    for seed in range(60):
        kind = small(seed, spacing=(8.0, 8.0, 8.0), n_tumors=0).properties["stomach_filling"]
        seeds.setdefault(kind, seed)
        if len(seeds) == len(STOMACH_FILLINGS):
            break
    return {kind: small(seed, n_tumors=0, noise_hu=0.0) for kind, seed in seeds.items()}


def test_every_stomach_filling_occurs_with_its_density(fillings):
    assert set(fillings) == set(STOMACH_FILLINGS)
    for kind, phantom in fillings.items():
        ct, labels, organs = arrays(phantom)
        stomach = organs == ORGAN["stomach"]
        core = ct[ndimage.binary_erosion(stomach)]  # the contents, away from the wall
        gas = float((core < -800).mean())
        soft = float(((core >= 20) & (core <= 80)).mean())
        content = phantom.properties["stomach_content_hu"]
        assert phantom.properties["stomach_filling"] == kind
        assert not labels[stomach].any()
        if kind == "food":  # the hard negative: soft tissue, as dense as liver in some phases
            assert 30 <= content <= 70 and 30 <= np.median(core) <= 70 and soft > 0.7, kind
        elif kind == "mixed":  # food under an air-fluid level
            assert 30 <= content <= 70 and gas > 0.1 and soft > 0.3, kind
            dense = ndimage.center_of_mass(stomach & (ct > 20) & (ct < 80))
            air = ndimage.center_of_mass(stomach & (ct < -800))
            assert air[1] < dense[1], "the gas floats in front (anterior, -y) of the food"
        elif kind == "water":
            assert 0 <= content <= 25 and -10 <= np.median(core) <= 30 and gas < 0.5, kind
        elif kind == "air":
            assert np.median(core) < -800, kind
        elif kind == "contrast":
            assert 150 <= content <= 400 and 150 <= np.median(core) <= 420, kind
        else:  # collapsed: a small stomach of thick (enhancing) wall
            assert phantom.properties["stomach_volume_ml"] < 150 and 20 <= np.median(ct[stomach]) <= 160, kind


def test_the_stomach_lies_against_the_liver_in_most_abdomens(phantoms):
    more = {seed: small(seed, n_tumors=0) for seed in range(6, 12)}
    touching = 0
    for seed, phantom in {**phantoms, **more}.items():
        _, labels, organs = arrays(phantom)
        stomach = organs == ORGAN["stomach"]
        assert stomach.sum() * voxel_ml(phantom) > 30.0, f"seed {seed}: no stomach"
        touches = gap_mm(phantom, stomach, labels > 0) <= 2.0
        face_to_face = (ndimage.binary_dilation(labels > 0) & stomach).any()
        assert face_to_face == phantom.properties["stomach_touches_liver"], seed
        if not phantom.properties["stomach_placed_against_liver"]:
            assert not touches, f"seed {seed}: fat was to lie between stomach and liver"
        touching += touches
    assert touching >= 0.6 * 12, f"the stomach touches the liver in {touching} of 12 abdomens"


def test_neighbours_are_never_liver_in_any_view(phantoms, upper_abdomens):
    bowel_touches = 0
    for phantom in list(phantoms.values()) + list(upper_abdomens.values()):
        _, labels, organs = arrays(phantom)
        np.testing.assert_array_equal(labels > 0, np.isin(organs, LIVER_TISSUES))
        for name in ("stomach", "bowel", "gallbladder", "kidney", "spleen", "heart", "pancreas", "ivc"):
            assert not labels[organs == ORGAN[name]].any(), name
        neighbours = phantom.properties["liver_neighbours"]
        assert set(neighbours) <= set(ORGAN) and "liver" not in neighbours
        bowel_touches += "bowel" in neighbours
    assert bowel_touches >= 3, "bowel (duodenum, colon) lies against the liver's inferior surface for some seeds"


def test_the_liver_neighbours_are_the_organs_beside_the_liver(phantoms):
    from scipy import ndimage

    from LiverTumorSegLib.develop.synth.phantom import LIVER_NEIGHBOURS, liver_neighbours

    for phantom in phantoms.values():
        _, labels, organs = arrays(phantom)
        region_image = liver_neighbours(phantom.organs, within_mm=20.0)
        assert Geometry.of(region_image).matches(Geometry.of(phantom.organs))
        region = sitk.GetArrayFromImage(region_image) > 0
        assert region.any() and not (region & (labels > 0)).any()
        assert set(np.unique(organs[region])) <= {ORGAN[name] for name in LIVER_NEIGHBOURS}
        distance = ndimage.distance_transform_edt(labels == 0, sampling=SPACING[::-1])
        assert distance[region].max() <= 20.0
        # every neighbour voxel that close is in it: nothing beside the liver is left out
        close = np.isin(organs, [ORGAN[name] for name in LIVER_NEIGHBOURS]) & (distance <= 20.0)
        np.testing.assert_array_equal(region, close)
        assert sitk.GetArrayFromImage(liver_neighbours(phantom.organs, within_mm=4.0)).sum() < region.sum()
