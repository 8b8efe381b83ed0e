"""The built-in text-to-image setting: Fashion-MNIST at 32x32 (padded by 2 pixels of background, as RGB)
with a caption per image that states its class and an attribute measured from the image itself, so a
prompt says more than its class and evaluation can check both:

    "a dark photo of a sneaker", "a light picture of a bag", ...

The attribute is brightness: the image's mean intensity against its class's median over the TRAIN split
(half of each class is "dark", half "light"; the same rule reads it off generated images)."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from components.config import ConfigError
from components.t2i.captions import CaptionDataset

# short single-word nouns for the ten classes (T-shirt/top, ..., Ankle boot): one token each
CLASS_WORDS = ("top", "trouser", "pullover", "dress", "coat", "sandal", "shirt", "sneaker", "bag", "boot")
ATTRIBUTES = ("dark", "light")
TEMPLATES = ("a {attr} photo of a {cls}", "a {attr} picture of a {cls}", "an {attr} image of a {cls}")


def _article(template: str, attr: str) -> str:
    return template.replace("an {attr}", "a {attr}") if attr[0] not in "aeiou" else template.replace("a {attr}", "an {attr}")


def brightness(images: torch.Tensor) -> torch.Tensor:
    """Mean intensity in [0, 1] of (N, C, H, W) images in [-1, 1]."""
    return ((images.float().clamp(-1, 1) + 1) / 2).mean(dim=(1, 2, 3))


def attribute_of(images: torch.Tensor, classes: torch.Tensor, thresholds: torch.Tensor) -> torch.Tensor:
    """0 (dark) / 1 (light): brightness above the class's threshold."""
    return (brightness(images) > thresholds[classes.long()]).long()


def caption(cls: int, attr: int, template: int) -> str:
    t = TEMPLATES[template]
    return _article(t, ATTRIBUTES[attr]).format(attr=ATTRIBUTES[attr], cls=CLASS_WORDS[cls])


def fashion_captions(npz: str | Path | None = None, train_per_class: int | None = None,
                     eval_per_class: int | None = None, seed: int = 0) -> CaptionDataset:
    """Fashion-MNIST (data/fashion_mnist.npz, else Debian's package) -> captioned 32x32 RGB images, the
    official test split held out. `*_per_class`: the first n of each class per split (None: all)."""
    from components.data.fashion_mnist import fashion_mnist_arrays

    if npz is not None and Path(npz).is_file():
        with np.load(npz) as f:
            arrays = {k: f[k] for k in ("images", "labels", "is_eval")}
    else:
        arrays = fashion_mnist_arrays()
    x, y, ev = arrays["images"][..., 0], arrays["labels"].astype(np.int64), arrays["is_eval"].astype(bool)
    keep = np.zeros(len(y), bool)
    for split, n in ((False, train_per_class), (True, eval_per_class)):
        for c in range(len(CLASS_WORDS)):
            idx = np.flatnonzero((y == c) & (ev == split))
            keep[idx if n is None else idx[:n]] = True
    x, y, ev = x[keep], y[keep], ev[keep]
    if not ev.any() or ev.all():
        raise ConfigError("built-in captions: both splits need images (check train_per_class / eval_per_class)")
    img = torch.from_numpy(np.pad(x, ((0, 0), (2, 2), (2, 2)))).float().div(127.5).sub(1.0)
    images = img[:, None].expand(-1, 3, -1, -1).contiguous()
    classes = torch.from_numpy(y)
    thresholds = class_thresholds(images, classes, torch.from_numpy(~ev))
    attrs = attribute_of(images, classes, thresholds)
    templates = torch.randint(0, len(TEMPLATES), (len(y),), generator=torch.Generator().manual_seed(seed))
    captions = [caption(int(c), int(a), int(t)) for c, a, t in zip(classes, attrs, templates)]
    return CaptionDataset(images, captions, torch.from_numpy(ev), classes, list(CLASS_WORDS), attrs, list(ATTRIBUTES),
                          source="builtin:fashion-mnist-captions",
                          meta={"format": "builtin", "resolution": 32, "thresholds": thresholds.tolist(),
                                "templates": list(TEMPLATES), "train_per_class": train_per_class,
                                "eval_per_class": eval_per_class, "seed": seed})


def class_thresholds(images: torch.Tensor, classes: torch.Tensor, train: torch.Tensor) -> torch.Tensor:
    """Each class's median brightness over the TRAIN split: the dark/light boundary."""
    b = brightness(images)
    return torch.stack([b[(classes == c) & train].median() for c in range(len(CLASS_WORDS))])


__all__ = ["ATTRIBUTES", "CLASS_WORDS", "TEMPLATES", "attribute_of", "brightness", "caption", "class_thresholds",
           "fashion_captions"]
