"""Feature extractors for FID / KID, in clean-fid's convention: a callable that takes a float
batch (N, 3, H, W) with values 0..255 and returns (N, D) features.

Images are scored as they would be saved: [-1, 1] -> uint8 (like a PNG) -> RGB -> the
extractor's resize -> features. Two extractors:

- `dataset` (offline default): the dataset feature net (components.metrics.features), no resize.
- `inception`: clean-fid's InceptionV3 (the standard "clean" FID), PIL-bicubic resize to 299.
  Its weights (inception-2015-12-05.pt) are downloaded by clean-fid or placed by the user.
"""
from __future__ import annotations

from pathlib import Path
from typing import Callable, Optional

import numpy as np
import torch

from components.config import ConfigError
from components.metrics.features import FeatureNet

INCEPTION_FILE = "inception-2015-12-05.pt"
INCEPTION_URL = "https://nvlabs-fi-cdn.nvidia.com/stylegan2-ada-pytorch/pretrained/metrics/" + INCEPTION_FILE
INCEPTION_DIR = "/tmp"               # where clean-fid itself downloads the file


def to_uint8_rgb(images: torch.Tensor) -> np.ndarray:
    """(N, C, H, W) in [-1, 1] -> (N, H, W, 3) uint8, rounded like a saved PNG."""
    x = ((images.detach().float().cpu().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)
    x = x.permute(0, 2, 3, 1).numpy()
    return np.repeat(x, 3, axis=3) if x.shape[3] == 1 else x[..., :3]


class DatasetFeatures:
    """The dataset feature net as a clean-fid extractor (0..255 RGB in; the net's channels used)."""

    def __init__(self, net: FeatureNet):
        self.net = net.eval()
        self.name = net.name
        self.resize: Optional[Callable[[np.ndarray], np.ndarray]] = None    # the net resizes itself
        # no KID: its cubic kernel (x.y/d + 1)^3 is made for Inception features; on this classifier's
        # features it needed a hand-picked rescaling and, on the digits' 450 references, came out below 0
        # for the teacher (estimator noise above the value). FID, its floor and excess FID carry the comparison.
        self.kid = False

    @torch.no_grad()
    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        c = self.net.hparams["in_channels"]
        x = x[:, :c] if c == 3 else x.mean(dim=1, keepdim=True)       # grey: R = G = B
        return self.net.features(x / 127.5 - 1)


def inception_weights(directory: Optional[str], download: bool) -> Path:
    """The Inception weights file, downloading it with clean-fid when allowed; else a one-line
    error that says where to put it."""
    folder = Path(directory or INCEPTION_DIR)
    path = folder / INCEPTION_FILE
    if path.is_file():
        return path
    hint = (f"evaluation.feature_net 'inception': weights file '{path}' not found; download {INCEPTION_URL} "
            f"and place it there (or set evaluation.inception_dir)")
    if not download:
        raise ConfigError(hint + ", or set evaluation.inception_download: true when online")
    from cleanfid.downloads_helper import check_download_inception

    folder.mkdir(parents=True, exist_ok=True)
    try:
        check_download_inception(fpath=str(folder))
    except OSError as exc:               # URLError is an OSError: offline, DNS, proxy
        path.unlink(missing_ok=True)
        raise ConfigError(f"{hint} (download failed: {exc})") from None
    return path


class InceptionFeatures:
    """clean-fid's InceptionV3 (pool3, 2048-d) with clean-fid's "clean" PIL-bicubic resize to 299."""

    name = "inception-v3-clean"
    kid = True                                    # clean-fid's KID, as is

    def __init__(self, directory: Optional[str] = None, download: bool = False, device: str = "cpu"):
        from cleanfid.inception_torchscript import InceptionV3W
        from cleanfid.resize import build_resizer

        path = inception_weights(directory, download)
        self.model = InceptionV3W(str(path.parent), download=False).to(device).eval()
        self.device = device
        self.resize = build_resizer("clean")

    @torch.no_grad()
    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x.to(self.device)).cpu()


def extract(extractor, images: torch.Tensor, batch_size: int = 250) -> np.ndarray:
    """Features (N, D) float64 of images in [-1, 1], through uint8 and the extractor's resize."""
    out = []
    for i in range(0, len(images), batch_size):
        batch = to_uint8_rgb(images[i:i + batch_size])
        if extractor.resize is not None:
            batch = np.stack([extractor.resize(img) for img in batch])
        x = torch.from_numpy(np.ascontiguousarray(batch, dtype=np.float32)).permute(0, 3, 1, 2)
        out.append(np.asarray(extractor(x), dtype=np.float64))
    return np.concatenate(out)


def build_extractor(kind: str, feature_net: FeatureNet, inception_dir: Optional[str] = None,
                    inception_download: bool = False):
    if kind == "dataset":
        return DatasetFeatures(feature_net)
    if kind == "inception":
        from components.training import select_device

        return InceptionFeatures(inception_dir, inception_download, str(select_device("auto")))
    raise ConfigError(f"config field 'evaluation.feature_net': expected 'dataset' or 'inception', got {kind!r}")
