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
