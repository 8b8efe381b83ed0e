"""Typed configuration of the text-to-image route (sections of a run config's `t2i:` key), defaults =
the built-in tiny setting on this CPU (../shared/T2I-NOTES.md has the costs the sizes were picked by)."""
from __future__ import annotations

from typing import Literal, Optional

from pydantic import Field

from components.config import Section


class CaptionDataConfig(Section):
    source: Literal["builtin", "folder"] = "builtin"   # builtin: captioned Fashion-MNIST 32x32; folder: your images
    path: Optional[str] = None             # folder: an image folder with metadata.jsonl (file_name, text)
    resolution: int = Field(32, ge=8, le=1024)  # images are resized (folder) to this square size; a multiple of 8
    train_per_class: Optional[int] = Field(None, ge=1)  # builtin: first n training images per class (None: all 6,000)
    eval_per_class: Optional[int] = Field(None, ge=1)   # builtin: first n test images per class (None: all 1,000)
    eval_fraction: float = Field(0.1, gt=0, lt=1)  # folder without a split column: held-out fraction
    seed: int = 0                          # caption templates (builtin) / split (folder)


class TextConfig(Section):
    max_length: int = Field(16, ge=3)      # tokens per prompt incl. start/end (= the text encoder's positions)
    hidden: int = Field(64, ge=8)          # CLIPTextModel width = the UNet's cross_attention_dim
    layers: int = Field(2, ge=1)
    heads: int = Field(4, ge=1)
    seed: int = 0                          # the frozen random text encoder's weights


class VAEConfig(Section):
    block_out_channels: tuple[int, ...] = (16, 32, 32)  # 3 levels: 32x32 -> 8x8 latents (~0.24 M params)
    latent_channels: int = Field(4, ge=1)
    train_steps: int = Field(1500, ge=1)   # ~0.31 s per batch of 64 on 2 CPU cores: 8 min (docs/results.md)
    batch_size: int = Field(64, ge=1)
    lr: float = Field(2e-3, gt=0)
    kl_weight: float = Field(1e-4, ge=0)   # KL(q(z|x) || N(0, I)) weight: keeps the latent space smooth
    seed: int = 0


class LatentTeacherConfig(Section):
    path: Optional[str] = None             # your SD 1.5 / 2.x folder (unet, vae, text_encoder, tokenizer,
                                           # scheduler); None: the built-in one is trained (VAE, text encoder, UNet)
    block_out_channels: tuple[int, ...] = (32, 64)  # UNet2DConditionModel width per level (~1 M params)
    layers_per_block: int = Field(1, ge=1)
    train_steps: int = Field(5000, ge=1)   # ~0.16 s per batch of 64 on 2 CPU cores: 13.5 min (docs/results.md)
    batch_size: int = Field(64, ge=1)
    lr: float = Field(1e-3, gt=0)          # AdamW, cosine to 0
    ema_decay: float = Field(0.999, ge=0, lt=1)   # the EMA weights are the teacher
    caption_dropout: float = Field(0.1, ge=0, lt=1)  # train on the empty prompt this often -> CFG
    guidance_scale: float = Field(1.75, ge=0)     # CFG scale of the teacher's own samples (> 1: guided); the same as
                                           # distill.guidance_scale, the distribution the student learns
    sampler_steps: int = Field(25, ge=1)   # DDIM steps of the teacher's samples (each 2 NFE with CFG)
    seed: int = 0


class T2IEvalConfig(Section):
    num_samples: int = Field(2000, ge=10)  # generated images per FID (prompts of the held-out split, in order)
    batch_size: int = Field(250, ge=1)
    seed: int = 0
    feature_steps: int = Field(1500, ge=1)  # the dataset feature net (FID features + class of a generated image)


__all__ = ["CaptionDataConfig", "LatentTeacherConfig", "T2IEvalConfig", "TextConfig", "VAEConfig"]
