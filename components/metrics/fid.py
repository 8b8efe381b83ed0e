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
