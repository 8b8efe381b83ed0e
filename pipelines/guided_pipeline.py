"""guided_pipeline: guided distillation + progressive halvings (Meng et al. 2022; docs/guided.md).
lineage; ingest -> validate -> dataset -> feature net -> reference features -> teacher -> guided stage
(distill.method guided: one network with w as an input) -> one distill step per halving (N -> N/2 -> ...
-> distill.target_steps, each student its own artifact: a longer chain reuses the cached ones) -> evaluate
(w = 0) -> the sweep over evaluation.guidance_w (the CFG teacher, then each stage's student) -> quality gate
(promotes the ZenML model version) -> export (w an input); run report (dashboard) -> W&B.
Wiring only (the shared steps: pipelines/wiring.py)."""
from typing import Any, Dict, Optional

from zenml import Model, pipeline

from components.methods import check_pipeline
from components.methods.progressive import halvings, stage_one
from components.params import load_params
from pipelines.wiring import downstream, evaluate_teacher_step, upstream
from steps.distill import distill_step
from steps.guidance import guidance_sweep_step
from steps.names import GUIDED_MODEL_NAME


@pipeline(name="guided_pipeline", model=Model(name=GUIDED_MODEL_NAME, description="Few-step students with the "
                                              "guidance strength w as an input (guided + progressive distillation)"))
def guided_pipeline(params_file: Optional[str] = None, data: Optional[Dict[str, Any]] = None,
                    teacher: Optional[Dict[str, Any]] = None, features: Optional[Dict[str, Any]] = None,
                    distill: Optional[Dict[str, Any]] = None, evaluation: Optional[Dict[str, Any]] = None,
                    gate: Optional[Dict[str, Any]] = None, export: Optional[Dict[str, Any]] = None,
                    tracking: Optional[Dict[str, Any]] = None, pairs: Optional[Dict[str, Any]] = None,
                    compute: Optional[Dict[str, Any]] = None) -> None:
    """As dmd2_pipeline: `params_file` gives the parameters, the sections passed here are merged over it,
    everything is validated before any step runs; distill.method must be guided (its chain: target_steps)."""
    cfg = load_params(params_file, data=data, teacher=teacher, features=features, distill=distill,
                      evaluation=evaluation, gate=gate, export=export, tracking=tracking, pairs=pairs,
                      compute=compute)
    check_pipeline(cfg.distill.method, "guided_pipeline")
    threads, ev = cfg.compute.threads, cfg.evaluation
    up = upstream(cfg, params_file, pairs=False)
    data = (up.dataset, up.feature_net, up.references)
    student, history, loss_curve = distill_step(up.teacher, up.dataset, None, up.feature_net, up.references,
                                                stage_one(cfg.distill), ev.extractor(), ev.num_samples, threads)
    teacher_eval = evaluate_teacher_step(cfg, up)
    sweep = guidance_sweep_step(up.teacher, "teacher (CFG)", None, *data, ev, threads, id="guidance_sweep_teacher")
    sweep = guidance_sweep_step(student, f"student, {cfg.distill.sampling_steps}-step", sweep, *data, ev, threads,
                                id=f"guidance_sweep_{cfg.distill.sampling_steps}_steps")
    for steps, halving in halvings(cfg.distill):
        student, history, loss_curve = distill_step(student, up.dataset, None, up.feature_net, up.references, halving,
                                                    ev.extractor(), ev.num_samples, threads, id=f"halve_to_{steps}")
        sweep = guidance_sweep_step(student, f"student, {steps}-step", sweep, *data, ev, threads,
                                    id=f"guidance_sweep_{steps}_steps")
    downstream(cfg, up, student, history, loss_curve, teacher_eval, sweep)
