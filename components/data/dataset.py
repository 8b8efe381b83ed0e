"""The in-memory image dataset every stage shares, its split, and its safetensors form."""
from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import load_file, save_file


@dataclass
class ImageDataset:
    """Images in [-1, 1] as (N, C, H, W) float32, integer labels, and a train/eval split."""

    images: torch.Tensor
    labels: torch.Tensor
    is_eval: torch.Tensor                     # bool (N,): held out of all training
    class_names: list[str]
    source: str = ""                          # where it came from (for lineage)
    meta: dict = field(default_factory=dict)

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    @property
    def shape(self) -> tuple[int, int, int]:
        return tuple(self.images.shape[1:])   # (C, H, W)

    def split(self, name: str) -> tuple[torch.Tensor, torch.Tensor]:
        """('train' | 'eval') -> (images, labels)."""
        if name not in ("train", "eval"):
            raise ValueError(f"split must be 'train' or 'eval', got {name!r}")
        mask = self.is_eval if name == "eval" else ~self.is_eval
        return self.images[mask], self.labels[mask]

    def fingerprint(self) -> str:
        """sha256 over pixels, labels and split: equal data <=> equal fingerprint."""
        h = hashlib.sha256()
        for t in (self.images, self.labels, self.is_eval):
            h.update(t.contiguous().numpy().tobytes())
        h.update(json.dumps(self.class_names).encode())
        return h.hexdigest()

    def save(self, directory: str | os.PathLike) -> None:
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        save_file({"images": self.images.contiguous(), "labels": self.labels.contiguous(),
                   "is_eval": self.is_eval.to(torch.uint8).contiguous()}, directory / "data.safetensors")
        (directory / "dataset.json").write_text(json.dumps(
            {"class_names": self.class_names, "source": self.source, "meta": self.meta}, indent=1))

    @classmethod
    def load(cls, directory: str | os.PathLike) -> "ImageDataset":
        directory = Path(directory)
        tensors = load_file(directory / "data.safetensors")
        info = json.loads((directory / "dataset.json").read_text())
        return cls(tensors["images"], tensors["labels"], tensors["is_eval"].bool(),
                   info["class_names"], info.get("source", ""), info.get("meta", {}))


def stratified_split(labels: np.ndarray, eval_fraction: float, seed: int) -> np.ndarray:
    """Seeded, class-stratified eval mask: round(eval_fraction * n_c) images of every class c."""
    rng = np.random.default_rng(seed)
    is_eval = np.zeros(len(labels), dtype=bool)
    for c in np.unique(labels):
        idx = np.flatnonzero(labels == c)
        n_eval = int(round(eval_fraction * len(idx)))
        if len(idx) >= 2:
            n_eval = min(max(n_eval, 1), len(idx) - 1)   # both splits see every class
        is_eval[rng.permutation(idx)[:n_eval]] = True
    return is_eval

