"""A LowDiff cascade (Xu et al. 2025, arXiv 2509.15342 / ../shared/PAPERS.md): ONE network for every resolution
of a cascade, and the sampler that generates at the lowest resolution first and refines upwards.

The network (CascadeDenoiser) is the EDM-preconditioned class-conditional UNet of the teacher's shape, with
  - a second input channel group: the upsampled result of the level below (zeros at the lowest level, where
    there is none): F(cat[c_in x, x_low_up], c_noise, e(r), c);
  - a resolution embedding e(r) added to the time embedding: Fourier features of 250 log2(R / r), R the full
    resolution, through an MLP (components.diffusion.denoiser.ScalarEmbedding, trained from scratch);
  - a fully convolutional body, so the same weights run at every resolution the UNet's downsamplings divide.
The pair down/up is avg-pool / nearest-neighbour: downsample(upsample(x)) == x (up to float rounding).

Sampling (`sample_cascade`, sampler name `cascade`), for levels l = 0..L-1 at resolutions r_0 < ... < r_{L-1} = R:
  level 0:  x ~ N(0, sigma_max^2 I) at r_0 (the full-resolution noise, avg-pooled and rescaled to unit variance),
            Heun (EDM Algorithm 1) on steps_0 Karras levels sigma_max -> 0, no low-resolution input;
  level l:  x_up = upsample(x_{l-1});  x = x_up + sigma_l n  (the forward marginal at sigma_l around x_up),
            Heun on steps_l Karras levels sigma_l -> 0 with x_up as the network's second input.
A one-level cascade is the ordinary Heun sampler of the same network (tested). NFE per level: 2 steps_l - 1.
Only the abstract and introduction of the paper were readable offline; docs/lowdiff.md lists which choices
follow the paper and which are this project's."""
from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Callable, Optional, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from components.config import ConfigError
from components.diffusion.denoiser import FOLDER_FORMATS, EDMDenoiser, ScalarEmbedding, _add_extra_embedding
from components.diffusion.noise_schedule import karras_sigmas
from components.diffusion.samplers import SAMPLERS, sample_heun

CASCADE_FILE = "cascade.json"                    # marks a cascade's folder (save_cascade / load_cascade)
RES_EMBEDDING_FILE = "res_embedding.safetensors"
RES_SCALE = 250.0                                # e(r) embeds 250 log2(R / r): the scale of c_noise = 250 ln sigma


def downsample(x: torch.Tensor, factor: int) -> torch.Tensor:
    """Average pooling by an integer factor (the cascade's low-resolution view of an image)."""
    return F.avg_pool2d(x, int(factor)) if factor > 1 else x


def upsample(x: torch.Tensor, factor: int) -> torch.Tensor:
    """Nearest-neighbour upsampling by an integer factor: downsample(upsample(x, f), f) == x (to float rounding)."""
    f = int(factor)
    return x.repeat_interleave(f, dim=-2).repeat_interleave(f, dim=-1) if f > 1 else x


def noise_downsample(z: torch.Tensor, factor: int) -> torch.Tensor:
    """Standard-normal noise at full resolution -> standard-normal noise at 1/factor (pooled, times factor)."""
    return downsample(z, factor) * factor if factor > 1 else z


def check_levels(resolutions: Sequence[int], full: int, depth: int, steps: Sequence[int] | None = None,
                 start_sigma: Sequence[float] | None = None, sigma_min: float = 0.002, sigma_max: float = 80.0,
                 prefix: str = "distill") -> list[int]:
    """The resolutions as ints, or a ConfigError naming the field: increasing, each dividing the next, the last the
    data's resolution, each one the UNet (with `depth` resolution levels, 2^(depth-1) downsampling) can take; one
    step count per level; one start noise per level above the first, inside (sigma_min, sigma_max)."""
    res = [int(r) for r in resolutions]
    if not res:
        raise ConfigError(f"config field '{prefix}.resolutions': empty; give at least the data's resolution ({full})")
    for a, b in zip(res, res[1:]):
        if b <= a or b % a:
            raise ConfigError(f"config field '{prefix}.resolutions': {res} must increase, each dividing the next "
                              f"(got {a} then {b})")
    if res[-1] != full:
        raise ConfigError(f"config field '{prefix}.resolutions': the last level is {res[-1]} but the data is "
                          f"{full}x{full}; the cascade must end at the data's resolution")
    unit = 2 ** (depth - 1)
    for r in res:
        if r % unit:
            raise ConfigError(f"config field '{prefix}.resolutions': {r} is not a multiple of {unit}: the UNet's "
                              f"{depth - 1} downsampling(s) cannot take a {r}x{r} input")
    if steps is not None and (len(steps) != len(res) or any(int(s) < 1 for s in steps)):
        raise ConfigError(f"config field '{prefix}.steps': {list(steps)}; expected one Heun step count >= 1 per level "
                          f"({len(res)} levels: {res})")
    if start_sigma is not None:
        if len(start_sigma) != len(res) - 1:
            raise ConfigError(f"config field '{prefix}.start_sigma': {list(start_sigma)}; expected one start noise per "
                              f"level above the first ({len(res) - 1} for resolutions {res})")
        for s in start_sigma:
            if not sigma_min < float(s) <= sigma_max:
                raise ConfigError(f"config field '{prefix}.start_sigma': {s} is outside the schedule "
                                  f"({sigma_min}, {sigma_max}]")
    return res


