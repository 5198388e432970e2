"""Weights files: safetensors only (no pickled code is ever executed), checked by sha256."""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Dict, Tuple

import torch

from ..errors import LiverTumorSegError


def sha256_of(path: Path, chunk: int = 1 << 20) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(chunk), b""):
            digest.update(block)
    return digest.hexdigest()


def save_weights(state_dict: Dict[str, torch.Tensor], path: Path) -> str:
    """Write a state dict as safetensors and return its sha256. Tensors a network holds under two
    names (DynUNet's skip layers) are written under each name, as ``state_dict`` lists them."""
    from safetensors.torch import save_file

    seen = set()
    tensors = {}
    for key, value in state_dict.items():
        tensor = value.detach().cpu().contiguous()
        storage = tensor.untyped_storage().data_ptr()
        tensors[key] = tensor.clone() if storage in seen and tensor.numel() else tensor
        seen.add(storage)
    save_file(tensors, str(path))
    return sha256_of(Path(path))


def load_weights(path: Path, expected_sha256: str) -> Dict[str, torch.Tensor]:
    """Load a safetensors file after checking its sha256; clear errors for missing/corrupt files."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    path = Path(path)
    if not path.is_file():
        raise LiverTumorSegError(f"weights file {path} is missing; reinstall the model or import it "
                                 "again with 'livertumorseg models import'")
    actual = sha256_of(path)
    if actual != expected_sha256:
        raise LiverTumorSegError(f"weights file {path} is corrupt or does not belong to its model card "
                                 f"(sha256 {actual[:12]}..., expected {expected_sha256[:12]}...); "
                                 "reinstall or re-import the model")
    try:
        return load_file(str(path), device="cpu")
    except (SafetensorError, OSError, ValueError) as exc:
        raise LiverTumorSegError(f"weights file {path} cannot be read as safetensors ({exc}); "
                                 "reinstall or re-import the model") from None


def tensor_shapes(path: Path) -> Dict[str, Tuple[int, ...]]:
    """The tensor names and shapes a safetensors file holds, from its header alone (the header is
    parsed and its offsets checked against the file size; nothing is unpickled or loaded)."""
    from safetensors import SafetensorError, safe_open

    try:
        with safe_open(str(path), framework="pt", device="cpu") as handle:
            return {key: tuple(int(n) for n in handle.get_slice(key).get_shape()) for key in handle.keys()}
    except (SafetensorError, OSError, ValueError) as exc:
        reason = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        raise LiverTumorSegError(f"weights file {path} cannot be read as safetensors ({reason}); a model's weights "
                                 "must be a complete safetensors file (a PyTorch .pt/.pth checkpoint is not "
                                 "accepted: convert it with safetensors.torch.save_file)") from None


def check_weights_fit(path: Path, architecture: str, architecture_args: Dict[str, object]) -> None:
    """Raise a LiverTumorSegError unless the safetensors file at ``path`` holds exactly the tensors
    (names and shapes) of the network the card describes, built on the CPU by ``build_network``."""
    from .networks import build_network

    found = tensor_shapes(path)
    network = build_network(architecture, dict(architecture_args))  # on the CPU
    expected = {key: tuple(value.shape) for key, value in network.state_dict().items()}
    problems = []
    missing = [k for k in expected if k not in found]
    unexpected = [k for k in found if k not in expected]
    wrong = [f"{k} {list(found[k])} (expected {list(expected[k])})"
             for k in expected if k in found and found[k] != expected[k]]
    for label, keys in (("missing", missing), ("unexpected", unexpected), ("with the wrong shape", wrong)):
        if keys:
            shown = ", ".join(keys[:3]) + (f" and {len(keys) - 3} more" if len(keys) > 3 else "")
            problems.append(f"{len(keys)} tensor(s) {label}: {shown}")
    if problems:
        raise LiverTumorSegError(f"weights file {path} does not fit the card's architecture {architecture} "
                                 f"({'; '.join(problems)}); the card and weights file do not belong together")
