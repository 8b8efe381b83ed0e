"""dmd2_pipeline: lineage; ingest -> validate -> dataset -> feature net -> reference features ->
teacher -> teacher pairs -> distill (DMD2, CTM or a LowDiff cascade: distill.method; a LowDiff cascade with
distill.cascade_dmd2: then distill_cascade, DMD2 on it) -> evaluate ->
quality gate (promotes the ZenML model version) -> export; run report (dashboard) -> W&B.
Wiring only (the shared steps: pipelines/wiring.py)."""
from typing import Any, Dict, Optional

from zenml import Model, pipeline

from components.methods import check_pipeline, distill_stages
from components.params import load_params
from pipelines.wiring import downstream, upstream
from steps.distill import distill_step
from steps.names import MODEL_NAME


@pipeline(name="dmd2_pipeline", model=Model(name=MODEL_NAME, description="Few-step DMD2 students of the "
                                            "embedded default; versions pass the quality gate to staging/production"))
def dmd2_pipeline(params_file: Optional[str] = None, data: Optional[Dict[str, Any]] = None,
                  teacher: Optional[Dict[str, Any]] = None, features: Optional[Dict[str, Any]] = None,
                  distill: Optional[Dict[str, Any]] = None, evaluation: Optional[Dict[str, Any]] = None,
                  gate: Optional[Dict[str, Any]] = None, export: Optional[Dict[str, Any]] = None,
                  tracking: Optional[Dict[str, Any]] = None, pairs: Optional[Dict[str, Any]] = None,
                  compute: Optional[Dict[str, Any]] = None) -> None:
    """`params_file` (params.yaml, shared with `dvc repro`) gives the parameters; sections passed
    here are merged over it. Everything is validated before any step runs."""
    cfg = load_params(params_file, data=data, teacher=teacher, features=features, distill=distill,
                      evaluation=evaluation, gate=gate, export=export, tracking=tracking, pairs=pairs,
                      compute=compute)
    check_pipeline(cfg.distill.method, "dmd2_pipeline")     # guided: pipelines.guided_pipeline
    up = upstream(cfg, params_file, pairs=True)
    student, pairs = up.teacher, up.pairs
    for step_id, section in distill_stages(cfg.distill):     # one step; LowDiff + cascade_dmd2: two, chained
        student, history, loss_curve = distill_step(student, up.dataset, pairs, up.feature_net, up.references,
                                                    section, cfg.evaluation.extractor(), cfg.evaluation.num_samples,
                                                    cfg.compute.threads, id=step_id)
        pairs = None
    downstream(cfg, up, student, history, loss_curve)
