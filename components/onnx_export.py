"""Export a one-step EDM student as a single ONNX file of the whole generator.

Inputs `noise` (N, C, H, W) float32 standard normal and `class_labels` (N,) int64; output
`images` (N, C, H, W) in [-1, 1] - the same as the project's "fewstep" sampler with sigmas
[sigma_max, 0]: images = D(noise * sigma_max, sigma_max, labels).clamp(-1, 1). N is dynamic.

    import numpy as np, onnxruntime as ort
    sess = ort.InferenceSession("model.onnx", providers=["CPUExecutionProvider"])
    noise = np.random.default_rng(0).standard_normal((8, C, H, W), dtype=np.float32)
    images = sess.run(None, {"noise": noise, "class_labels": np.arange(8) % num_classes})[0]
"""
from __future__ import annotations

import copy
import os
import warnings
from pathlib import Path

import numpy as np
import torch

from components.atomic import atomic_file
from components.config import ConfigError
from components.diffusion.denoiser import EDMDenoiser

INPUTS, OUTPUTS = ["noise", "class_labels"], ["images"]
GUIDED_INPUTS, GUIDED_OUTPUTS = ["sample", "sigma", "class_labels", "w"], ["denoised"]


class OneStepGenerator(torch.nn.Module):
    """noise (unit variance), class labels -> clamped images in one network evaluation."""

    def __init__(self, student: EDMDenoiser, sigma_max: float):
        super().__init__()
        self.student, self.sigma_max = student, float(sigma_max)

    def forward(self, noise: torch.Tensor, class_labels: torch.Tensor) -> torch.Tensor:
        return self.student(noise * self.sigma_max, self.sigma_max, class_labels).clamp(-1, 1)


def check_one_step(student) -> float:
    """sigma_max of a one-step EDM student; ConfigError for anything else."""
    if not isinstance(student, EDMDenoiser):
        raise ConfigError(f"onnx export: a {getattr(student, 'kind', type(student).__name__)!r} student "
                          "cannot be exported (expected EDM preconditioning)")
    sigmas = [float(s) for s in student.sampling["sigmas"]]
    if len(sigmas) != 2 or sigmas[1] != 0.0:
        raise ConfigError(f"onnx export: only one-step students are exported for now (sampling sigmas {sigmas})")
    return sigmas[0]


def export_onnx(student: EDMDenoiser, path: str | os.PathLike, opset: int = 18) -> Path:
    """Write the one-step generator to `path` (temp file, then rename: never half-written)."""
    sigma_max = check_one_step(student)
    # a float32 CPU copy in eval mode: the caller's student (maybe on a GPU, training) is untouched
    gen = OneStepGenerator(copy.deepcopy(student).float().cpu().eval(), sigma_max).eval()
    cfg, size = student.unet.config, student.unet.config.sample_size
    h, w = (size, size) if isinstance(size, int) else size
    example = (torch.randn(2, cfg.in_channels, h, w), torch.zeros(2, dtype=torch.long))
    with atomic_file(path) as tmp:
        # The torch.export-based ("dynamo") exporter, the default since torch 2.9, needs onnxscript.
        # Chosen over dynamo=False: the TorchScript exporter is deprecated ("will be removed") and
        # tracing silently bakes Python branches on tensor values into the graph, where
        # torch.export captures them or fails loudly. Opset 18 is its lowest native opset (no version
        # conversion). Works offline; costs ~10-20 s per export on 2 CPUs (TorchScript: ~1 s).
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message="# The axis name")   # both inputs share the batch axis
            torch.onnx.export(gen, example, str(tmp), input_names=INPUTS, output_names=OUTPUTS,
                              dynamic_shapes={"noise": {0: "batch"}, "class_labels": {0: "batch"}},
                              opset_version=opset, dynamo=True, external_data=False, verbose=False)
    return Path(path)


class GuidedStep(torch.nn.Module):
    """A guided student's one network evaluation x_eta(z_t, t, w): (sample, sigma, labels, w) -> denoised."""

    def __init__(self, student):
        super().__init__()
        self.student = student

    def forward(self, sample: torch.Tensor, sigma: torch.Tensor, class_labels: torch.Tensor,
                w: torch.Tensor) -> torch.Tensor:
        return self.student.with_w(sample, sigma, class_labels, w)


