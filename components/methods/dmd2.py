"""DMD2 (Yin et al. 2024, arXiv 2405.14867), one-step: distribution matching + two time-scale
update rule. Generator G and fake score mu_fake start from the teacher; the real score
mu_real is the frozen teacher (with classifier-free guidance). GAN term, multi-step students
with backward simulation, regression loss and resume slot in behind the same interface."""
from __future__ import annotations

import copy

import torch
from pydantic import Field

from components.config import ConfigError
from components.data import ImageDataset
from components.diffusion import karras_sigmas
from components.diffusion.denoiser import Denoiser
from components.diffusion.losses import edm_loss
from components.methods.base import DistillConfig, Method
from components.training import ema_copy, ema_update


class DMD2Config(DistillConfig):
    method: str = "dmd2"
    student_steps: int = Field(1, ge=1)     # generator steps at inference (multi-step: later issue)
    lr_gen: float = Field(2e-4, gt=0)       # AdamW lr of G (paper ImageNet-64: 2e-6; tiny CPU model: 2e-4)
    lr_fake: float = Field(2e-4, gt=0)      # AdamW lr of the fake score (same as G; TTUR is the ratio)
    betas: tuple[float, float] = (0.0, 0.999)  # beta1 = 0: no momentum, as in the reference code
    weight_decay: float = Field(0.01, ge=0)    # AdamW wd (reference: 0.01)
    grad_clip: float = Field(10.0, gt=0)    # max grad norm for G and fake (reference: 10)
    dfake_gen_update_ratio: int = Field(5, ge=1)  # TTUR: fake-score updates per G update (paper: 5)
    guidance_scale: float = Field(1.0, ge=0)  # CFG scale of mu_real (1 = conditional; 1.5 collapsed diversity here)
    min_step_percent: float = Field(0.02, ge=0, le=1)  # G loss noise levels: U[0.02 T, 0.98 T] ...
    max_step_percent: float = Field(0.98, ge=0, le=1)  # ... of a T=1000 Karras grid (reference)
    num_train_timesteps: int = Field(1000, ge=2)
    ema_decay: float = Field(0.99, ge=0, lt=1)  # EMA of G per G update (0 = off); the EMA is evaluated


def distribution_matching_loss(x0: torch.Tensor, p_real: torch.Tensor, p_fake: torch.Tensor) -> torch.Tensor:
    """DMD eq. 7 / DMD2 Sec. 4.1: grad = (p_fake - p_real) / mean_CHW |x0 - p_real| (per sample);
    L = 0.5 ||x0 - sg(x0 - grad)||^2 so that dL/dx0 = grad. Per-sample values."""
    w = (x0 - p_real).abs().mean(dim=(1, 2, 3), keepdim=True)
    grad = torch.nan_to_num((p_fake - p_real) / w)
    return 0.5 * ((x0 - (x0 - grad).detach()) ** 2).mean(dim=(1, 2, 3))


