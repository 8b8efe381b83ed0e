"""CTM - Consistency Trajectory Models (Kim et al. 2023, arXiv 2310.02279): one student G(x_t, t, s) that
jumps from any time t to any s <= t along the teacher's probability-flow ODE, so one network samples in
1 step, in long deterministic jumps, or as a consistency model in several steps (gamma-sampling,
components/diffusion/samplers.py: sample_gamma).

The student is components.diffusion.CTMDenoiser (eq. 3): G(x_t, t, s) = (s/t) x_t + (1 - s/t) g(x_t, t, s),
g the teacher's UNet with an added, zero-initialised embedding of s. One iteration (Sec. 4 / Algorithm 2;
the time sampling as sony/ctm code/cm/karras_diffusion.py `ctm_losses` and code/cm/resample.py, checked):

    k ~ p(k) prop. to k on 1..K            teacher Heun steps of this batch ('weighted' heun_step_strategy)
    n ~ U{0..N-1-k}, m ~ U{n+k..N-1}       t = t_n > u = t_{n+k} >= s = t_m on the N-point Karras grid
    x_t = x + t z
    x_est    = G_theta(x_t, t, s)                                    (the student's jump t -> s)
    x_target = G_sg(x_u, u, s),  x_u = Solver(x_t, t, u; phi)        (teacher Heun t -> u, then a jump u -> s)
    L_CTM    = d(G_theta-(x_est, s, 0), G_theta-(x_target, s, 0))    both carried to time 0 by the target net
    L_DSM    = lambda(sigma) ||g_theta(x + sigma n, sigma, sigma) - x||^2      (g(., t, t) is a denoiser)
    L        = L_CTM + lambda_DSM L_DSM [+ lambda_GAN L_GAN]

theta- (the target) is an EMA of theta, with stop-gradient; the jump u -> s in the target uses the online
theta without gradient by default (sony/ctm's default ctm_target_inner_type='model_sg'; the paper writes
sg(theta)) or theta- (target_jump: ema). d: the paper uses LPIPS, whose VGG weights are a download; here
the pseudo-Huber distance of Song & Dhariwal 2023 (iCT, arXiv 2310.14189, c = 0.00054 sqrt(dim)) or L2 on
pixels stands in. lambda_DSM (and lambda_GAN) are the paper's adaptive weights ||grad_last L_CTM|| /
||grad_last L_x|| on the UNet's last layer (eq. 8; sony/ctm `calculate_adaptive_weight`), or fixed.
"""
from __future__ import annotations

import copy
from typing import Literal

import torch
import torch.nn.functional as F
from pydantic import Field

from components.config import ConfigError, DistillConfig
from components.data import ImageDataset
from components.diffusion import CTMDenoiser, karras_sigmas
from components.diffusion.denoiser import Denoiser
from components.diffusion.losses import edm_loss
from components.diffusion.noise_schedule import edm_training_sigmas
from components.methods.dmd2 import DiscriminatorHead
from components.methods.interface import Method
from components.training import ema_model


class CTMConfig(DistillConfig):
    method: Literal["ctm"] = "ctm"
    num_scales: int = Field(18, ge=2)        # N: the Karras grid t, u and s are drawn from (sony/ctm start_scales:
                                             # 18 on CIFAR-10, 40 on ImageNet-64)
    max_heun_steps: int = Field(4, ge=1)     # K: teacher Heun steps t -> u per iteration at most, k ~ p(k) prop. to k
                                             # (sony/ctm: N-1 = 17; every step is 2 teacher evaluations, so on a CPU
                                             # a short segment - u close to t - keeps an iteration affordable)
    distance: Literal["pseudo_huber", "l2"] = "pseudo_huber"  # d(.,.) in clean-image space (the paper: LPIPS,
                                             # downloaded weights; pseudo-Huber: iCT's offline choice)
    target_jump: Literal["online", "ema"] = "online"  # who jumps u -> s in x_target: the online theta without
                                             # gradient (sony/ctm default) or the EMA target theta-
    target_ema_decay: float = Field(0.99, ge=0, lt=1)  # theta- = EMA of theta (sony/ctm start_ema 0.999 over
                                             # 10^5+ iterations; these runs are ~10^3)
    ema_decay: float = Field(0.99, ge=0, lt=1)  # EMA of theta that is evaluated and exported (0 = the online net)
    lr: float = Field(2e-4, gt=0)            # RAdam lr (sony/ctm code/cm/train_util.py: RAdam, lr 4e-4 on CIFAR-10)
    lr_warmup: int = Field(0, ge=0)          # linear warm-up iterations, then constant
    weight_decay: float = Field(0.0, ge=0)   # sony/ctm: 0
    grad_clip: float = Field(10.0, gt=0)
    dsm_weight: Literal["adaptive", "fixed"] = "adaptive"  # lambda_DSM: adaptive (eq. 8) or w_dsm itself
    w_dsm: float = Field(1.0, ge=0)          # multiplies lambda_DSM (0 = no DSM)
    P_mean: float = -1.2                     # DSM noise levels: ln(sigma) ~ N(P_mean, P_std^2) (EDM Table 1)
    P_std: float = Field(1.2, gt=0)
    w_gan: float = Field(0.0, ge=0)          # GAN term (0 = off): multiplies lambda_GAN
    gan_weight: Literal["adaptive", "fixed"] = "adaptive"  # lambda_GAN adaptive (clipped to [0.01, 10], sony/ctm)
    gan_start: int = Field(0, ge=0)          # iterations before the GAN term starts (sony/ctm discriminator_start_itr)
    lr_D: float = Field(2e-4, gt=0)          # discriminator RAdam lr
    sampling_steps: int = Field(1, ge=1)     # the exported student's default: steps of gamma-sampling ...
    gamma: float = Field(0.0, ge=0, le=1)    # ... and its gamma (0: deterministic jumps; 1: consistency multistep)


