"""Pipelines (wiring only). `zenml pipeline run pipelines.dmd2_pipeline -c configs/dmd2_local.yaml`."""
from pipelines.dmd2_pipeline import dmd2_pipeline

__all__ = ["dmd2_pipeline"]
