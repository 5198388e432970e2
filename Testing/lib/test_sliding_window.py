"""sliding_window: windows placed and blended as MONAI's sliding_window_inference does."""

from __future__ import annotations

import pytest
import torch
from monai.inferers import sliding_window_inference

from LiverTumorSegLib.sliding_window import (MIN_WEIGHT, gaussian_weights, sliding_window_probability,
                                             window_starts)

CPU = torch.device("cpu")


def _predictor(batch: torch.Tensor) -> torch.Tensor:
    """Two output channels that depend on each window's content and on the position in the window
    (so a misplaced or mis-weighted window changes the blend)."""
    ramp = torch.linspace(-1.0, 1.0, batch.shape[-1])
    first = torch.sigmoid(3 * batch.mean(dim=1, keepdim=True) + ramp)
    return torch.cat([first, 1 - first * first], dim=1)


@pytest.mark.parametrize("shape, window, overlap, batch, padding", [
    ((1, 1, 70, 50, 90), (32, 32, 32), 0.25, 4, "replicate"),
    ((1, 2, 20, 50, 33), (32, 32, 32), 0.25, 3, "replicate"),  # thinner than the window: padded
    ((1, 1, 21, 11, 40), (16, 16, 16), 0.0, 2, "constant"),
    ((1, 1, 64, 64, 64), (32, 48, 32), 0.5, 1, "replicate"),
    ((1, 1, 32, 48, 32), (32, 48, 32), 0.25, 4, "replicate"),  # exactly one window
])
def test_the_blend_is_monais(shape, window, overlap, batch, padding):
    torch.manual_seed(1)
    volume = torch.rand(shape)
    expected = sliding_window_inference(volume, window, batch, _predictor, overlap=overlap, mode="gaussian",
                                        padding_mode=padding)
    ours = sliding_window_probability(volume, window, _predictor, overlap, batch, padding, CPU)
    assert ours.shape == (1, 2) + shape[2:]
    torch.testing.assert_close(ours, expected, rtol=0, atol=1e-6)


def test_window_starts_cover_the_axis_with_the_fewest_windows_the_last_at_the_edge():
    assert window_starts(64, 64, 0.25) == [0]
    assert window_starts(213, 64, 0.25) == [0, 48, 96, 144, 149]
    assert window_starts(100, 64, 0.5) == [0, 32, 36]
    assert window_starts(65, 64, 0.0) == [0, 1]
    for size in range(64, 300, 7):
        starts = window_starts(size, 64, 0.25)
        assert starts[-1] + 64 == size and all(b - a <= 48 for a, b in zip(starts, starts[1:]))
        assert len(starts) == 1 or (len(starts) - 2) * 48 + 64 < size  # one fewer would not cover it


def test_gaussian_weights_peak_at_the_centre_and_keep_a_floor():
    weights = gaussian_weights((9, 16, 5))
    assert weights.shape == (9, 16, 5)
    assert float(weights[4, 7, 2]) == pytest.approx(float(weights.max()))
    assert float(weights[4, :, 2].max()) < 1.0  # an even axis has no voxel at the centre
    assert float(weights[4, 8, 2]) == float(weights[4, 7, 2])  # symmetric
    assert float(weights.min()) >= MIN_WEIGHT


def test_bad_volumes_and_overlaps_are_refused():
    with pytest.raises(ValueError, match="expected a \\(1, channels, k, j, i\\) volume"):
        sliding_window_probability(torch.zeros(2, 1, 8, 8, 8), (4, 4, 4), _predictor, 0.25, 1, "replicate", CPU)
    with pytest.raises(ValueError, match="overlap must be"):
        sliding_window_probability(torch.zeros(1, 1, 8, 8, 8), (4, 4, 4), _predictor, 1.0, 1, "replicate", CPU)
