"""Guided distillation, stage 1 (Meng et al. 2022, "On Distillation of Guided Diffusion Models",
arXiv 2210.03142; ../shared/PAPERS.md).

The classifier-free-guided teacher needs two network evaluations per step, x_c (conditional) and x_u
(unconditional), combined as x^w = (1 + w) x_c - w x_u. Stage 1 trains ONE network x_eta(z_t, t, w)
that takes the guidance strength w as an input and predicts x^w directly:

    L_1(eta) = E_{x, c, t, w, eps} [ omega(t) || x_eta(z_t, t, w) - ((1 + w) x_c(z_t) - w x_u(z_t)) ||^2 ],
    z_t = x + t eps,   w ~ U[w_min, w_max],

with the EDM (VE) noise parametrisation of this project (sigma = t), t drawn as the teacher was trained
(ln t ~ N(P_mean, P_std^2), EDM Table 1) and omega(t) the truncated-SNR weight max(SNR(t), 1),
SNR(t) = sigma_data^2 / t^2 (the weight progressive distillation uses, stage 2, so both stages regress
in the same units). The student is components.diffusion.GuidedDenoiser: the teacher's UNet plus a
zero-initialised embedding of w (Fourier features -> MLP) added to its time embedding, so it starts as
the conditional teacher. It is sampled with deterministic DDIM (`samplers.sample_ddim`, the Euler step
of the probability-flow ODE) on `sampling_steps` Karras steps: the N that progressive distillation
(components/methods/progressive.py) halves.

Not checked against an official implementation: Meng et al. released none for pixel-space models;
this follows the paper's Sec. 4.1 and PAPERS.md.
"""
from __future__ import annotations

import copy
from typing import Any, Literal, Optional

import torch
from pydantic import Field

from components.config import ConfigError, DistillConfig
from components.data import ImageDataset
from components.diffusion import GuidedDenoiser, karras_sigmas
from components.diffusion.denoiser import Denoiser
from components.diffusion.noise_schedule import edm_training_sigmas
from components.methods.interface import Method
from components.training import ema_model


class WStudentConfig(DistillConfig):
    """What both stages share: a w-conditioned student regressed with Adam, and its EMA."""

    w_min: float = Field(0.0, ge=0)          # w ~ U[w_min, w_max] per sample (Meng et al.: [0, 4])
    w_max: float = Field(4.0, ge=0)
    # the fraction of each batch at w = 0 exactly (no guidance: the conditional model), the rest w ~ U[w_min, w_max].
    # Ours, not the paper's: the one network shares its capacity over the w range, and w = 0 is where the
    # users' plain conditional samples come from (docs/guided.md has the measurement)
    w_zero_prob: float = Field(0.0, ge=0, le=1)
    lr: float = Field(2e-4, gt=0)            # Adam
    lr_warmup: int = Field(0, ge=0)          # linear warm-up iterations, then constant
    ema_decay: float = Field(0.99, ge=0, lt=1)   # EMA of eta that is evaluated and exported (0 = the online net)
    grad_clip: float = Field(10.0, gt=0)


class GuidedConfig(WStudentConfig):
    method: Literal["guided"] = "guided"
    P_mean: float = -1.2                     # ln t ~ N(P_mean, P_std^2): the teacher's training noise levels
    P_std: float = Field(1.2, gt=0)
    sampling_steps: int = Field(16, ge=1)    # N: the student's DDIM steps (Karras grid); progressive halves it
    # the chain (pipelines.guided_pipeline, DVC): after stage 1, halve N down to target_steps, one progressive run
    # per halving (components.methods.progressive.halvings); None: stage 1 only. `halving`: overrides of every
    # halving's distill config over the keys it shares with this one (e.g. iterations, lr)
    target_steps: Optional[int] = Field(None, ge=1)
    halving: dict[str, Any] = Field(default_factory=dict)
    # the first halving's teacher solver (progressive.ProgressiveConfig.teacher_solver): "heun" (ours, the default)
    # makes the first halving learn the stage-1 student's Heun trajectory; "ddim" is the paper's; None: as the
    # other halvings (halving.teacher_solver). docs/guided.md has the measurement behind the default
    first_halving_solver: Optional[Literal["ddim", "heun"]] = "heun"


# GuidedConfig keys of the chain, not of stage 1's training
CHAIN_KEYS = ("target_steps", "halving", "first_halving_solver")


def halving_plan(start_steps: int, target_steps: int) -> list[int]:
    """The student step counts of a chain from `start_steps` (the guided student's N) down to
    `target_steps`: 16 -> 4 gives [8, 4]. N / target must be a power of 2 and target >= 1."""
    if target_steps < 1:
        raise ConfigError(f"config field 'distill.target_steps': {target_steps} is below 1 step")
    if target_steps >= start_steps:
        raise ConfigError(f"config field 'distill.target_steps': {target_steps} leaves nothing to halve from "
                          f"{start_steps} steps (expected fewer)")
    ratio = start_steps // target_steps
    if start_steps % target_steps or ratio & (ratio - 1):
        raise ConfigError(f"config field 'distill.target_steps': {start_steps} steps cannot be halved to "
                          f"{target_steps} (start / target must be a power of 2)")
    plan, n = [], start_steps
    while n > target_steps:
        n //= 2
        plan.append(n)
    return plan


def truncated_snr(t: torch.Tensor, sigma_data: float) -> torch.Tensor:
    """omega(t) = max(SNR(t), 1), SNR(t) = sigma_data^2 / t^2 on the VE schedule (Salimans & Ho 2022, Sec. 4)."""
    return (sigma_data**2 / t**2).clamp(min=1.0)


