"""Evaluation of the latent route: decoded images against the held-out split in the dataset feature net's
space (FID, excess FID over the real-vs-real floor) and prompt agreement - the class the feature net sees
against the prompt's class, and the measured attribute (brightness) against the prompt's. The VAE's
reconstruction FID (held-out images encoded and decoded) is the floor of the whole latent route.
CLIP score needs pretrained CLIP weights, which are not on this machine: it is not computed."""
from __future__ import annotations

import numpy as np
import torch

from components.config import FeatureNetConfig
from components.data import ImageDataset
from components.metrics.features import FeatureNet, train_feature_net
from components.metrics.fid import FeatureStats, feature_stats, fid
from components.t2i.builtin import attribute_of
from components.t2i.captions import CaptionDataset
from components.t2i.train import decode_latents, encode_latents


def has_classes(data: CaptionDataset) -> bool:
    return bool((data.classes >= 0).all()) and bool(data.class_names)


def pseudo_classes(images: torch.Tensor, k: int = 10, seed: int = 0) -> torch.Tensor:
    """k-means clusters of 8x8 thumbnails: the feature net's labels when captions state no class (a user's
    caption folder), so FID still has a feature space trained on this data; prompt agreement is then not
    measured."""
    import torch.nn.functional as F
    from sklearn.cluster import KMeans

    thumbs = F.interpolate(images.float(), size=(8, 8), mode="area").flatten(1).numpy()
    k = max(2, min(k, len(thumbs) // 2))
    return torch.from_numpy(KMeans(k, n_init=3, random_state=seed).fit_predict(thumbs).astype(np.int64))


def pixel_dataset(data: CaptionDataset) -> ImageDataset:
    """The images with their captions' classes (the feature net's labels), or k-means pseudo-classes."""
    if has_classes(data):
        return ImageDataset(data.images, data.classes, data.is_eval, data.class_names, data.source)
    labels = pseudo_classes(data.images)
    names = [f"cluster-{i}" for i in range(int(labels.max()) + 1)]
    return ImageDataset(data.images, labels, data.is_eval, names, data.source)


def feature_net_for(data: CaptionDataset, steps: int, resolution: int = 16, seed: int = 0,
                    progress: bool = True) -> tuple[FeatureNet, dict]:
    """The dataset feature net, trained on the images resized to `resolution` exactly as FeatureNet resizes its
    inputs (bilinear, antialiased): 32x32 inputs cost 4x the compute for little the FID needs."""
    import torch.nn.functional as F

    px = pixel_dataset(data)
    if px.shape[-1] != resolution:
        small = F.interpolate(px.images, size=(resolution, resolution), mode="bilinear", align_corners=False,
                              antialias=True).clamp(-1, 1)
        px = ImageDataset(small, px.labels, px.is_eval, px.class_names, px.source)
    cfg = FeatureNetConfig(train_steps=steps, shift=1, noise=0.05, seed=seed)
    return train_feature_net(cfg, px, progress=progress)


class PromptScorer:
    """Scores images generated for held-out prompts: FID vs the eval split, class and attribute agreement."""

    def __init__(self, data: CaptionDataset, net: FeatureNet, num_samples: int):
        self.data, self.net = data, net
        ev = data.is_eval
        self.eval_images = data.images[ev]
        self.ref: FeatureStats = feature_stats(net.embed(self.eval_images)[0], "real-eval")
        n = min(num_samples, int(ev.sum()))
        idx = torch.nonzero(ev).flatten()[:n]
        self.prompt_ids = data.prompt_ids()[idx]                       # the held-out prompts, in order
        self.classes, self.attributes = data.classes[idx], data.attributes[idx]
        self.thresholds = torch.tensor(data.meta["thresholds"]) if "thresholds" in data.meta else None

    def score(self, images: torch.Tensor, name: str) -> dict:
        feats, pred = self.net.embed(images)
        out = {"fid": fid(feature_stats(feats, name), self.ref, self.net.name).fid, "num_samples": len(images)}
        if has_classes(self.data):
            out["class_agreement"] = float((pred == self.classes[: len(images)]).float().mean())
        if self.thresholds is not None:
            got = attribute_of(images, self.classes[: len(images)], self.thresholds)
            out["attribute_agreement"] = float((got == self.attributes[: len(images)]).float().mean())
        return out

    def real_floor(self, seed: int = 0) -> dict:
        """The train images (as many as the samples) scored like a generator: the best any model can do."""
        tr = torch.nonzero(~self.data.is_eval).flatten()
        rows = np.random.default_rng(seed).choice(len(tr), len(self.prompt_ids), replace=len(self.prompt_ids) > len(tr))
        idx = tr[torch.from_numpy(np.sort(rows))]
        feats, pred = self.net.embed(self.data.images[idx])
        out = {"fid": fid(feature_stats(feats, "real-train"), self.ref, self.net.name).fid}
        if has_classes(self.data):
            out["class_accuracy"] = float((pred == self.data.classes[idx]).float().mean())
        return out

    def vae_floor(self, vae) -> dict:
        """FID of the held-out images passed through the VAE (encode, decode): the latent route's floor."""
        imgs = self.eval_images[: len(self.prompt_ids)]
        rec = decode_latents(vae, encode_latents(vae, imgs))
        feats, _ = self.net.embed(rec)
        return {"fid": fid(feature_stats(feats, "vae-reconstruction"), self.ref, self.net.name).fid,
                "mse": float(((rec - imgs) ** 2).mean())}


__all__ = ["PromptScorer", "feature_net_for", "has_classes", "pixel_dataset", "pseudo_classes"]
