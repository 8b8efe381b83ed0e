"""msd_pipeline: Multi-Student Distillation (Song et al. 2024; docs/msd.md).
lineage; ingest -> validate -> dataset -> feature net -> reference features -> teacher -> teacher pairs (shared,
once) -> the fan-out: per class subset k (distill.students of them) its distill steps, `student_<k>_<stage>`
(same-size students: one dmd2 stage; smaller ones: tsm -> dm -> adv, each its own artifact), the branches
independent (K GPU tasks in parallel on Kubeflow; a rerun after a kill reruns only the unfinished ones) -> the join
(route_students: one routed model) -> evaluate -> quality gate (promotes the ZenML model version) -> export (one
stock-diffusers folder per student + routing.json); run report (dashboard) -> W&B.
Wiring only (the shared steps: pipelines/wiring.py)."""
from typing import Any, Dict, Optional

from zenml import Model, pipeline

from components.methods import check_pipeline
from components.methods.msd import branches
from components.params import load_params
from pipelines.wiring import downstream, upstream
from steps.distill import distill_step
from steps.msd import route_students
from steps.names import MSD_MODEL_NAME


@pipeline(name="msd_pipeline", model=Model(name=MSD_MODEL_NAME, description="Routed bundles of K few-step students, "
                                           "one per class subset (Multi-Student Distillation)"))
def msd_pipeline(params_file: Optional[str] = None, data: Optional[Dict[str, Any]] = None,
                 teacher: Optional[Dict[str, Any]] = None, features: Optional[Dict[str, Any]] = None,
                 distill: Optional[Dict[str, Any]] = None, evaluation: Optional[Dict[str, Any]] = None,
                 gate: Optional[Dict[str, Any]] = None, export: Optional[Dict[str, Any]] = None,
                 tracking: Optional[Dict[str, Any]] = None, pairs: Optional[Dict[str, Any]] = None,
                 compute: Optional[Dict[str, Any]] = None) -> None:
    """As dmd2_pipeline: `params_file` gives the parameters, the sections passed here are merged over it,
    everything is validated before any step runs; distill.method must be msd (K: distill.students)."""
    cfg = load_params(params_file, data=data, teacher=teacher, features=features, distill=distill,
                      evaluation=evaluation, gate=gate, export=export, tracking=tracking, pairs=pairs,
                      compute=compute)
    check_pipeline(cfg.distill.method, "msd_pipeline")
    threads, ev = cfg.compute.threads, cfg.evaluation
    up = upstream(cfg, params_file, pairs=True)
    students, histories = [], []
    for k, stages in enumerate(branches(cfg.distill)):          # the fan-out: K independent branches
        student = None
        for stage, config in stages:
            student, history, _ = distill_step(up.teacher, up.dataset, up.pairs, up.feature_net, up.references,
                                               config, ev.extractor(), ev.num_samples, threads, student,
                                               id=f"student_{k}_{stage}")
            histories.append(history)
        students.append(student)
    routed, history, loss_curve = route_students(students, histories, up.dataset, cfg.distill.model_dump(mode="json"))
    downstream(cfg, up, routed, history, loss_curve)
