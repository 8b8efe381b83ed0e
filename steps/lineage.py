"""Step: record the run's lineage (git commit, the data's DVC hash, the parameters) as run metadata.

It feeds nothing downstream, so a new commit invalidates no cache; and it runs on every run
(`built_at` differs each time - a run-level `enable_cache: true` overrides a step's own setting)."""
from typing import Any, Dict

from zenml import get_step_context, log_metadata, step


@step
def record_lineage(lineage: Dict[str, Any]) -> None:
    log_metadata(metadata={"lineage": lineage, **{k: v for k, v in lineage.items() if not isinstance(v, dict)}},
                 run_id_name_or_prefix=get_step_context().pipeline_run.id)
