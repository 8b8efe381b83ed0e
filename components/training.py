"""Small training utilities shared by the teacher, the feature net and every method."""
from __future__ import annotations

import random

import numpy as np
import torch
from torch import nn
from torch.optim.swa_utils import AveragedModel


def select_device(name: str = "auto") -> torch.device:
    """'auto' -> CUDA when present, else CPU; or an explicit torch device string."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def seed_everything(seed: int) -> torch.Generator:
    """Seed python, numpy and torch; return a torch.Generator seeded the same."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)
    return torch.Generator().manual_seed(seed)


def pin_threads(threads: int) -> int:
    """torch's intra-op CPU thread count for this process (compute.threads; 0 leaves torch's default).
    The order of float sums in a convolution depends on it, so one count is part of a reproducible run.
    -> the count in effect."""
    if threads > 0 and torch.get_num_threads() != threads:
        torch.set_num_threads(threads)
    return torch.get_num_threads()


def ema_model(model: nn.Module, decay: float) -> AveragedModel:
    """An exponential moving average of `model`: torch's AveragedModel (call `.update_parameters(model)`
    after each optimiser step; `.module` is the averaged network). Its update counter n is a buffer, so
    a checkpoint resumes the same average. Update 0 copies the model; update n >= 1 is
    theta_ema <- d theta_ema + (1 - d) theta with d = min(decay, (1 + n) / (10 + n)) - a warm-up, so a
    short run's EMA is not dominated by its first weights. Buffers are not averaged (the denoisers
    here have none)."""
    def average(ema_params, params, n):                     # AveragedModel's multi_avg_fn
        d = min(decay, (1.0 + float(n)) / (10.0 + float(n)))
        for p_e, p in zip(ema_params, params):
            p_e.lerp_(p, 1.0 - d)

    ema = AveragedModel(model, multi_avg_fn=average)
    ema.eval().requires_grad_(False)
    return ema


class BatchSampler:
    """Endless seeded minibatches (with reshuffling each epoch) from in-memory tensors."""

    def __init__(self, *tensors: torch.Tensor, batch_size: int, generator: torch.Generator):
        self.tensors, self.batch_size, self.generator = tensors, batch_size, generator
        self.n = len(tensors[0])
        self._perm, self._pos = torch.randperm(self.n, generator=generator), 0

    def next(self) -> tuple[torch.Tensor, ...]:
        if self._pos + self.batch_size > self.n:
            self._perm, self._pos = torch.randperm(self.n, generator=self.generator), 0
        idx = self._perm[self._pos:self._pos + self.batch_size]
        self._pos += self.batch_size
        return tuple(t[idx] for t in self.tensors)

    def state_dict(self) -> dict:
        return {"perm": self._perm.clone(), "pos": self._pos, "generator": self.generator.get_state()}

    def load_state_dict(self, state: dict) -> None:
        self._perm, self._pos = state["perm"].clone(), int(state["pos"])
        self.generator.set_state(state["generator"])
