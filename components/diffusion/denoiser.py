"""Denoisers D(x_sigma, sigma, c) -> x0_hat over the EDM noise parametrisation x_sigma = x0 + sigma*n.

Every method and sampler talks only to this interface, so code written once works for the
built-in teacher (EDM / consistency-model preconditioning) and for a user's diffusers UNet
trained with a DDPM-style scheduler (epsilon, v or sample prediction).
"""
from __future__ import annotations

import copy
import hashlib
import json
from pathlib import Path

import torch
from torch import nn

from components.config import ConfigError
from components.diffusion.noise_schedule import student_sigmas

DENOISER_FILE = "denoiser.json"
S_EMBEDDING_FILE = "s_embedding.safetensors"    # a CTM student's embedding of s (CTMDenoiser)
W_EMBEDDING_FILE = "w_embedding.safetensors"    # a guided student's embedding of w (GuidedDenoiser)


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

    def nfe(self, scale: float) -> int:
        """Network evaluations of one guided() call: CFG needs the conditional and the unconditional one."""
        return 1 if scale == 1.0 else 2

    def unet_inputs(self, x: torch.Tensor, sigma: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(scaled input, noise conditioning) that the UNet sees for x at noise level sigma."""
        raise NotImplementedError

    def training_sigmas(self, T: int) -> torch.Tensor:
        """The grid of T noise levels, ascending, that DMD2's timestep indices refer to: a Karras grid over
        [sigma_min, sigma_max] (index T - 1 = sigma_max, as the reference EDM code indexes it)."""
        from components.diffusion.noise_schedule import karras_sigmas

        return karras_sigmas(T, self.sigma_min, self.sigma_max, append_zero=False).flip(0)

    def initial_noise_scale(self, sigma0: float) -> float:
        """x at the first step is z * this (z ~ N(0, I)): sigma0 on the EDM scale. A text-to-image student
        starts from pure noise as the stock pipeline does (TextDenoiser)."""
        return float(sigma0)

    def null_condition(self, n: int, device=None) -> torch.Tensor:
        """n copies of the unconditional input (the null class)."""
        return torch.full((n,), self.null_class, dtype=torch.long, device=device)

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

    @classmethod
    def from_teacher(cls, teacher: "EDMDenoiser"):
        """A new student of this class (CTMDenoiser, GuidedDenoiser: its kind is the distill.method) on a copy
        of an EDM teacher's UNet and sigma range."""
        if type(teacher) is not EDMDenoiser:
            raise ConfigError(f"distill.method {cls.kind}: the teacher must be an EDM-preconditioned denoiser (kind "
                              f"'edm'), got kind {getattr(teacher, 'kind', type(teacher).__name__)!r}")
        return cls(copy.deepcopy(teacher.unet), teacher.num_classes, teacher.sigma_min, teacher.sigma_max,
                   teacher.sigma_data)

    def unet_inputs(self, x, sigma):
        _, _, c_in, c_noise = self.preconditioning(sigma)
        return c_in.view(-1, 1, 1, 1) * x, c_noise

    def forward(self, x: torch.Tensor, sigma, class_labels: torch.Tensor) -> torch.Tensor:
        sigma = self._sigma(sigma, x)
        c_skip, c_out, c_in, c_noise = self.preconditioning(sigma)
        b = (-1, 1, 1, 1)
        F_x = self.unet(c_in.view(b) * x, c_noise, class_labels=class_labels).sample
        return c_skip.view(b) * x + c_out.view(b) * F_x.to(x.dtype)


def _add_extra_embedding(module: nn.Module, inputs, output):
    """Forward hook on a UNet's time embedding: adds `module.extra_embedding` when one is set (CTM's s)."""
    extra = getattr(module, "extra_embedding", None)
    return output if extra is None else output + extra.to(output.dtype)


class ScalarEmbedding(nn.Module):
    """An extra scalar input added to a UNet's time embedding (CTM's jump target s, guided distillation's
    guidance strength w): sinusoidal (Fourier) features of the scalar -> MLP -> the time-embedding width
    (the same shape as the embedding of t it is added to). The last layer starts at zero, so a new
    student is its teacher for every value of the scalar."""

    def __init__(self, channels: int, dim: int):
        super().__init__()
        from diffusers.models.embeddings import Timesteps

        self.proj = Timesteps(channels, flip_sin_to_cos=True, downscale_freq_shift=0)
        self.linear_1, self.act, self.linear_2 = nn.Linear(channels, dim), nn.SiLU(), nn.Linear(dim, dim)
        nn.init.zeros_(self.linear_2.weight)
        nn.init.zeros_(self.linear_2.bias)

    def forward(self, c_noise: torch.Tensor) -> torch.Tensor:
        return self.linear_2(self.act(self.linear_1(self.proj(c_noise).to(self.linear_1.weight.dtype))))


class CTMDenoiser(EDMDenoiser):
    """A Consistency Trajectory Model student (Kim et al. 2023, eq. 3 / ../shared/PAPERS.md):
        G(x_t, t, s) = (s/t) x_t + (1 - s/t) g(x_t, t, s),
    g = the EDM-preconditioned UNet with an embedding of s added to its time embedding:
        g(x_t, t, s) = c_skip(t) x_t + c_out(t) F(c_in(t) x_t, c_noise(t), e(s) - e(0), c).
    e(s) embeds c_noise(max(s, sigma_min)); subtracting e(0) makes s = 0 (and s <= sigma_min) the plain
    UNet: `forward(x, t, c)` = G(x, t, 0) is the consistency function, which a stock diffusers
    ConsistencyModelPipeline runs from unet/ alone (1-step and gamma = 1 multistep). Other s need the
    s embedding (s_embedding.safetensors beside unet/, loaded by load_denoiser)."""

    kind = "ctm"

    def __init__(self, unet: nn.Module, num_classes: int, sigma_min: float, sigma_max: float,
                 sigma_data: float = 0.5):
        super().__init__(unet, num_classes, sigma_min, sigma_max, sigma_data)
        emb = unet.time_embedding
        self.s_embed = ScalarEmbedding(unet.config.block_out_channels[0], emb.linear_2.out_features)
        emb.register_forward_hook(_add_extra_embedding)   # a module-level function: survives deepcopy
        self.sampling = self.gamma_recipe(1, 0.0)

    # The grid every CTM run is scored on (metrics.evaluate.sampling_sweep, the leaderboard's sweep rows):
    # one trained network at each step count x gamma.
    sampling_sweep = {"steps": (1, 2, 4), "gamma": (0.0, 0.5, 1.0)}

    def gamma_recipe(self, steps: int, gamma: float) -> dict:
        """The gamma-sampling recipe at `steps` steps (samplers.sample_gamma): the student levels of
        noise_schedule.student_sigmas (4 steps = sigma 80, 17.5, 2.5, 0.17, the DMD2 students' levels), then 0."""
        sigmas = student_sigmas(int(steps), self.sigma_min, self.sigma_max)
        return {"sampler": "gamma", "sigmas": [round(float(v), 6) for v in sigmas], "gamma": float(gamma)}

    def with_sampling(self, steps: int, gamma: float) -> "CTMDenoiser":
        """This student (weights shared, not copied) with gamma-sampling at `steps` steps."""
        s = copy.copy(self)
        s.sampling = self.gamma_recipe(steps, gamma)
        return s

    def s_embedding(self, s: torch.Tensor) -> torch.Tensor:
        """e(s) - e(0) per sample (exactly 0 where s <= sigma_min)."""
        s_noise = 250.0 * torch.log(s.clamp(min=self.sigma_min))
        zero = torch.full_like(s_noise, 250.0 * float(torch.log(torch.tensor(self.sigma_min))))
        both = self.s_embed(torch.cat([s_noise, zero]))
        return both[: len(s)] - both[len(s):]

    def g(self, x: torch.Tensor, t, s, class_labels: torch.Tensor) -> torch.Tensor:
        """g(x_t, t, s): the network's estimate of the clean image for a jump to s (g(x, t, t) is a denoiser)."""
        t, s = self._sigma(t, x), self._sigma(s, x)
        emb = self.unet.time_embedding
        emb.extra_embedding = self.s_embedding(s)
        try:
            return super().forward(x, t, class_labels)
        finally:
            emb.extra_embedding = None

    def jump(self, x: torch.Tensor, t, s, class_labels: torch.Tensor) -> torch.Tensor:
        """G(x_t, t, s), CTM eq. 3: the probability-flow ODE's solution at s <= t (G(x, t, t) = x)."""
        t, s = self._sigma(t, x), self._sigma(s, x)
        if bool((s > t).any()) or bool((s < 0).any()):
            raise ValueError(f"CTM jump G(x_t, t, s): expected 0 <= s <= t, got s {s.max().item():.4g} for t "
                             f"{t.min().item():.4g}")
        r = (s / t).view(-1, 1, 1, 1)
        return r * x + (1 - r) * self.g(x, t, s, class_labels)


class GuidedDenoiser(EDMDenoiser):
    """A guided-distillation student x_eta(z_t, t, w) (Meng et al. 2022, stage 1 / ../shared/PAPERS.md):
    the teacher's EDM-preconditioned UNet with an embedding of the guidance strength w added to its time
    embedding (zero-initialised: a new student is the conditional teacher for every w). w is an input,
    so one network evaluation gives what classifier-free guidance needs two for: the project's CFG scale
    is 1 + w (D_u + (1 + w)(D_c - D_u) = (1 + w) D_c - w D_u), and `guided(x, sigma, c, scale)` runs the
    network once at w = scale - 1. forward(x, sigma, c) is w = 0, the conditional prediction."""

    kind = "guided"
    W_SCALE = 250.0     # w enters the Fourier features as 250 w (c_noise = 250 ln sigma is on that scale)

    def __init__(self, unet: nn.Module, num_classes: int, sigma_min: float, sigma_max: float,
                 sigma_data: float = 0.5):
        super().__init__(unet, num_classes, sigma_min, sigma_max, sigma_data)
        emb = unet.time_embedding
        self.w_embed = ScalarEmbedding(unet.config.block_out_channels[0], emb.linear_2.out_features)
        emb.register_forward_hook(_add_extra_embedding)

    def with_w(self, x: torch.Tensor, sigma, class_labels: torch.Tensor, w) -> torch.Tensor:
        """x_eta(z_t, t, w): the student's guided prediction of the clean image, w a float or one per sample."""
        w = torch.as_tensor(w, dtype=torch.float32, device=x.device).expand(x.shape[0])
        emb = self.unet.time_embedding
        emb.extra_embedding = self.w_embed(self.W_SCALE * w)
        try:
            return super().forward(x, sigma, class_labels)
        finally:
            emb.extra_embedding = None

    def forward(self, x: torch.Tensor, sigma, class_labels: torch.Tensor) -> torch.Tensor:
        return self.with_w(x, sigma, class_labels, 0.0)

    def guided(self, x: torch.Tensor, sigma, class_labels: torch.Tensor, scale: float) -> torch.Tensor:
        return self.with_w(x, sigma, class_labels, float(scale) - 1.0)

    def nfe(self, scale: float) -> int:
        return 1


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

    def net(self, x_vp: torch.Tensor, t: torch.Tensor, cond: torch.Tensor) -> torch.Tensor:
        """The UNet's raw prediction (epsilon, v or sample) at DDPM timestep t; cond: class labels."""
        return self.unet(x_vp, t, class_labels=cond).sample

    def training_sigmas(self, T: int) -> torch.Tensor:
        """DMD2's noise-level grid, ascending: this model's own DDPM schedule, index = timestep (checked against
        tianweiy/DMD2 main/sd_guidance.py: integer timesteps drawn in [min_step, max_step], noised with the
        scheduler's add_noise), so student timesteps 999/749/499/249 are the scheduler's timesteps."""
        if T != len(self.log_sigmas):
            raise ConfigError(f"config field 'distill.num_train_timesteps': {T}, but the teacher's scheduler has "
                              f"{len(self.log_sigmas)} training timesteps; set it to {len(self.log_sigmas)}")
        return self.log_sigmas.exp()

    def forward(self, x: torch.Tensor, sigma, class_labels: torch.Tensor) -> torch.Tensor:
        sigma = self._sigma(sigma, x)
        b = (-1, 1, 1, 1)
        alpha = (1.0 / (1.0 + sigma**2).sqrt()).view(b)       # sqrt(abar)
        s_vp = sigma.view(b) * alpha                            # sqrt(1 - abar)
        x_vp = alpha * x
        out = self.net(x_vp, self.sigma_to_t(sigma), class_labels).to(x.dtype)
        if self.prediction_type == "epsilon":
            return x - sigma.view(b) * out
        if self.prediction_type == "v_prediction":
            return alpha * x_vp - s_vp * out
        return out

    def config(self) -> dict:
        return {**super().config(), "prediction_type": self.prediction_type}


# kind -> (the file that marks its folder, save(denoiser, directory), load(directory, what)): models made of other
# denoisers register here (components/diffusion/routed.py, imported with the package), so this module imports none
FOLDER_FORMATS: dict[str, tuple] = {}


def save_denoiser(denoiser: Denoiser, directory: str | Path, extra: dict | None = None) -> None:
    """Diffusers layout: unet/ (config + safetensors), scheduler/ (scheduler_config.json), denoiser.json.
    A routed student (components/diffusion/routed.py): one such folder per student + routing.json."""
    directory = Path(directory)
    if denoiser.kind in FOLDER_FORMATS:                   # e.g. a routed student (components/diffusion/routed.py)
        return FOLDER_FORMATS[denoiser.kind][1](denoiser, directory)
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
    extra_embedding = _EXTRA_EMBEDDINGS.get(denoiser.kind)
    if extra_embedding:
        from safetensors.torch import save_file

        save_file(getattr(denoiser, extra_embedding[0]).state_dict(), str(directory / extra_embedding[1]))
    (directory / DENOISER_FILE).write_text(json.dumps({**denoiser.config(), **(extra or {})}, indent=1))


def load_denoiser(directory: str | Path, num_classes: int | None = None, what: str = "teacher.path") -> Denoiser:
    """Load a folder written by save_denoiser, or a user's diffusers folder (unet/ + scheduler/)."""
    from diffusers import UNet2DModel

    directory = Path(directory)
    if not directory.is_dir():
        raise ConfigError(f"{what} '{directory}': no such folder (expected a diffusers folder "
                          "with unet/ and scheduler/scheduler_config.json)")
    for marker, _, load in FOLDER_FORMATS.values():      # e.g. routing.json: a routed student
        if (directory / marker).is_file():
            return load(directory, what)
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
    kind = info.get("kind", "edm" if sched.get("_class_name") == "CMStochasticIterativeScheduler" else "vp")
    if kind in ("edm", "ctm", "guided"):
        cls = {"edm": EDMDenoiser, "ctm": CTMDenoiser, "guided": GuidedDenoiser}[kind]
        den: Denoiser = cls(unet, n_cls, sched.get("sigma_min", 0.002), sched.get("sigma_max", 80.0),
                            sched.get("sigma_data", 0.5))
        if kind in _EXTRA_EMBEDDINGS:
            _load_extra_embedding(den, directory, what)
    else:
        from diffusers import DDPMScheduler

        ddpm = DDPMScheduler.from_config(sched)
        den = VPDenoiser(unet, n_cls, ddpm.alphas_cumprod, ddpm.config.prediction_type)
    if "sampling" in info:
        den.sampling = info["sampling"]
    return den.eval()


# kind -> (the student's attribute, its file beside unet/): the scalar input a stock UNet does not have
_EXTRA_EMBEDDINGS = {"ctm": ("s_embed", S_EMBEDDING_FILE), "guided": ("w_embed", W_EMBEDDING_FILE)}


def _load_extra_embedding(den: Denoiser, directory: Path, what: str) -> None:
    from safetensors.torch import load_file

    attr, name = _EXTRA_EMBEDDINGS[den.kind]
    scalar = {"ctm": "a CTM student's embedding of s", "guided": "a guided student's embedding of w"}[den.kind]
    path = directory / name
    if not path.is_file():
        raise ConfigError(f"{what} '{directory}': denoiser.json says kind {den.kind!r} but {name} is missing "
                          f"({scalar})")
    try:
        getattr(den, attr).load_state_dict(load_file(str(path)))
    except (RuntimeError, OSError) as exc:
        raise ConfigError(f"{what} '{path}': not {scalar} for this UNet ({str(exc).splitlines()[0]})") from None


def state_hash(module: nn.Module) -> str:
    """sha256 over a module's parameters and buffers (names, dtypes, values): the teacher hash."""
    h = hashlib.sha256()
    for name, t in sorted(module.state_dict().items()):
        h.update(name.encode())
        h.update(str(t.dtype).encode())
        h.update(t.detach().cpu().contiguous().view(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


