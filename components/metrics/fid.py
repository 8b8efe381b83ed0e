"""FID: clean-fid's Frechet distance on features of a named feature network.

Every result carries the feature network, the reference set and both sample counts."""
from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np
import torch


@dataclass(frozen=True)
class FeatureStats:
    """Gaussian statistics (mu, Sigma) of a feature set, with what it is and how many."""

    mu: np.ndarray
    sigma: np.ndarray
    n: int
    name: str

    def to_dict(self) -> dict:
        """JSON-ready (float64 survives the round trip exactly)."""
        return {"mu": self.mu.tolist(), "sigma": self.sigma.tolist(), "n": self.n, "name": self.name}

    @classmethod
    def from_dict(cls, d: dict) -> "FeatureStats":
        return cls(np.asarray(d["mu"], dtype=np.float64), np.asarray(d["sigma"], dtype=np.float64), d["n"], d["name"])


def feature_stats(features: torch.Tensor | np.ndarray, name: str) -> FeatureStats:
    f = np.asarray(features, dtype=np.float64)
    if not np.isfinite(f).all():
        raise ValueError(f"features of '{name}' contain NaN/inf (non-finite images?)")
    return FeatureStats(f.mean(axis=0), np.cov(f, rowvar=False), len(f), name)


@dataclass(frozen=True)
class FIDResult:
    fid: float
    feature_net: str
    reference: str
    num_reference: int
    samples: str
    num_samples: int

    def as_dict(self) -> dict:
        return asdict(self)


def fid(samples: FeatureStats, reference: FeatureStats, feature_net: str) -> FIDResult:
    """||mu_1 - mu_2||^2 + Tr(S_1 + S_2 - 2 (S_1 S_2)^(1/2)) (Heusel et al. 2017), via clean-fid."""
    from cleanfid.fid import frechet_distance

    value = float(frechet_distance(samples.mu, samples.sigma, reference.mu, reference.sigma))
    return FIDResult(value, feature_net, reference.name, reference.n, samples.name, samples.n)


@dataclass(frozen=True)
class FeatureSet:
    """Features of one image set (rows) from one feature network: FID uses their statistics,
    KID the features themselves. Stored as safetensors + JSON."""

    features: np.ndarray                 # (N, D) float64
    name: str                            # what the images are, e.g. "real-eval", "student-samples"
    feature_net: str                     # which network embedded them

    def stats(self) -> FeatureStats:
        return feature_stats(self.features, self.name)

    def save(self, directory) -> None:
        import json
        from pathlib import Path

        from safetensors.numpy import save_file

        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        save_file({"features": np.ascontiguousarray(self.features)}, directory / f"{self.name}.safetensors")
        (directory / f"{self.name}.json").write_text(json.dumps({"name": self.name, "feature_net": self.feature_net,
                                                                 "n": len(self.features)}))

    @classmethod
    def load(cls, directory, name: str) -> "FeatureSet":
        import json
        from pathlib import Path

        from safetensors.numpy import load_file

        directory = Path(directory)
        meta = json.loads((directory / f"{name}.json").read_text())
        return cls(load_file(directory / f"{name}.safetensors")["features"], meta["name"], meta["feature_net"])


@dataclass(frozen=True)
class ReferenceFeatures:
    """The real eval and train splits' features: computed once per dataset version and extractor."""

    eval: FeatureSet
    train: FeatureSet

    def __getitem__(self, split: str) -> FeatureSet:
        return {"eval": self.eval, "train": self.train}[split]

    def save(self, directory) -> None:
        self.eval.save(directory)
        self.train.save(directory)

    @classmethod
    def load(cls, directory) -> "ReferenceFeatures":
        return cls(FeatureSet.load(directory, "real-eval"), FeatureSet.load(directory, "real-train"))


def kid(samples: np.ndarray, reference: np.ndarray, num_subsets: int = 100, max_subset_size: int = 1000,
        seed: int = 0) -> float:
    """Kernel Inception Distance (Binkowski et al. 2018): the unbiased MMD^2 with the cubic polynomial
    kernel k(x, y) = (x.y / d + 1)^3, averaged over `num_subsets` random subsets of m = min(N_1, N_2,
    max_subset_size) rows of each set (seeded, so a run reproduces). Reported for Inception features only
    (components/metrics/extractors.py says why)."""
    x, y = np.asarray(samples, dtype=np.float64), np.asarray(reference, dtype=np.float64)
    d, m = x.shape[1], min(len(x), len(y), max_subset_size)
    rng = np.random.default_rng(seed)
    total = 0.0
    for _ in range(num_subsets):
        a = y[rng.choice(len(y), m, replace=False)]
        b = x[rng.choice(len(x), m, replace=False)]
        k_aa, k_bb, k_ab = (a @ a.T / d + 1) ** 3, (b @ b.T / d + 1) ** 3, (a @ b.T / d + 1) ** 3
        within = (k_aa.sum() - np.trace(k_aa) + k_bb.sum() - np.trace(k_bb)) / (m * (m - 1))
        total += within - 2 * k_ab.sum() / (m * m)
    return float(total / num_subsets)
