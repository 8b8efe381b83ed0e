"""Generate images with a denoiser's own sampling recipe, counting NFE and wall-clock."""
from __future__ import annotations

import time
from dataclasses import dataclass

import torch
from tqdm.auto import tqdm

from components.diffusion.samplers import get_sampler


class CountingDenoiser(torch.nn.Module):
    """Wraps a denoiser and counts network evaluations per sample batch (NFE)."""

    def __init__(self, denoiser):
        super().__init__()
        self.inner, self.calls = denoiser, 0
        self.training = False           # its own flag (a new Module's is True); the inner's are the inner's
        self.sigma_max, self.null_class = denoiser.sigma_max, denoiser.null_class

    def forward(self, x, sigma, class_labels):
        self.calls += 1
        return self.inner(x, sigma, class_labels)

    def jump(self, x, t, s, class_labels):
        # a CTM student's G(x_t, t, s) (components/methods/ctm.py): one network evaluation
        self.calls += 1
        return self.inner.jump(x, t, s, class_labels)

    def guided(self, x, sigma, class_labels, scale):
        # CFG with scale != 1 is two network evaluations batched into one call; a guided student's is one
        self.calls += self.inner.nfe(scale)
        return self.inner.guided(x, sigma, class_labels, scale)


def in_eval_mode(module: torch.nn.Module) -> torch.nn.Module:
    """The module in eval mode. Module.eval() rewrites every submodule's flag, which costs about 1 ms for a routed
    bundle of 4 UNets on 2 CPU cores, a quarter of its batch-1 latency (measured by an ad-hoc profile), so it runs only
    when some submodule is training: reading the flags is cheap."""
    if any(m.training for m in module.modules()):
        module.eval()
    return module


@dataclass
class Generated:
    images: torch.Tensor     # (N, C, H, W) in [-1, 1]
    labels: torch.Tensor
    nfe: int                 # network evaluations per image
    seconds: float           # sampling wall-clock (network + sampler), excluding feature extraction


def balanced_labels(n: int, num_classes: int) -> torch.Tensor:
    """n labels cycling through the classes: class counts differ by at most one."""
    return torch.arange(n) % num_classes


@torch.no_grad()
def sample_batch(denoiser, z: torch.Tensor, labels: torch.Tensor, generator: torch.Generator,
                 guidance_scale: float = 1.0) -> torch.Tensor:
    """Images in [-1, 1] from standard-normal noise z (scaled to the recipe's first sigma here), the denoiser in
    eval mode."""
    recipe = denoiser.sampling
    sigmas = torch.tensor(recipe["sigmas"], dtype=torch.float32)
    device = next(denoiser.parameters()).device
    options = {k: v for k, v in recipe.items() if k not in ("sampler", "sigmas")}      # e.g. CTM's gamma
    cond = {"class_labels": labels.to(device), "guidance_scale": guidance_scale, **options}
    denoiser = in_eval_mode(denoiser)
    x = get_sampler(recipe["sampler"])(denoiser, (z * sigmas[0]).to(device), sigmas.to(device), cond,
                                       generator=generator)
    return x.clamp(-1, 1).cpu()


@torch.no_grad()
def generate(denoiser, labels: torch.Tensor, seed: int, batch_size: int = 500,
             guidance_scale: float = 1.0, progress: bool = False, desc: str = "sampling") -> Generated:
    """Sample one image per label with denoiser.sampling = {'sampler': name, 'sigmas': [...]}."""
    counter = CountingDenoiser(in_eval_mode(denoiser))
    counter.sampling = denoiser.sampling
    g = torch.Generator().manual_seed(seed)
    out, t0, nfe = [], time.perf_counter(), 0
    unet = getattr(denoiser, "unet", None)
    shape = getattr(denoiser, "image_shape", None) or (unet.config.in_channels, unet.config.sample_size,
                                                       unet.config.sample_size)   # a cascade's UNet takes 2C
    for i in tqdm(range(0, len(labels), batch_size), desc=desc, disable=not progress, mininterval=2):
        y = labels[i:i + batch_size]
        z = torch.randn((len(y), *shape), generator=g)
        counter.calls = 0
        out.append(sample_batch(counter, z, y, g, guidance_scale))
        nfe = counter.calls
    return Generated(torch.cat(out), labels, nfe, time.perf_counter() - t0)
