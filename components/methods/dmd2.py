"""DMD2 (Yin et al. 2024, arXiv 2405.14867): distribution matching + two time-scale update rule +
GAN on real data + multi-step students with backward simulation; optionally DMD (v1, arXiv
2311.18828)'s regression loss on teacher pairs and an ODE-regression warm start.

Networks, all initialised from the teacher: generator G; real score mu_real = the frozen teacher
(classifier-free guidance); fake score mu_fake (trained) with a discriminator head D on its UNet
bottleneck. One iteration (../shared/PAPERS.md, DMD2):

    x0 = G(x_k, sigma_k, c)                                  step k of the student's list
    generator turn (every dfake_gen_update_ratio-th iteration):
        L_G = L_DM (eq. 7 / Sec. 4.1) + w_gen * softplus(-D(x0))  [+ lambda_reg * L_reg (DMD eq. 9)]
    critic turn (every iteration), on sg(x0):
        L_fake + w_D * [softplus(D(x0)) + softplus(-D(x_real))]   -> mu_fake and D
"""
from __future__ import annotations

import copy
from typing import Literal, Optional

import torch
import torch.nn.functional as F
from pydantic import Field, field_validator
from torch import nn

from components.config import ConfigError, DistillConfig
from components.data import ImageDataset
from components.diffusion.denoiser import Denoiser, state_hash
from components.diffusion.losses import edm_loss
from components.methods.interface import Method
from components.nets.lora import LoraSettings, add_lora
from components.training import ema_model


class DistributionMatchingConfig(DistillConfig):
    """The fields of distribution matching with two time-scale updates, shared by DMD2Config and
    components/methods/cascade_dmd2.py's CascadeDMD2Config."""

    lr_gen: float = Field(5e-4, gt=0)       # AdamW lr of G (paper ImageNet-64: 2e-6; screened on the digits
                                           # at 900 iterations: 2e-4 and 1e-3 were worse)
    lr_fake: float = Field(5e-4, gt=0)      # AdamW lr of the fake score (+ D head) (TTUR is the ratio)
    lr_warmup: int = Field(0, ge=0)         # linear LR warm-up iterations (reference: 500), then constant
    betas: tuple[float, float] = (0.0, 0.999)  # AdamW betas of both optimisers. beta1 = 0 (no momentum) is
                                           # our choice for these short runs; the official DMD2 code uses
                                           # PyTorch's (0.9, 0.999) for both (main/edm/train_edm.py, checked)
    weight_decay: float = Field(0.01, ge=0)    # AdamW wd (reference: 0.01)
    grad_clip: float = Field(10.0, gt=0)    # max grad norm for G and fake (reference: 10)
    dfake_gen_update_ratio: int = Field(5, ge=1)  # TTUR: fake-score updates per G update (paper: 5)
    guidance_scale: float = Field(1.0, ge=0)  # CFG scale of mu_real (1 = conditional)
    min_step_percent: float = Field(0.02, ge=0, le=1)  # L_DM noise levels: U[0.02 T, 0.98 T] ...
    max_step_percent: float = Field(0.98, ge=0, le=1)  # ... of a T=1000 Karras grid (reference)
    num_train_timesteps: int = Field(1000, ge=2)
    ema_decay: float = Field(0.99, ge=0, lt=1)  # EMA of G per G update (0 = off); the EMA is evaluated/exported