def export_guided_onnx(student, path: str | os.PathLike, opset: int = 18) -> Path:
    """Write a guided (w-conditioned) student's denoiser x_eta(z_t, t, w) to `path`: inputs `sample` (N, C, H, W),
    `sigma` (N,), `class_labels` (N,) int64 and `w` (N,), output `denoised` (N, C, H, W); any step count runs it
    in a DDIM loop (run_guided_onnx, the model card). Temp file, then rename."""
    from components.diffusion.denoiser import GuidedDenoiser

    if not isinstance(student, GuidedDenoiser):
        raise ConfigError(f"onnx export: expected a guided student (kind 'guided'), got {getattr(student, 'kind', '?')!r}")
    step = GuidedStep(copy.deepcopy(student).float().cpu().eval()).eval()
    cfg, size = student.unet.config, student.unet.config.sample_size
    h, w = (size, size) if isinstance(size, int) else size
    example = (torch.randn(2, cfg.in_channels, h, w), torch.tensor([80.0, 1.0]), torch.zeros(2, dtype=torch.long),
               torch.tensor([0.0, 1.0]))
    batch = {0: "batch"}
    with atomic_file(path) as tmp:
        with warnings.catch_warnings():           # the dynamo exporter, as export_onnx (its comment says why)
            warnings.filterwarnings("ignore", message="# The axis name")
            torch.onnx.export(step, example, str(tmp), input_names=GUIDED_INPUTS, output_names=GUIDED_OUTPUTS,
                              dynamic_shapes={"sample": batch, "sigma": batch, "class_labels": batch, "w": batch},
                              opset_version=opset, dynamo=True, external_data=False, verbose=False)
    return Path(path)


def run_guided_onnx(path: str | os.PathLike, noise, labels, sigmas, w: float) -> np.ndarray:
    """Images in [-1, 1] from an exported guided denoiser: deterministic DDIM on `sigmas` (t_0 > ... > 0),
    x_s = x0 + (s / t)(x_t - x0), at guidance strength w - the project's `ddim` sampler, in numpy."""
    import onnxruntime as ort

    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    labels = np.asarray(labels, dtype=np.int64)
    n = len(labels)
    x = np.asarray(noise, dtype=np.float32) * np.float32(sigmas[0])
    for t, s in zip(sigmas[:-1], sigmas[1:]):
        x0 = sess.run(None, {"sample": x, "sigma": np.full(n, t, np.float32), "class_labels": labels,
                             "w": np.full(n, w, np.float32)})[0]
        x = x0 + np.float32(s / t) * (x - x0)
    return x.clip(-1, 1)


def run_onnx(path: str | os.PathLike, noise, labels) -> np.ndarray:
    """Images (N, C, H, W) in [-1, 1] from an exported file, on onnxruntime's CPU provider."""
    import onnxruntime as ort

    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    feed = {"noise": np.asarray(noise, dtype=np.float32), "class_labels": np.asarray(labels, dtype=np.int64)}
    return sess.run(None, feed)[0]


CASCADE_OUTPUTS = ["denoised"]


class CascadeFirstLevel(torch.nn.Module):
    """One network evaluation of a LowDiff cascade at its lowest level: (sample, sigma, labels) -> denoised."""

    def __init__(self, cascade):
        super().__init__()
        self.cascade = cascade

    def forward(self, sample: torch.Tensor, sigma: torch.Tensor, class_labels: torch.Tensor) -> torch.Tensor:
        return self.cascade(sample, sigma, class_labels)


class CascadeLevel(CascadeFirstLevel):
    """... at a higher level: (sample, lowres, sigma, labels) -> denoised, lowres the upsampled level below."""

    def forward(self, sample: torch.Tensor, lowres: torch.Tensor, sigma: torch.Tensor,
                class_labels: torch.Tensor) -> torch.Tensor:
        return self.cascade(sample, sigma, class_labels, lowres=lowres)


def cascade_inputs(first: bool) -> list[str]:
    return ["sample", "sigma", "class_labels"] if first else ["sample", "lowres", "sigma", "class_labels"]


