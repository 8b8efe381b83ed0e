"""Training the built-in setting's parts: the VAE (32x32 -> 4x8x8, scaling_factor from the latents' std),
the latent cache, and the UNet2DConditionModel teacher (epsilon prediction on SD's DDPM schedule, caption
dropout for classifier-free guidance). Each is deterministic given its seed."""
from __future__ import annotations

import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from components.t2i.config import LatentTeacherConfig, VAEConfig
from components.training import BatchSampler, ema_model, seed_everything


def train_vae(cfg: VAEConfig, images: torch.Tensor, resolution: int, progress: bool = True):
    """AutoencoderKL on (N, 3, H, W) images in [-1, 1]: MSE reconstruction of a posterior sample + kl_weight * KL;
    then scaling_factor = 1 / std of the posterior means, so scaled latents have unit std (SD's convention;
    the stock pipeline multiplies by it before the UNet and divides before decoding). -> (vae, report)."""
    from components.t2i.sd import build_vae

    g = seed_everything(cfg.seed)
    vae = build_vae(cfg.block_out_channels, cfg.latent_channels, resolution).train()
    opt = torch.optim.AdamW(vae.parameters(), lr=cfg.lr, weight_decay=0.0)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, cfg.train_steps)
    batches = BatchSampler(images, batch_size=min(cfg.batch_size, len(images)), generator=g)
    for _ in tqdm(range(cfg.train_steps), desc="vae", disable=not progress, mininterval=2):
        (x,) = batches.next()
        post = vae.encode(x).latent_dist
        z = post.mean + post.std * torch.randn(post.mean.shape, generator=g)
        rec = vae.decode(z).sample
        loss_rec = F.mse_loss(rec, x)
        loss = loss_rec + cfg.kl_weight * post.kl().mean() / post.mean[0].numel()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
    vae.eval().requires_grad_(False)
    raw = encode_latents(vae, images[: min(len(images), 4096)], scale=False)
    std = float(raw.std())
    vae.register_to_config(scaling_factor=1.0 / std)
    return vae, {"final_mse": loss_rec.item(), "latent_std": std, "scaling_factor": 1.0 / std,
                 "latent_shape": list(raw.shape[1:])}


@torch.no_grad()
def encode_latents(vae, images: torch.Tensor, batch_size: int = 500, scale: bool = True) -> torch.Tensor:
    """Posterior means of (N, 3, H, W) images, times the VAE's scaling_factor (scale=True): the cached latents."""
    out = [vae.encode(images[i:i + batch_size].float()).latent_dist.mean for i in range(0, len(images), batch_size)]
    z = torch.cat(out)
    return z * vae.config.scaling_factor if scale else z


@torch.no_grad()
def decode_latents(vae, latents: torch.Tensor, batch_size: int = 500) -> torch.Tensor:
    """Scaled latents -> images in [-1, 1] (clamped), as the stock pipeline decodes them."""
    out = [vae.decode(latents[i:i + batch_size].float() / vae.config.scaling_factor).sample
           for i in range(0, len(latents), batch_size)]
    return torch.cat(out).clamp(-1, 1)


def train_latent_teacher(cfg: LatentTeacherConfig, latents: torch.Tensor, prompt_ids: torch.Tensor,
                         embeddings: torch.Tensor, progress: bool = True):
    """Epsilon prediction on SD's DDPM schedule (Ho et al. 2020): t ~ U{0..999}, x_t = sqrt(abar_t) x0 +
    sqrt(1 - abar_t) eps, loss ||eps_hat - eps||^2, the prompt replaced by the empty prompt with probability
    caption_dropout. embeddings: (P + 1, L, D) (row P = empty prompt). -> (EMA UNet, report)."""
    from diffusers import DDPMScheduler

    from components.t2i.sd import SD_SCHEDULE, build_unet

    g = seed_everything(cfg.seed)
    C, h, _ = latents.shape[1:]
    unet = build_unet(h, C, embeddings.shape[-1], cfg.block_out_channels, cfg.layers_per_block).train()
    ema = ema_model(unet, cfg.ema_decay)
    abar = DDPMScheduler(**{k: v for k, v in SD_SCHEDULE.items() if k != "set_alpha_to_one"}).alphas_cumprod.float()
    opt = torch.optim.AdamW(unet.parameters(), lr=cfg.lr, weight_decay=0.0)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, cfg.train_steps)
    batches = BatchSampler(latents, prompt_ids, batch_size=min(cfg.batch_size, len(latents)), generator=g)
    null = len(embeddings) - 1
    for _ in tqdm(range(cfg.train_steps), desc="latent teacher", disable=not progress, mininterval=2):
        x0, ids = batches.next()
        drop = torch.rand(len(ids), generator=g) < cfg.caption_dropout
        ids = torch.where(drop, torch.full_like(ids, null), ids)
        t = torch.randint(0, len(abar), (len(x0),), generator=g)
        eps = torch.randn(x0.shape, generator=g)
        a = abar[t].view(-1, 1, 1, 1)
        x_t = a.sqrt() * x0 + (1 - a).sqrt() * eps
        loss = F.mse_loss(unet(x_t, t, encoder_hidden_states=embeddings[ids]).sample, eps)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(unet.parameters(), 1.0)
        opt.step()
        sched.step()
        ema.update_parameters(unet)
    teacher = ema.module.eval().requires_grad_(False)
    return teacher, {"final_loss": loss.item(), "parameters": sum(p.numel() for p in teacher.parameters())}


__all__ = ["decode_latents", "encode_latents", "train_latent_teacher", "train_vae"]
