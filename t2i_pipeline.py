"""`zenml pipeline run t2i_pipeline` from the repository root: pipelines/t2i_pipeline.py on configs/t2i_local.yaml,
or on the run config `-c` names (pipelines/short_form.py says how)."""
from pathlib import Path

from pipelines.short_form import register
from pipelines.t2i_pipeline import t2i_pipeline

register(__name__, t2i_pipeline, Path(__file__).resolve().parent / "configs" / "t2i_local.yaml")