def cascade_recipe(resolutions: Sequence[int], steps: Sequence[int], start_sigma: Sequence[float],
                   sigma_max: float, rho: float = 7.0) -> dict:
    """The sampling recipe of a cascade (sample_cascade): one {resolution, steps, sigma_start} per level."""
    starts = [float(sigma_max), *(float(s) for s in start_sigma)]
    levels = [{"resolution": int(r), "steps": int(n), "sigma_start": round(s, 6)}
              for r, n, s in zip(resolutions, steps, starts)]
    return {"sampler": "cascade", "sigmas": [float(sigma_max), 0.0], "levels": levels, "rho": float(rho)}


def level_nfe(recipe: dict) -> list[int]:
    """Network evaluations per image at each level of a cascade recipe (Heun: 2 steps - 1)."""
    return [2 * int(lv["steps"]) - 1 for lv in recipe["levels"]]


def full_resolution_nfe(recipe: dict) -> float:
    """NFE in full-resolution equivalents: each level's NFE times its share of the full resolution's pixels."""
    full = recipe["levels"][-1]["resolution"]
    return sum(n * (lv["resolution"] / full) ** 2 for n, lv in zip(level_nfe(recipe), recipe["levels"]))


class CascadeDenoiser(EDMDenoiser):
    """The unified LowDiff network: D(x, sigma, c; x_low_up) at any of the cascade's resolutions. The level is
    read from x's size; `lowres` (the upsampled level below, x's size) is given per call or set by the sampler."""

    kind = "cascade"

    def __init__(self, unet: nn.Module, num_classes: int, sigma_min: float, sigma_max: float,
                 sigma_data: float = 0.5, resolutions: Sequence[int] = (16,)):
        super().__init__(unet, num_classes, sigma_min, sigma_max, sigma_data)
        if unet.config.in_channels != 2 * unet.config.out_channels:
            raise ValueError(f"a cascade's UNet takes the image and the low-resolution input: in_channels must be "
                             f"2 x out_channels, got {unet.config.in_channels} and {unet.config.out_channels}")
        self.resolutions = [int(r) for r in resolutions]
        emb = unet.time_embedding
        self.res_embed = ScalarEmbedding(unet.config.block_out_channels[0], emb.linear_2.out_features)
        self.res_embed.linear_2.reset_parameters()          # trained from scratch: levels differ from the start
        emb.register_forward_hook(_add_extra_embedding)
        self.lowres: Optional[torch.Tensor] = None          # the level's low-resolution input while sampling it
        self.sampling = cascade_recipe(self.resolutions, [18] * len(self.resolutions),
                                       [1.0] * (len(self.resolutions) - 1), sigma_max)

    @property
    def image_shape(self) -> tuple[int, int, int]:
        """(C, H, W) of the images it generates (the UNet takes twice the channels)."""
        full = self.resolutions[-1]
        return (self.unet.config.out_channels, full, full)

    def level_of(self, x: torch.Tensor) -> int:
        r = int(x.shape[-1])
        if r not in self.resolutions or x.shape[-2] != r:
            raise ValueError(f"cascade: input of size {tuple(x.shape[-2:])} is not one of its levels "
                             f"{self.resolutions} (square)")
        return self.resolutions.index(r)

    def resolution_embedding(self, resolution: int, n: int, device=None) -> torch.Tensor:
        """e(r) for n samples at resolution r: added to the UNet's time embedding."""
        value = RES_SCALE * math.log2(self.resolutions[-1] / int(resolution))
        return self.res_embed(torch.full((n,), value, device=device))

    def forward(self, x: torch.Tensor, sigma, class_labels: torch.Tensor,
                lowres: Optional[torch.Tensor] = None) -> torch.Tensor:
        level = self.level_of(x)
        lowres = self.lowres if lowres is None else lowres
        if level == 0:
            cond = torch.zeros_like(x)                      # the lowest level has no low-resolution input
        elif lowres is None or lowres.shape != x.shape:
            raise ValueError(f"cascade level {level} ({x.shape[-1]}x{x.shape[-1]}) needs the upsampled level below "
                             f"as `lowres` of x's shape {tuple(x.shape)}, got "
                             f"{None if lowres is None else tuple(lowres.shape)}")
        else:
            cond = lowres.to(x.dtype)
        sigma = self._sigma(sigma, x)
        c_skip, c_out, c_in, c_noise = self.preconditioning(sigma)
        b = (-1, 1, 1, 1)
        emb = self.unet.time_embedding
        emb.extra_embedding = self.resolution_embedding(x.shape[-1], x.shape[0], x.device)
        try:
            F_x = self.unet(torch.cat([c_in.view(b) * x, cond], dim=1), c_noise, class_labels=class_labels).sample
        finally:
            emb.extra_embedding = None
        return c_skip.view(b) * x + c_out.view(b) * F_x.to(x.dtype)

    def unet_inputs(self, x, sigma):
        raise NotImplementedError("a cascade's UNet also takes the low-resolution input; call the cascade itself")

    def bottleneck(self, x, sigma, class_labels):
        raise NotImplementedError("a cascade has no single-resolution bottleneck for a discriminator")

    def config(self) -> dict:
        return {**super().config(), "resolutions": self.resolutions}


