"""The latent teacher and students as TextDenoisers, their sampling recipes, and generation from prompt
ids (latents; decoded by the VAE for evaluation)."""
from __future__ import annotations

import time

import torch

from components.diffusion.samplers import get_sampler
from components.diffusion.text_denoiser import PromptTable, TextDenoiser


def ddim_recipe(den: TextDenoiser, steps: int) -> dict:
    """DDIM on the teacher's own timesteps, "trailing" spacing (999, 999 - 1000/steps, ...), then 0: the
    deterministic sampler = Euler on the probability-flow ODE on the EDM scale (samplers.sample_ddim)."""
    T = len(den.log_sigmas)
    ts = [round(T - 1 - i * T / steps) for i in range(steps)]
    grid = den.training_sigmas(T)
    return {"sampler": "ddim", "sigmas": [round(float(grid[t]), 6) for t in ts] + [0.0], "timesteps": ts}


def teacher_denoiser(pipe, table: PromptTable, sampler_steps: int = 25) -> TextDenoiser:
    """The pipeline's UNet + DDPM schedule as a TextDenoiser over the prompt table, sampled by DDIM."""
    sched = pipe.scheduler
    den = TextDenoiser(pipe.unet, table, sched.alphas_cumprod.float(), sched.config.prediction_type)
    den.sampling = ddim_recipe(den, sampler_steps)
    return den.eval().requires_grad_(False)


def student_timesteps(den: TextDenoiser) -> list[int]:
    """The DDPM timesteps of a few-step student's recipe (its sigmas read back on the schedule)."""
    sig = torch.tensor([s for s in den.sampling["sigmas"] if s > 0], dtype=torch.float32)
    return [int(t) for t in den.sigma_to_t(sig).round().long()]


@torch.no_grad()
def generate_latents(den: TextDenoiser, prompt_ids: torch.Tensor, seed: int, batch_size: int = 250,
                     guidance_scale: float = 1.0) -> tuple[torch.Tensor, float]:
    """Latents for each prompt id with the denoiser's recipe, batch by batch from one seeded generator: per
    batch, the initial noise z ~ N(0, I) then the sampler's fresh noise - the draws, in that order, that the
    stock pipeline makes with the same generator for the same batch of prompts. -> (latents, seconds)."""
    rec = den.sampling
    sampler, sigmas = get_sampler(rec["sampler"]), torch.tensor(rec["sigmas"], dtype=torch.float32)
    g = torch.Generator().manual_seed(seed)
    scale0 = den.initial_noise_scale(float(sigmas[0]))
    out, t0 = [], time.perf_counter()
    C, h = den.unet.config.in_channels, den.unet.config.sample_size
    for i in range(0, len(prompt_ids), batch_size):
        ids = prompt_ids[i:i + batch_size]
        z = torch.randn((len(ids), C, h, h), generator=g)
        out.append(sampler(den, z * scale0, sigmas, {"class_labels": ids, "guidance_scale": guidance_scale},
                           generator=g))
    return torch.cat(out), time.perf_counter() - t0


def nfe(den: TextDenoiser, guidance_scale: float = 1.0) -> int:
    """Network evaluations per image of a DDIM or few-step recipe (one call per step; CFG doubles it)."""
    if den.sampling["sampler"] not in ("ddim", "fewstep"):
        raise ValueError(f"nfe: a DDIM or few-step recipe expected, got {den.sampling['sampler']!r}")
    return sum(1 for s in den.sampling["sigmas"] if s > 0) * den.nfe(guidance_scale)


__all__ = ["ddim_recipe", "generate_latents", "nfe", "student_timesteps", "teacher_denoiser"]
