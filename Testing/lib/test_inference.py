"""Tests of LiverTumorSegLib.preprocess and LiverTumorSegLib.inference: the model grid covers the
input in any orientation, probabilities come back to the same physical place, flip TTA is
undone correctly, devices resolve as documented, out-of-memory is recognised."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
import SimpleITK as sitk
import torch

from LiverTumorSegLib.errors import LiverTumorSegError
from LiverTumorSegLib import inference
from LiverTumorSegLib.inference import (TRAINING_FLIP_AXES, TTA_FLIPS, LoadedModel, forward_batched,
                                        predict_foreground, predict_image, resolve_device)
from LiverTumorSegLib.models.card import ModelCard
from LiverTumorSegLib.preprocess import model_grid, normalize_hu, resample_ct_to_model
from LiverTumorSegLib.stages.liver import probability_to_mask

REORIENTATIONS = ("LPS", "RAS", "LPI", "RAI", "PSL", "SRA", "ILA")


def _footprint_corners(image: sitk.Image) -> np.ndarray:
    """Physical positions of the 8 outer corners of the image's voxel footprint."""
    size = image.GetSize()
    corners = []
    for ijk in itertools.product(*[(-0.5, n - 0.5) for n in size]):
        corners.append(image.TransformContinuousIndexToPhysicalPoint(ijk))
    return np.array(corners)


def _in_grid_index(grid: sitk.Image, points: np.ndarray) -> np.ndarray:
    return np.array([grid.TransformPhysicalPointToContinuousIndex(tuple(float(c) for c in p)) for p in points])


@pytest.mark.parametrize("orientation", ["LPS", "RAS", "LPI", "permuted", "oblique"])
@pytest.mark.parametrize("spacing", [(5.0, 5.0, 5.0), (1.5, 2.0, 6.0)])
def test_model_grid_covers_the_input_footprint(helpers, orientation, spacing):
    image = helpers.phantom_ct(size=(50, 41, 23), spacing=(0.9, 1.3, 3.0), direction=helpers.DIRECTIONS[orientation])
    grid = model_grid(image, spacing)
    assert grid.GetSpacing() == pytest.approx(spacing)
    assert grid.GetDirection() == pytest.approx(sitk.DICOMOrient(image, "LPS").GetDirection())
    index = _in_grid_index(grid, _footprint_corners(image))
    size = np.array(grid.GetSize())
    # The footprints start together on every axis and the grid ends less than a voxel beyond.
    np.testing.assert_allclose(index.min(axis=0), -0.5, atol=1e-6)
    assert np.all(index.max(axis=0) <= size - 0.5 + 1e-6)
    assert np.all(index.max(axis=0) > size - 1.5)


def test_model_grid_is_the_same_for_every_orientation_of_one_image(helpers):
    base = helpers.phantom_ct(size=(50, 41, 23), spacing=(0.9, 1.3, 3.0))
    reference = model_grid(base, (4.0, 4.0, 4.0))
    for code in REORIENTATIONS:
        grid = model_grid(sitk.DICOMOrient(base, code), (4.0, 4.0, 4.0))
        assert grid.GetSize() == reference.GetSize(), code
        np.testing.assert_allclose(grid.GetOrigin(), reference.GetOrigin(), atol=1e-9)
        np.testing.assert_allclose(grid.GetDirection(), reference.GetDirection(), atol=1e-12)


def _bright_cube_ct(direction, center_lps=(-21.0, 14.0, 9.0), half_mm=12.0) -> sitk.Image:
    """A -1000 HU image with a 500 HU cube at a known LPS position, on a grid of ``direction``."""
    d = np.asarray(direction, dtype=np.float64).reshape(3, 3)
    size, spacing = (45, 38, 25), (2.0, 2.5, 3.0)
    origin = -(d @ ((np.array(size) - 1) / 2 * np.array(spacing)))
    image = sitk.Image(size, sitk.sitkFloat32)
    image.SetSpacing(spacing)
    image.SetOrigin(tuple(origin))
    image.SetDirection(tuple(d.ravel()))
    kji = np.stack(np.meshgrid(*[np.arange(n) for n in size[::-1]], indexing="ij"), axis=-1)
    from LiverTumorSegLib.geometry import Geometry
    lps = Geometry.of(image).index_to_lps(kji)
    inside = np.all(np.abs(lps - np.array(center_lps)) <= half_mm, axis=-1)
    array = np.where(inside, 500.0, -1000.0).astype(np.float32)
    result = sitk.GetImageFromArray(array)
    result.CopyInformation(image)
    return result


