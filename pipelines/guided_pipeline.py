"""guided_pipeline: guided distillation + progressive halvings (Meng et al. 2022; docs/guided.md).
lineage; ingest -> validate -> dataset -> feature net -> reference features -> teacher -> guided stage
(distill.method guided: one network with w as an input) -> one distill step per halving (N -> N/2 -> ...
-> distill.target_steps, each student its own artifact: a longer chain reuses the cached ones) -> evaluate
(w = 0) -> the sweep over evaluation.guidance_w (the CFG teacher, then each stage's student) -> quality gate
(promotes the ZenML model version) -> export (w an input); run report (dashboard) -> W&B. Wiring only."""
from typing import Any, Dict, Optional

from zenml import Model, pipeline

from components.data.versioning import run_lineage
from components.methods import check_pipeline
from components.methods.progressive import halvings, stage_one
from components.params import load_params
from steps.dataset import build_dataset
from steps.distill import distill_step
from steps.evaluate_student import evaluate_student
from steps.evaluate_teacher import evaluate_teacher
from steps.export import export_model
from steps.feature_net import feature_net_step
from steps.gate import quality_gate
from steps.guidance import guidance_sweep_step
from steps.ingest import ingest_data
from steps.lineage import record_lineage
from steps.names import GUIDED_MODEL_NAME
from steps.references import reference_statistics
from steps.report import report_step
from steps.teacher import teacher_step
from steps.validate import validate_data
from steps.wandb_log import log_to_wandb


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
    lineage = run_lineage(cfg.as_dict(), params_file)
    record_lineage(lineage)
    manifest = ingest_data(cfg.data, lineage["data_md5"])
    validation = validate_data(manifest, cfg.data)
    dataset = build_dataset(manifest, validation, cfg.data)
    feature_net = feature_net_step(dataset, cfg.features, threads)
    references = reference_statistics(dataset, feature_net, ev.extractor(), threads)
    teacher_model, _ = teacher_step(dataset, cfg.teacher, threads)
    student, history, loss_curve = distill_step(teacher_model, dataset, None, feature_net, references,
                                                stage_one(cfg.distill), ev.extractor(), ev.num_samples, threads)
    teacher_metrics, teacher_features, teacher_grid = evaluate_teacher(teacher_model, dataset, feature_net,
                                                                       references, ev, threads)
    sweep = guidance_sweep_step(teacher_model, "teacher (CFG)", None, dataset, feature_net, references, ev, threads,
                                id="guidance_sweep_teacher")
    sweep = guidance_sweep_step(student, f"student, {cfg.distill.sampling_steps}-step", sweep, dataset, feature_net,
                                references, ev, threads, id=f"guidance_sweep_{cfg.distill.sampling_steps}_steps")
    for steps, halving in halvings(cfg.distill):
        student, history, loss_curve = distill_step(student, dataset, None, feature_net, references, halving,
                                                    ev.extractor(), ev.num_samples, threads, id=f"halve_to_{steps}")
        sweep = guidance_sweep_step(student, f"student, {steps}-step", sweep, dataset, feature_net, references, ev,
                                    threads, id=f"guidance_sweep_{steps}_steps")
    metrics, student_grid = evaluate_student(student, teacher_model, dataset, feature_net, references,
                                             teacher_metrics, teacher_features, ev, threads)
    decision = quality_gate(metrics, dataset, feature_net, references, ev, cfg.gate, lineage["built_at"])
    export_model(student, decision, metrics, lineage, dataset, cfg.export)
    report, fid_plot = report_step(metrics, teacher_metrics, decision, teacher_grid, student_grid, lineage, history,
                                   sweep)
    log_to_wandb(history, metrics, decision, teacher_grid, student_grid, fid_plot, loss_curve, report, lineage,
                 cfg.tracking, sweep)
