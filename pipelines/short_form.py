"""The short form of the README's commands, `zenml pipeline run dmd2_pipeline` (and `msd_pipeline`, ...).

ZenML 0.98 loads a dot-less source with `importlib.import_module(source)` and requires what that returns
to be a pipeline (zenml/utils/source_utils.py: load; zenml/cli/pipeline.py: _import_pipeline). So a module
of the pipeline's own name at the repository root (ZenML's source root) replaces itself in `sys.modules`
with the pipeline, whose run config defaults to the method's local one: `-c` still selects another.
The pipeline's function stays in pipelines/, so the sources ZenML records for the pipeline, its steps and
materializers (what a Kubeflow pod imports) are the same as with the long form `pipelines.dmd2_pipeline`."""
import sys
from pathlib import Path
from typing import Any, Optional

from zenml.pipelines.pipeline_definition import Pipeline


class DefaultConfigPipeline(Pipeline):
    """A pipeline whose `with_options` (what `zenml pipeline run` calls with `-c`) falls back to a run config."""

    default_config: str = ""

    def with_options(self, config_path: Optional[str] = None, **kwargs: Any) -> "Pipeline":
        return super().with_options(config_path=config_path or self.default_config, **kwargs)


def register(module_name: str, pipeline: Pipeline, default_config: Path) -> DefaultConfigPipeline:
    """Put `pipeline`, run on `default_config` unless told otherwise, in sys.modules under `module_name`."""
    if not default_config.is_file():
        raise FileNotFoundError(f"{default_config}: the default run config of `{pipeline.name}` is missing")
    short = pipeline.copy()
    short.__class__ = DefaultConfigPipeline
    short.default_config = str(default_config)
    sys.modules[module_name] = short
    return short
