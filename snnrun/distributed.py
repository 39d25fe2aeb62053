"""Training on several processes with PyTorch's own engine (torch.distributed, DistributedDataParallel).

Who this process is (`Ranks`, from the variables torchrun sets), the process group (NCCL on CUDA, gloo on the
CPU), this rank's share of a global batch, agreement and sums across ranks, and `launch`: N local processes
started through torchrun's launcher API (what `snnrun train --nproc N` does).

A global batch of B images (train.batch_size) is split into `world` contiguous parts whose sizes differ by at
most one; each rank scales its mean loss by (its images x world / B), so that DDP's average of the gradients
is exactly the gradient of the global batch's mean loss, whatever the split.
"""

from __future__ import annotations

import hashlib
import inspect
import os
import sys
import uuid
from dataclasses import dataclass

import torch
import torch.distributed as dist

from snnrun.config import ConfigError


@dataclass(frozen=True)
class Ranks:
    rank: int = 0
    world: int = 1
    local_rank: int = 0

    @property
    def main(self) -> bool:
        """Rank 0: the one that writes the run folder, shows progress and evaluates."""
        return self.rank == 0

    @property
    def active(self) -> bool:
        return self.world > 1


SINGLE = Ranks()


def from_environment() -> Ranks:
    """This process's place among the ones torchrun started (a single process when it did not)."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return SINGLE
    return Ranks(int(os.environ["RANK"]), world, int(os.environ.get("LOCAL_RANK", "0")))


def start(ranks: Ranks, device: torch.device) -> torch.device:
    """Join the process group (NCCL for CUDA, gloo otherwise); on CUDA each local rank takes its own GPU."""
    if device.type not in ("cuda", "cpu"):
        raise ConfigError(f"training on several processes runs on cuda or cpu, not {device.type}",
                          source="torchrun", key="device")
    if device.type == "cuda":
        local_world = int(os.environ.get("LOCAL_WORLD_SIZE", "1"))
        if local_world > torch.cuda.device_count():  # NCCL cannot put two ranks on one GPU
            raise ConfigError(f"{local_world} processes on this machine but {torch.cuda.device_count()} CUDA "
                              f"device(s); start at most one process per GPU (or use --device cpu)",
                              source="torchrun", key="device")
        device = torch.device("cuda", ranks.local_rank)
        torch.cuda.set_device(device)
    if not dist.is_initialized():
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    return device


def all_done(ranks: Ranks) -> None:
    """Wait until every rank has finished its work (rank 0: the run folder), so that none tears the process
    group down while another still talks to it: a rank leaving early aborted now and then at exit with gloo's
    "terminate called without an active exception" (4 of 70 torchrun launches of the smoke config)."""
    if ranks.active and dist.is_initialized():
        dist.barrier()


def finish() -> None:
    if dist.is_initialized():
        dist.destroy_process_group()


def shard(index: torch.Tensor, ranks: Ranks) -> tuple[torch.Tensor, float]:
    """This rank's part of a global batch's image indices, and the factor on its mean loss. A rank whose part
    is empty (a last batch smaller than the world) runs one image with factor 0, so every rank still joins
    the gradient exchange."""
    if not ranks.active:
        return index, 1.0
    part = torch.tensor_split(index, ranks.world)[ranks.rank]
    if len(part) == 0:
        return index[:1], 0.0
    return part, len(part) * ranks.world / len(index)


def any_rank(ranks: Ranks, device: torch.device, *flags: bool) -> list[bool]:
    """Each flag, true where it is true on any rank (all ranks get the same answer)."""
    if not ranks.active:
        return list(flags)
    t = torch.tensor([int(f) for f in flags], dtype=torch.int32, device=device)
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return [bool(v) for v in t.tolist()]


def sum_ranks(ranks: Ranks, device: torch.device, values: list[float]) -> list[float]:
    """Elementwise sums over the ranks (float64)."""
    if not ranks.active:
        return list(values)
    t = torch.tensor(values, dtype=torch.float64, device=device)
    dist.all_reduce(t)
    return t.tolist()


def gather(ranks: Ranks, obj) -> list:
    """obj from every rank, in rank order (on every rank)."""
    if not ranks.active:
        return [obj]
    out: list = [None] * ranks.world
    dist.all_gather_object(out, obj)
    return out


def replicate(model: torch.nn.Module, ranks: Ranks, device: torch.device) -> torch.nn.Module:
    """What the batches go through: the network itself, or with several ranks its DistributedDataParallel
    wrapper (identical replicas; the buffers, beta and threshold, are constants, so never re-broadcast)."""
    if not ranks.active:
        return model
    return torch.nn.parallel.DistributedDataParallel(
        model, device_ids=[device.index] if device.type == "cuda" else None, **_NO_BUFFER_SYNC)


# (torch 2.14 renamed broadcast_buffers; the old name still works but warns)
_NO_BUFFER_SYNC = ({"forward_sync_buffers": False}
                   if "forward_sync_buffers" in inspect.signature(torch.nn.parallel.DistributedDataParallel).parameters
                   else {"broadcast_buffers": False})


def weights_digest(model: torch.nn.Module) -> str:
    """SHA-256 of the model's parameters and buffers, to check that the replicas agree."""
    h = hashlib.sha256()
    for name, tensor in model.state_dict().items():
        h.update(name.encode())
        h.update(tensor.detach().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()


def launch(nproc: int, args: list[str]) -> None:
    """Run `python -m snnrun ARGS` as nproc processes on this machine via torchrun's launcher (standalone
    rendezvous on a free local port, no restarts). Each process gets cores/nproc CPU threads unless
    OMP_NUM_THREADS is set. Raises torch's ChildFailedError when a process fails (torchrun then stops the
    others)."""
    from torch.distributed.launcher.api import LaunchConfig, elastic_launch

    if "OMP_NUM_THREADS" not in os.environ:
        os.environ["OMP_NUM_THREADS"] = str(max(1, (os.cpu_count() or 1) // nproc))
    config = LaunchConfig(min_nodes=1, max_nodes=1, nproc_per_node=nproc, run_id=f"snnrun-{uuid.uuid4().hex[:8]}",
                          rdzv_backend="c10d", rdzv_endpoint="localhost:0", max_restarts=0, monitor_interval=0.2)
    elastic_launch(config, sys.executable)("-m", "snnrun", *args)
