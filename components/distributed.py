"""Data-parallel distillation over torch.distributed (DDP semantics; launched by torchrun, accelerate
launch or a Kubeflow PyTorchJob, which all set RANK / WORLD_SIZE / LOCAL_RANK / MASTER_ADDR).

Every rank runs the same code with the same seeds: it draws the random numbers of the whole
global batch and keeps its own contiguous shard, so W processes with B/W samples each see exactly
the samples, noise and timesteps of one process with batch B. Gradients of the per-rank mean
losses are averaged over ranks before clipping and the optimiser step (what DDP's all-reduce
does), so every rank holds the same weights after every step. One process (no torchrun): all of
this is the identity and costs nothing.

We sync gradients by hand instead of wrapping the networks in DistributedDataParallel: DMD2
trains three networks with two optimisers, takes several forward passes of one network per
step and leaves parameters unused on alternate turns, which DDP's reducer handles only with
find_unused_parameters and static-graph caveats; one explicit all-reduce per update is simpler
and exact."""
from __future__ import annotations

import os
from dataclasses import dataclass
from datetime import timedelta
from typing import Iterable

import torch
import torch.distributed as dist


@dataclass(frozen=True)
class World:
    """This process's place among the data-parallel ranks (rank 0 of 1 without torch.distributed)."""

    rank: int = 0
    size: int = 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def shard(self, t: torch.Tensor, parts: int = 1) -> torch.Tensor:
        """This rank's contiguous slice of a global batch. `parts` > 1: t is that many global batches
        end to end (e.g. fake then real), and each part is sliced alike."""
        if self.size == 1:
            return t
        n = len(t) // parts
        if n % self.size or len(t) % parts:
            raise ValueError(f"a global batch of {n} does not divide over {self.size} processes; "
                             f"set distill.batch_size to a multiple of the world size")
        k = n // self.size
        t = t.reshape(parts, n, *t.shape[1:])[:, self.rank * k:(self.rank + 1) * k]
        return t.reshape(parts * k, *t.shape[2:])

    def global_size(self, n: int) -> int:
        """Samples in the global batch whose shard here has n samples."""
        return n * self.size

    def average_gradients(self, params: Iterable[torch.nn.Parameter]) -> None:
        """grad <- mean over ranks of grad (DDP's all-reduce), one flat buffer per call."""
        if self.size == 1:
            return
        params = [p for p in params if p.grad is not None]   # None (unused this turn) stays None, as in
        grads = [p.grad for p in params]                       # one process: the optimiser skips them
        if not params:
            return
        flat = torch.cat([g.reshape(-1) for g in grads])
        dist.all_reduce(flat)
        flat /= self.size
        offset = 0
        for p, g in zip(params, grads):
            n = g.numel()
            p.grad = flat[offset:offset + n].view_as(p).clone()
            offset += n

    def mean(self, t: torch.Tensor) -> torch.Tensor:
        """The mean over ranks of a tensor (a new tensor; t itself on one process)."""
        if self.size == 1:
            return t
        out = t.detach().clone()
        dist.all_reduce(out)
        return out / self.size

    def any(self, flag: bool) -> bool:
        """True on every rank when it is True on any rank (so all ranks skip a bad step together)."""
        if self.size == 1:
            return flag
        t = torch.tensor([1.0 if flag else 0.0], device=_collective_device())
        dist.all_reduce(t)
        return bool(t.item() > 0)

    def mean_logs(self, logs: dict[str, float]) -> dict[str, float]:
        """Scalar logs averaged over ranks (the keys are the same on every rank: same control flow)."""
        if self.size == 1 or not logs:
            return logs
        keys = sorted(logs)
        t = torch.tensor([float(logs[k]) for k in keys], dtype=torch.float64, device=_collective_device())
        dist.all_reduce(t)
        t /= self.size
        return dict(zip(keys, t.tolist()))

    def barrier(self) -> None:
        if self.size > 1:
            dist.barrier()


def _collective_device() -> torch.device:
    return torch.device("cuda", torch.cuda.current_device()) if dist.get_backend() == "nccl" else torch.device("cpu")


def current_world() -> World:
    """The World of an initialised default process group, else a single process."""
    if dist.is_available() and dist.is_initialized():
        return World(dist.get_rank(), dist.get_world_size())
    return World()


def init_from_env(timeout_minutes: int = 60) -> World:
    """Join the process group a launcher (torchrun, accelerate, PyTorchJob) described in the
    environment; a no-op for a plain `python` run. NCCL when this rank has a GPU, else gloo."""
    size = int(os.environ.get("WORLD_SIZE", "1"))
    if size <= 1 or (dist.is_available() and dist.is_initialized()):
        return current_world()
    if not dist.is_available():
        raise RuntimeError("WORLD_SIZE > 1 but this torch build has no torch.distributed")
    missing = [k for k in ("RANK", "MASTER_ADDR", "MASTER_PORT") if k not in os.environ]
    if missing:
        raise RuntimeError(f"WORLD_SIZE={size} but {', '.join(missing)} not set: launch with torchrun "
                           "(or accelerate launch / a PyTorchJob), which sets them")
    cuda = torch.cuda.is_available()
    if cuda:
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
    dist.init_process_group("nccl" if cuda else "gloo", timeout=timedelta(minutes=timeout_minutes))
    return current_world()


def shutdown() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


__all__ = ["World", "current_world", "init_from_env", "shutdown"]
