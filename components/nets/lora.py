"""LoRA students (Hu et al. 2021) with peft on a diffusers UNet's attention projections: only the
low-rank factors train; the exported student has them fused in (stock diffusers, no peft needed) and,
beside it, a LoRA file that stock `load_lora_weights` puts on the teacher (alpha kept in the file's
adapter metadata: without it diffusers reloads alpha = rank and the outputs differ - T2I-NOTES.md)."""
from __future__ import annotations

import copy
from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field

from components.atomic import atomic_dir

from components.config import ConfigError


class LoraSettings(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    rank: int = Field(4, gt=0)             # r of every adapted projection (DMD2's SDXL LoRA: 64)
    alpha: float = Field(4.0, gt=0)        # the update is (alpha / r) B A (DMD2's SDXL LoRA: 8)
    target_modules: tuple[str, ...] = ("to_q", "to_k", "to_v", "to_out.0")   # attention projections
    # (DMD2's own LoRA also adapts feed-forward, conv and time-embedding layers)


def add_lora(unet, lora: LoraSettings, seed: int = 0):
    """Inject a 'default' adapter (gaussian A, zero B: the student starts as its teacher), freeze everything
    else; -> the trainable parameters."""
    import torch
    from peft import LoraConfig

    names = {n.rsplit(".", 1)[-1] for n, _ in unet.named_modules()} | {n for n, _ in unet.named_modules()}
    if not any(t in names or any(n.endswith("." + t) for n in names) for t in lora.target_modules):
        raise ConfigError(f"config field 'distill.lora.target_modules': none of {list(lora.target_modules)} is a "
                          "module of the UNet (LoRA needs attention layers: a UNet2DConditionModel)")
    unet.requires_grad_(False)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        unet.add_adapter(LoraConfig(r=lora.rank, lora_alpha=lora.alpha, init_lora_weights="gaussian",
                                    target_modules=list(lora.target_modules)))
    params = [p for n, p in unet.named_parameters() if "lora_" in n]
    for p in params:
        p.requires_grad_(True)
    return params


def has_lora(unet) -> bool:
    return bool(getattr(unet, "peft_config", None))


def lora_layers(unet) -> tuple[dict, dict]:
    """(the adapter's weights in diffusers' key format, its peft config as a dict - alpha included)."""
    from diffusers.utils import convert_state_dict_to_diffusers
    from peft.utils import get_peft_model_state_dict

    layers = convert_state_dict_to_diffusers(get_peft_model_state_dict(unet))
    meta = unet.peft_config["default"].to_dict()
    return {k: v.detach().cpu().contiguous() for k, v in layers.items()}, meta


def fuse_lora_unet(unet):
    """A copy of the UNet with its LoRA adapters merged into the base weights and the peft layers removed."""
    unet = copy.deepcopy(unet)
    if has_lora(unet):
        unet.fuse_lora()
        unet.unload_lora()
    return unet


def save_lora_file(unet, directory: str | Path) -> Path:
    """pytorch_lora_weights.safetensors with the adapter's config (rank, alpha, targets) as metadata."""
    from diffusers import StableDiffusionPipeline

    layers, meta = lora_layers(unet)
    with atomic_dir(directory) as tmp:
        StableDiffusionPipeline.save_lora_weights(str(tmp), unet_lora_layers=layers, unet_lora_adapter_metadata=meta,
                                                  safe_serialization=True)
    return Path(directory)


def count_parameters(module, trainable_only: bool = False) -> int:
    return sum(p.numel() for p in module.parameters() if p.requires_grad or not trainable_only)


__all__ = ["LoraSettings", "add_lora", "count_parameters", "fuse_lora_unet", "has_lora", "lora_layers", "save_lora_file"]
