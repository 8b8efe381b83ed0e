"""Metrics: dataset feature net, clean-fid FID, NFE and sampling latency."""
from components.metrics.features import FeatureNet, class_accuracy, train_feature_net
from components.metrics.fid import FeatureSet, FeatureStats, FIDResult, ReferenceFeatures, feature_stats, fid, kid

__all__ = ["FeatureNet", "class_accuracy", "train_feature_net", "FeatureSet", "FeatureStats", "FIDResult",
           "ReferenceFeatures", "feature_stats", "fid", "kid"]
