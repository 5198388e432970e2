"""The residual U-Net of the embedded models, for inference, without importing MONAI.

The models train as MONAI's ``UNet`` (develop.training). Importing MONAI loads all of its
submodules (transforms, data, scipy.signal, matplotlib, scikit-image): about 2 s of every
``segment`` on 2 CPU cores, a tenth of the run. This module builds the same network, the same
modules under the same parameter names, for the arguments the model cards use, so a card's
weights load into it unchanged and give MONAI's outputs (Testing/lib/test_unet.py compares them
on random weights). Arguments it does not cover fall back to MONAI (models.networks).

The layout (MONAI's): level by level, a down path, the deeper levels behind a concatenating skip
connection, an up path. A down step is a residual unit (``num_res_units`` convolutions, each
convolution then instance norm then PReLU, plus a strided or 1x1 residual convolution) or, with
no residual units, one such convolution; the bottom is a residual unit at stride 1; an up step
is a transposed convolution (norm and PReLU but at the top) followed, with residual units, by
one residual unit whose last convolution at the top is left bare (the logits).
"""

from __future__ import annotations

from typing import Any, Dict, List, Sequence

import torch
from torch import nn

# The architecture arguments this module covers, with the values it covers (None: any).
_COVERED: Dict[str, Any] = {"spatial_dims": (3,), "in_channels": None, "out_channels": None, "channels": None,
                            "strides": None, "kernel_size": (3, [3, 3, 3], (3, 3, 3)),
                            "up_kernel_size": (3, [3, 3, 3], (3, 3, 3)), "num_res_units": None,
                            "act": ("PRELU", "prelu"), "norm": ("INSTANCE", "instance"), "dropout": None,
                            "bias": (True,), "adn_ordering": ("NDA",)}
_KERNEL = 3


def covers(args: Dict[str, Any]) -> bool:
    """Whether ``args`` (a card's UNet arguments) describe a network this module builds: kernel 3,
    PReLU, instance norm, biases, MONAI's default ordering; any channels, strides, residual units
    and dropout (dropout does nothing at inference)."""
    for name, value in args.items():
        if name not in _COVERED:
            return False
        allowed = _COVERED[name]
        if allowed is not None and value not in allowed:
            return False
    channels, strides = args.get("channels"), args.get("strides")
    return (channels is not None and strides is not None and len(channels) >= 2
            and len(strides) == len(channels) - 1 and all(int(s) >= 1 for s in strides)
            and int(args.get("num_res_units", 0)) >= 0)


class _NormAct(nn.Module):
    """Instance norm then PReLU (MONAI's ADN in 'NDA' order; its dropout is dropped at inference)."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.N = nn.InstanceNorm3d(channels)
        self.A = nn.PReLU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.A(self.N(x))


class _Convolution(nn.Sequential):
    """A 3-D convolution (or transposed convolution), padded to keep the size at stride 1, then
    norm and activation unless ``bare``."""

    def __init__(self, in_channels: int, out_channels: int, stride: int, transposed: bool = False,
                 bare: bool = False) -> None:
        super().__init__()
        pad = _KERNEL // 2
        if transposed:
            self.add_module("conv", nn.ConvTranspose3d(in_channels, out_channels, _KERNEL, stride, pad,
                                                       output_padding=stride - 1))
        else:
            self.add_module("conv", nn.Conv3d(in_channels, out_channels, _KERNEL, stride, pad))
        if not bare:
            self.add_module("adn", _NormAct(out_channels))


class _ResidualUnit(nn.Module):
    """``units`` convolutions (the first strided) plus a residual path: the identity, or a
    convolution where the stride or the channel count changes (1x1 when only the channels do)."""

    def __init__(self, in_channels: int, out_channels: int, stride: int, units: int, last_bare: bool = False) -> None:
        super().__init__()
        self.conv = nn.Sequential()
        channels, unit_stride, units = in_channels, stride, max(1, units)
        for index in range(units):
            self.conv.add_module(f"unit{index}", _Convolution(channels, out_channels, unit_stride,
                                                              bare=last_bare and index == units - 1))
            channels, unit_stride = out_channels, 1
        self.residual: nn.Module = nn.Identity()
        if stride != 1:
            self.residual = nn.Conv3d(in_channels, out_channels, _KERNEL, stride, _KERNEL // 2)
        elif in_channels != out_channels:
            self.residual = nn.Conv3d(in_channels, out_channels, 1, 1, 0)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(x) + self.residual(x)


class _Skip(nn.Module):
    """The deeper levels, their output concatenated after their input along the channels."""

    def __init__(self, submodule: nn.Module) -> None:
        super().__init__()
        self.submodule = submodule

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat([x, self.submodule(x)], dim=1)


class ResidualUNet(nn.Module):
    """MONAI's 3-D ``UNet`` for the arguments :func:`covers` accepts (same modules, same parameter
    names): the network of the embedded models, built without importing MONAI."""

    def __init__(self, in_channels: int, out_channels: int, channels: Sequence[int], strides: Sequence[int],
                 num_res_units: int = 0, **_: Any) -> None:
        super().__init__()
        self.num_res_units = int(num_res_units)
        self.model = self._level(in_channels, out_channels, [int(c) for c in channels], [int(s) for s in strides],
                                 top=True)

    def _down(self, in_channels: int, out_channels: int, stride: int) -> nn.Module:
        if self.num_res_units > 0:
            return _ResidualUnit(in_channels, out_channels, stride, self.num_res_units)
        return _Convolution(in_channels, out_channels, stride)

    def _up(self, in_channels: int, out_channels: int, stride: int, top: bool) -> nn.Module:
        conv = _Convolution(in_channels, out_channels, stride, transposed=True, bare=top and self.num_res_units == 0)
        if self.num_res_units == 0:
            return conv
        return nn.Sequential(conv, _ResidualUnit(out_channels, out_channels, 1, 1, last_bare=top))

    def _level(self, in_channels: int, out_channels: int, channels: List[int], strides: List[int],
               top: bool) -> nn.Module:
        width, stride = channels[0], strides[0]
        if len(channels) > 2:
            deeper = self._level(width, width, channels[1:], strides[1:], top=False)
            up_in = 2 * width
        else:
            deeper = self._down(width, channels[1], 1)  # the bottom
            up_in = width + channels[1]
        return nn.Sequential(self._down(in_channels, width, stride), _Skip(deeper),
                             self._up(up_in, out_channels, stride, top))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x)