def pseudo_huber(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """d(a, b) = sqrt(||a - b||^2 + c^2) - c, c = 0.00054 sqrt(dim) (iCT, Song & Dhariwal 2023, Sec. 3.3),
    per sample."""
    dim = a[0].numel()
    c = 0.00054 * dim ** 0.5
    return (((a - b) ** 2).flatten(1).sum(1) + c * c).sqrt() - c


def ctm_loss(x_est0: torch.Tensor, x_target0: torch.Tensor, distance: str = "pseudo_huber") -> torch.Tensor:
    """CTM eq. 6: d(G_sg(x_est, s, 0), G_sg(x_target, s, 0)) per sample, both already carried to time 0."""
    if distance == "pseudo_huber":
        return pseudo_huber(x_est0, x_target0)
    return ((x_est0 - x_target0) ** 2).mean(dim=(1, 2, 3))


def heun_segment(teacher: Denoiser, x: torch.Tensor, grid: torch.Tensor, n: torch.Tensor, k: int,
                 labels: torch.Tensor) -> torch.Tensor:
    """Solver(x_t, t, u; phi): k Heun steps of the teacher's probability-flow ODE on the grid, from t_n to
    t_{n+k}, one start index per sample (EDM Algorithm 1's update; grid ends at sigma_min > 0)."""
    for j in range(k):
        t, t_next = grid[n + j].view(-1, 1, 1, 1), grid[n + j + 1].view(-1, 1, 1, 1)
        d = (x - teacher(x, t.flatten(), labels)) / t
        x_euler = x + (t_next - t) * d
        d_next = (x_euler - teacher(x_euler, t_next.flatten(), labels)) / t_next
        x = x + (t_next - t) * 0.5 * (d + d_next)
    return x


def ctm_pair(G, G_target, jumper, teacher, x_t: torch.Tensor, grid: torch.Tensor, n: torch.Tensor, k: int,
             m: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The two sides of the CTM loss (eq. 6), both carried to time 0 by the target G_target:
        x_est0    = G_target(G(x_t, t, s), s, 0)                  gradient flows into G through x_est
        x_target0 = G_target(jumper(Solver(x_t, t, u; teacher), u, s), s, 0)     no gradient
    with t = grid[n], u = grid[n + k], s = grid[m]. Any objects with .jump(x, t, s, c) serve (tests use the
    closed-form Gaussian solution)."""
    t, u, s = grid[n], grid[n + k], grid[m]
    zero = torch.zeros_like(s)
    with torch.no_grad():
        x_u = heun_segment(teacher, x_t, grid, n, k, labels).float()
        x_target0 = G_target.jump(jumper.jump(x_u, u, s, labels).float(), s, zero, labels).float()
    x_est = G.jump(x_t, t, s, labels).float()
    return G_target.jump(x_est, s, zero, labels).float(), x_target0


def adaptive_weight(loss_ref: torch.Tensor, loss: torch.Tensor, last_layer: torch.Tensor,
                    reduce=lambda g: g) -> torch.Tensor:
    """CTM eq. 8 (sony/ctm calculate_adaptive_weight): ||grad_last loss_ref|| / (||grad_last loss|| + 1e-4),
    clamped to [0, 1e4], no gradient. `reduce` averages a gradient over data-parallel ranks (so every rank,
    and one process, uses the global batch's weight)."""
    g_ref = reduce(torch.autograd.grad(loss_ref, last_layer, retain_graph=True)[0])
    g = reduce(torch.autograd.grad(loss, last_layer, retain_graph=True)[0])
    return (g_ref.norm() / (g.norm() + 1e-4)).clamp(0.0, 1e4).detach()


class CTM(Method):
    Config = CTMConfig

    def __init__(self, teacher: Denoiser, cfg: CTMConfig, data: ImageDataset, pairs=None):
        super().__init__(teacher, cfg, data, pairs)
        if cfg.max_heun_steps > cfg.num_scales - 1:
            raise ConfigError(f"config field 'distill.max_heun_steps': {cfg.max_heun_steps} must be below "
                              f"distill.num_scales ({cfg.num_scales})")
        dev = self.device
        self.teacher = copy.deepcopy(teacher).to(dev).eval().requires_grad_(False)      # phi, frozen
        with torch.random.fork_rng(devices=[]):                       # the s embedding's init: a function of the seed
            torch.manual_seed(cfg.seed + 2)
            self.G = CTMDenoiser.from_teacher(teacher).to(dev).train().requires_grad_(True)   # theta
            self.gan = cfg.w_gan > 0
            if self.gan:                    # D: a head on the bottleneck of a trainable copy of the teacher's UNet
                self.D_net = copy.deepcopy(teacher).to(dev).train().requires_grad_(True)
                C, H, W = data.shape
                with torch.no_grad():
                    probe = self.D_net.bottleneck(torch.zeros(1, C, H, W, device=dev), teacher.sigma_min,
                                                  torch.zeros(1, dtype=torch.long, device=dev))
                self.D = DiscriminatorHead(probe.shape[1]).to(dev)
        self.G_target = ema_model(self.G, cfg.target_ema_decay)        # theta- (stop-gradient)
        self.G_ema = ema_model(self.G, cfg.ema_decay) if cfg.ema_decay > 0 else None
        opt = dict(weight_decay=cfg.weight_decay)
        self.opt_G = torch.optim.RAdam(self.G.parameters(), lr=cfg.lr, **opt)
        warm = cfg.lr_warmup
        ramp = (lambda s: min(1.0, (s + 1) / warm)) if warm else (lambda s: 1.0)  # noqa: E731
        self.sched_G = torch.optim.lr_scheduler.LambdaLR(self.opt_G, ramp)
        if self.gan:
            self.D_params = list(self.D_net.parameters()) + list(self.D.parameters())
            self.opt_D = torch.optim.RAdam(self.D_params, lr=cfg.lr_D, **opt)
            self.sched_D = torch.optim.lr_scheduler.LambdaLR(self.opt_D, lambda s: 1.0)
        # t_0 = sigma_max > ... > t_{N-1} = sigma_min (sony/ctm get_t)
        self.grid = karras_sigmas(cfg.num_scales, teacher.sigma_min, teacher.sigma_max, append_zero=False).to(dev)
        K = cfg.max_heun_steps
        self.k_probs = torch.arange(1, K + 1, dtype=torch.float64) / (K * (K + 1) / 2)
        self.rng = torch.Generator().manual_seed(cfg.seed + 1)

    # -- time sampling ---------------------------------------------------------------------------
    def sample_times(self, n: int) -> tuple[int, torch.Tensor, torch.Tensor]:
        """(k, n, m): k teacher steps for the batch, start index n ~ U{0..N-1-k} and target index
        m ~ U{n+k..N-1} per sample (drawn for the global batch, sharded)."""
        N = self.cfg.num_scales
        k = int(torch.multinomial(self.k_probs, 1, generator=self.rng)) + 1
        size = self.world.global_size(n)
        idx = torch.randint(0, N - k, (size,), generator=self.rng)
        m = idx + k + (torch.rand(size, generator=self.rng) * (N - idx - k)).long().clamp(max=N - 1 - idx - k)
        return k, self.world.shard(idx).to(self.device), self.world.shard(m).to(self.device)

    def _target_net(self) -> CTMDenoiser:
        return self.G_target.module

    # -- one iteration -------------------------------------------------------------------------
    def train_step(self, batch: dict[str, torch.Tensor]) -> dict[str, float]:
        cfg, logs = self.cfg, {}
        x = batch["real"].to(self.device)
        y = batch["class_labels"].to(self.device)
        z = batch["noise"].to(self.device)
        k, n, m = self.sample_times(len(x))
        t = self.grid[n]
        x_t = x + t.view(-1, 1, 1, 1) * z
        jumper = self.G if cfg.target_jump == "online" else self._target_net()
        with self._autocast():
            x_est0, x_target0 = ctm_pair(self.G, self._target_net(), jumper, self.teacher, x_t, self.grid, n, k, m, y)
        loss_ctm = ctm_loss(x_est0, x_target0, cfg.distance).mean()
        logs["loss_ctm"] = loss_ctm.item()
        loss = loss_ctm
        last = self.G.unet.conv_out.weight
        if cfg.w_dsm > 0:
            sigma = edm_training_sigmas(self.world.global_size(len(x)), cfg.P_mean, cfg.P_std, self.rng)
            sigma = self.world.shard(sigma).to(self.device)
            with self._autocast():
                loss_dsm = edm_loss(_Diagonal(self.G), x, y, sigma, self._randn(x.shape)).float().mean()
            lam = adaptive_weight(loss_ctm, loss_dsm, last, self.world.mean) if cfg.dsm_weight == "adaptive" else 1.0
            loss = loss + cfg.w_dsm * lam * loss_dsm
            logs["loss_dsm"], logs["lambda_dsm"] = loss_dsm.item(), float(lam)
        gan_on = self.gan and self.step >= cfg.gan_start
        if gan_on:
            with self._autocast():
                fake = self.G(x_t, t, y).float()                        # G_theta(x_t, t, 0) (sony/ctm gan_fake 'no')
            loss_gan = -self._logits(fake, y).mean()                   # hinge generator loss
            lam = (adaptive_weight(loss_ctm, loss_gan, last, self.world.mean).clamp(0.01, 10.0)
                   if cfg.gan_weight == "adaptive"
                   else 1.0)
            loss = loss + cfg.w_gan * lam * loss_gan
            logs["loss_gan_G"], logs["lambda_gan"] = loss_gan.item(), float(lam)
        if self._update(loss, list(self.G.parameters()), self.opt_G, self.sched_G, "G", logs):
            self.G_target.update_parameters(self.G)
            if self.G_ema is not None:
                self.G_ema.update_parameters(self.G)
        if gan_on:                                                     # discriminator turn: real x vs sg(fake)
            logits_fake, logits_real = self._logits(torch.cat([fake.detach(), x]), torch.cat([y, y])).chunk(2)
            loss_D = (F.relu(1.0 - logits_real) + F.relu(1.0 + logits_fake)).mean()   # hinge (sony/ctm)
            logs["loss_gan_D"] = loss_D.item()
            self._update(loss_D, self.D_params, self.opt_D, self.sched_D, "D", logs)
        return self._finish(logs)

    def _logits(self, images: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """D: a head on the bottleneck of the discriminator's UNet, read at sigma_min (clean images)."""
        with self._autocast():
            return self.D(self.D_net.bottleneck(images, self.D_net.sigma_min, y)).float()

    # -- the student, checkpoints ---------------------------------------------------------------
    def student(self) -> Denoiser:
        G = copy.deepcopy(self.G_ema.module if self.G_ema is not None else self.G).cpu().eval()
        G.requires_grad_(False)
        G.sampling = G.gamma_recipe(self.cfg.sampling_steps, self.cfg.gamma)
        return G

    def _nets(self) -> dict:
        nets = {"G": self.G, "G_target": self.G_target, "G_ema": self.G_ema}
        if self.gan:
            nets.update(D_net=self.D_net, D=self.D)
        return nets

    def checkpoint_parts(self) -> dict:
        return {**self._nets(), "opt_G": self.opt_G, "sched_G": self.sched_G,
                **({"opt_D": self.opt_D, "sched_D": self.sched_D} if self.gan else {})}


class _Diagonal(torch.nn.Module):
    """g(x, sigma, sigma) as a denoiser D(x, sigma, c), for the DSM loss (edm_loss reads D.sigma_data)."""

    def __init__(self, G: CTMDenoiser):
        super().__init__()
        self.G, self.sigma_data = G, G.sigma_data

    def forward(self, x, sigma, class_labels):
        return self.G.g(x, sigma, sigma, class_labels)


__all__ = ["CTM", "CTMConfig", "adaptive_weight", "ctm_loss", "ctm_pair", "heun_segment", "pseudo_huber"]
