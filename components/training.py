"""Small training utilities shared by the teacher, the feature net and every method."""
from __future__ import annotations

import copy
import random

import numpy as np
import torch
from torch import nn


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


def ema_copy(model: nn.Module) -> nn.Module:
    ema = copy.deepcopy(model).eval()
    ema.requires_grad_(False)
    return ema


@torch.no_grad()
def ema_update(ema: nn.Module, model: nn.Module, decay: float, step: int | None = None) -> None:
    """theta_ema <- d * theta_ema + (1 - d) * theta, d = min(decay, (1 + step) / (10 + step)) when
    `step` is given (warm-up, so a short run's EMA is not dominated by its first weights)."""
    if step is not None:
        decay = min(decay, (1.0 + step) / (10.0 + step))
    for p_e, p in zip(ema.parameters(), model.parameters()):
        p_e.lerp_(p.detach(), 1.0 - decay)
    for b_e, b in zip(ema.buffers(), model.buffers()):
        b_e.copy_(b)


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
