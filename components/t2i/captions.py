"""Caption datasets: images with one caption each, a train/eval split, and (for the built-in
setting) the class and attribute each caption states, which prompt agreement checks."""
from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass, field
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file


@dataclass
class CaptionDataset:
    """RGB images in [-1, 1] as (N, 3, H, W) float32, one caption per image, a held-out split.

    `classes` / `attributes` (N,) int64 give what each caption says (-1: not known, e.g. a user's
    free-text captions); `class_names` / `attribute_names` name them."""

    images: torch.Tensor
    captions: list[str]
    is_eval: torch.Tensor                                   # bool (N,): held out of all training
    classes: torch.Tensor | None = None
    class_names: list[str] = field(default_factory=list)
    attributes: torch.Tensor | None = None
    attribute_names: list[str] = field(default_factory=list)
    source: str = ""
    meta: dict = field(default_factory=dict)

    def __post_init__(self):
        n = len(self.images)
        if len(self.captions) != n or len(self.is_eval) != n:
            raise ValueError(f"CaptionDataset: {n} images, {len(self.captions)} captions, {len(self.is_eval)} "
                             "split flags; expected one of each per image")
        if self.classes is None:
            self.classes = torch.full((n,), -1, dtype=torch.long)
        if self.attributes is None:
            self.attributes = torch.full((n,), -1, dtype=torch.long)

    def __len__(self) -> int:
        return len(self.images)

    @property
    def shape(self) -> tuple[int, int, int]:
        return tuple(self.images.shape[1:])

    def prompts(self) -> list[str]:
        """The distinct captions in first-seen order: the rows of the prompt-embedding table."""
        return list(dict.fromkeys(self.captions))

    def prompt_ids(self) -> torch.Tensor:
        """(N,) index of each image's caption in prompts()."""
        index = {p: i for i, p in enumerate(self.prompts())}
        return torch.tensor([index[c] for c in self.captions], dtype=torch.long)

    def fingerprint(self) -> str:
        """sha256 over pixels, captions, split and the stated class/attribute: equal data <=> equal hash."""
        h = hashlib.sha256()
        for t in (self.images, self.is_eval, self.classes, self.attributes):
            h.update(t.contiguous().numpy().tobytes())
        h.update(json.dumps([self.captions, self.class_names, self.attribute_names]).encode())
        return h.hexdigest()

    def save(self, directory: str | os.PathLike) -> None:
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        save_file({"images": self.images.contiguous(), "is_eval": self.is_eval.to(torch.uint8).contiguous(),
                   "classes": self.classes.contiguous(), "attributes": self.attributes.contiguous()},
                  directory / "data.safetensors")
        (directory / "captions.json").write_text(json.dumps(
            {"captions": self.captions, "class_names": self.class_names, "attribute_names": self.attribute_names,
             "source": self.source, "meta": self.meta}, indent=0, sort_keys=True))

    @classmethod
    def load(cls, directory: str | os.PathLike) -> "CaptionDataset":
        directory = Path(directory)
        t = load_file(directory / "data.safetensors")
        info = json.loads((directory / "captions.json").read_text())
        return cls(t["images"], info["captions"], t["is_eval"].bool(), t["classes"], info["class_names"],
                   t["attributes"], info["attribute_names"], info.get("source", ""), info.get("meta", {}))


__all__ = ["CaptionDataset"]
