"""A text-conditioned latent denoiser: an SD-layout UNet2DConditionModel on a DDPM schedule (epsilon or
v prediction), seen through the EDM interface every method and sampler uses.

The condition is a prompt id into a PromptTable of cached prompt embeddings (each encoded once, exactly
as StableDiffusionPipeline.encode_prompt encodes it; the last row is the empty prompt, the
unconditional input of classifier-free guidance). So prompts travel through the trainer, the pairs and
the samplers like class labels, and CFG is Denoiser.guided with the empty prompt as the null class."""
from __future__ import annotations

import torch

from components.diffusion.denoiser import VPDenoiser


class PromptTable:
    """(P + 1, L, D) prompt embeddings and their prompts; row P is the empty prompt. Shared, never copied:
    the generator, the real and the fake score of DMD2 (deep copies of the teacher) read the same table."""

    def __init__(self, embeddings: torch.Tensor, prompts: list[str]):
        if embeddings.ndim != 3 or len(embeddings) != len(prompts) + 1:
            raise ValueError(f"PromptTable: expected ({len(prompts) + 1}, L, D) embeddings (the prompts, then the empty "
                             f"prompt), got {tuple(embeddings.shape)}")
        self.embeddings, self.prompts = embeddings.float().contiguous(), list(prompts)
        self._on: dict = {}

    def __len__(self) -> int:
        return len(self.prompts)

    def __deepcopy__(self, memo):
        return self

    def lookup(self, ids: torch.Tensor, device) -> torch.Tensor:
        """(B,) prompt ids -> (B, L, D) embeddings on `device` (one cached copy per device)."""
        key = str(device)
        if key not in self._on:
            self._on[key] = self.embeddings.to(device)
        return self._on[key][ids.to(device).long()]


class TextDenoiser(VPDenoiser):
    """VPDenoiser over a UNet2DConditionModel: cond = prompt ids (PromptTable rows); null class = the empty
    prompt. sigma_data 1: latents are scaled by the VAE's scaling_factor to unit std."""

    kind = "text-vp"

    def __init__(self, unet, table: PromptTable, alphas_cumprod: torch.Tensor, prediction_type: str = "epsilon",
                 sigma_data: float = 1.0):
        super().__init__(unet, len(table), alphas_cumprod, prediction_type, sigma_data)
        self.table = table

    def sigma_to_t(self, sigma: torch.Tensor) -> torch.Tensor:
        """As VPDenoiser, snapped to the integer timestep within 1e-3 (a sigma read off the schedule lands on its
        timestep exactly, as the stock scheduler passes it)."""
        t = super().sigma_to_t(sigma)
        return torch.where((t - t.round()).abs() < 1e-3, t.round(), t)

    def net(self, x_vp, t, cond):
        return self.unet(x_vp, t, encoder_hidden_states=self.table.lookup(cond, x_vp.device)).sample

    def bottleneck(self, x, sigma, class_labels):
        """The UNet2DConditionModel's mid-block output for the noised input (DMD2's discriminator reads it)."""
        unet = self.unet
        inp, t = self.unet_inputs(x, self._sigma(sigma, x))
        ctx = self.table.lookup(class_labels, x.device)
        emb = unet.time_embedding(unet.time_proj(t.expand(x.shape[0])).to(dtype=unet.dtype))
        h = unet.conv_in(inp)
        for block in unet.down_blocks:
            if getattr(block, "has_cross_attention", False):
                h, _ = block(hidden_states=h, temb=emb, encoder_hidden_states=ctx)
            else:
                h, _ = block(hidden_states=h, temb=emb)
        return unet.mid_block(h, emb, encoder_hidden_states=ctx)

    def initial_noise_scale(self, sigma0: float) -> float:
        """Pure noise at the first step, as the stock pipeline starts (latents ~ N(0, I) at t = 999): on the EDM
        scale x = z / sqrt(abar) = z sqrt(1 + sigma0^2) (not z sigma0, which is 0.2% smaller at t = 999)."""
        return float((1.0 + sigma0**2) ** 0.5)

    def null_condition(self, n: int, device=None) -> torch.Tensor:
        return torch.full((n,), len(self.table), dtype=torch.long, device=device)

    def config(self) -> dict:
        return {**super().config(), "prompts": len(self.table)}


__all__ = ["PromptTable", "TextDenoiser"]
