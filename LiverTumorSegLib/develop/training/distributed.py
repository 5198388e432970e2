"""Distributed data parallel training under ``torchrun`` (``torchrun --nproc-per-node N -m
LiverTumorSegLib train ...``).

torchrun starts one process per device and gives each RANK, WORLD_SIZE and LOCAL_RANK. With W
processes:

* every process trains the same network; DistributedDataParallel averages the gradients,
  g = (1/W) Σ_r g_r, so one optimizer step sees W × batch_size patches;
* process r draws the batch of step s from ``numpy.random.default_rng([seed, s])`` for r = 0 (the
  batches of a one-process run) and ``[seed, s, r]`` otherwise (``patches.PatchBatches``);
* validation case i is predicted by process i mod W and the Dice per case gathered on all;
* process 0 alone writes files (config, split, logs, checkpoints, the card) and reports progress.

The process group uses NCCL on CUDA (device ``cuda:LOCAL_RANK``) and gloo on the CPU. Without
torchrun (WORLD_SIZE unset or 1) nothing of this is used.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from datetime import timedelta
from typing import Any, Dict, List, Mapping, Optional, Sequence, TypeVar

import torch

from ...errors import LiverTumorSegError

T = TypeVar("T")
TIMEOUT = timedelta(minutes=60)  # process 0 writes checkpoints while the others wait


@dataclass(frozen=True)
class Distributed:
    """This process's place in a torchrun launch (process 0 of 1 without one)."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @property
    def main(self) -> bool:
        return self.rank == 0

    @classmethod
    def from_environment(cls, environ: Optional[Mapping[str, str]] = None) -> "Distributed":
        """RANK, WORLD_SIZE and LOCAL_RANK as torchrun sets them."""
        environ = os.environ if environ is None else environ
        try:
            world = int(environ.get("WORLD_SIZE", "1"))
            rank = int(environ.get("RANK", "0"))
            local = int(environ.get("LOCAL_RANK", str(rank)))
        except ValueError:
            raise LiverTumorSegError("WORLD_SIZE, RANK and LOCAL_RANK must be whole numbers (torchrun sets them)") \
                from None
        if world < 1 or not 0 <= rank < world or local < 0:
            raise LiverTumorSegError(f"RANK {rank} of WORLD_SIZE {world} is not a process of the launch")
        return cls(rank, world, local)

    def start(self, device: torch.device) -> torch.device:
        """Join the process group (unless already joined); this process's device."""
        if not self.enabled:
            return device
        import torch.distributed as dist

        if device.type == "cuda":
            if self.local_rank >= torch.cuda.device_count():
                raise LiverTumorSegError(f"LOCAL_RANK {self.local_rank} has no GPU ({torch.cuda.device_count()} "
                                         "visible); start at most one process per GPU")
            device = torch.device("cuda", self.local_rank)
            torch.cuda.set_device(device)
        if not dist.is_initialized():
            dist.init_process_group("nccl" if device.type == "cuda" else "gloo", timeout=TIMEOUT)
        return device

    def stop(self) -> None:
        if self.enabled:
            import torch.distributed as dist

            if dist.is_initialized():
                dist.destroy_process_group()

    def barrier(self) -> None:
        if self.enabled:
            import torch.distributed as dist

            dist.barrier()

    def wrap(self, network: torch.nn.Module, device: torch.device) -> torch.nn.Module:
        """``network`` under DistributedDataParallel (the network itself in a one-process run)."""
        if not self.enabled:
            return network
        from torch.nn.parallel import DistributedDataParallel

        return DistributedDataParallel(network, device_ids=[device.index] if device.type == "cuda" else None)

    def mean(self, values: Sequence[float], device: torch.device) -> List[float]:
        """The mean over the processes of each of ``values``."""
        if not self.enabled:
            return [float(v) for v in values]
        import torch.distributed as dist

        tensor = torch.tensor([float(v) for v in values], dtype=torch.float64, device=device)
        dist.all_reduce(tensor)
        return (tensor / self.world_size).tolist()

    def share(self, items: Sequence[T]) -> List[T]:
        """This process's share: items rank, rank + W, rank + 2W, ..."""
        return list(items)[self.rank::self.world_size]

    def gather(self, part: Dict[str, Any]) -> Dict[str, Any]:
        """Every process's ``part`` merged (the same on all)."""
        if not self.enabled:
            return dict(part)
        import torch.distributed as dist

        parts: List[Optional[Dict[str, Any]]] = [None] * self.world_size
        dist.all_gather_object(parts, part)
        merged: Dict[str, Any] = {}
        for one in parts:
            merged.update(one or {})
        return merged
