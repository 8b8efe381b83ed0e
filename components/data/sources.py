"""Dataset sources: the built-in digits (bundled with scikit-learn) and an image folder.

Each source returns (images uint8-range float in [0, 1] as (N, C, H, W), labels, class names);
`load_dataset` resizes, maps pixels to [-1, 1] and adds the seeded stratified split.
"""
from __future__ import annotations

from pathlib import Path
from typing import Callable

import numpy as np
import torch
import torch.nn.functional as F

from components.config import ConfigError, DataConfig
from components.data.dataset import ImageDataset, stratified_split

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg")


def digits_source(cfg: DataConfig) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """scikit-learn's bundled handwritten digits: 1,797 real 8x8 images, 10 classes, no download."""
    from sklearn.datasets import load_digits

    d = load_digits()
    images = (d.images.astype(np.float32) / 16.0)[:, None]   # 0..16 -> [0, 1], (N, 1, 8, 8)
    return images, d.target.astype(np.int64), [str(c) for c in range(10)]


def folder_source(cfg: DataConfig) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """An image folder with one subfolder per class (PNG/JPEG, grayscale or RGB)."""
    from PIL import Image, UnidentifiedImageError

    root = Path(cfg.path)
    if not root.is_dir():
        raise ConfigError(f"data.path '{root}': no such folder (expected one subfolder per class)")
    classes = sorted(p.name for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
    files = [(f, i) for i, c in enumerate(classes) for f in sorted((root / c).iterdir())
             if f.suffix.lower() in IMAGE_SUFFIXES]
    if not files:
        raise ConfigError(f"data.path '{root}': no images found (expected <class>/<image>.png|.jpg subfolders)")
    mode = {1: "L", 3: "RGB"}.get(cfg.channels or 0)
    arrays = []
    for f, _ in files:
        try:
            with Image.open(f) as im:
                im.load()
                im = im.convert(mode or ("L" if im.mode in ("L", "1", "I", "I;16", "LA") else "RGB"))
                if cfg.channels is None:
                    mode = im.mode                # the first image fixes the channel count
                im = im.resize((cfg.resolution, cfg.resolution), Image.BILINEAR)
                arr = np.asarray(im, dtype=np.float32) / 255.0
        except (OSError, UnidentifiedImageError, SyntaxError, ValueError) as exc:
            raise ConfigError(f"data.path: cannot read image '{f}' ({type(exc).__name__}: {exc})") from None
        arrays.append(arr[None] if arr.ndim == 2 else arr.transpose(2, 0, 1))
    labels = np.array([i for _, i in files], dtype=np.int64)
    return np.stack(arrays), labels, classes


SOURCES: dict[str, Callable[[DataConfig], tuple[np.ndarray, np.ndarray, list[str]]]] = {
    "digits": digits_source,
    "folder": folder_source,
}


def check_data_config(cfg: DataConfig) -> None:
    """Checks that need no data read: a known source name, and a path for 'folder'."""
    if cfg.source not in SOURCES:
        raise ConfigError(f"config field 'data.source': unknown dataset {cfg.source!r}; "
                          f"valid: {', '.join(sorted(SOURCES))}")
    if cfg.source == "folder" and not cfg.path:
        raise ConfigError("config field 'data.path': required when data.source is 'folder'")


def load_dataset(cfg: DataConfig) -> ImageDataset:
    """Read the configured source -> ImageDataset in [-1, 1] at cfg.resolution with its split."""
    check_data_config(cfg)
    images, labels, classes = SOURCES[cfg.source](cfg)
    x = torch.from_numpy(np.ascontiguousarray(images))
    if cfg.channels is not None and x.shape[1] != cfg.channels:
        if x.shape[1] == 1:
            x = x.expand(-1, cfg.channels, -1, -1)
        else:
            raise ConfigError(f"config field 'data.channels': source has {x.shape[1]} channels, "
                              f"cannot convert to {cfg.channels}")
    if x.shape[-1] != cfg.resolution or x.shape[-2] != cfg.resolution:
        x = F.interpolate(x, size=(cfg.resolution, cfg.resolution), mode="bilinear",
                          align_corners=False, antialias=True)
    x = (x.clamp(0, 1) * 2 - 1).contiguous().float()
    is_eval = stratified_split(labels, cfg.eval_fraction, cfg.split_seed)
    return ImageDataset(x, torch.from_numpy(labels), torch.from_numpy(is_eval), classes,
                        source=cfg.source if cfg.source != "folder" else f"folder:{cfg.path}",
                        meta={"config": cfg.model_dump(mode="json")})
