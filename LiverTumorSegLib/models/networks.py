"""Backbones from MONAI, built by the name and arguments a model card gives."""

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


def _vnet(**kw: Any) -> torch.nn.Module:
    from monai.networks.nets import VNet
    return VNet(spatial_dims=3, **kw)


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


def build_network(architecture: str, args: Dict[str, Any]) -> torch.nn.Module:
    """Instantiate a 3-D MONAI network; unknown names or bad arguments give a clear error."""
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
