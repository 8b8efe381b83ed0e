"""Denoising losses shared by the teacher and by methods' score networks (per-sample values)."""
from __future__ import annotations

import torch


def edm_loss(D, x0: torch.Tensor, class_labels: torch.Tensor, sigma: torch.Tensor,
             noise: torch.Tensor) -> torch.Tensor:
    """EDM eq. 2 with Table 1's weight lambda(sigma) = (sigma^2 + s_d^2) / (sigma s_d)^2, per sample."""
    s_d = D.sigma_data
    weight = (sigma**2 + s_d**2) / (sigma * s_d) ** 2
    x0_hat = D(x0 + sigma.view(-1, 1, 1, 1) * noise, sigma, class_labels)
    return weight * ((x0_hat - x0) ** 2).mean(dim=(1, 2, 3))
