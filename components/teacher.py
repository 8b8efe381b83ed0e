"""Train a class-conditional EDM teacher on a dataset, or load a user's diffusers teacher."""
from __future__ import annotations

from typing import Optional

import torch
from tqdm.auto import tqdm

from components.config import ConfigError, TeacherConfig
from components.data import ImageDataset
from components.diffusion import EDMDenoiser, edm_training_sigmas, karras_sigmas, load_denoiser
from components.diffusion.denoiser import Denoiser
from components.diffusion.losses import edm_loss
from components.nets import build_unet
from components.training import BatchSampler, ema_model, seed_everything


def build_teacher(cfg: TeacherConfig, num_classes: int, channels: int, resolution: int) -> EDMDenoiser:
    """A fresh EDM-preconditioned class-conditional UNet (null class = num_classes)."""
    unet = build_unet(resolution, channels, num_classes, cfg.block_out_channels,
                      cfg.layers_per_block, cfg.norm_num_groups)
    return EDMDenoiser(unet, num_classes, cfg.sigma_min, cfg.sigma_max, cfg.sigma_data)


def drop_labels(labels: torch.Tensor, p: float, null_class: int, generator: torch.Generator) -> torch.Tensor:
    """Replace a fraction p of labels by the null class (classifier-free guidance training)."""
    drop = torch.rand(labels.shape, generator=generator) < p
    return torch.where(drop, torch.full_like(labels, null_class), labels)


def train_teacher(cfg: TeacherConfig, data: ImageDataset, device: torch.device | str = "cpu",
                  progress: bool = True) -> tuple[EDMDenoiser, list[float]]:
    """Train on the TRAIN split only; return the EMA denoiser and the per-step loss curve."""
    g = seed_everything(cfg.seed)
    C, H, _ = data.shape
    model = build_teacher(cfg, data.num_classes, C, H).to(device).train()
    ema = ema_model(model, cfg.ema_decay)
    opt = torch.optim.Adam(model.parameters(), lr=cfg.lr)
    images, labels = data.split("train")
    batches = BatchSampler(images, labels, batch_size=min(cfg.batch_size, len(images)), generator=g)
    losses = []
    bar = tqdm(range(cfg.train_steps), desc="teacher", disable=not progress, mininterval=2)
    for _ in bar:
        x0, y = batches.next()
        y = drop_labels(y, cfg.label_dropout, model.null_class, g)
        sigma = edm_training_sigmas(len(x0), cfg.P_mean, cfg.P_std, generator=g)
        sigma = sigma.clamp(cfg.sigma_min, cfg.sigma_max)
        noise = torch.randn(x0.shape, generator=g)
        loss = edm_loss(model, x0.to(device), y.to(device), sigma.to(device), noise.to(device)).mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        ema.update_parameters(model)
        losses.append(loss.item())
        if len(losses) % 50 == 0:
            bar.set_postfix(loss=f"{sum(losses[-50:]) / 50:.4f}")
    return ema.module.cpu().eval(), losses


def get_teacher(cfg: TeacherConfig, data: ImageDataset, device="cpu",
                progress: bool = True) -> tuple[Denoiser, Optional[list[float]]]:
    """Load cfg.path when set (checking it fits the data), else train; -> (teacher, loss curve)."""
    losses = None
    if cfg.path:
        teacher = load_denoiser(cfg.path, num_classes=data.num_classes)
        check_fits(teacher, data, cfg.path)
    else:
        teacher, losses = train_teacher(cfg, data, device, progress)
    teacher.sampling = teacher_sampling(cfg, teacher)
    return teacher, losses


def teacher_sampling(cfg: TeacherConfig, teacher: Denoiser) -> dict:
    """The teacher's default multi-step sampler: Heun on cfg.sampler_steps Karras sigmas."""
    sigmas = karras_sigmas(cfg.sampler_steps, teacher.sigma_min, teacher.sigma_max, cfg.rho)
    return {"sampler": "heun", "sigmas": [round(float(s), 6) for s in sigmas]}


def check_fits(teacher: Denoiser, data: ImageDataset, path: str) -> None:
    """A loaded teacher must match the data's classes, channels and resolution."""
    C, H, _ = data.shape
    got = (teacher.num_classes, teacher.unet.config.in_channels, teacher.unet.config.sample_size)
    if got != (data.num_classes, C, H):
        raise ConfigError(f"teacher.path '{path}': teacher has (classes, channels, resolution) = {got}, "
                          f"the dataset has {(data.num_classes, C, H)}")
