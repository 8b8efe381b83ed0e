"""`zenml pipeline run guided_pipeline` from the repository root: pipelines/guided_pipeline.py on configs/guided_local.yaml,
or on the run config `-c` names (pipelines/short_form.py says how)."""
from pathlib import Path

from pipelines.guided_pipeline import guided_pipeline
from pipelines.short_form import register

register(__name__, guided_pipeline, Path(__file__).resolve().parent / "configs" / "guided_local.yaml")
