"""A routed student: class label -> one of K students (Multi-Student Distillation, components/methods/msd.py).

To the samplers, evaluation, the gate and export it is one model: `forward(x, sigma, c)` runs each student on
the rows whose label it owns and puts the rows back in their places, so a batch of mixed labels comes back in
order. Its students share one sampling recipe, sigma range and image shape; the subsets partition the classes.
On disk: one save_denoiser folder per student (student_<k>/) and routing.json (the subsets, the recipe).
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Sequence

import torch
from torch import nn

from components.config import ConfigError
from components.diffusion.denoiser import FOLDER_FORMATS, Denoiser, load_denoiser, save_denoiser

ROUTING_FILE = "routing.json"


def check_partition(subsets: Sequence[Sequence[int]], num_classes: int | None = None,
                    field: str = "distill.partition") -> list[list[int]]:
    """The subsets as sorted lists, or a ConfigError naming `field`: an empty subset, a class in two subsets, and
    (with num_classes) a class in none or a label outside [0, num_classes)."""
    owner: dict[int, int] = {}
    out = []
    for k, subset in enumerate(subsets):
        if not len(subset):
            raise ConfigError(f"config field '{field}': subset {k} is empty; every student needs at least one class")
        for c in subset:
            c = int(c)
            if c in owner:
                raise ConfigError(f"config field '{field}': class {c} is in subsets {owner[c]} and {k}; every class "
                                  "must be in exactly one subset")
            if num_classes is not None and not 0 <= c < num_classes:
                raise ConfigError(f"config field '{field}': class {c} in subset {k} is not a class of the data "
                                  f"(labels 0..{num_classes - 1})")
            owner[c] = k
        out.append(sorted(int(c) for c in subset))
    if num_classes is not None:
        missing = sorted(set(range(num_classes)) - set(owner))
        if missing:
            raise ConfigError(f"config field '{field}': class(es) {missing} are in no subset; every class of the "
                              f"data (0..{num_classes - 1}) must be in exactly one subset")
    return out


class RoutedDenoiser(Denoiser):
    """K students, each owning a subset of the classes; one Denoiser to everything that samples it."""

    kind = "routed"

    def __init__(self, students: Sequence[Denoiser], subsets: Sequence[Sequence[int]]):
        nn.Module.__init__(self)                 # no UNet of its own: `unet` is the first student's (the shape)
        if not students or len(students) != len(subsets):
            raise ValueError(f"a routed student needs one subset per student, got {len(students)} student(s) and "
                             f"{len(subsets)} subset(s)")
        first = students[0]
        for k, s in enumerate(students[1:], 1):
            same = (s.num_classes, s.sigma_min, s.sigma_max, s.sigma_data, s.sampling) == \
                (first.num_classes, first.sigma_min, first.sigma_max, first.sigma_data, first.sampling)
            shape = (s.unet.config.in_channels, s.unet.config.sample_size)
            if not same or shape != (first.unet.config.in_channels, first.unet.config.sample_size):
                raise ValueError(f"student {k} differs from student 0 in its classes, sigma range, sampling recipe "
                                 "or image shape; a routed student's students must share them")
        self.students = nn.ModuleList(students)
        self.subsets = check_partition(subsets, first.num_classes, "routing subsets")
        self.num_classes = first.num_classes
        self.sigma_min, self.sigma_max, self.sigma_data = first.sigma_min, first.sigma_max, first.sigma_data
        self.sampling = dict(first.sampling)
        route = torch.empty(self.num_classes, dtype=torch.long)
        for k, subset in enumerate(self.subsets):
            route[subset] = k
        self.register_buffer("route", route, persistent=False)

    @property
    def unet(self) -> nn.Module:
        return self.students[0].unet

    @property
    def active_parameters(self) -> int:
        """Parameters that run for one image: the largest student's (the bundle holds K of them)."""
        return max(sum(p.numel() for p in s.parameters()) for s in self.students)

    def student_of(self, class_labels: torch.Tensor) -> torch.Tensor:
        """The student index of each label; the null class and unknown labels are an error (nothing routes them)."""
        labels = class_labels.long().to(self.route.device)
        if labels.numel() and (labels.min() < 0 or labels.max() >= self.num_classes):
            raise ValueError(f"routed student: class labels must lie in 0..{self.num_classes - 1}, got "
                             f"{sorted(set(labels.tolist()) - set(range(self.num_classes)))} (each student applies "
                             "classifier-free guidance itself)")
        return self.route[labels]

    def _routed(self, call, x: torch.Tensor, sigma, class_labels: torch.Tensor) -> torch.Tensor:
        sigma, owner = self._sigma(sigma, x), self.student_of(class_labels).to(x.device)
        out = torch.empty_like(x)
        for k, student in enumerate(self.students):
            rows = (owner == k).nonzero().squeeze(1)
            if len(rows):
                out[rows] = call(student, x[rows], sigma[rows], class_labels[rows]).to(out.dtype)
        return out

    def forward(self, x: torch.Tensor, sigma, class_labels: torch.Tensor) -> torch.Tensor:
        return self._routed(lambda s, x_, sg, y: s(x_, sg, y), x, sigma, class_labels)

    def guided(self, x: torch.Tensor, sigma, class_labels: torch.Tensor, scale: float) -> torch.Tensor:
        return self._routed(lambda s, x_, sg, y: s.guided(x_, sg, y, scale), x, sigma, class_labels)

    def nfe(self, scale: float) -> int:
        return self.students[0].nfe(scale)

    def bottleneck(self, x, sigma, class_labels):
        raise NotImplementedError("a routed student has no single bottleneck; use one of its students")

    def config(self) -> dict:
        return {"kind": self.kind, "num_classes": self.num_classes, "subsets": self.subsets,
                "students": [f"student_{k}" for k in range(len(self.students))], "sampling": self.sampling}


def save_routed(routed: RoutedDenoiser, directory: str | Path) -> None:
    """student_<k>/ (save_denoiser) per student + routing.json."""
    directory = Path(directory)
    for k, student in enumerate(routed.students):
        save_denoiser(student, directory / f"student_{k}")
    directory.mkdir(parents=True, exist_ok=True)
    (directory / ROUTING_FILE).write_text(json.dumps(routed.config(), indent=1))


def load_routed(directory: str | Path, what: str = "student") -> RoutedDenoiser:
    """Read a save_routed folder (each student with load_denoiser; the routing table checked)."""
    directory = Path(directory)
    try:
        info = json.loads((directory / ROUTING_FILE).read_text())
        names, subsets = list(info["students"]), info["subsets"]
    except (json.JSONDecodeError, KeyError, TypeError) as exc:
        raise ConfigError(f"{what} '{directory / ROUTING_FILE}': not a routing table with 'students' and "
                          f"'subsets' ({type(exc).__name__})") from None
    students = [load_denoiser(directory / n, what=f"{what} '{directory}' {n}") for n in names]
    try:
        routed = RoutedDenoiser(students, subsets)
    except ValueError as exc:
        raise ConfigError(f"{what} '{directory / ROUTING_FILE}': {exc}") from None
    if "sampling" in info:
        routed.sampling = info["sampling"]
    return routed.eval()


FOLDER_FORMATS[RoutedDenoiser.kind] = (ROUTING_FILE, save_routed, load_routed)    # save_denoiser / load_denoiser

__all__ = ["ROUTING_FILE", "RoutedDenoiser", "check_partition", "load_routed", "save_routed"]