@pytest.mark.parametrize("orientation", ["LPS", "RAS", "LPI", "permuted", "oblique"])
def test_probability_goes_back_to_the_same_physical_place(helpers, orientation):
    """A 'model' that thresholds the CT on the model grid gives a mask on the CT grid whose
    centre is the cube's known LPS position and whose voxels match the cube."""
    center = np.array([-21.0, 14.0, 9.0])
    ct = _bright_cube_ct(helpers.DIRECTIONS[orientation], tuple(center))
    on_model_grid = resample_ct_to_model(ct, (4.0, 4.0, 4.0))
    probability = sitk.Cast(sitk.BinaryThreshold(on_model_grid, -250.0, 1e9, 1, 0), sitk.sitkFloat32)
    mask = probability_to_mask(probability, ct)
    assert mask.shape == sitk.GetArrayViewFromImage(ct).shape and mask.dtype == np.uint8
    from LiverTumorSegLib.geometry import Geometry
    cube = sitk.GetArrayViewFromImage(ct) > 0
    geometry = Geometry.of(ct)
    np.testing.assert_allclose(geometry.index_to_lps(np.argwhere(cube).mean(axis=0)), center, atol=1.0)
    # Edges move by at most half a 4 mm model voxel; a flip or permutation error would move the
    # cube by 40 mm or more (its mirror position).
    np.testing.assert_allclose(geometry.index_to_lps(np.argwhere(mask).mean(axis=0)), center, atol=2.0)
    assert helpers.dice(mask, cube) > 0.85


def test_mask_round_trip_is_identical_across_reorientations(helpers):
    base = _bright_cube_ct(helpers.DIRECTIONS["LPS"])
    reference = None
    for code in REORIENTATIONS:
        ct = sitk.DICOMOrient(base, code)
        on_model_grid = resample_ct_to_model(ct, (4.0, 5.0, 3.0))
        probability = sitk.Cast(sitk.BinaryThreshold(on_model_grid, -250.0, 1e9, 1, 0), sitk.sitkFloat32)
        mask = sitk.GetImageFromArray(probability_to_mask(probability, ct))
        mask.CopyInformation(ct)
        back = sitk.GetArrayFromImage(sitk.DICOMOrient(mask, "LPS"))
        if reference is None:
            reference = back
        np.testing.assert_array_equal(back, reference, err_msg=code)


def test_resample_ct_to_model_repeats_the_edge_where_the_grid_overhangs_the_ct():
    """20 slices of 2 mm on a 3 mm grid: 14 slices, the last one centred 0.5 mm beyond the CT's
    last slab. It takes the last slice's HU, not air (a false surface that cut the liver off a
    scan's last slice)."""
    hu = np.full((20, 12, 12), 60.0, np.float32)
    hu[-1] = 90.0  # the last slice differs, so the test sees which slice was repeated
    ct = sitk.GetImageFromArray(hu)
    ct.SetSpacing((1.0, 1.0, 2.0))
    on_grid = resample_ct_to_model(ct, (3.0, 3.0, 3.0))
    out = sitk.GetArrayViewFromImage(on_grid)
    assert on_grid.GetPixelID() == sitk.sitkFloat32
    assert on_grid.GetSize()[2] == 14 and 3.0 * 14 > 2.0 * 20  # the grid does overhang
    assert out.min() >= 60.0 and out.max() <= 90.0  # nowhere air
    np.testing.assert_allclose(out[-1], 90.0)


