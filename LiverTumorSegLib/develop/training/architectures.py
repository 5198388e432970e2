"""The networks ``livertumorseg train --architecture`` builds: MONAI backbones with the arguments
a model card records, sized for a liver or tumour model, and the patch sizes each accepts."""

from __future__ import annotations

from typing import Any, Dict, Mapping, Sequence, Tuple

from ...errors import LiverTumorSegError

# name -> (card architecture, default arguments without in/out channels, patch divisor)
ARCHITECTURE_PRESETS: Dict[str, Tuple[str, Dict[str, Any], int]] = {
    "unet": ("UNet", {"channels": [16, 32, 64, 128, 256], "strides": [2, 2, 2, 2], "num_res_units": 2}, 16),
    "segresnet": ("SegResNet", {"init_filters": 16, "blocks_down": [1, 2, 2, 4], "blocks_up": [1, 1, 1],
                                "dropout_prob": 0.2}, 8),
    "segresnetvae": ("SegResNetVAE", {"init_filters": 16, "blocks_down": [1, 2, 2, 4], "blocks_up": [1, 1, 1],
                                      "vae_nz": 256}, 8),
    # V-Net as the seed ran it (MONAI VNet, dropout 0.5)
    "vnet": ("VNet", {"dropout_prob_down": 0.5, "dropout_prob_up": [0.5, 0.5]}, 16),
    "dynunet": ("DynUNet", {"kernel_size": [[3, 3, 3]] * 5, "strides": [[1, 1, 1]] + [[2, 2, 2]] * 4,
                            "upsample_kernel_size": [[2, 2, 2]] * 4, "filters": [32, 64, 128, 256, 320],
                            "norm_name": "instance", "res_block": True}, 16),
}


def patch_divisor(name: str, args: Mapping[str, Any]) -> int:
    """The number every patch side must be a multiple of for this network."""
    if name == "unet":
        divisor = 1
        for stride in args.get("strides", []):
            divisor *= int(stride)
        return divisor
    if name in ("segresnet", "segresnetvae"):
        return 2 ** (len(args.get("blocks_down", [1, 2, 2, 4])) - 1)
    if name == "dynunet":
        divisor = 1
        for stride in args.get("strides", []):
            divisor *= int(stride[0] if isinstance(stride, (list, tuple)) else stride)
        return divisor
    return ARCHITECTURE_PRESETS[name][2]


def architecture_for(name: str, in_channels: int, patch_size_kji: Sequence[int],
                     overrides: Mapping[str, Any] = ()) -> Tuple[str, Dict[str, Any]]:
    """(card architecture, card arguments) of the network ``name`` (unet, segresnet, segresnetvae,
    vnet, dynunet) for a two-class output, its defaults updated by ``overrides``; the patch size
    must fit the network's down-sampling."""
    if name not in ARCHITECTURE_PRESETS:
        raise LiverTumorSegError(f"unknown architecture '{name}'; choose one of {', '.join(ARCHITECTURE_PRESETS)}")
    architecture, defaults, _ = ARCHITECTURE_PRESETS[name]
    args = dict(defaults)
    args.update(dict(overrides or {}))
    args.update(in_channels=in_channels, out_channels=2)
    if name == "segresnetvae":  # the VAE branch is sized for the training patch
        args["input_image_size"] = [int(v) for v in patch_size_kji]
    divisor = patch_divisor(name, args)
    if any(int(side) % divisor for side in patch_size_kji):
        raise LiverTumorSegError(f"the patch size {list(patch_size_kji)[::-1]} does not fit {architecture}: each side "
                                 f"must be a multiple of {divisor}")
    return architecture, args