@torch.no_grad()
def guided_target(teacher: Denoiser, z_t: torch.Tensor, t: torch.Tensor, c: torch.Tensor,
                  w: torch.Tensor) -> torch.Tensor:
    """x^w(z_t) = (1 + w) x_c(z_t) - w x_u(z_t), w one per sample: the CFG teacher's prediction (2 NFE,
    batched into one call)."""
    null = torch.full_like(c, teacher.null_class)
    x_c, x_u = teacher(torch.cat([z_t, z_t]), torch.cat([t, t]), torch.cat([c, null])).chunk(2)
    w = w.view(-1, 1, 1, 1).to(z_t.dtype)
    return (1 + w) * x_c - w * x_u


def regression_loss(x_pred: torch.Tensor, x_target: torch.Tensor, t: torch.Tensor, sigma_data: float) -> torch.Tensor:
    """omega(t) ||x_pred - x_target||^2 per sample (pixel mean), omega = truncated SNR."""
    return truncated_snr(t, sigma_data) * ((x_pred - x_target) ** 2).mean(dim=(1, 2, 3))


class GuidedDistillation(Method):
    """Stage 1: x_eta(z_t, t, w) regresses the guided teacher. progressive.Progressive reuses the training
    loop (student, EMA, Adam, checkpoints) and replaces the target."""

    Config = GuidedConfig

    def __init__(self, teacher: Denoiser, cfg: GuidedConfig, data: ImageDataset, pairs=None):
        super().__init__(teacher, cfg, data, pairs)
        if cfg.w_max < cfg.w_min:
            raise ConfigError(f"config field 'distill.w_max': {cfg.w_max} is below distill.w_min ({cfg.w_min})")
        dev = self.device
        self.teacher = copy.deepcopy(teacher).to(dev).eval().requires_grad_(False)
        with torch.random.fork_rng(devices=[]):                # the w embedding's init: a function of the seed
            torch.manual_seed(cfg.seed + 2)
            self.S = self._init_student(teacher).to(dev).train().requires_grad_(True)    # eta
        self.S_ema = ema_model(self.S, cfg.ema_decay) if cfg.ema_decay > 0 else None
        self.opt = torch.optim.Adam(self.S.parameters(), lr=cfg.lr)
        warm = cfg.lr_warmup
        self.sched = torch.optim.lr_scheduler.LambdaLR(self.opt, (lambda s: min(1.0, (s + 1) / warm)) if warm
                                                       else (lambda s: 1.0))
        self.rng = torch.Generator().manual_seed(cfg.seed + 1)

    def _init_student(self, teacher: Denoiser) -> GuidedDenoiser:
        return GuidedDenoiser.from_teacher(teacher)

    def sample_w(self, n: int) -> torch.Tensor:
        """w per sample: U[w_min, w_max], a fraction w_zero_prob of them set to 0 (same draws across ranks)."""
        u = torch.rand(self.world.global_size(n), generator=self.rng)
        w = self.cfg.w_min + (self.cfg.w_max - self.cfg.w_min) * u
        if self.cfg.w_zero_prob > 0:                   # no extra draw otherwise: runs without it are unchanged
            w = torch.where(torch.rand(len(w), generator=self.rng) < self.cfg.w_zero_prob, torch.zeros_like(w), w)
        return self.world.shard(w).to(self.device)

    def target(self, x: torch.Tensor, c: torch.Tensor, z: torch.Tensor, w: torch.Tensor):
        """(z_t, t, the regression target) for clean images x, labels c, noise z and guidance w."""
        t = self.world.shard(edm_training_sigmas(self.world.global_size(len(x)), self.cfg.P_mean, self.cfg.P_std,
                                                 self.rng)).to(self.device)
        z_t = x + t.view(-1, 1, 1, 1) * z
        return z_t, t, guided_target(self.teacher, z_t, t, c, w)

    def train_step(self, batch: dict[str, torch.Tensor]) -> dict[str, float]:
        logs: dict[str, float] = {}
        x, c = batch["real"].to(self.device), batch["class_labels"].to(self.device)
        w = self.sample_w(len(x))
        with self._autocast():
            z_t, t, x_target = self.target(x, c, batch["noise"].to(self.device), w)
            x_pred = self.S.with_w(z_t, t, c, w)
        loss = regression_loss(x_pred.float(), x_target.float(), t, self.S.sigma_data).mean()
        logs["loss_distill"] = loss.item()
        if self._update(loss, list(self.S.parameters()), self.opt, self.sched, "S", logs) and self.S_ema is not None:
            self.S_ema.update_parameters(self.S)
        return self._finish(logs)

    def sampling(self, S: GuidedDenoiser) -> dict:
        """The student's default recipe: DDIM on `sampling_steps` Karras steps, then 0."""
        sigmas = karras_sigmas(self.cfg.sampling_steps, S.sigma_min, S.sigma_max)
        return {"sampler": "ddim", "sigmas": [round(float(v), 6) for v in sigmas]}

    def student(self) -> Denoiser:
        S = copy.deepcopy(self.S_ema.module if self.S_ema is not None else self.S).cpu().eval()
        S.requires_grad_(False)
        S.sampling = self.sampling(S)
        return S

    def checkpoint_parts(self) -> dict:
        return {"S": self.S, "S_ema": self.S_ema, "opt": self.opt, "sched": self.sched}


__all__ = ["CHAIN_KEYS", "GuidedConfig", "halving_plan", "WStudentConfig", "GuidedDistillation", "guided_target", "regression_loss", "truncated_snr"]
