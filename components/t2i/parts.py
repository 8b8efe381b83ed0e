"""The text-to-image route's artifacts, each a folder of safetensors + JSON (never pickles):

- SDParts: some or all of a Stable Diffusion folder's parts (tokenizer, text_encoder, vae, unet, scheduler),
  saved in the diffusers layout; complete parts are a StableDiffusionPipeline (`pipeline()`).
- LatentCache: the dataset's latents (VAE posterior means x scaling_factor) and the prompt embeddings (one row
  per distinct caption + the empty prompt), computed once per data and VAE / text-encoder version.
- a latent student folder: unet/ (LoRA fused), lora/ (a LoRA student's file), student.json (its timesteps)."""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from components.atomic import atomic_dir
from components.config import ConfigError
from components.diffusion.denoiser import state_hash
from components.diffusion.text_denoiser import PromptTable, TextDenoiser
from components.t2i.sd import SD_PARTS

STUDENT_FILE = "student.json"


@dataclass
class SDParts:
    tokenizer: object = None
    text_encoder: object = None
    vae: object = None
    unet: object = None
    scheduler: object = None
    meta: dict = field(default_factory=dict)

    def with_parts(self, **parts) -> "SDParts":
        return SDParts(**{**{k: getattr(self, k) for k in SD_PARTS}, **parts}, meta={**self.meta})

    def pipeline(self):
        from components.t2i.sd import assemble

        missing = [k for k in SD_PARTS if getattr(self, k) is None]
        if missing:
            raise ValueError(f"SDParts: a pipeline needs {', '.join(missing)}")
        pipe = assemble(self.unet, self.vae, self.text_encoder, self.tokenizer, self.scheduler)
        pipe.set_progress_bar_config(disable=True)
        return pipe

    @classmethod
    def from_pipeline(cls, pipe, meta: dict | None = None) -> "SDParts":
        return cls(pipe.tokenizer, pipe.text_encoder, pipe.vae, pipe.unet, pipe.scheduler, meta or {})

    def save(self, directory: str | Path) -> None:
        """The present parts in the diffusers layout (a complete set: with model_index.json, a stock folder)."""
        directory = Path(directory)
        if all(getattr(self, k) is not None for k in SD_PARTS):
            self.pipeline().save_pretrained(directory, safe_serialization=True)
        else:
            for k in SD_PARTS:
                part = getattr(self, k)
                if part is not None:
                    kw = {} if k in ("tokenizer", "scheduler") else {"safe_serialization": True}
                    part.save_pretrained(directory / k, **kw)
        (directory / "parts.json").write_text(json.dumps(self.meta, indent=1, sort_keys=True) + "\n")

    @classmethod
    def load(cls, directory: str | Path) -> "SDParts":
        from diffusers import AutoencoderKL, UNet2DConditionModel
        from transformers import CLIPTextModel, CLIPTokenizer

        directory = Path(directory)
        loaders = {"tokenizer": CLIPTokenizer, "text_encoder": CLIPTextModel, "vae": AutoencoderKL,
                   "unet": UNet2DConditionModel, "scheduler": _scheduler_class(directory / "scheduler")}
        parts = {k: loaders[k].from_pretrained(directory / k, local_files_only=True)
                 for k in SD_PARTS if (directory / k).is_dir()}
        for k in ("text_encoder", "vae", "unet"):
            if k in parts:
                parts[k] = parts[k].eval().requires_grad_(False)
        meta = json.loads((directory / "parts.json").read_text()) if (directory / "parts.json").is_file() else {}
        return cls(**parts, meta=meta)


def _scheduler_class(folder: Path):
    """The scheduler class its config names (DDIM for a teacher, LCM for an exported student)."""
    import diffusers

    cfg = folder / "scheduler_config.json"
    name = json.loads(cfg.read_text()).get("_class_name", "DDIMScheduler") if cfg.is_file() else "DDIMScheduler"
    return getattr(diffusers, name, diffusers.DDIMScheduler)


