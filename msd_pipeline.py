"""`zenml pipeline run msd_pipeline` from the repository root: pipelines/msd_pipeline.py on configs/msd_local.yaml,
or on the run config `-c` names (pipelines/short_form.py says how)."""
from pathlib import Path

from pipelines.msd_pipeline import msd_pipeline
from pipelines.short_form import register

register(__name__, msd_pipeline, Path(__file__).resolve().parent / "configs" / "msd_local.yaml")
