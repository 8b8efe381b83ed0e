"""Noise schedules, Denoiser wrappers and samplers (one signature for all)."""
from components.diffusion.denoiser import (CTMDenoiser, Denoiser, EDMDenoiser, VPDenoiser, load_denoiser,
                                           save_denoiser, state_hash)
from components.diffusion.samplers import SAMPLERS, get_sampler, sample_fewstep, sample_gamma, sample_heun
from components.diffusion.noise_schedule import edm_training_sigmas, karras_sigmas

__all__ = ["CTMDenoiser", "Denoiser", "EDMDenoiser", "VPDenoiser", "load_denoiser", "save_denoiser", "state_hash",
           "SAMPLERS", "get_sampler", "sample_fewstep", "sample_gamma", "sample_heun", "edm_training_sigmas",
           "karras_sigmas"]