class DMD2(Method):
    Config = DMD2Config

    def __init__(self, teacher: Denoiser, cfg: DMD2Config, data: ImageDataset):
        super().__init__(teacher, cfg, data)
        if cfg.student_steps != 1:
            raise ConfigError("config field 'distill.student_steps': only 1 is supported so far "
                              "(multi-step DMD2 needs backward simulation, not yet built)")
        if cfg.min_step_percent >= cfg.max_step_percent:
            raise ConfigError("config fields 'distill.min_step_percent' < 'distill.max_step_percent' required")
        dev = self.device
        self.real = copy.deepcopy(teacher).to(dev).eval().requires_grad_(False)   # mu_real, frozen
        self.fake = copy.deepcopy(teacher).to(dev).train().requires_grad_(True)   # mu_fake
        self.G = copy.deepcopy(teacher).to(dev).train().requires_grad_(True)      # generator
        self.G_ema = ema_copy(self.G) if cfg.ema_decay > 0 else None
        opt = dict(betas=cfg.betas, weight_decay=cfg.weight_decay)
        self.opt_G = torch.optim.AdamW(self.G.parameters(), lr=cfg.lr_gen, **opt)
        self.opt_fake = torch.optim.AdamW(self.fake.parameters(), lr=cfg.lr_fake, **opt)
        # Karras grid ascending in sigma, as the reference EDM code indexes it
        self.sigma_grid = karras_sigmas(cfg.num_train_timesteps, teacher.sigma_min, teacher.sigma_max,
                                        append_zero=False).flip(0).to(dev)
        self.sigma_start = teacher.sigma_max         # one step: x_T ~ N(0, sigma_max^2)
        self.rng = torch.Generator().manual_seed(cfg.seed + 1)

    def _sigmas(self, n: int, lo: int, hi: int) -> torch.Tensor:
        idx = torch.randint(lo, hi, (n,), generator=self.rng)
        return self.sigma_grid[idx.to(self.sigma_grid.device)]

    def train_step(self, batch: dict[str, torch.Tensor]) -> dict[str, float]:
        cfg, dev = self.cfg, self.device
        y = batch["class_labels"].to(dev)
        x_T = batch["noise"].to(dev) * self.sigma_start
        gen_turn = self.step % cfg.dfake_gen_update_ratio == 0
        logs: dict[str, float] = {}
        with torch.set_grad_enabled(gen_turn):
            x0 = self.G(x_T, self.sigma_start, y)                       # x0 = G(x_T, sigma_max, c)
        if gen_turn:                                                     # generator turn (TTUR)
            T = cfg.num_train_timesteps
            sigma = self._sigmas(len(x0), int(cfg.min_step_percent * T), int(cfg.max_step_percent * T))
            noise = torch.randn(x0.shape, generator=self.rng).to(dev)
            x_t = x0.detach() + sigma.view(-1, 1, 1, 1) * noise
            with torch.no_grad():
                p_real = self.real.guided(x_t, sigma, y, cfg.guidance_scale)
                p_fake = self.fake(x_t, sigma, y)
            loss_G = distribution_matching_loss(x0, p_real, p_fake).mean()
            self.opt_G.zero_grad(set_to_none=True)
            loss_G.backward()
            logs["grad_norm_G"] = float(torch.nn.utils.clip_grad_norm_(self.G.parameters(), cfg.grad_clip))
            self.opt_G.step()
            if self.G_ema is not None:
                ema_update(self.G_ema, self.G, cfg.ema_decay, step=self.step // cfg.dfake_gen_update_ratio)
            logs["loss_dm"] = loss_G.item()
        # critic turn, every iteration: mu_fake learns the generator's current distribution
        sigma = self._sigmas(len(x0), 0, cfg.num_train_timesteps)
        noise = torch.randn(x0.shape, generator=self.rng).to(dev)
        loss_fake = edm_loss(self.fake, x0.detach(), y, sigma, noise).mean()
        self.opt_fake.zero_grad(set_to_none=True)
        loss_fake.backward()
        torch.nn.utils.clip_grad_norm_(self.fake.parameters(), cfg.grad_clip)
        self.opt_fake.step()
        logs["loss_fake"] = loss_fake.item()
        self.step += 1
        return logs

    def student(self) -> Denoiser:
        G = copy.deepcopy(self.G_ema if self.G_ema is not None else self.G).cpu().eval()
        G.requires_grad_(False)
        G.sampling = {"sampler": "fewstep", "sigmas": [self.sigma_start, 0.0]}
        return G

    def state_dict(self) -> dict:
        return {"G": self.G.state_dict(), "fake": self.fake.state_dict(),
                "G_ema": self.G_ema.state_dict() if self.G_ema is not None else None,
                "opt_G": self.opt_G.state_dict(), "opt_fake": self.opt_fake.state_dict(),
                "rng": self.rng.get_state(), "step": self.step}
