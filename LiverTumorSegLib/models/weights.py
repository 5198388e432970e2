"""Weights files: safetensors only (no pickled code is ever executed), checked by sha256."""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Dict

import torch

from ..errors import LiverTumorSegError


def sha256_of(path: Path, chunk: int = 1 << 20) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(chunk), b""):
            digest.update(block)
    return digest.hexdigest()


def save_weights(state_dict: Dict[str, torch.Tensor], path: Path) -> str:
    """Write a state dict as safetensors and return its sha256."""
    from safetensors.torch import save_file

    tensors = {k: v.detach().cpu().contiguous() for k, v in state_dict.items()}
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
