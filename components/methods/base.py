"""The one interface every distillation method implements, its config base and the trainer.

build from (teacher, config, data) -> train_step(batch) -> dict of scalar logs; state_dict()
for checkpoints; student() for evaluation and export (its `.sampling` recipe says how to
sample it). Losses are functions with the paper's symbols returning per-sample values; the
reduction lives in train_step."""
from __future__ import annotations

from abc import ABC, abstractmethod
from typing import Callable, Optional

import torch
from pydantic import Field
from tqdm.auto import tqdm

from components.config import Section
from components.data import ImageDataset
from components.diffusion.denoiser import Denoiser
from components.training import BatchSampler, seed_everything, select_device


class DistillConfig(Section):
    """Fields every method shares; a method's Config subclasses this."""

    method: str = "dmd2"                   # registry name (components.methods.METHODS)
    iterations: int = Field(1400, ge=1)    # training iterations (every one a critic turn)
    batch_size: int = Field(64, ge=1)      # images per iteration
    seed: int = 0                          # one seed -> one result (data order, noise, timesteps)
    device: str = "auto"                   # 'auto' = CUDA when present, else CPU
    log_every: int = Field(50, ge=1)       # history / progress-bar granularity (iterations)
    fid_every: int = Field(0, ge=0)        # FID of the student at checkpoints every this many iterations (a
                                           # multiple of log_every; 0: off) - in the history, W&B and plots
    fid_samples: int = Field(1000, ge=10)  # samples per checkpoint FID (fewer than the final evaluation's)


class Method(ABC):
    """A distillation method: owns its networks and optimisers, trains one batch at a time."""

    Config: type[DistillConfig] = DistillConfig

    def __init__(self, teacher: Denoiser, cfg: DistillConfig, data: ImageDataset):
        self.cfg, self.data = cfg, data
        self.device = select_device(cfg.device)
        self.step = 0

    @abstractmethod
    def train_step(self, batch: dict[str, torch.Tensor]) -> dict[str, float]:
        """One iteration on batch = {'real': images, 'class_labels': labels, 'noise': z}."""

    @abstractmethod
    def student(self) -> Denoiser:
        """The generator to evaluate / export, with its `.sampling` recipe (CPU, eval mode)."""

    @abstractmethod
    def state_dict(self) -> dict:
        """Everything needed to resume exactly (networks, optimisers, RNG, step)."""


def distill(method: Method, progress: bool = True,
            callback: Optional[Callable[[int, dict], None]] = None) -> list[dict]:
    """Run cfg.iterations train steps on seeded batches of the TRAIN split; -> log history."""
    cfg = method.cfg
    g = seed_everything(cfg.seed)
    images, labels = method.data.split("train")
    batches = BatchSampler(images, labels, batch_size=min(cfg.batch_size, len(images)), generator=g)
    history, window = [], []
    bar = tqdm(range(cfg.iterations), desc=f"distill ({cfg.method})", disable=not progress, mininterval=2)
    for it in bar:
        x_real, y = batches.next()
        z = torch.randn(x_real.shape, generator=g)
        logs = method.train_step({"real": x_real, "class_labels": y, "noise": z})
        window.append(logs)
        if (it + 1) % cfg.log_every == 0 or it + 1 == cfg.iterations:
            keys = {k for w in window for k in w}
            mean = {k: sum(w[k] for w in window if k in w) / sum(k in w for w in window) for k in keys}
            mean["iteration"] = it + 1
            history.append(mean)
            bar.set_postfix({k: f"{v:.4f}" for k, v in mean.items() if k.startswith("loss")})
            if callback is not None:
                callback(it + 1, mean)
            window = []
    return history
