"""Denoisers D(x_sigma, sigma, c) -> x0_hat over the EDM noise parametrisation x_sigma = x0 + sigma*n.

Every method and sampler talks only to this interface, so code written once works for the
built-in teacher (EDM / consistency-model preconditioning) and for a user's diffusers UNet
trained with a DDPM-style scheduler (epsilon, v or sample prediction).
"""
from __future__ import annotations

import hashlib
import json
from pathlib import Path

import torch
from torch import nn

from components.config import ConfigError

DENOISER_FILE = "denoiser.json"


class Denoiser(nn.Module):
    """Base: holds the UNet, the sigma range and the class count (index num_classes = null)."""

    kind = "base"

    def __init__(self, unet: nn.Module, num_classes: int, sigma_min: float, sigma_max: float,
                 sigma_data: float = 0.5):
        super().__init__()
        self.unet = unet
        self.num_classes = int(num_classes)
        self.sigma_min, self.sigma_max, self.sigma_data = float(sigma_min), float(sigma_max), float(sigma_data)
        # how this network is sampled by default: {'sampler': name in SAMPLERS, 'sigmas': [..., 0]}
        self.sampling: dict = {"sampler": "fewstep", "sigmas": [self.sigma_max, 0.0]}

    @property
    def null_class(self) -> int:
        return self.num_classes

    def _sigma(self, sigma, x: torch.Tensor) -> torch.Tensor:
        sigma = torch.as_tensor(sigma, dtype=x.dtype, device=x.device)
        return sigma.expand(x.shape[0]) if sigma.ndim == 0 else sigma.reshape(x.shape[0])

    def guided(self, x: torch.Tensor, sigma, class_labels: torch.Tensor, scale: float) -> torch.Tensor:
        """Classifier-free guidance (Ho & Salimans 2022): D_u + s * (D_c - D_u); s=1 -> D_c."""
        if scale == 1.0:
            return self(x, sigma, class_labels)
        sigma = self._sigma(sigma, x)
        null = torch.full_like(class_labels, self.null_class)
        both = self(torch.cat([x, x]), torch.cat([sigma, sigma]), torch.cat([class_labels, null]))
        cond, uncond = both.chunk(2)
        return uncond + scale * (cond - uncond)

    def unet_inputs(self, x: torch.Tensor, sigma: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(scaled input, noise conditioning) that the UNet sees for x at noise level sigma."""
        raise NotImplementedError

    def bottleneck(self, x: torch.Tensor, sigma, class_labels: torch.Tensor) -> torch.Tensor:
        """The UNet's bottleneck features of the noised input x (its mid-block output)."""
        from components.nets.unet import unet_bottleneck

        inp, t = self.unet_inputs(x, self._sigma(sigma, x))
        return unet_bottleneck(self.unet, inp, t, class_labels)

    def config(self) -> dict:
        return {"kind": self.kind, "num_classes": self.num_classes, "sigma_min": self.sigma_min,
                "sigma_max": self.sigma_max, "sigma_data": self.sigma_data, "sampling": self.sampling}


class EDMDenoiser(Denoiser):
    """EDM preconditioning (Karras et al. 2022, Table 1) in the consistency-model form that
    diffusers' CMStochasticIterativeScheduler uses:
    c_skip = s_d^2 / ((s - s_min)^2 + s_d^2), c_out = (s - s_min) s_d / sqrt(s^2 + s_d^2),
    c_in = 1 / sqrt(s^2 + s_d^2), c_noise = 250 ln(s); D = c_skip x + c_out F(c_in x, c_noise, c)."""

    kind = "edm"

    def preconditioning(self, sigma: torch.Tensor):
        s_d, s_min = self.sigma_data, self.sigma_min
        c_skip = s_d**2 / ((sigma - s_min) ** 2 + s_d**2)
        c_out = (sigma - s_min) * s_d / (sigma**2 + s_d**2).sqrt()
        c_in = 1.0 / (sigma**2 + s_d**2).sqrt()
        c_noise = 250.0 * torch.log(sigma + 1e-44)
        return c_skip, c_out, c_in, c_noise

    def unet_inputs(self, x, sigma):
        _, _, c_in, c_noise = self.preconditioning(sigma)
        return c_in.view(-1, 1, 1, 1) * x, c_noise

    def forward(self, x: torch.Tensor, sigma, class_labels: torch.Tensor) -> torch.Tensor:
        sigma = self._sigma(sigma, x)
        c_skip, c_out, c_in, c_noise = self.preconditioning(sigma)
        b = (-1, 1, 1, 1)
        F_x = self.unet(c_in.view(b) * x, c_noise, class_labels=class_labels).sample
        return c_skip.view(b) * x + c_out.view(b) * F_x.to(x.dtype)


class VPDenoiser(Denoiser):
    """A DDPM-style diffusers UNet (alphas_cumprod schedule) seen as an EDM denoiser:
    x_vp = x / sqrt(1 + sigma^2), t from sigma_t = sqrt((1 - abar_t) / abar_t) (log-interpolated),
    x0 from the UNet's epsilon / v / sample prediction (Ho et al. 2020; Salimans & Ho 2022)."""

    kind = "vp"

    def __init__(self, unet: nn.Module, num_classes: int, alphas_cumprod: torch.Tensor,
                 prediction_type: str = "epsilon", sigma_data: float = 0.5):
        sigmas = ((1 - alphas_cumprod) / alphas_cumprod).sqrt()
        super().__init__(unet, num_classes, float(sigmas[0]), float(sigmas[-1]), sigma_data)
        if prediction_type not in ("epsilon", "v_prediction", "sample"):
            raise ValueError(f"scheduler prediction_type must be epsilon, v_prediction or sample, got {prediction_type!r}")
        self.prediction_type = prediction_type
        self.register_buffer("log_sigmas", sigmas.log().float(), persistent=False)
        self.alphas_cumprod = alphas_cumprod.float()

    def sigma_to_t(self, sigma: torch.Tensor) -> torch.Tensor:
        log_s = sigma.clamp(self.sigma_min, self.sigma_max).log()
        idx = torch.searchsorted(self.log_sigmas, log_s).clamp(1, len(self.log_sigmas) - 1)
        lo, hi = self.log_sigmas[idx - 1], self.log_sigmas[idx]
        w = ((log_s - lo) / (hi - lo)).clamp(0, 1)
        return idx - 1 + w

    def unet_inputs(self, x, sigma):
        return x / (1.0 + sigma**2).sqrt().view(-1, 1, 1, 1), self.sigma_to_t(sigma)

    def forward(self, x: torch.Tensor, sigma, class_labels: torch.Tensor) -> torch.Tensor:
        sigma = self._sigma(sigma, x)
        b = (-1, 1, 1, 1)
        alpha = (1.0 / (1.0 + sigma**2).sqrt()).view(b)       # sqrt(abar)
        s_vp = sigma.view(b) * alpha                            # sqrt(1 - abar)
        x_vp = alpha * x
        out = self.unet(x_vp, self.sigma_to_t(sigma), class_labels=class_labels).sample.to(x.dtype)
        if self.prediction_type == "epsilon":
            return x - sigma.view(b) * out
        if self.prediction_type == "v_prediction":
            return alpha * x_vp - s_vp * out
        return out

    def config(self) -> dict:
        return {**super().config(), "prediction_type": self.prediction_type}


def save_denoiser(denoiser: Denoiser, directory: str | Path, extra: dict | None = None) -> None:
    """Diffusers layout: unet/ (config + safetensors), scheduler/ (scheduler_config.json), denoiser.json."""
    directory = Path(directory)
    denoiser.unet.save_pretrained(directory / "unet", safe_serialization=True)
    if isinstance(denoiser, EDMDenoiser):
        from diffusers import CMStochasticIterativeScheduler

        CMStochasticIterativeScheduler(
            num_train_timesteps=40, sigma_min=denoiser.sigma_min, sigma_max=denoiser.sigma_max,
            sigma_data=denoiser.sigma_data, rho=7.0, clip_denoised=True,
        ).save_pretrained(directory / "scheduler")
    else:
        from diffusers import DDPMScheduler

        n = len(denoiser.alphas_cumprod)
        betas = 1 - denoiser.alphas_cumprod / torch.cat([torch.ones(1), denoiser.alphas_cumprod[:-1]])
        DDPMScheduler(num_train_timesteps=n, trained_betas=betas.tolist(),
                      prediction_type=denoiser.prediction_type).save_pretrained(directory / "scheduler")
    (directory / DENOISER_FILE).write_text(json.dumps({**denoiser.config(), **(extra or {})}, indent=1))


def load_denoiser(directory: str | Path, num_classes: int | None = None, what: str = "teacher.path") -> Denoiser:
    """Load a folder written by save_denoiser, or a user's diffusers folder (unet/ + scheduler/)."""
    from diffusers import UNet2DModel

    directory = Path(directory)
    if not directory.is_dir():
        raise ConfigError(f"{what} '{directory}': no such folder (expected a diffusers folder "
                          "with unet/ and scheduler/scheduler_config.json)")
    sched_file = directory / "scheduler" / "scheduler_config.json"
    if not (directory / "unet" / "config.json").is_file() or not sched_file.is_file():
        raise ConfigError(f"{what} '{directory}': missing unet/config.json or "
                          "scheduler/scheduler_config.json (expected a diffusers folder)")
    info = json.loads((directory / DENOISER_FILE).read_text()) if (directory / DENOISER_FILE).is_file() else {}
    unet = UNet2DModel.from_pretrained(directory / "unet")
    embeds = unet.config.num_class_embeds
    n_cls = int(info.get("num_classes", num_classes if num_classes is not None else (embeds or 1) - 1))
    if embeds is None or embeds != n_cls + 1:
        raise ConfigError(f"{what} '{directory}': unet/config.json num_class_embeds={embeds}; "
                          f"expected num_classes + 1 = {n_cls + 1} (the last index is the null class)")
    sched = json.loads(sched_file.read_text())
    if info.get("kind", "edm" if sched.get("_class_name") == "CMStochasticIterativeScheduler" else "vp") == "edm":
        den: Denoiser = EDMDenoiser(unet, n_cls, sched.get("sigma_min", 0.002), sched.get("sigma_max", 80.0),
                                    sched.get("sigma_data", 0.5))
    else:
        from diffusers import DDPMScheduler

        ddpm = DDPMScheduler.from_config(sched)
        den = VPDenoiser(unet, n_cls, ddpm.alphas_cumprod, ddpm.config.prediction_type)
    if "sampling" in info:
        den.sampling = info["sampling"]
    return den.eval()


def state_hash(module: nn.Module) -> str:
    """sha256 over a module's parameters and buffers (names, dtypes, values): the teacher hash."""
    h = hashlib.sha256()
    for name, t in sorted(module.state_dict().items()):
        h.update(name.encode())
        h.update(str(t.dtype).encode())
        h.update(t.detach().cpu().contiguous().view(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