class DMD2Config(DistributionMatchingConfig):
    method: Literal["dmd2"] = "dmd2"
    denoising_timesteps: tuple[int, ...] = (999,)  # the student's steps as indices of the T-grid, strictly
                                           # decreasing (SDXL 4-step: 999, 749, 499, 249); 999 = sigma_max
    backward_simulation: bool = True       # multi-step: inputs of step k come from the student's own
                                           # steps 0..k-1 (Sec. 4.3); off: forward-noised real images
    rollout_model: Literal["ema", "online"] = "ema"  # who rolls out steps 0..k-1: the EMA generator (the
                                           # one evaluated and exported, so training sees what inference
                                           # sees) or the online G (the reference code; no EMA: always G)
    w_gen: float = Field(0.15, ge=0)        # GAN generator weight: w_gen * softplus(-D(x0)) (0 = no GAN). Reference
                                           # 3e-3; tuned so the GAN and DM gradients on x0 are comparable
    w_D: float = Field(1.0, ge=0)           # GAN critic weight on the fake-score turn (0 = no GAN; reference 1e-2)
    gan_max_step_percent: float = Field(1.0, gt=0, le=1)  # D sees inputs noised to U[0, this * T) of the grid
                                           # (1: the fake score's own levels, its forward pass shared, as the
                                           # official EDM runs: diffusion_gan_max_timestep 1000 in tianweiy/DMD2
                                           # experiments/imagenet/*.sh, checked; 0.3: sigma < 0.5 only, the earlier
                                           # default here - the leaderboard row "DMD2 1-step, D on low noise only")
    regression_weight: float = Field(0.0, ge=0)  # DMD v1 lambda_reg: MSE(G(z), teacher ODE(z)) on pairs
    warm_start_iterations: int = Field(0, ge=0)  # first iterations: ODE regression on pairs only (1-step)
    lora: Optional[LoraSettings] = None    # a LoRA student: only rank-r adapters on the generator's attention
                                           # projections train (needs a UNet with attention: text-to-image);
                                           # None: the full generator trains

    @field_validator("denoising_timesteps")
    @classmethod
    def _strictly_decreasing(cls, v):
        if not v:
            raise ValueError("expected at least one timestep")
        if any(a <= b for a, b in zip(v, v[1:])):
            raise ValueError(f"expected a strictly decreasing list of timesteps, got {list(v)}")
        return v


def distribution_matching_loss(x0: torch.Tensor, p_real: torch.Tensor, p_fake: torch.Tensor) -> torch.Tensor:
    """DMD eq. 7 / DMD2 Sec. 4.1: grad = (p_fake - p_real) / mean_CHW |x0 - p_real| (per sample);
    L = 0.5 ||x0 - sg(x0 - grad)||^2 so that dL/dx0 = grad. Per-sample values."""
    w = (x0 - p_real).abs().mean(dim=(1, 2, 3), keepdim=True)
    grad = torch.nan_to_num((p_fake - p_real) / w)
    return 0.5 * ((x0 - (x0 - grad).detach()) ** 2).mean(dim=(1, 2, 3))


def generator_gan_loss(logits_fake: torch.Tensor) -> torch.Tensor:
    """DMD2 Sec. 4.2, non-saturating: softplus(-D(x0)) per sample."""
    return F.softplus(-logits_fake).reshape(-1)


def critic_gan_loss(logits_fake: torch.Tensor, logits_real: torch.Tensor) -> torch.Tensor:
    """DMD2 Sec. 4.2: softplus(D(x0)) + softplus(-D(x_real)) per sample."""
    return F.softplus(logits_fake).reshape(-1) + F.softplus(-logits_real).reshape(-1)


def regression_loss(x0: torch.Tensor, y_ref: torch.Tensor) -> torch.Tensor:
    """DMD eq. 9 with MSE as the distance (the paper: LPIPS; no LPIPS weights offline), per sample."""
    return ((x0 - y_ref) ** 2).mean(dim=(1, 2, 3))


class DiscriminatorHead(nn.Module):
    """D: a small head on the fake score's bottleneck features -> one logit per sample."""

    def __init__(self, channels: int, groups: int = 8):
        super().__init__()
        g = groups if channels % groups == 0 else 1
        self.net = nn.Sequential(nn.Conv2d(channels, channels, 3, padding=1), nn.GroupNorm(g, channels), nn.SiLU(),
                                 nn.Conv2d(channels, channels, 3, padding=1), nn.GroupNorm(g, channels), nn.SiLU())
        self.out = nn.Linear(channels, 1)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return self.out(self.net(features).mean(dim=(2, 3))).squeeze(1)


