"""LowDiff (Xu et al. 2025, arXiv 2509.15342 / ../shared/PAPERS.md): a cascade that generates at low resolution
first and refines to full resolution with ONE unified network conditioned on the lower-resolution result, so
fewer network evaluations run at full resolution.

The network and the sampler are components/diffusion/cascade.py (CascadeDenoiser, sample_cascade). This
method TRAINS that network from the data (it distils nothing: the `teacher` argument gives only the UNet's
widths, when distill.block_out_channels is unset, and the sigma range). One iteration, levels l = 0..L-1 at
resolutions r_l, each taking its share of the batch (distill.level_weights):

    x_l     = downsample(x, R / r_l)                                   the data at level l
    x_low   = upsample(downsample(x_l, r_l / r_{l-1}), r_l / r_{l-1})  its low-resolution input (none at l = 0)
    sigma   ~ ln sigma ~ N(P_mean, P_std^2), truncated above at train_sigma_max_l >= start_sigma_l for l >= 1 (a
              level above the first is only ever sampled from its start level down)
    L_l     = lambda(sigma) || D(x_l + sigma n, sigma, c; x_low, e(r_l)) - x_l ||^2      (EDM eq. 2, Table 1)
    L       = mean over the batch of every level's per-sample L_l

with classifier-free label dropout as the teacher is trained (components/teacher.py), Adam and an EMA of the
weights (the EMA is the model that is evaluated and exported). A one-level cascade (resolutions: [R]) is an
ordinary single-resolution diffusion model trained by the same code: the leaderboard's baseline of the same
size. Budget: an iteration costs sum_l w_l (r_l / R)^2 of a full-resolution one (`full_resolution_fraction`).
"""
from __future__ import annotations

import copy
import math
from typing import Literal, Optional

import torch
from pydantic import Field

from components.config import ConfigError, DistillConfig
from components.data import ImageDataset
from components.diffusion.cascade import (
    CascadeDenoiser,
    cascade_recipe,
    check_levels,
    downsample,
    noise_downsample,
    upsample,
)
from components.diffusion.denoiser import Denoiser
from components.methods.interface import Method
from components.training import ema_model


class LowDiffConfig(DistillConfig):
    method: Literal["lowdiff"] = "lowdiff"
    resolutions: Optional[tuple[int, ...]] = None   # the cascade's levels, increasing, the last = the data's (None:
                                             # [R/2, R], two levels); each must pass the UNet's downsamplings
    steps: tuple[int, ...] = (8, 4)          # Heun steps per level (NFE 2 n - 1 each): the lowest from sigma_max,
                                             # each higher one from its start_sigma
    start_sigma: tuple[float, ...] = (1.0,)  # the noise each level above the first starts from (one per level)
    train_sigma_max: Optional[tuple[float, ...]] = (5.0,)   # the highest noise each level above the first trains on
                                             # (>= its start_sigma; None: the whole schedule; unused with one level).
                                             # A one-seed pilot on Fashion 8 -> 16 (docs/lowdiff.md) chose 5
    level_weights: Optional[tuple[float, ...]] = None   # share of each batch per level (None: equal)
    block_out_channels: Optional[tuple[int, ...]] = None  # the UNet's widths (None: the teacher's)
    layers_per_block: Optional[int] = Field(None, ge=1)   # (None: the teacher's)
    lr: float = Field(1e-3, gt=0)            # Adam, as the teacher (components/teacher.py)
    ema_decay: float = Field(0.999, ge=0, lt=1)   # the EMA is the model (as the teacher's)
    label_dropout: float = Field(0.1, ge=0, lt=1)  # null class for classifier-free guidance (as the teacher's)
    P_mean: float = -1.2                     # EDM training noise (Table 1)
    P_std: float = Field(1.2, gt=0)
    grad_clip: float = Field(1e6, gt=0)      # effectively off, as the teacher's training (no clipping)
    cascade_dmd2: Optional[dict] = None      # then distil the trained cascade with DMD2 to one evaluation per level
                                             # (components/methods/cascade_dmd2.py): that step's distill overrides
                                             # ({} for its defaults; None: the trained cascade is the model)


