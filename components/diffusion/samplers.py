"""Samplers with one signature: sample_<name>(denoiser, x, sigmas, cond, *, generator, callback) -> x0.

`x` is the initial noise already scaled to sigmas[0]; `sigmas` is a decreasing list that ends
in 0; `cond` holds class labels, optionally a guidance scale, and a recipe's sampler options (gamma-sampling's
`gamma`). Teacher and student are evaluated by the same code.
"""
from __future__ import annotations

from typing import Callable, Optional

import torch


def _D(denoiser, x, sigma, cond):
    scale = cond.get("guidance_scale", 1.0) if isinstance(cond, dict) else 1.0
    labels = cond["class_labels"] if isinstance(cond, dict) else cond
    return denoiser.guided(x, sigma, labels, scale)


def heun_step(x: torch.Tensor, t, s, D: Callable) -> torch.Tensor:
    """One 2nd-order Heun step t -> s of the probability-flow ODE (EDM Algorithm 1, lines 4-8) with the
    denoiser D(x, sigma); an Euler step where s = 0. t, s: floats or one per sample."""
    t_, s_ = _per_sample(t, x), _per_sample(s, x)
    d = (x - D(x, t)) / t_
    x_next = x + (s_ - t_) * d
    last = s_ <= 0
    if bool(last.all()):
        return x_next
    s_safe = torch.where(last, torch.ones_like(s_), s_)
    d_next = (x_next - D(x_next, s_safe.flatten() if torch.is_tensor(s) and s.ndim else s)) / s_safe
    return torch.where(last, x_next, x + (s_ - t_) * 0.5 * (d + d_next))


@torch.no_grad()
def sample_heun(denoiser, x: torch.Tensor, sigmas: torch.Tensor, cond, *,
                generator: Optional[torch.Generator] = None, callback: Optional[Callable] = None) -> torch.Tensor:
    """EDM Algorithm 1: deterministic 2nd-order Heun on the probability-flow ODE (2N-1 NFE)."""
    for i in range(len(sigmas) - 1):
        s = sigmas[i]
        x = heun_step(x, s, sigmas[i + 1], lambda v, sig: _D(denoiser, v, sig, cond))
        if callback is not None:
            callback({"i": i, "sigma": float(s), "x": x})
    return x


def ddim_step(x_t: torch.Tensor, x0_hat: torch.Tensor, t, s) -> torch.Tensor:
    """The deterministic DDIM step t -> s, which on the EDM (VE) schedule is the Euler step of the
    probability-flow ODE (../shared/PAPERS.md, guided distillation): x_s = x0_hat + (s / t)(x_t - x0_hat).
    t, s: floats or one per sample."""
    r = _per_sample(s, x_t) / _per_sample(t, x_t)
    return x0_hat + r * (x_t - x0_hat)


def ddim_target(x_t: torch.Tensor, x_s: torch.Tensor, t, s) -> torch.Tensor:
    """The clean-image prediction x~ whose ONE DDIM step t -> s lands on x_s (progressive distillation's
    target, Salimans & Ho 2022 / PAPERS.md): x_s = x~ + (s/t)(x_t - x~)  <=>  x~ = (x_s - (s/t) x_t) / (1 - s/t).
    Needs s < t; s = 0 gives x~ = x_s."""
    r = _per_sample(s, x_t) / _per_sample(t, x_t)
    return (x_s - r * x_t) / (1 - r)


def _per_sample(v, x: torch.Tensor) -> torch.Tensor:
    v = torch.as_tensor(v, dtype=x.dtype, device=x.device)
    return v.reshape(-1, *([1] * (x.ndim - 1))) if v.ndim else v


@torch.no_grad()
def sample_ddim(denoiser, x: torch.Tensor, sigmas: torch.Tensor, cond, *,
                generator: Optional[torch.Generator] = None, callback: Optional[Callable] = None) -> torch.Tensor:
    """Deterministic DDIM = Euler on the probability-flow ODE (`ddim_step`), one denoiser call per step:
    the sampler of the guided and progressive students (w through cond's guidance_scale = 1 + w)."""
    for i in range(len(sigmas) - 1):
        x0 = _D(denoiser, x, sigmas[i], cond)
        x = ddim_step(x, x0, sigmas[i], sigmas[i + 1])
        if callback is not None:
            callback({"i": i, "sigma": float(sigmas[i]), "x": x})
    return x


@torch.no_grad()
def sample_fewstep(denoiser, x: torch.Tensor, sigmas: torch.Tensor, cond, *,
                   generator: Optional[torch.Generator] = None, callback: Optional[Callable] = None) -> torch.Tensor:
    """Few-step generator sampling (DMD2 Sec. 4.3 / consistency models Alg. 1): x0 = G(x, sigma_k);
    re-noise to sigma_{k+1} with fresh noise; one NFE per nonzero sigma. One step: x0 = G(x_T, sigma_max)."""
    x0 = x
    for i in range(len(sigmas) - 1):
        x0 = _D(denoiser, x, sigmas[i], cond)
        s_next = sigmas[i + 1]
        if s_next > 0:
            noise = torch.randn(x0.shape, generator=generator, device=x0.device, dtype=x0.dtype)
            x = x0 + s_next * noise
        if callback is not None:
            callback({"i": i, "sigma": float(sigmas[i]), "x": x0})
    return x0


@torch.no_grad()
def sample_gamma(denoiser, x: torch.Tensor, sigmas: torch.Tensor, cond, *,
                 generator: Optional[torch.Generator] = None, callback: Optional[Callable] = None) -> torch.Tensor:
    """CTM gamma-sampling (Kim et al. 2023, Algorithm 1 / ../shared/PAPERS.md): from t_n jump with the
    student's G to sqrt(1 - gamma^2) t_{n+1}, then add fresh noise back up to t_{n+1}:
        x~ = G(x_{t_n}, t_n, sqrt(1 - gamma^2) t_{n+1});  x_{t_{n+1}} = x~ + gamma t_{n+1} eps.
    gamma = 0: deterministic long jumps; gamma = 1: consistency-model multistep (= sample_fewstep).
    `denoiser.jump(x, t, s, class_labels)` is G; one NFE per step. cond['gamma'] (default 0)."""
    gamma = float(cond.get("gamma", 0.0)) if isinstance(cond, dict) else 0.0
    if not 0.0 <= gamma <= 1.0:
        raise ValueError(f"gamma-sampling: gamma must lie in [0, 1], got {gamma}")
    if len(sigmas) < 2 or float(sigmas[-1]) != 0.0 or bool((sigmas[1:] >= sigmas[:-1]).any()):
        raise ValueError(f"gamma-sampling: sigmas must decrease strictly and end in 0, got {sigmas.tolist()}")
    labels = cond["class_labels"] if isinstance(cond, dict) else cond
    for i in range(len(sigmas) - 1):
        t, t_next = sigmas[i], sigmas[i + 1]
        x = denoiser.jump(x, t, (1.0 - gamma**2) ** 0.5 * t_next, labels)
        if t_next > 0 and gamma > 0:
            x = x + gamma * t_next * torch.randn(x.shape, generator=generator, device=x.device, dtype=x.dtype)
        if callback is not None:
            callback({"i": i, "sigma": float(t), "x": x})
    return x


SAMPLERS = {"heun": sample_heun, "fewstep": sample_fewstep, "gamma": sample_gamma, "ddim": sample_ddim}


def get_sampler(name: str):
    if name not in SAMPLERS:
        raise ValueError(f"unknown sampler {name!r}; valid: {', '.join(sorted(SAMPLERS))}")
    return SAMPLERS[name]