class DMD2(Method):
    Config = DMD2Config

    def __init__(self, teacher: Denoiser, cfg: DMD2Config, data: ImageDataset, pairs=None,
                 init: Denoiser | None = None):
        super().__init__(teacher, cfg, data, pairs, init)
        T = cfg.num_train_timesteps
        if cfg.min_step_percent >= cfg.max_step_percent:
            raise ConfigError("config fields 'distill.min_step_percent' < 'distill.max_step_percent' required")
        if max(cfg.denoising_timesteps) >= T or min(cfg.denoising_timesteps) < 0:
            raise ConfigError(f"config field 'distill.denoising_timesteps': {list(cfg.denoising_timesteps)} must lie "
                              f"in [0, {T - 1}] (distill.num_train_timesteps = {T})")
        if cfg.warm_start_iterations and len(cfg.denoising_timesteps) != 1:
            raise ConfigError("config field 'distill.warm_start_iterations': the ODE-regression warm start is for "
                              "one-step students (distill.denoising_timesteps has "
                              f"{len(cfg.denoising_timesteps)} steps)")
        if cfg.warm_start_iterations >= cfg.iterations:
            raise ConfigError(f"config field 'distill.warm_start_iterations': {cfg.warm_start_iterations} must be "
                              f"below distill.iterations ({cfg.iterations})")
        if (cfg.regression_weight > 0 or cfg.warm_start_iterations > 0):
            if pairs is None:
                raise ConfigError("config fields 'distill.regression_weight' / 'distill.warm_start_iterations' need "
                                  "teacher pairs (the pairs step); none were given")
            pairs.check_teacher(state_hash(teacher), "teacher pairs")
        dev = self.device
        self.real = copy.deepcopy(teacher).to(dev).eval().requires_grad_(False)   # mu_real, frozen
        self.fake = copy.deepcopy(teacher).to(dev).train().requires_grad_(True)   # mu_fake
        # generator: a copy of the teacher, or of `init` (e.g. MSD's smaller student from its previous stage)
        self.G = copy.deepcopy(init if init is not None else teacher).to(dev).train().requires_grad_(True)
        if cfg.lora is not None:                                       # a LoRA student: adapters only
            add_lora(self.G.unet, cfg.lora, seed=cfg.seed + 3)
        self.G_params = [p for p in self.G.parameters() if p.requires_grad]
        self.G_ema = ema_model(self.G, cfg.ema_decay) if cfg.ema_decay > 0 else None   # AveragedModel
        self.gan = cfg.w_gen > 0 or cfg.w_D > 0
        with torch.no_grad():
            C, H, W = data.shape
            probe = self.fake.bottleneck(torch.zeros(1, C, H, W, device=dev), teacher.sigma_max,
                                         teacher.null_condition(1, dev))
        with torch.random.fork_rng(devices=[]):                        # D's init: a function of the seed only
            torch.manual_seed(cfg.seed + 2)
            self.D = DiscriminatorHead(probe.shape[1]).to(dev) if self.gan else None
        opt = dict(betas=cfg.betas, weight_decay=cfg.weight_decay)
        fake_params = list(self.fake.parameters()) + (list(self.D.parameters()) if self.D is not None else [])
        self.opt_G = torch.optim.AdamW(self.G_params, lr=cfg.lr_gen, **opt)
        self.opt_fake = torch.optim.AdamW(fake_params, lr=cfg.lr_fake, **opt)
        warm = cfg.lr_warmup
        ramp = (lambda s: min(1.0, (s + 1) / warm)) if warm else (lambda s: 1.0)  # noqa: E731
        self.sched_G = torch.optim.lr_scheduler.LambdaLR(self.opt_G, ramp)
        self.sched_fake = torch.optim.lr_scheduler.LambdaLR(self.opt_fake, ramp)
        # ascending in sigma, index T-1 = sigma_max: a Karras grid for an EDM teacher (as the reference EDM code
        # indexes it), a DDPM teacher's own schedule (tianweiy/DMD2 main/sd_guidance.py's integer timesteps, checked)
        self.sigma_grid = teacher.training_sigmas(T).to(dev)
        self.student_sigmas = [float(self.sigma_grid[t]) for t in cfg.denoising_timesteps]   # sigma_0 > ... > 0
        self.noise_scale = teacher.initial_noise_scale(self.student_sigmas[0])   # x_T = z * this
        self.rng = torch.Generator().manual_seed(cfg.seed + 1)

    # -- helpers -------------------------------------------------------------------------------
    def _sigmas(self, n: int, lo: int, hi: int, parts: int = 1) -> torch.Tensor:
        idx = self.world.shard(torch.randint(lo, hi, (self.world.global_size(n),), generator=self.rng), parts)
        return self.sigma_grid[idx.to(self.sigma_grid.device)]

    def _G(self, x, sigma, y) -> torch.Tensor:
        with self._autocast():
            return self.G(x, sigma, y).float()

    def _logits(self, x0: torch.Tensor, y: torch.Tensor, parts: int = 1) -> torch.Tensor:
        """D on mu_fake's bottleneck features of x0 noised to sigma ~ the T-grid (uniform index)."""
        hi = max(1, int(self.cfg.gan_max_step_percent * self.cfg.num_train_timesteps))
        sigma = self._sigmas(len(x0), 0, hi, parts)
        x_t = x0 + sigma.view(-1, 1, 1, 1) * self._randn(x0.shape, parts)
        with self._autocast():
            return self.D(self.fake.bottleneck(x_t, sigma, y)).float()

    def generator_input(self, batch: dict, y: torch.Tensor) -> tuple[torch.Tensor, float]:
        """(x_k, sigma_k) for a step k ~ U{0..K-1} of the student's list. k = 0: x_T = z sigma_0.
        Backward simulation (Sec. 4.3): roll the student through steps 0..k-1 without gradients and
        re-noise its output to sigma_k; without it: real images forward-noised to sigma_k."""
        s = self.student_sigmas
        k = int(torch.randint(0, len(s), (1,), generator=self.rng)) if len(s) > 1 else 0
        x = batch["noise"].to(self.device) * self.noise_scale
        if k == 0:
            return x, s[0]
        if not self.cfg.backward_simulation:
            return batch["real"].to(self.device) + s[k] * self._randn(x.shape), s[k]
        net = self.G_ema.module if self.cfg.rollout_model == "ema" and self.G_ema is not None else self.G
        with torch.no_grad(), self._autocast():
            for i in range(k):
                x = net(x, s[i], y).float() + s[i + 1] * self._randn(x.shape)
        return x, s[k]

    def _pairs_batch(self, n: int):
        idx = self.world.shard(torch.randint(0, len(self.pairs), (self.world.global_size(n),), generator=self.rng))
        p, s0 = self.pairs, self.noise_scale
        return (p.noise[idx].to(self.device) * s0, p.labels[idx].to(self.device), p.images[idx].to(self.device))

    def _ema(self) -> None:
        if self.G_ema is not None:
            self.G_ema.update_parameters(self.G)

    # -- one iteration -------------------------------------------------------------------------
    def train_step(self, batch: dict[str, torch.Tensor]) -> dict[str, float]:
        cfg = self.cfg
        logs: dict[str, float] = {}
        G_params = self.G_params
        if self.step < cfg.warm_start_iterations:                      # ODE-regression warm start
            x_T, y_p, x_ref = self._pairs_batch(len(batch["noise"]))
            loss = regression_loss(self._G(x_T, self.student_sigmas[0], y_p), x_ref).mean()
            if self._update(loss, G_params, self.opt_G, self.sched_G, "G", logs):
                self._ema()
            logs["loss_warm_start"] = loss.item()
            return self._finish(logs)
        y = batch["class_labels"].to(self.device)
        it = self.step - cfg.warm_start_iterations
        gen_turn = it % cfg.dfake_gen_update_ratio == 0
        x_k, sigma_k = self.generator_input(batch, y)
        with torch.set_grad_enabled(gen_turn):
            x0 = self._G(x_k, sigma_k, y)                              # x0 = G(x_k, sigma_k, c)
        if gen_turn:                                                   # generator turn (TTUR)
            T = cfg.num_train_timesteps
            sigma = self._sigmas(len(x0), int(cfg.min_step_percent * T), int(cfg.max_step_percent * T))
            x_t = x0.detach() + sigma.view(-1, 1, 1, 1) * self._randn(x0.shape)
            with torch.no_grad(), self._autocast():
                p_real = self.real.guided(x_t, sigma, y, cfg.guidance_scale).float()
                p_fake = self.fake(x_t, sigma, y).float()
            loss_dm = distribution_matching_loss(x0, p_real, p_fake).mean()
            loss_G = loss_dm
            logs["loss_dm"] = loss_dm.item()
            if self.gan and cfg.w_gen > 0:
                loss_gan = generator_gan_loss(self._logits(x0, y)).mean()
                loss_G = loss_G + cfg.w_gen * loss_gan
                logs["loss_gan_G"] = loss_gan.item()
            if cfg.regression_weight > 0:
                x_T, y_p, x_ref = self._pairs_batch(len(x0))
                loss_reg = regression_loss(self._G(x_T, self.student_sigmas[0], y_p), x_ref).mean()
                loss_G = loss_G + cfg.regression_weight * loss_reg
                logs["loss_reg"] = loss_reg.item()
            if self._update(loss_G, G_params, self.opt_G, self.sched_G, "G", logs):
                self._ema()
        # critic turn, every iteration: mu_fake learns the generator's current distribution; D tells
        # the generator's samples from real training images
        x0 = x0.detach()
        sigma = self._sigmas(len(x0), 0, cfg.num_train_timesteps)
        critic = self.gan and cfg.w_D > 0
        share = critic and cfg.gan_max_step_percent == 1.0
        seen: dict = {}
        hook = self.fake.unet.mid_block.register_forward_hook(lambda m, i, o: seen.update(h=o)) if share else None
        try:      # D(x0) reads the bottleneck of this very forward pass: no extra pass for the fake side
            with self._autocast():
                loss_fake = edm_loss(self.fake, x0, y, sigma, self._randn(x0.shape)).float().mean()
        finally:
            if hook is not None:
                hook.remove()
        logs["loss_fake"] = loss_fake.item()
        loss_critic = loss_fake
        fake_params = [p for group in self.opt_fake.param_groups for p in group["params"]]
        if critic:
            x_real = batch["real"].to(self.device)
            if share:
                with self._autocast():
                    logits_fake = self.D(seen["h"]).float()
                logits_real = self._logits(x_real, y)
            else:            # one batched pass for both sides (per-sample GroupNorm: the same logits)
                logits_fake, logits_real = self._logits(torch.cat([x0, x_real]), torch.cat([y, y]), parts=2).chunk(2)
            loss_D = critic_gan_loss(logits_fake, logits_real).mean()
            loss_critic = loss_critic + cfg.w_D * loss_D
            logs["loss_gan_D"] = loss_D.item()
        self._update(loss_critic, fake_params, self.opt_fake, self.sched_fake, "fake", logs)
        return self._finish(logs)

    # -- the student, checkpoints ---------------------------------------------------------------
    def student(self) -> Denoiser:
        G = copy.deepcopy(self.G_ema.module if self.G_ema is not None else self.G).cpu().eval()
        G.requires_grad_(False)
        G.sampling = {"sampler": "fewstep", "sigmas": [round(s, 6) for s in self.student_sigmas] + [0.0]}
        return G

    def checkpoint_parts(self) -> dict:
        return {"G": self.G, "fake": self.fake, "G_ema": self.G_ema, "D": self.D, "opt_G": self.opt_G,
                "opt_fake": self.opt_fake, "sched_G": self.sched_G, "sched_fake": self.sched_fake}


__all__ = ["DMD2", "DMD2Config", "DistributionMatchingConfig", "DiscriminatorHead", "critic_gan_loss",
           "distribution_matching_loss", "generator_gan_loss", "regression_loss"]
