"""Dataset formats under data/: an image folder (one subfolder per class) or an EDM-style .npz.

`build_manifest` scans the source into the manifest (one row per image, with its seeded split);
an image that cannot be read becomes a row marked unreadable, so validation can list every bad
file at once. Problems that leave nothing to list (no such path, no images, an npz with the
wrong arrays or shapes) are a ConfigError naming the file. `load_images` builds the tensors from
a manifest that passed validation.
"""
from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Iterator

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F

from components.config import ConfigError, DataConfig
from components.data.dataset import ImageDataset, stratified_split
from components.data.manifest import empty_row, finish

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg")
GREY_MODES = ("1", "L", "LA", "I", "I;16", "I;16B", "I;16L", "F")
NPZ_LAYOUT = ("'images' (N, H, W, C) uint8 with C 1 or 3, 'labels' (N,) integers; optional 'is_eval' (N,) "
              "booleans (the source's held-out split) and 'class_names' (K,) strings")


def data_format(cfg: DataConfig) -> str:
    """'npz' | 'folder' for cfg.path (ConfigError when it does not exist or is neither)."""
    path = Path(cfg.path)
    if not path.exists():
        raise ConfigError(f"data.path '{path}': no such file or folder (expected an image folder or an .npz "
                          "under data/; the built-in digits: `make data`)")
    if cfg.format != "auto":
        fmt = cfg.format
    else:
        fmt = "folder" if path.is_dir() else "npz" if path.suffix == ".npz" else ""
    if (fmt == "folder") != path.is_dir() or not fmt:
        raise ConfigError(f"data.path '{path}': expected an image folder (one subfolder per class) or an "
                          f".npz file{'' if cfg.format == 'auto' else f' (data.format is {cfg.format!r})'}")
    return fmt


def check_data_config(cfg: DataConfig) -> None:
    """Checks that need no image read: the path exists and has a known format."""
    data_format(cfg)


def _stats(arr: np.ndarray) -> dict:
    """Pixel stats (0..255 scale) and the pixel hash of one (H, W, C) array."""
    a = arr.astype(np.float64, copy=False)
    finite = np.isfinite(a)
    has_nan = bool(np.isnan(a).any())
    vals = a[finite] if not finite.all() else a
    h = hashlib.sha256(f"{arr.dtype.str}{arr.shape}".encode())
    h.update(np.ascontiguousarray(arr).tobytes())
    return {"readable": True, "height": int(arr.shape[0]), "width": int(arr.shape[1]), "channels": int(arr.shape[2]),
            "min": float(vals.min()) if vals.size else np.nan, "max": float(vals.max()) if vals.size else np.nan,
            "mean": float(vals.mean()) if vals.size else np.nan, "std": float(vals.std()) if vals.size else np.nan,
            "has_nan": has_nan, "sha256": h.hexdigest()}


def read_image(path: Path) -> tuple[np.ndarray, str]:
    """-> (H, W, C) uint8 with C 1 (grey modes) or 3, and the file's PIL mode. Raises on bad files."""
    from PIL import Image

    with Image.open(path) as im:
        im.load()
        mode = im.mode
        arr = np.asarray(im.convert("L" if mode in GREY_MODES else "RGB"))
    return (arr[..., None] if arr.ndim == 2 else arr), mode


