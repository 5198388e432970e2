"""The training objective of one batch, with SegResNetVAE's VAE term (seeds 001/004; Myronenko,
"3D MRI brain tumor segmentation using autoencoder regularization", 2018).

In training mode MONAI's SegResNetVAE returns (logits, L_VAE): its variational branch decodes the
encoder's output back to the input image, and L_VAE = mean (x - x_rec)^2 + mean z_mu^2 (the KL
term of a fixed-sigma posterior; with ``vae_estimate_std`` MONAI uses the full Gaussian KL). The
objective is

    L = L_seg(logits, target) + vae_weight * L_VAE          (vae_weight 0.1 as in Myronenko 2018)

so the VAE branch is trained with the segmentation and regularises the shared encoder; networks
without the branch (and SegResNetVAE in eval mode, which returns no VAE loss) give L = L_seg.
"""

from __future__ import annotations

from typing import Callable, Dict, Optional, Tuple

import torch

DEFAULT_VAE_WEIGHT = 0.1


def network_loss(network: torch.nn.Module, batch: torch.Tensor, target: torch.Tensor, loss_fn: Callable,
                 known: Optional[torch.Tensor] = None, sample_weights: Optional[torch.Tensor] = None,
                 vae_weight: float = DEFAULT_VAE_WEIGHT) -> Tuple[torch.Tensor, Dict[str, float]]:
    """(L, its parts as floats: ``segmentation`` and, for a network with a VAE branch, ``vae``)."""
    output = network(batch)
    vae = None
    if isinstance(output, (tuple, list)):
        output, vae = output[0], (output[1] if len(output) > 1 else None)
    segmentation = loss_fn(output.float(), target, known, sample_weights)  # in float32 under AMP too
    parts = {"segmentation": float(segmentation.detach())}
    if vae is None:
        return segmentation, parts
    parts["vae"] = float(vae.detach())
    return segmentation + vae_weight * vae.float(), parts