def start_level(x_low: torch.Tensor, resolution: int, sigma_start: float,
                generator: Optional[torch.Generator] = None) -> tuple[torch.Tensor, torch.Tensor]:
    """The start of a level above the first: (x_up + sigma_start n, x_up), x_up the level below upsampled to
    `resolution` - a draw from the forward process's marginal at sigma_start around x_up."""
    up = upsample(x_low, resolution // x_low.shape[-1])
    n = torch.randn(up.shape, generator=generator, dtype=up.dtype,
                    device=generator.device if generator is not None else up.device).to(up.device)
    return up + float(sigma_start) * n, up


@torch.no_grad()
def sample_cascade(denoiser, x: torch.Tensor, sigmas: torch.Tensor, cond, *,
                   generator: Optional[torch.Generator] = None, callback: Optional[Callable] = None) -> torch.Tensor:
    """LowDiff sampling (module docstring): the lowest level from noise, each higher level from the upsampled
    result noised to its start level; Heun within each level. `x` is full-resolution noise scaled to sigmas[0];
    cond['levels'] = [{'resolution', 'steps', 'sigma_start'}, ...] (cascade_recipe), cond['rho'] (7)."""
    inner = getattr(denoiser, "inner", denoiser)            # the cascade itself under generate's NFE counter
    levels, rho = cond["levels"], float(cond.get("rho", 7.0))
    full = x.shape[-1]
    if levels[-1]["resolution"] != full:
        raise ValueError(f"cascade sampling: the last level is {levels[-1]['resolution']}, the noise is {full}x{full}")
    z = x / sigmas[0]
    out = None
    for level, lv in enumerate(levels):
        s0 = float(lv["sigma_start"])
        grid = karras_sigmas(int(lv["steps"]), inner.sigma_min, s0, rho).to(x.device)
        if level == 0:
            x_l, up = noise_downsample(z, full // int(lv["resolution"])) * s0, None
        else:
            x_l, up = start_level(out, int(lv["resolution"]), s0, generator)
        inner.lowres = up
        try:
            out = sample_heun(denoiser, x_l, grid, cond, generator=generator)
        finally:
            inner.lowres = None
        if callback is not None:
            callback({"i": level, "sigma": s0, "x": out})
    return out


def save_cascade(den: CascadeDenoiser, directory: str | Path) -> None:
    """unet/ (diffusers, safetensors), res_embedding.safetensors, cascade.json (config + sampling recipe)."""
    from safetensors.torch import save_file

    directory = Path(directory)
    den.unet.save_pretrained(directory / "unet", safe_serialization=True)
    save_file(den.res_embed.state_dict(), str(directory / RES_EMBEDDING_FILE))
    (directory / CASCADE_FILE).write_text(json.dumps(den.config(), indent=1))


def load_cascade(directory: str | Path, what: str = "student") -> CascadeDenoiser:
    from diffusers import UNet2DModel
    from safetensors.torch import load_file

    directory = Path(directory)
    try:
        info = json.loads((directory / CASCADE_FILE).read_text())
        unet = UNet2DModel.from_pretrained(directory / "unet")
        den = CascadeDenoiser(unet, int(info["num_classes"]), float(info["sigma_min"]), float(info["sigma_max"]),
                              float(info["sigma_data"]), info["resolutions"])
        den.res_embed.load_state_dict(load_file(str(directory / RES_EMBEDDING_FILE)))
    except (OSError, KeyError, TypeError, ValueError, RuntimeError) as exc:
        raise ConfigError(f"{what} '{directory}': not a LowDiff cascade folder (unet/, {RES_EMBEDDING_FILE}, "
                          f"{CASCADE_FILE}): {str(exc).splitlines()[0] if str(exc) else type(exc).__name__}") from None
    if "sampling" in info:
        den.sampling = info["sampling"]
    return den.eval()


SAMPLERS["cascade"] = sample_cascade
FOLDER_FORMATS[CascadeDenoiser.kind] = (CASCADE_FILE, save_cascade, load_cascade)   # save_denoiser / load_denoiser

__all__ = ["CASCADE_FILE", "CascadeDenoiser", "cascade_recipe", "check_levels", "downsample", "full_resolution_nfe",
           "level_nfe", "load_cascade", "noise_downsample", "sample_cascade", "save_cascade", "start_level", "upsample"]