def test_normalize_hu_clips_and_scales():
    hu = np.array([-2000, -100, 75, 250, 3000], np.int16)
    out = normalize_hu(hu, (-100, 250))
    assert out.dtype == np.float32
    np.testing.assert_allclose(out, [0, 0, 0.5, 1, 1])


# --- predictions -----------------------------------------------------------------------------

@pytest.fixture
def liver_model(tiny_registry, tiny_models) -> LoadedModel:
    return LoadedModel.load(tiny_registry.resolve(tiny_models.liver))


@pytest.fixture
def random_model(tiny_registry, tiny_models) -> LoadedModel:
    return LoadedModel.load(tiny_registry.resolve(tiny_models.random_model))


def test_predict_image_returns_probability_on_the_model_grid(helpers, liver_model):
    ct = sitk.Cast(helpers.phantom_ct(direction=helpers.DIRECTIONS["RAS"]), sitk.sitkFloat32)
    probability, std = predict_image(ct, liver_model, torch.device("cpu"), overlap=0.25)
    assert std is None
    grid = model_grid(ct, liver_model.card.spacing_mm)
    assert probability.GetSize() == grid.GetSize() and probability.GetOrigin() == grid.GetOrigin()
    assert probability.GetDirection() == grid.GetDirection()
    mask = probability_to_mask(probability, ct)
    assert helpers.dice(mask, helpers.analytic_labels_like(ct) > 0) > 0.93


def test_tta_returns_a_std_map_and_undoes_its_flips(helpers, liver_model, random_model):
    hu = sitk.GetArrayFromImage(sitk.Cast(helpers.phantom_ct(size=(30, 26, 20)), sitk.sitkFloat32))
    fractions = []
    plain, no_std = predict_foreground(liver_model, hu, torch.device("cpu"))
    mean, std = predict_foreground(liver_model, hu, torch.device("cpu"), tta=True, on_progress=fractions.append)
    assert no_std is None
    assert std is not None and std.shape == hu.shape and std.dtype == np.float32 and mean.dtype == np.float32
    assert fractions == [0.5, 1.0]  # the identity and the left-right flip
    # A per-voxel model commutes with flips: undone flips give the same map and no spread.
    np.testing.assert_allclose(mean, plain, atol=1e-5)
    assert float(std.max()) < 1e-5
    # A random network does not: its flipped predictions disagree somewhere.
    _, random_std = predict_foreground(random_model, hu, torch.device("cpu"), tta=True)
    assert float(random_std.max()) > 1e-4 and float(random_std.min()) >= 0.0


def test_tta_flips_are_the_flips_training_applies():
    from LiverTumorSegLib.develop.training.patches import augmentations
    from LiverTumorSegLib.develop.training.trainer import _augmentations

    def flip_axes(compose) -> set:
        return {t.flipper.spatial_axis for t in compose.transforms if type(t).__name__ == "RandFlipd"}

    assert flip_axes(augmentations((16, 16, 16), 0.5, True)) == set(TRAINING_FLIP_AXES)
    assert flip_axes(_augmentations((16, 16, 16), True)) == set(TRAINING_FLIP_AXES)
    assert TTA_FLIPS == [(), (4,)]  # tensor axes (batch, channel, k, j, i): identity and the i flip


def test_image_smaller_than_the_patch_is_padded(liver_model):
    hu = np.full((6, 9, 11), 160.0, np.float32)
    probability, _ = predict_foreground(liver_model, hu, torch.device("cpu"))
    assert probability.shape == hu.shape and float(probability.min()) > 0.99


class _BatchSizes(torch.nn.Module):
    """Wraps a network and records the batch size of every forward call."""

    def __init__(self, network: torch.nn.Module) -> None:
        super().__init__()
        self.network = network
        self.sizes: list = []

    def forward(self, x):
        self.sizes.append(int(x.shape[0]))
        return self.network(x)