def cascade_resolutions(cfg: LowDiffConfig, full: int, depth: int, sigma_min: float = 0.002,
                        sigma_max: float = 80.0) -> list[int]:
    """The configured resolutions checked against the data's resolution and the UNet (one-line ConfigErrors)."""
    res = list(cfg.resolutions) if cfg.resolutions is not None else [full // 2, full]
    res = check_levels(res, full, depth, cfg.steps, cfg.start_sigma, sigma_min, sigma_max)
    if cfg.train_sigma_max is not None and (len(res) > 1 or "train_sigma_max" in cfg.model_fields_set):
        if len(cfg.train_sigma_max) != len(res) - 1:
            raise ConfigError(f"config field 'distill.train_sigma_max': {list(cfg.train_sigma_max)}; expected one noise "
                              f"level per level above the first ({len(res) - 1} for resolutions {res}), or null")
        for top, start in zip(cfg.train_sigma_max, cfg.start_sigma):
            if not start <= top <= sigma_max:
                raise ConfigError(f"config field 'distill.train_sigma_max': {top} must lie in [start_sigma {start}, "
                                  f"sigma_max {sigma_max}]: a level samples from its start, so it must train there")
    if cfg.level_weights is not None and (len(cfg.level_weights) != len(res) or min(cfg.level_weights) < 0
                                          or sum(cfg.level_weights) <= 0):
        raise ConfigError(f"config field 'distill.level_weights': {list(cfg.level_weights)}; expected one weight >= 0 "
                          f"per level ({len(res)}), not all zero")
    return res


def level_sizes(n: int, weights) -> list[int]:
    """Split n samples over the levels in proportion to `weights` (largest remainders; sums to n)."""
    w = torch.tensor([float(v) for v in weights], dtype=torch.float64)
    share = w / w.sum() * n
    sizes = share.floor().long()
    for i in torch.argsort(share - sizes, descending=True)[: n - int(sizes.sum())]:
        sizes[i] += 1
    return sizes.tolist()


def full_resolution_fraction(resolutions, weights=None) -> float:
    """One iteration's cost in full-resolution iterations: sum_l w_l (r_l / R)^2 (w normalised; None: equal)."""
    w = [1.0] * len(resolutions) if weights is None else [float(v) for v in weights]
    return sum(wi * (r / resolutions[-1]) ** 2 for wi, r in zip(w, resolutions)) / sum(w)


def truncated_sigmas(u: torch.Tensor, P_mean: float, P_std: float, sigma_max: float) -> torch.Tensor:
    """ln sigma ~ N(P_mean, P_std^2) conditioned on sigma <= sigma_max, by the inverse CDF of u ~ U(0, 1)."""
    top = 0.5 * (1 + math.erf((math.log(sigma_max) - P_mean) / (P_std * math.sqrt(2))))
    return (P_mean + P_std * torch.special.ndtri((u * top).clamp(1e-12, 1 - 1e-12))).exp()


def build_cascade(teacher: Denoiser, cfg: LowDiffConfig, data: ImageDataset) -> CascadeDenoiser:
    """A fresh unified network: the teacher's UNet shape (or the config's) with 2C input channels."""
    from diffusers import UNet2DModel

    C, H, _ = data.shape
    t_cfg = teacher.unet.config
    widths = tuple(cfg.block_out_channels or t_cfg.block_out_channels)
    res = cascade_resolutions(cfg, H, len(widths), teacher.sigma_min, teacher.sigma_max)
    n = len(widths)
    unet = UNet2DModel(sample_size=H, in_channels=2 * C, out_channels=C, block_out_channels=widths,
                       layers_per_block=cfg.layers_per_block or t_cfg.layers_per_block,
                       down_block_types=("DownBlock2D",) * n, up_block_types=("UpBlock2D",) * n,
                       norm_num_groups=t_cfg.norm_num_groups, num_class_embeds=data.num_classes + 1,
                       time_embedding_type="positional", flip_sin_to_cos=True, freq_shift=0, add_attention=False)
    den = CascadeDenoiser(unet, data.num_classes, teacher.sigma_min, teacher.sigma_max, teacher.sigma_data, res)
    den.sampling = cascade_recipe(res, cfg.steps, cfg.start_sigma, teacher.sigma_max)
    return den


class LowDiff(Method):
    Config = LowDiffConfig

    def __init__(self, teacher: Denoiser, cfg: LowDiffConfig, data: ImageDataset, pairs=None):
        super().__init__(teacher, cfg, data, pairs)
        with torch.random.fork_rng(devices=[]):                      # the network's init: a function of the seed
            torch.manual_seed(cfg.seed)
            self.model = build_cascade(teacher, cfg, data).to(self.device).train()
        self.resolutions = self.model.resolutions
        self.weights = list(cfg.level_weights) if cfg.level_weights is not None else [1.0] * len(self.resolutions)
        self.ema = ema_model(self.model, cfg.ema_decay)
        self.opt = torch.optim.Adam(self.model.parameters(), lr=cfg.lr)
        self.sched = torch.optim.lr_scheduler.LambdaLR(self.opt, lambda s: 1.0)
        self.rng = torch.Generator().manual_seed(cfg.seed + 1)

    def _uniform(self, n: int) -> torch.Tensor:
        u = torch.rand(self.world.global_size(n), generator=self.rng)
        return self.world.shard(u).to(self.device)

    def level_loss(self, level: int, x: torch.Tensor, y: torch.Tensor, z: torch.Tensor,
                   u: torch.Tensor) -> torch.Tensor:
        """Per-sample EDM loss of the unified network at `level` on full-resolution images x (noise z, labels y;
        u ~ U(0, 1) per sample draws its noise level)."""
        cfg, R, r = self.cfg, self.resolutions[-1], self.resolutions[level]
        x_l, n = downsample(x, R // r), noise_downsample(z, R // r)
        x_low = None
        if level > 0:
            f = r // self.resolutions[level - 1]
            x_low = upsample(downsample(x_l, f), f)
        cap = cfg.train_sigma_max[level - 1] if level > 0 and cfg.train_sigma_max is not None else self.model.sigma_max
        sigma = truncated_sigmas(u, cfg.P_mean, cfg.P_std, cap)
        sigma = sigma.clamp(self.model.sigma_min, self.model.sigma_max)
        s_d = self.model.sigma_data
        weight = (sigma**2 + s_d**2) / (sigma * s_d) ** 2
        with self._autocast():
            x0_hat = self.model(x_l + sigma.view(-1, 1, 1, 1) * n, sigma, y, lowres=x_low).float()
        return weight * ((x0_hat - x_l) ** 2).mean(dim=(1, 2, 3))

    def train_step(self, batch: dict[str, torch.Tensor]) -> dict[str, float]:
        cfg, logs = self.cfg, {}
        x, z = batch["real"].to(self.device), batch["noise"].to(self.device)
        y = batch["class_labels"].to(self.device)
        drop = self._uniform(len(y)) < cfg.label_dropout                 # classifier-free guidance training
        y = torch.where(drop, torch.full_like(y, self.model.null_class), y)
        u = self._uniform(len(y))
        # each sample's level by its place in the GLOBAL batch (so data-parallel ranks split it as one process does)
        sizes = level_sizes(self.world.global_size(len(x)), self.weights)
        level_of = self.world.shard(torch.repeat_interleave(torch.arange(len(sizes)), torch.tensor(sizes)))
        losses = []
        for level in range(len(sizes)):
            rows = (level_of == level).nonzero().squeeze(1).to(self.device)
            if len(rows):
                per_sample = self.level_loss(level, x[rows], y[rows], z[rows], u[rows])
                losses.append(per_sample)
            # the level's mean over the global batch once the trainer averages the ranks' logs (a rank may hold none)
            total = float(per_sample.detach().sum()) if len(rows) else 0.0
            logs[f"loss_{self.resolutions[level]}px"] = total * self.world.size / max(sizes[level], 1)
        loss = torch.cat(losses).mean()
        logs["loss"] = loss.item()
        if self._update(loss, list(self.model.parameters()), self.opt, self.sched, "model", logs):
            self.ema.update_parameters(self.model)
        return self._finish(logs)

    def student(self) -> CascadeDenoiser:
        model = copy.deepcopy(self.ema.module).cpu().eval()
        model.requires_grad_(False)
        model.sampling = cascade_recipe(self.resolutions, self.cfg.steps, self.cfg.start_sigma, model.sigma_max)
        return model

    def checkpoint_parts(self) -> dict:
        return {"model": self.model, "ema": self.ema, "opt": self.opt, "sched": self.sched}


__all__ = ["LowDiff", "LowDiffConfig", "build_cascade", "cascade_resolutions", "full_resolution_fraction",
           "level_sizes", "truncated_sigmas"]
