"""Noise schedules, Denoiser wrappers and samplers (one signature for all)."""
from components.diffusion.denoiser import (CTMDenoiser, Denoiser, EDMDenoiser, GuidedDenoiser, VPDenoiser,
                                           load_denoiser, save_denoiser, state_hash)
from components.diffusion.samplers import (SAMPLERS, ddim_step, ddim_target, get_sampler, sample_ddim, sample_fewstep,
                                          sample_gamma, sample_heun)
from components.diffusion.noise_schedule import edm_training_sigmas, karras_sigmas
from components.diffusion.routed import RoutedDenoiser
from components.diffusion.cascade import CascadeDenoiser   # registers the `cascade` sampler and folder format

__all__ = ["CascadeDenoiser", "CTMDenoiser", "Denoiser", "EDMDenoiser", "GuidedDenoiser", "RoutedDenoiser", "VPDenoiser", "load_denoiser", "save_denoiser",
           "state_hash", "SAMPLERS", "ddim_step", "ddim_target", "get_sampler", "sample_ddim", "sample_fewstep",
           "sample_gamma", "sample_heun", "edm_training_sigmas",
           "karras_sigmas"]
