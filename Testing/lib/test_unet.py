"""models.unet: the embedded models' UNet built without MONAI gives MONAI's UNet's outputs."""

from __future__ import annotations

import subprocess
import sys

import pytest
import torch
from monai.networks.nets import UNet

from LiverTumorSegLib.models.networks import build_network
from LiverTumorSegLib.models.unet import ResidualUNet, covers

CONFIGS = [
    {"in_channels": 1, "out_channels": 2, "channels": [16, 32, 64, 128], "strides": [2, 2, 2], "num_res_units": 2},
    {"in_channels": 2, "out_channels": 2, "channels": [8, 16, 32, 64, 128], "strides": [2, 2, 2, 2],
     "num_res_units": 1},
    {"in_channels": 1, "out_channels": 3, "channels": [4, 8, 16], "strides": [2, 1], "num_res_units": 0},
    {"in_channels": 1, "out_channels": 2, "channels": [4, 8], "strides": [2], "num_res_units": 3, "dropout": 0.2,
     "kernel_size": 3, "act": "PRELU", "norm": "INSTANCE"},
]


@pytest.mark.parametrize("args", CONFIGS)
def test_the_unet_without_monai_has_monais_parameters_and_outputs(args):
    torch.manual_seed(0)
    reference = UNet(spatial_dims=3, **args).eval()
    with torch.no_grad():  # PReLU slopes other than the 0.25 they start at, so a swapped one shows
        for name, parameter in reference.named_parameters():
            if name.endswith("adn.A.weight"):
                parameter.uniform_(-0.5, 0.5)
    ours = build_network("UNet", args, inference=True)
    assert isinstance(ours, ResidualUNet)
    state = reference.state_dict()
    assert list(ours.state_dict()) == list(state)
    ours.load_state_dict(state, strict=True)
    ours.eval()
    x = torch.rand(2, args["in_channels"], 32, 16, 48)
    with torch.inference_mode():
        torch.testing.assert_close(ours(x), reference(x), rtol=0, atol=1e-6)


@pytest.mark.parametrize("change", [{"kernel_size": 5}, {"up_kernel_size": [3, 3, 1]}, {"act": "relu"}, {"norm": None},
                                    {"norm": "batch"}, {"bias": False}, {"adn_ordering": "NA"},
                                    {"dimensions": 3}, {"channels": [4]}])
def test_other_unet_arguments_are_left_to_monai(change):
    args = dict(CONFIGS[2], **change)
    assert not covers(args)
    if "channels" not in change and "dimensions" not in change:
        assert isinstance(build_network("UNet", args, inference=True), UNet)
    assert isinstance(build_network("UNet", CONFIGS[2]), UNet)  # training keeps MONAI's


def test_segment_runs_the_embedded_models_without_importing_monai():
    """The command line and every embedded model (built, sliding window, flip) import no MONAI."""
    code = """
import sys
import numpy as np, SimpleITK as sitk, torch
from LiverTumorSegLib import cli
from LiverTumorSegLib.inference import predict_image
from LiverTumorSegLib.pipeline import Pipeline

pipeline = Pipeline()
ct = sitk.GetImageFromArray(np.full((30, 40, 36), 60, np.float32))
ct.SetSpacing((3.0, 3.0, 3.0))
for model in [pipeline.liver_model, pipeline.liver_refine_model, *pipeline.tumor_members]:
    prior = ct if "liver_prior" in model.card.input_channels else None
    probability, spread = predict_image(ct, model, torch.device("cpu"), prior=prior, tta=True)
    assert spread is not None
print(sorted(name for name in sys.modules if name.split(".")[0] == "monai"))
"""
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.strip().splitlines()[-1] == "[]"
