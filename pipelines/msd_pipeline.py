"""msd_pipeline: Multi-Student Distillation (Song et al. 2024; docs/msd.md).
lineage; ingest -> validate -> dataset -> feature net -> reference features -> teacher -> teacher pairs (shared,
once) -> the fan-out: per class subset k (distill.students of them) its distill steps, `student_<k>_<stage>`
(same-size students: one dmd2 stage; smaller ones: tsm -> dm -> adv, each its own artifact), the branches
independent (K GPU tasks in parallel on Kubeflow; a rerun after a kill reruns only the unfinished ones) -> the join
(route_students: one routed model) -> evaluate -> quality gate (promotes the ZenML model version) -> export (one
stock-diffusers folder per student + routing.json); run report (dashboard) -> W&B. Wiring only."""
from typing import Any, Dict, Optional

from zenml import Model, pipeline

from components.data.versioning import run_lineage
from components.methods import check_pipeline
from components.methods.msd import branches
from components.params import load_params
from steps.dataset import build_dataset
from steps.distill import distill_step
from steps.evaluate_student import evaluate_student
from steps.evaluate_teacher import evaluate_teacher
from steps.export import export_model
from steps.feature_net import feature_net_step
from steps.gate import quality_gate
from steps.ingest import ingest_data
from steps.lineage import record_lineage
from steps.msd import route_students
from steps.names import MSD_MODEL_NAME
from steps.pairs import teacher_pairs
from steps.references import reference_statistics
from steps.report import report_step
from steps.teacher import teacher_step
from steps.validate import validate_data
from steps.wandb_log import log_to_wandb


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
    lineage = run_lineage(cfg.as_dict(), params_file)
    record_lineage(lineage)
    manifest = ingest_data(cfg.data, lineage["data_md5"])
    validation = validate_data(manifest, cfg.data)
    dataset = build_dataset(manifest, validation, cfg.data)
    feature_net = feature_net_step(dataset, cfg.features, threads)
    references = reference_statistics(dataset, feature_net, ev.extractor(), threads)
    teacher_model, _ = teacher_step(dataset, cfg.teacher, threads)
    sampler = {k: getattr(cfg.teacher, k) for k in ("sampler_steps", "rho", "sigma_min", "sigma_max")}
    pairs_ = teacher_pairs(teacher_model, cfg.pairs, sampler, threads)
    students, histories = [], []
    for k, stages in enumerate(branches(cfg.distill)):          # the fan-out: K independent branches
        student = None
        for stage, config in stages:
            student, history, _ = distill_step(teacher_model, dataset, pairs_, feature_net, references, config,
                                               ev.extractor(), ev.num_samples, threads, student,
                                               id=f"student_{k}_{stage}")
            histories.append(history)
        students.append(student)
    routed, history, loss_curve = route_students(students, histories, dataset, cfg.distill.model_dump(mode="json"))
    teacher_metrics, teacher_features, teacher_grid = evaluate_teacher(teacher_model, dataset, feature_net,
                                                                       references, ev, threads)
    metrics, student_grid = evaluate_student(routed, teacher_model, dataset, feature_net, references,
                                             teacher_metrics, teacher_features, ev, threads)
    decision = quality_gate(metrics, dataset, feature_net, references, ev, cfg.gate, lineage["built_at"])
    export_model(routed, decision, metrics, lineage, dataset, cfg.export)
    report, fid_plot = report_step(metrics, teacher_metrics, decision, teacher_grid, student_grid, lineage, history)
    log_to_wandb(history, metrics, decision, teacher_grid, student_grid, fid_plot, loss_curve, report, lineage,
                 cfg.tracking)
