"""DMD2 on a LowDiff cascade (issue 19's composition): the unified network that distill.method lowdiff trained
(components/diffusion/cascade.py) is distilled so that every level of the cascade takes ONE network evaluation.

The student is again a cascade - the same unified network class, the same sampler `cascade` - with one Heun step
per level: from the level's start noise s_l the single step to 0 is the Euler step, which returns D(x_in), so a
level costs one evaluation. Three copies of the cascade, as DMD2 (components/methods/dmd2.py): the generator G,
the frozen real score mu_real (the cascade itself) and the fake score mu_fake (trained). One iteration, each
sample of the batch at one level l (distill.level_weights, as LowDiff's training; resolution r_l, full R):

    x_low = upsample(downsample(x_l))      the real image's level below, upsampled (none at l = 0): the cascade's
                                           own training input (the sampler feeds the level below's result)
    x_in  = x_low + s_l n                  s_0 = sigma_max from pure noise; s_l the level's start noise
    x0    = G(x_in, s_l, c; x_low)
    generator turn (every dfake_gen_update_ratio-th iteration):
        L_DM  = DMD eq. 7 / DMD2 Sec. 4.1 on x_t = sg(x0) + sigma n, p_real = mu_real(x_t, sigma, c; x_low),
                p_fake = mu_fake(x_t, sigma, c; x_low); sigma on DMD2's T-grid from min_step_percent up to
                max_step_percent, and at l >= 1 no higher than train_sigma_max_l (the noise the cascade's level
                was trained on: its real score is not defined above it)
    critic turn (every iteration): mu_fake's EDM denoising loss on sg(x0) with x_low, sigma on the same T-grid
        range from its bottom

No GAN term: the cascade's network has no single-resolution bottleneck for DMD2's discriminator head, and DMD2
without the GAN is the better Fashion-MNIST 1-step row (docs/results.md). The distribution matching loss is
dmd2.distribution_matching_loss itself."""
from __future__ import annotations

import copy
from typing import Literal, Optional

import torch

from components.config import ConfigError, DistillConfig, parse_section
from components.data import ImageDataset
from components.diffusion import karras_sigmas
from components.diffusion.cascade import CascadeDenoiser, cascade_recipe, downsample, noise_downsample, upsample
from components.diffusion.denoiser import Denoiser
from components.methods.dmd2 import DistributionMatchingConfig, distribution_matching_loss
from components.methods.interface import Method
from components.methods.lowdiff import LowDiffConfig, level_sizes
from components.training import ema_model


class CascadeDMD2Config(DistributionMatchingConfig):
    method: Literal["cascade_dmd2"] = "cascade_dmd2"
    train_sigma_max: Optional[tuple[float, ...]] = (5.0,)  # per level above the first: the highest noise its real
                                           # score is asked at (the cascade's own distill.train_sigma_max; None: the
                                           # whole T-grid range)
    level_weights: Optional[tuple[float, ...]] = None      # share of each batch per level (None: equal)


def cascade_stage(cfg: LowDiffConfig) -> Optional[dict]:
    """The distill section of the step after a LowDiff training that sets distill.cascade_dmd2 (None when it is
    unset): the LowDiff section's method-independent keys (seed, batch size, iterations, intervals, device, ...),
    its train_sigma_max and level_weights, then distill.cascade_dmd2's overrides; validated here (one line naming
    distill.cascade_dmd2.<field>)."""
    if cfg.cascade_dmd2 is None:
        return None
    shared = {k: v for k, v in cfg.model_dump(mode="json").items()
              if k in DistillConfig.model_fields and k != "method"}
    if cfg.cascade_dmd2.get("method", "cascade_dmd2") != "cascade_dmd2":
        raise ConfigError("config field 'distill.cascade_dmd2.method': the stage after a LowDiff training is "
                          "cascade_dmd2; leave it out")
    values = {**shared, "train_sigma_max": cfg.train_sigma_max, "level_weights": cfg.level_weights,
              **cfg.cascade_dmd2, "method": "cascade_dmd2"}
    return parse_section(CascadeDMD2Config, values, "distill.cascade_dmd2").model_dump(mode="json")