def export_cascade_onnx(cascade, folder: str | os.PathLike, opset: int = 18) -> list[Path]:
    """One ONNX file per level of a LowDiff cascade, `folder`/level_<r>.onnx: inputs `sample` (N, C, r, r), `lowres`
    (N, C, r, r: the upsampled level below; not at the lowest level), `sigma` (N,), `class_labels` (N,) int64; output
    `denoised`. run_cascade_onnx (and the model card) runs the cascade's sampler on them. Each file temp, then
    renamed."""
    from components.diffusion.cascade import CascadeDenoiser

    if not isinstance(cascade, CascadeDenoiser):
        raise ConfigError(f"onnx export: expected a LowDiff cascade (kind 'cascade'), got "
                          f"{getattr(cascade, 'kind', '?')!r}")
    model = copy.deepcopy(cascade).float().cpu().eval()
    C = model.image_shape[0]
    paths = []
    for r in model.resolutions:
        first = r == model.resolutions[0]
        step = (CascadeFirstLevel if first else CascadeLevel)(model).eval()
        x = torch.randn(2, C, r, r)
        example = (x,) + (() if first else (torch.zeros_like(x),)) + (torch.tensor([80.0, 1.0]),
                                                                      torch.zeros(2, dtype=torch.long))
        names = cascade_inputs(first)
        path = Path(folder) / f"level_{r}.onnx"
        with atomic_file(path) as tmp:
            with warnings.catch_warnings():       # the dynamo exporter, as export_onnx (its comment says why)
                warnings.filterwarnings("ignore", message="# The axis name")
                torch.onnx.export(step, example, str(tmp), input_names=names, output_names=CASCADE_OUTPUTS,
                                  dynamic_shapes=tuple({0: "batch"} for _ in names), opset_version=opset,
                                  dynamo=True, external_data=False, verbose=False)
        paths.append(path)
    return paths


def run_cascade_onnx(folder: str | os.PathLike, recipe: dict, noise, level_noise: list, labels,
                     sigma_min: float = 0.002) -> np.ndarray:
    """Images in [-1, 1] from a cascade's ONNX files: the project's `cascade` sampler in numpy (Heun on each level's
    Karras levels; the lowest from `noise` (N, C, R, R) pooled to its resolution, each higher one from the upsampled
    result plus sigma_start x level_noise[l - 1])."""
    import onnxruntime as ort

    labels = np.asarray(labels, dtype=np.int64)
    n, rho = len(labels), float(recipe.get("rho", 7.0))
    full = recipe["levels"][-1]["resolution"]
    out = None
    for level, lv in enumerate(recipe["levels"]):
        r, s0, steps = int(lv["resolution"]), float(lv["sigma_start"]), int(lv["steps"])
        sess = ort.InferenceSession(str(Path(folder) / f"level_{r}.onnx"), providers=["CPUExecutionProvider"])
        f = full // r
        if level == 0:
            z = np.asarray(noise, dtype=np.float32)
            x = z.reshape(n, z.shape[1], r, f, r, f).mean(axis=(3, 5)) * f * s0 if f > 1 else z * s0
            up = None
        else:
            k = r // out.shape[-1]
            up = out.repeat(k, axis=-2).repeat(k, axis=-1)
            x = up + np.float32(s0) * np.asarray(level_noise[level - 1], dtype=np.float32)
        ramp = np.linspace(0, 1, steps) if steps > 1 else np.zeros(1)
        grid = [float(v) for v in (s0 ** (1 / rho) + ramp * (sigma_min ** (1 / rho) - s0 ** (1 / rho))) ** rho]
        grid = ([s0] if steps == 1 else grid) + [0.0]

        def D(x_, s):
            feed = {"sample": x_.astype(np.float32), "sigma": np.full(n, s, np.float32), "class_labels": labels}
            if up is not None:
                feed["lowres"] = up.astype(np.float32)
            return sess.run(None, feed)[0]

        for s, s_next in zip(grid[:-1], grid[1:]):               # EDM Algorithm 1 (samplers.sample_heun)
            d = (x - D(x, s)) / s
            x_next = x + (s_next - s) * d
            if s_next > 0:
                x_next = x + (s_next - s) * 0.5 * (d + (x_next - D(x_next, s_next)) / s_next)
            x = x_next
        out = x.astype(np.float32)
    return out.clip(-1, 1)
