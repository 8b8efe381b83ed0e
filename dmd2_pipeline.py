"""`zenml pipeline run dmd2_pipeline` from the repository root: pipelines/dmd2_pipeline.py on configs/dmd2_local.yaml,
or on the run config `-c` names (pipelines/short_form.py says how)."""
from pathlib import Path

from pipelines.dmd2_pipeline import dmd2_pipeline
from pipelines.short_form import register

register(__name__, dmd2_pipeline, Path(__file__).resolve().parent / "configs" / "dmd2_local.yaml")