def _scan_folder(cfg: DataConfig) -> tuple[list[dict], list[str]]:
    root = Path(cfg.path)
    found = sorted(p.name for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
    files = [(f, c) for c in found for f in sorted((root / c).iterdir())
             if f.is_file() and f.suffix.lower() in IMAGE_SUFFIXES]
    classes = list(cfg.classes) if cfg.classes else sorted({c for _, c in files})
    if not files:
        raise ConfigError(f"data.path '{root}': no images found (expected <class>/<image>.png|.jpg subfolders)")
    rows = []
    for i, (f, c) in enumerate(files):
        label = classes.index(c) if c in classes else -1
        row = {"path": str(f), "index": i, "label": label, "class_name": c, **empty_row()}
        try:
            arr, mode = read_image(f)
            row.update(_stats(arr), mode=mode)
        except Exception as exc:  # noqa: BLE001 - any decoder failure makes the row unreadable
            row["error"] = f"{type(exc).__name__}: {exc}".replace("\n", " ")[:200] or type(exc).__name__
        rows.append(row)
    return rows, classes


def _open_npz(cfg: DataConfig) -> tuple[np.ndarray, np.ndarray]:
    """-> images (N, H, W, C), labels (N,), with the layout checked (ConfigError naming the file)."""
    path = Path(cfg.path)
    try:
        with np.load(path, allow_pickle=False) as z:
            missing = [k for k in ("images", "labels") if k not in z.files]
            if missing:
                raise ConfigError(f"data.path '{path}': missing array {missing[0]!r} (expected {NPZ_LAYOUT})")
            images, labels = z["images"], z["labels"]
            is_eval = z["is_eval"] if "is_eval" in z.files else None
    except ConfigError:
        raise
    except Exception as exc:  # noqa: BLE001 - a zip/npy decoding failure
        raise ConfigError(f"data.path '{path}': cannot read npz ({type(exc).__name__}: {exc})") from None
    if images.ndim == 3:
        images = images[..., None]
    if images.ndim != 4 or images.shape[-1] not in (1, 3):
        raise ConfigError(f"data.path '{path}': 'images' has shape {images.shape} (expected {NPZ_LAYOUT})")
    if images.dtype.kind not in "uif":
        raise ConfigError(f"data.path '{path}': 'images' has dtype {images.dtype} (expected {NPZ_LAYOUT})")
    if labels.ndim != 1 or labels.dtype.kind not in "ui":
        raise ConfigError(f"data.path '{path}': 'labels' has shape {labels.shape} dtype {labels.dtype} "
                          f"(expected {NPZ_LAYOUT})")
    if len(images) != len(labels):
        raise ConfigError(f"data.path '{path}': 'images' has {len(images)} rows but 'labels' has {len(labels)}")
    if len(images) == 0:
        raise ConfigError(f"data.path '{path}': no images (expected {NPZ_LAYOUT})")
    if is_eval is not None and (is_eval.shape != labels.shape or is_eval.dtype != bool):
        raise ConfigError(f"data.path '{path}': 'is_eval' has shape {is_eval.shape} dtype {is_eval.dtype} "
                          f"(expected {len(labels)} booleans)")
    return images, labels.astype(np.int64)


def _npz_extra(path: str, name: str):
    """An optional array of the npz ('is_eval', 'class_names'), read alone (None when absent)."""
    with np.load(path, allow_pickle=False) as z:
        return z[name] if name in z.files else None


def _npz_classes(cfg: DataConfig, labels: np.ndarray) -> list[str]:
    """data.classes, else the npz's own class_names, else "0", "1", ... up to the largest label."""
    if cfg.classes:
        return list(cfg.classes)
    names = _npz_extra(cfg.path, "class_names")
    if names is not None:
        return [str(n) for n in names]
    return [str(i) for i in range(max(int(labels.max()) + 1, 1))]


def _scan_npz(cfg: DataConfig) -> tuple[list[dict], list[str]]:
    images, labels = _open_npz(cfg)
    classes = _npz_classes(cfg, labels)
    rows = []
    for i, (arr, lab) in enumerate(zip(images, labels)):
        ok = 0 <= lab < len(classes)
        rows.append({"path": f"{cfg.path}[{i}]", "index": i, "label": int(lab) if ok else -1,
                     "class_name": classes[lab] if ok else f"<label {lab}>", **empty_row(),
                     **_stats(arr), "mode": str(images.dtype)})
    return rows, classes


def source_split(cfg: DataConfig) -> np.ndarray | None:
    """The source's own held-out split (an npz's is_eval) when data.split asks for it, else None."""
    own = _npz_extra(cfg.path, "is_eval") if data_format(cfg) == "npz" and cfg.split != "seeded" else None
    if own is None and cfg.split == "source":
        raise ConfigError(f"data.split 'source': '{cfg.path}' carries no split of its own (an npz 'is_eval' "
                          "array); use data.split: seeded")
    return own


def build_manifest(cfg: DataConfig) -> pd.DataFrame:
    """Scan cfg.path -> the manifest, with the source's own split (data.split) or the seeded
    class-stratified one."""
    rows, _ = (_scan_folder if data_format(cfg) == "folder" else _scan_npz)(cfg)
    labels = np.array([r["label"] for r in rows], dtype=np.int64)
    own = source_split(cfg)
    return finish(rows, own.astype(bool) if own is not None else
                  stratified_split(labels, cfg.eval_fraction, cfg.split_seed))


def declared_classes(cfg: DataConfig, manifest: pd.DataFrame) -> list[str]:
    """The classes labels index into: data.classes, else the folder names / 0..max npz label."""
    if cfg.classes:
        return list(cfg.classes)
    if data_format(cfg) == "folder":
        return sorted(set(manifest["class_name"]))
    names = _npz_extra(cfg.path, "class_names")
    if names is not None:
        return [str(n) for n in names]
    return [str(i) for i in range(int(manifest["label"].max()) + 1)] if len(manifest) else []


def validate(cfg: DataConfig, manifest: pd.DataFrame):
    """The Great Expectations suite on the manifest, with the rules this config implies."""
    from components.data.validation import validate_manifest

    return validate_manifest(manifest, declared_classes(cfg, manifest), cfg.min_per_class,
                             check_size=cfg.resolution is None, check_channels=cfg.channels is None)


def _arrays(cfg: DataConfig, manifest: pd.DataFrame) -> Iterator[np.ndarray]:
    if data_format(cfg) == "npz":
        images, _ = _open_npz(cfg)
        yield from images[manifest["index"].to_numpy()]
    else:
        for p in manifest["path"]:
            yield read_image(Path(p))[0]


def _to_channels(arr: np.ndarray, channels: int) -> np.ndarray:
    if arr.shape[-1] == channels:
        return arr
    if channels == 3:
        return np.repeat(arr, 3, axis=-1)
    return (arr.astype(np.float64) @ np.array([0.299, 0.587, 0.114]))[..., None]   # ITU-R 601 luma, as PIL 'L'


def load_images(cfg: DataConfig, manifest: pd.DataFrame) -> ImageDataset:
    """A validated manifest -> ImageDataset in [-1, 1] (resized / converted as configured)."""
    channels = cfg.channels or int(manifest["channels"].mode().iloc[0])
    images = []
    for arr in _arrays(cfg, manifest):
        x = torch.from_numpy(np.ascontiguousarray(_to_channels(arr, channels), dtype=np.float32) / 255.0)
        x = x.permute(2, 0, 1)[None]
        if cfg.resolution is not None and tuple(x.shape[-2:]) != (cfg.resolution, cfg.resolution):
            x = F.interpolate(x, size=(cfg.resolution, cfg.resolution), mode="bilinear",
                              align_corners=False, antialias=True)
        images.append(x)
    x = (torch.cat(images).clamp(0, 1) * 2 - 1).contiguous().float()
    labels = torch.from_numpy(manifest["label"].to_numpy(np.int64).copy())
    is_eval = torch.from_numpy((manifest["split"] == "eval").to_numpy(bool).copy())
    return ImageDataset(x, labels, is_eval, declared_classes(cfg, manifest), source=f"{data_format(cfg)}:{cfg.path}",
                        meta={"config": cfg.model_dump(mode="json")})


def load_dataset(cfg: DataConfig) -> ImageDataset:
    """Scan, validate (DataValidationError on failure) and load: the whole ingest in one call."""
    from components.data.validation import DataValidationError

    manifest = build_manifest(cfg)
    report = validate(cfg, manifest)
    if not report.success:
        raise DataValidationError(report.error_message(cfg.path))
    return load_images(cfg, manifest)
