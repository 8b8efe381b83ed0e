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
