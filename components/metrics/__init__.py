"""Metrics: dataset feature net, clean-fid FID, NFE and sampling latency."""
from components.metrics.features import FeatureNet, train_feature_net
from components.metrics.fid import FeatureStats, FIDResult, feature_stats, fid

__all__ = ["FeatureNet", "train_feature_net", "FeatureStats", "FIDResult", "feature_stats", "fid"]