@dataclass
class LatentCache:
    latents: torch.Tensor            # (N, C, h, w) scaled latents
    prompt_ids: torch.Tensor         # (N,) row of each image's caption in `embeddings`
    is_eval: torch.Tensor            # (N,) bool
    embeddings: torch.Tensor         # (P + 1, L, D); row P = the empty prompt
    prompts: list[str]
    meta: dict = field(default_factory=dict)   # data fingerprint, VAE and text-encoder hashes

    def table(self) -> PromptTable:
        return PromptTable(self.embeddings, self.prompts)

    def dataset(self):
        """The latents as the ImageDataset the trainer draws batches from (labels = prompt ids)."""
        from components.data import ImageDataset

        return ImageDataset(self.latents, self.prompt_ids, self.is_eval, self.prompts, "latent-cache", dict(self.meta))

    def save(self, directory: str | Path) -> None:
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        save_file({"latents": self.latents.contiguous(), "prompt_ids": self.prompt_ids.contiguous(),
                   "is_eval": self.is_eval.to(torch.uint8).contiguous(), "embeddings": self.embeddings.contiguous()},
                  directory / "latents.safetensors")
        (directory / "latents.json").write_text(json.dumps({"prompts": self.prompts, "meta": self.meta}, indent=0,
                                                           sort_keys=True) + "\n")

    @classmethod
    def load(cls, directory: str | Path) -> "LatentCache":
        directory = Path(directory)
        t = load_file(directory / "latents.safetensors")
        info = json.loads((directory / "latents.json").read_text())
        return cls(t["latents"], t["prompt_ids"], t["is_eval"].bool(), t["embeddings"], info["prompts"], info["meta"])


def build_cache(data, parts: SDParts) -> LatentCache:
    """Encode the images with the VAE and the distinct captions with the text encoder (as the stock pipeline)."""
    from components.t2i.sd import encode_prompts
    from components.t2i.train import encode_latents

    latents = encode_latents(parts.vae, data.images)
    prompts = data.prompts()
    emb = encode_prompts(parts.tokenizer, parts.text_encoder, prompts)
    meta = {"data_sha256": data.fingerprint(), "vae_sha256": state_hash(parts.vae),
            "text_encoder_sha256": state_hash(parts.text_encoder)}
    return LatentCache(latents, data.prompt_ids(), data.is_eval.clone(), emb, prompts, meta)


# -- a latent student ----------------------------------------------------------------------------
def save_student(student: TextDenoiser, directory: str | Path, extra: dict | None = None) -> dict:
    """unet/ (LoRA fused), lora/ (a LoRA student's file with alpha), student.json; written atomically."""
    from components.nets.lora import fuse_lora_unet, has_lora, save_lora_file
    from components.t2i.latent import student_timesteps

    directory = Path(directory)
    info = {"timesteps": student_timesteps(student), "sampling": student.sampling, "lora": None, **(extra or {})}
    with atomic_dir(directory) as tmp:
        if has_lora(student.unet):
            save_lora_file(student.unet, tmp / "lora")
            meta = student.unet.peft_config["default"]
            info["lora"] = {"rank": int(meta.r), "alpha": float(meta.lora_alpha),
                            "target_modules": sorted(meta.target_modules)}
        unet = fuse_lora_unet(student.unet)
        info["unet_sha256"] = state_hash(unet)
        unet.save_pretrained(tmp / "unet", safe_serialization=True)
        (tmp / STUDENT_FILE).write_text(json.dumps(info, indent=1, sort_keys=True) + "\n")
    return info


def load_student(directory: str | Path, table: PromptTable, teacher: TextDenoiser) -> TextDenoiser:
    """A saved latent student as a TextDenoiser on the teacher's schedule and prompt table."""
    from diffusers import UNet2DConditionModel

    directory = Path(directory)
    if not (directory / STUDENT_FILE).is_file():
        raise ConfigError(f"latent student '{directory}': missing {STUDENT_FILE} (expected a folder from the distill "
                          "stage)")
    info = json.loads((directory / STUDENT_FILE).read_text())
    unet = UNet2DConditionModel.from_pretrained(directory / "unet", local_files_only=True)
    den = TextDenoiser(unet, table, teacher.alphas_cumprod, teacher.prediction_type, teacher.sigma_data)
    den.sampling = info["sampling"]
    return den.eval().requires_grad_(False)


def student_info(directory: str | Path) -> dict:
    return json.loads((Path(directory) / STUDENT_FILE).read_text())


__all__ = ["LatentCache", "SDParts", "STUDENT_FILE", "build_cache", "load_student", "save_student", "student_info"]
