"""A small classifier trained on the dataset's TRAIN split; its penultimate layer is the FID
feature space offline (Inception needs a download) and its head gives class accuracy."""
from __future__ import annotations

import json
from pathlib import Path

import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file
from torch import nn
from tqdm.auto import tqdm

from components.config import FeatureNetConfig
from components.data import ImageDataset
from components.training import BatchSampler, seed_everything

FEATURE_FILE = "feature_net.json"


class FeatureNet(nn.Module):
    """conv(32) -> conv(64, /2) -> conv(64) -> flatten (keeps where strokes are) -> linear(dim)
    [features] -> linear(classes). Inputs are resized to the training resolution."""

    def __init__(self, in_channels: int, num_classes: int, dim: int = 64, resolution: int = 8):
        super().__init__()
        self.hparams = {"in_channels": in_channels, "num_classes": num_classes, "dim": dim,
                        "resolution": resolution}
        self.body = nn.Sequential(
            nn.Conv2d(in_channels, 32, 3, padding=1), nn.GELU(),
            nn.Conv2d(32, 64, 3, stride=2, padding=1), nn.GELU(),
            nn.Conv2d(64, 64, 3, padding=1), nn.GELU(),
            nn.AdaptiveAvgPool2d(4), nn.Flatten(), nn.Linear(64 * 16, dim), nn.GELU(),
        )
        self.head = nn.Linear(dim, num_classes)

    @property
    def name(self) -> str:
        return f"dataset-classifier-{self.hparams['dim']}d"

    def _fit(self, x: torch.Tensor) -> torch.Tensor:
        r = self.hparams["resolution"]
        if x.shape[-1] != r:
            x = F.interpolate(x, size=(r, r), mode="bilinear", align_corners=False, antialias=True)
        return x.clamp(-1, 1)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        return self.body(self._fit(x))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x))

    @torch.no_grad()
    def embed(self, x: torch.Tensor, batch_size: int = 1000) -> tuple[torch.Tensor, torch.Tensor]:
        """-> (features (N, dim) float64, predicted class (N,)) in eval mode."""
        self.eval()
        feats, preds = [], []
        for i in range(0, len(x), batch_size):
            f = self.features(x[i:i + batch_size].float())
            feats.append(f.double())
            preds.append(self.head(f).argmax(1))
        return torch.cat(feats), torch.cat(preds)

    def save_pretrained(self, directory: str | Path) -> None:
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        save_file({k: v.contiguous() for k, v in self.state_dict().items()}, directory / "model.safetensors")
        (directory / FEATURE_FILE).write_text(json.dumps(self.hparams, indent=1))

    @classmethod
    def from_pretrained(cls, directory: str | Path) -> "FeatureNet":
        directory = Path(directory)
        net = cls(**json.loads((directory / FEATURE_FILE).read_text()))
        net.load_state_dict(load_file(directory / "model.safetensors"))
        return net.eval()


def augment(x: torch.Tensor, shift: int, noise: float, g: torch.Generator) -> torch.Tensor:
    """Each image moved by a random (dy, dx) in [-shift, shift] (the border filled with -1, the
    background), plus N(0, noise^2) pixel noise; seeded by `g`. shift 0 and noise 0: x itself."""
    if shift:
        n, _, h, w = x.shape
        padded = F.pad(x, (shift, shift, shift, shift), value=-1.0)
        dy, dx = (torch.randint(0, 2 * shift + 1, (2, n), generator=g)).tolist()
        x = torch.stack([padded[i, :, dy[i]:dy[i] + h, dx[i]:dx[i] + w] for i in range(n)])
    if noise:
        x = x + noise * torch.randn(x.shape, generator=g)
    return x


def train_feature_net(cfg: FeatureNetConfig, data: ImageDataset, progress: bool = True) -> tuple[FeatureNet, dict]:
    """Cross-entropy on the TRAIN split (cosine lr), on augmented images when cfg.shift / cfg.noise;
    report eval-split accuracy."""
    g = seed_everything(cfg.seed)
    C, H, _ = data.shape
    net = FeatureNet(C, data.num_classes, cfg.dim, H).train()
    opt = torch.optim.AdamW(net.parameters(), lr=cfg.lr, weight_decay=1e-4)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, cfg.train_steps)
    x_tr, y_tr = data.split("train")
    batches = BatchSampler(x_tr, y_tr, batch_size=min(cfg.batch_size, len(x_tr)), generator=g)
    for _ in tqdm(range(cfg.train_steps), desc="feature net", disable=not progress, mininterval=2):
        x, y = batches.next()
        loss = F.cross_entropy(net(augment(x, cfg.shift, cfg.noise, g)), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
    net.eval()
    return net, {"eval_accuracy": class_accuracy(net, data), "final_loss": loss.item()}


def class_accuracy(net: FeatureNet, data: ImageDataset, split: str = "eval") -> float:
    """How often the net's head gives the real images of `split` their own label: the feature net's
    accuracy, and the scale of the gate's class floor (a student is held to a fraction of it)."""
    x, y = data.split(split)
    return float((net.embed(x)[1] == y).float().mean())