class CascadeDMD2(Method):
    Config = CascadeDMD2Config

    def __init__(self, teacher: Denoiser, cfg: CascadeDMD2Config, data: ImageDataset, pairs=None):
        super().__init__(teacher, cfg, data, pairs)
        if not isinstance(teacher, CascadeDenoiser):
            raise ConfigError(f"config field 'distill.method': cascade_dmd2 distils a LowDiff cascade (the student "
                              f"of distill.method lowdiff, or its export folder); the teacher is a "
                              f"{type(teacher).__name__}")
        if cfg.min_step_percent >= cfg.max_step_percent:
            raise ConfigError("config fields 'distill.min_step_percent' < 'distill.max_step_percent' required")
        self.resolutions = list(teacher.resolutions)
        L = len(self.resolutions)
        levels = teacher.sampling.get("levels") or []
        if [int(lv["resolution"]) for lv in levels] != self.resolutions:
            got = [lv.get("resolution") for lv in levels]
            raise ConfigError(f"teacher: a cascade whose sampling recipe's levels {got} are not its resolutions "
                              f"{self.resolutions}")
        self.starts = [float(teacher.sigma_max)] + [float(lv["sigma_start"]) for lv in levels[1:]]   # s_l
        caps = [float(teacher.sigma_max)] * L
        if cfg.train_sigma_max is not None and L > 1:
            if len(cfg.train_sigma_max) != L - 1:
                raise ConfigError(f"config field 'distill.train_sigma_max': {list(cfg.train_sigma_max)}; expected one "
                                  f"noise level per level above the first ({L - 1} for resolutions {self.resolutions})"
                                  ", or null")
            for top, start in zip(cfg.train_sigma_max, self.starts[1:]):
                if not start <= top <= teacher.sigma_max:
                    raise ConfigError(f"config field 'distill.train_sigma_max': {top} must lie in [start_sigma "
                                      f"{start}, sigma_max {teacher.sigma_max}] (the level starts there)")
            caps[1:] = [float(c) for c in cfg.train_sigma_max]
        if cfg.level_weights is not None and (len(cfg.level_weights) != L or min(cfg.level_weights) < 0
                                              or sum(cfg.level_weights) <= 0):
            raise ConfigError(f"config field 'distill.level_weights': {list(cfg.level_weights)}; expected one weight "
                              f">= 0 per level ({L}), not all zero")
        self.weights = list(cfg.level_weights) if cfg.level_weights is not None else [1.0] * L
        dev = self.device
        self.real = copy.deepcopy(teacher).to(dev).eval().requires_grad_(False)      # mu_real, frozen
        self.fake = copy.deepcopy(teacher).to(dev).train().requires_grad_(True)      # mu_fake
        self.G = copy.deepcopy(teacher).to(dev).train().requires_grad_(True)         # generator
        self.G_ema = ema_model(self.G, cfg.ema_decay) if cfg.ema_decay > 0 else None
        opt = dict(betas=cfg.betas, weight_decay=cfg.weight_decay)
        self.opt_G = torch.optim.AdamW(self.G.parameters(), lr=cfg.lr_gen, **opt)
        self.opt_fake = torch.optim.AdamW(self.fake.parameters(), lr=cfg.lr_fake, **opt)
        warm = cfg.lr_warmup
        ramp = (lambda s: min(1.0, (s + 1) / warm)) if warm else (lambda s: 1.0)  # noqa: E731
        self.sched_G = torch.optim.lr_scheduler.LambdaLR(self.opt_G, ramp)
        self.sched_fake = torch.optim.lr_scheduler.LambdaLR(self.opt_fake, ramp)
        T = cfg.num_train_timesteps
        # DMD2's Karras T-grid, ascending (index T-1 = sigma_max); per level the index range its noise is drawn from
        self.sigma_grid = karras_sigmas(T, teacher.sigma_min, teacher.sigma_max, append_zero=False).flip(0).to(dev)
        below = [int((self.sigma_grid <= c * (1 + 1e-6)).sum()) for c in caps]       # grid points at or below the cap
        self.dm_range = [(int(cfg.min_step_percent * T), max(int(cfg.min_step_percent * T) + 1,
                                                              min(int(cfg.max_step_percent * T), n))) for n in below]
        self.critic_top = [max(1, min(T, n)) for n in below]
        self.rng = torch.Generator().manual_seed(cfg.seed + 1)

    # -- helpers -------------------------------------------------------------------------------
    def _uniform(self, n: int) -> torch.Tensor:
        return self.world.shard(torch.rand(self.world.global_size(n), generator=self.rng)).to(self.device)

    def _grid(self, u: torch.Tensor, lo: int, hi: int) -> torch.Tensor:
        """sigma at a uniform index of the T-grid in [lo, hi), from u ~ U(0, 1)."""
        idx = (lo + (u * (hi - lo)).long()).clamp(lo, hi - 1)
        return self.sigma_grid[idx]

    def level_input(self, level: int, x: torch.Tensor, z: torch.Tensor):
        """(x_in, s_l, x_low, factor): the generator's input at `level` for full-resolution images x and
        standard-normal noise z (pooled to the level, as the sampler's), the level's start noise, the level below
        upsampled (None at level 0) and the level's downsampling factor."""
        R, r = self.resolutions[-1], self.resolutions[level]
        down, s = R // r, self.starts[level]
        n = noise_downsample(z, down)
        if level == 0:
            return n * s, s, None, down
        f = r // self.resolutions[level - 1]
        x_low = upsample(downsample(downsample(x, down), f), f)
        return x_low + s * n, s, x_low, down

    def _real(self, x_t, sigma, y, x_low) -> torch.Tensor:
        """mu_real with classifier-free guidance at distill.guidance_scale (the low-resolution input in both calls)."""
        s = self.cfg.guidance_scale
        cond = self.real(x_t, sigma, y, lowres=x_low)
        if s == 1.0:
            return cond
        uncond = self.real(x_t, sigma, torch.full_like(y, self.real.null_class), lowres=x_low)
        return uncond + s * (cond - uncond)

    # -- one iteration -------------------------------------------------------------------------
    def train_step(self, batch: dict[str, torch.Tensor]) -> dict[str, float]:
        cfg, logs, dev = self.cfg, {}, self.device
        x, z = batch["real"].to(dev), batch["noise"].to(dev)
        y = batch["class_labels"].to(dev)
        # each sample's level by its place in the GLOBAL batch (data-parallel ranks split it as one process does)
        sizes = level_sizes(self.world.global_size(len(x)), self.weights)
        level_of = self.world.shard(torch.repeat_interleave(torch.arange(len(sizes)), torch.tensor(sizes)))
        u_dm, u_fake = self._uniform(len(x)), self._uniform(len(x))
        e_dm, e_fake = self._randn(x.shape), self._randn(x.shape)
        gen_turn = self.step % cfg.dfake_gen_update_ratio == 0
        parts = []                                      # per level: (rows, x0, x_low, factor)
        for level in range(len(sizes)):
            rows = (level_of == level).nonzero().squeeze(1).to(dev)
            if len(rows):
                x_in, s, x_low, down = self.level_input(level, x[rows], z[rows])
                with torch.set_grad_enabled(gen_turn), self._autocast():
                    x0 = self.G(x_in, s, y[rows], lowres=x_low).float()      # x0 = G(x_in, s_l, c; x_low)
                parts.append((level, rows, x0, x_low, down))
        if gen_turn:                                    # generator turn (TTUR)
            losses = []
            for level, rows, x0, x_low, down in parts:
                sigma = self._grid(u_dm[rows], *self.dm_range[level])
                x_t = x0.detach() + sigma.view(-1, 1, 1, 1) * noise_downsample(e_dm[rows], down)
                with torch.no_grad(), self._autocast():
                    p_real = self._real(x_t, sigma, y[rows], x_low).float()
                    p_fake = self.fake(x_t, sigma, y[rows], lowres=x_low).float()
                losses.append(distribution_matching_loss(x0, p_real, p_fake))
                logs[f"loss_dm_{self.resolutions[level]}px"] = float(losses[-1].detach().mean())
            loss_dm = torch.cat(losses).mean()
            logs["loss_dm"] = loss_dm.item()
            updated = self._update(loss_dm, list(self.G.parameters()), self.opt_G, self.sched_G, "G", logs)
            if updated and self.G_ema is not None:
                self.G_ema.update_parameters(self.G)
        # critic turn, every iteration: mu_fake learns the generator's current distribution at every level
        s_d, losses = self.fake.sigma_data, []
        for level, rows, x0, x_low, down in parts:
            x0 = x0.detach()
            sigma = self._grid(u_fake[rows], 0, self.critic_top[level])
            weight = (sigma**2 + s_d**2) / (sigma * s_d) ** 2                              # EDM Table 1
            with self._autocast():
                x_hat = self.fake(x0 + sigma.view(-1, 1, 1, 1) * noise_downsample(e_fake[rows], down), sigma,
                                  y[rows], lowres=x_low).float()
            losses.append(weight * ((x_hat - x0) ** 2).mean(dim=(1, 2, 3)))
        loss_fake = torch.cat(losses).mean()
        logs["loss_fake"] = loss_fake.item()
        self._update(loss_fake, list(self.fake.parameters()), self.opt_fake, self.sched_fake, "fake", logs)
        return self._finish(logs)

    # -- the student, checkpoints ---------------------------------------------------------------
    def student(self) -> CascadeDenoiser:
        G = copy.deepcopy(self.G_ema.module if self.G_ema is not None else self.G).cpu().eval()
        G.requires_grad_(False)
        G.sampling = cascade_recipe(self.resolutions, [1] * len(self.resolutions), self.starts[1:], G.sigma_max)
        return G

    def checkpoint_parts(self) -> dict:
        return {"G": self.G, "fake": self.fake, "G_ema": self.G_ema, "opt_G": self.opt_G, "opt_fake": self.opt_fake,
                "sched_G": self.sched_G, "sched_fake": self.sched_fake}


__all__ = ["CascadeDMD2", "CascadeDMD2Config", "cascade_stage"]
