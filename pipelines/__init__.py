"""Pipelines (wiring only). `zenml pipeline run dmd2_pipeline -c configs/dmd2_local.yaml` (DMD2, CTM);
`zenml pipeline run guided_pipeline -c configs/guided_local.yaml` (guided + progressive distillation);
`zenml pipeline run msd_pipeline -c configs/msd_local.yaml` (multi-student distillation)."""
from pipelines.dmd2_pipeline import dmd2_pipeline
from pipelines.guided_pipeline import guided_pipeline
from pipelines.msd_pipeline import msd_pipeline

__all__ = ["dmd2_pipeline", "guided_pipeline", "msd_pipeline"]
