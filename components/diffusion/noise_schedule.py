"""Noise schedules in sigma (EDM, Karras et al. 2022)."""
from __future__ import annotations

import torch


def karras_sigmas(n: int, sigma_min: float, sigma_max: float, rho: float = 7.0,
                  append_zero: bool = True) -> torch.Tensor:
    """EDM eq. 5: sigma_i = (s_max^(1/rho) + i/(n-1) (s_min^(1/rho) - s_max^(1/rho)))^rho, i < n."""
    if n == 1:
        s = torch.tensor([sigma_max], dtype=torch.float64)
    else:
        ramp = torch.linspace(0, 1, n, dtype=torch.float64)
        lo, hi = sigma_min ** (1 / rho), sigma_max ** (1 / rho)
        s = (hi + ramp * (lo - hi)) ** rho
    if append_zero:
        s = torch.cat([s, torch.zeros(1, dtype=torch.float64)])
    return s.float()


def edm_training_sigmas(n: int, P_mean: float, P_std: float, generator=None, device="cpu") -> torch.Tensor:
    """EDM training noise (Table 1): ln(sigma) ~ N(P_mean, P_std^2)."""
    return (torch.randn(n, generator=generator, device=device) * P_std + P_mean).exp()


def student_sigmas(steps: int, sigma_min: float, sigma_max: float, rho: float = 7.0, T: int = 1000) -> torch.Tensor:
    """A few-step student's levels, then 0: indices T-1 - i*T/steps (i < steps) of the T-point Karras grid
    indexed from sigma_min (0) to sigma_max (T-1), as DMD2's denoising_timesteps index it. 1 step: [sigma_max, 0];
    4 steps: 999, 749, 499, 249 = sigma 80, 17.5, 2.5, 0.17 (EDM defaults). On that grid, stock diffusers'
    CMStochasticIterativeScheduler (num_train_timesteps = T) replays them (components/export.py)."""
    grid = karras_sigmas(T, sigma_min, sigma_max, rho, append_zero=False).flip(0)
    idx = [T - 1 - (i * T) // steps for i in range(steps)]
    return torch.cat([grid[idx], torch.zeros(1)])
