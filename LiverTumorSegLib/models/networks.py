"""Backbones from MONAI, built by the name and arguments a model card gives (at inference, the
embedded models' UNet without importing MONAI: models.unet)."""

from __future__ import annotations

from typing import Any, Callable, Dict

import torch

from ..errors import LiverTumorSegError


def _segresnet(**kw: Any) -> torch.nn.Module:
    from monai.networks.nets import SegResNet
    return SegResNet(spatial_dims=3, **kw)


def _segresnetvae(**kw: Any) -> torch.nn.Module:
    from monai.networks.nets import SegResNetVAE
    return SegResNetVAE(spatial_dims=3, **kw)


def _unet(**kw: Any) -> torch.nn.Module:
    from monai.networks.nets import UNet
    return UNet(spatial_dims=3, **kw)


def _basicunet(**kw: Any) -> torch.nn.Module:
    from monai.networks.nets import BasicUNet
    return BasicUNet(spatial_dims=3, **kw)


def _vnet(width: int = 16, **kw: Any) -> torch.nn.Module:
    """MONAI's V-Net; ``width`` (its first level's channels, 16 in MONAI and the V-Net paper) makes
    it narrower: the levels have width, 2, 4, 8 and 16 x width channels and the same layer names."""
    from monai.networks.nets import VNet
    if width == 16:
        return VNet(spatial_dims=3, **kw)
    return _narrow_vnet(width, **kw)


def _narrow_vnet(width: int, in_channels: int = 1, out_channels: int = 1,
                 act: Any = ("elu", {"inplace": True}), dropout_prob_down: Any = 0.5,
                 dropout_prob_up: Any = (0.5, 0.5), bias: bool = False) -> torch.nn.Module:
    """MONAI's VNet with ``width`` instead of 16 channels at the first level (MONAI's forward)."""
    from monai.networks.nets import VNet
    from monai.networks.nets.vnet import DownTransition, InputTransition, OutputTransition, UpTransition

    if width < 1 or width % in_channels:
        raise ValueError(f"width {width} must be a positive multiple of in_channels {in_channels}")
    network = VNet.__new__(VNet)
    torch.nn.Module.__init__(network)
    w = width
    network.in_tr = InputTransition(3, in_channels, w, act, bias=bias)
    network.down_tr32 = DownTransition(3, w, 1, act, bias=bias)
    network.down_tr64 = DownTransition(3, 2 * w, 2, act, bias=bias)
    network.down_tr128 = DownTransition(3, 4 * w, 3, act, dropout_prob=dropout_prob_down, bias=bias)
    network.down_tr256 = DownTransition(3, 8 * w, 2, act, dropout_prob=dropout_prob_down, bias=bias)
    network.up_tr256 = UpTransition(3, 16 * w, 16 * w, 2, act, dropout_prob=tuple(dropout_prob_up))
    network.up_tr128 = UpTransition(3, 16 * w, 8 * w, 2, act, dropout_prob=tuple(dropout_prob_up))
    network.up_tr64 = UpTransition(3, 8 * w, 4 * w, 1, act)
    network.up_tr32 = UpTransition(3, 4 * w, 2 * w, 1, act)
    network.out_tr = OutputTransition(3, 2 * w, out_channels, act, bias=bias)
    return network


def _dynunet(**kw: Any) -> torch.nn.Module:
    from monai.networks.nets import DynUNet
    return DynUNet(spatial_dims=3, **kw)


ARCHITECTURES: Dict[str, Callable[..., torch.nn.Module]] = {
    "SegResNet": _segresnet,
    "SegResNetVAE": _segresnetvae,
    "UNet": _unet,
    "BasicUNet": _basicunet,
    "VNet": _vnet,
    "DynUNet": _dynunet,
}


def build_network(architecture: str, args: Dict[str, Any], inference: bool = False) -> torch.nn.Module:
    """Instantiate a 3-D MONAI network; unknown names or bad arguments give a clear error. With
    ``inference``, a UNet the model cards describe is built without importing MONAI
    (models.unet: the same modules and parameter names, MONAI's outputs)."""
    if inference and architecture == "UNet":
        from .unet import ResidualUNet, covers

        if covers(args):
            return ResidualUNet(**args)
    if architecture not in ARCHITECTURES:
        raise LiverTumorSegError(f"unknown architecture '{architecture}' in model card; "
                                 f"supported: {', '.join(sorted(ARCHITECTURES))}")
    try:
        return ARCHITECTURES[architecture](**args)
    except (TypeError, ValueError, AssertionError) as exc:  # MONAI checks its arguments with all three
        raise LiverTumorSegError(f"model card arguments do not fit {architecture}: {exc}") from None


def forward_logits(network: torch.nn.Module, batch: torch.Tensor) -> torch.Tensor:
    """Segmentation logits of any supported network (SegResNetVAE returns (logits, vae_loss))."""
    out = network(batch)
    if isinstance(out, (tuple, list)):
        out = out[0]
    return out