def test_cpu_windows_go_in_batches_of_two_or_more_with_the_same_probabilities(random_model, monkeypatch):
    # 40 x 40 x 40 voxels in 16-voxel windows at overlap 0.25: 27 windows, so pairs and a last single one.
    hu = np.random.default_rng(3).normal(60.0, 40.0, (40, 40, 40)).astype(np.float32)
    spy = _BatchSizes(random_model.network)
    batched, _ = predict_foreground(LoadedModel(random_model.card, spy), hu, torch.device("cpu"), sw_batch_size=2)
    assert spy.sizes == [2] * 14  # the lone 27th window went with a copy of itself
    monkeypatch.setattr(inference, "MIN_CPU_BATCH", 1)
    one_by_one, _ = predict_foreground(random_model, hu, torch.device("cpu"), sw_batch_size=1)
    np.testing.assert_allclose(batched, one_by_one, atol=1e-5)


def test_a_volume_thinner_than_the_window_is_padded_with_its_edge_slices(random_model):
    # The random network's output at a voxel depends on its neighbours, so the padding shows.
    hu = np.random.default_rng(5).normal(80.0, 30.0, (5, 16, 16)).astype(np.float32)  # 5 of 16 slices
    thin, _ = predict_foreground(random_model, hu, torch.device("cpu"))
    before = (16 - 5) // 2  # MONAI pads a short axis on both sides, the odd voxel after
    edge_padded = np.pad(hu, ((before, 16 - 5 - before), (0, 0), (0, 0)), mode="edge")
    full, _ = predict_foreground(random_model, edge_padded, torch.device("cpu"))
    np.testing.assert_allclose(thin, full[before:before + 5], atol=1e-5)
    zero_padded = np.pad(hu, ((before, 16 - 5 - before), (0, 0), (0, 0)), constant_values=-1000.0)
    floor, _ = predict_foreground(random_model, zero_padded, torch.device("cpu"))
    assert np.abs(thin - floor[before:before + 5]).max() > 1e-3  # what the padding replaced


def test_forward_batched_returns_one_output_per_window(random_model):
    window = torch.randn(1, 1, 16, 16, 16)
    with torch.inference_mode():
        alone = random_model.network(window)
        padded = forward_batched(random_model.network, window)
    assert padded.shape == alone.shape
    torch.testing.assert_close(padded, alone, atol=1e-5, rtol=1e-4)


class _Raises(torch.nn.Module):
    def __init__(self, error: Exception) -> None:
        super().__init__()
        self.error = error

    def forward(self, x):
        raise self.error


def _card(tiny_registry, tiny_models) -> ModelCard:
    return tiny_registry.resolve(tiny_models.liver)


@pytest.mark.parametrize("message", ["CUDA out of memory. Tried to allocate 2.00 GiB",
                                     "DefaultCPUAllocator: can't allocate memory: you tried to allocate 1 bytes"])
def test_out_of_memory_becomes_memory_error(tiny_registry, tiny_models, message):
    model = LoadedModel(_card(tiny_registry, tiny_models), _Raises(RuntimeError(message)))
    with pytest.raises(MemoryError):
        predict_foreground(model, np.zeros((16, 16, 16), np.float32), torch.device("cpu"))


def test_other_runtime_errors_pass_through(tiny_registry, tiny_models):
    model = LoadedModel(_card(tiny_registry, tiny_models), _Raises(RuntimeError("shape mismatch")))
    with pytest.raises(RuntimeError, match="shape mismatch"):
        predict_foreground(model, np.zeros((16, 16, 16), np.float32), torch.device("cpu"))


# --- devices ---------------------------------------------------------------------------------

def test_device_cpu_and_auto():
    assert resolve_device("cpu") == torch.device("cpu")
    expected = "cuda" if torch.cuda.is_available() else "cpu"
    assert resolve_device("auto").type == expected


def test_device_cuda_without_gpu_is_a_user_error(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(LiverTumorSegError, match="no CUDA GPU"):
        resolve_device("cuda")
    assert resolve_device("auto") == torch.device("cpu")


def test_unknown_device():
    with pytest.raises(LiverTumorSegError, match="unknown device 'tpu'"):
        resolve_device("tpu")
