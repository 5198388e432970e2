"""Tests of LiverTumorSegLib.synth.phantom: deterministic, geometry as asked, anatomy where it
belongs in physical LPS coordinates (liver on the patient's right), tumours inside the liver and
darker than it when hypodense, plausible HU per tissue, any orientation."""

from __future__ import annotations

import numpy as np
import pytest
import SimpleITK as sitk
from scipy import ndimage

from LiverTumorSegLib import LIVER_LABEL, TUMOR_LABEL
from LiverTumorSegLib.errors import LiverTumorSegError
from LiverTumorSegLib.geometry import Geometry
from LiverTumorSegLib.synth.phantom import ORGAN, Phantom, make_phantom

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
            assert info["mean_hu"] < info["liver_median_hu"] - 5.0
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
])
def test_bad_arguments_raise_a_clear_error(kwargs, words):
    with pytest.raises(LiverTumorSegError, match=words):
        small(0, **kwargs)
