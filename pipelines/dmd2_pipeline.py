"""dmd2_pipeline: lineage; ingest -> validate -> dataset -> feature net -> reference features ->
teacher -> teacher pairs -> distill (DMD2, CTM or a LowDiff cascade: distill.method) -> evaluate -> quality gate (promotes the ZenML model version) -> export;
run report (dashboard) -> W&B. Wiring only."""
from typing import Any, Dict, Optional

from zenml import Model, pipeline

from components.data.versioning import run_lineage
from components.methods import check_pipeline
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
from steps.names import MODEL_NAME
from steps.pairs import teacher_pairs
from steps.references import reference_statistics
from steps.report import report_step
from steps.teacher import teacher_step
from steps.validate import validate_data
from steps.wandb_log import log_to_wandb


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
    threads = cfg.compute.threads              # torch CPU threads of every step that computes
    lineage = run_lineage(cfg.as_dict(), params_file)
    record_lineage(lineage)
    manifest = ingest_data(cfg.data, lineage["data_md5"])
    validation = validate_data(manifest, cfg.data)
    dataset = build_dataset(manifest, validation, cfg.data)
    feature_net = feature_net_step(dataset, cfg.features, threads)
    references = reference_statistics(dataset, feature_net, cfg.evaluation.extractor(), threads)
    teacher_model, _ = teacher_step(dataset, cfg.teacher, threads)
    sampler = {k: getattr(cfg.teacher, k) for k in ("sampler_steps", "rho", "sigma_min", "sigma_max")}
    pairs_ = teacher_pairs(teacher_model, cfg.pairs, sampler, threads)
    student, history, loss_curve = distill_step(teacher_model, dataset, pairs_, feature_net, references,
                                                cfg.distill.model_dump(mode="json"), cfg.evaluation.extractor(),
                                                cfg.evaluation.num_samples, threads)
    teacher_metrics, teacher_features, teacher_grid = evaluate_teacher(teacher_model, dataset, feature_net,
                                                                       references, cfg.evaluation, threads)
    metrics, student_grid = evaluate_student(student, teacher_model, dataset, feature_net, references,
                                             teacher_metrics, teacher_features, cfg.evaluation, threads)
    decision = quality_gate(metrics, dataset, feature_net, references, cfg.evaluation, cfg.gate,
                            lineage["built_at"])
    export_model(student, decision, metrics, lineage, dataset, cfg.export)
    report, fid_plot = report_step(metrics, teacher_metrics, decision, teacher_grid, student_grid, lineage, history)
    log_to_wandb(history, metrics, decision, teacher_grid, student_grid, fid_plot, loss_curve, report, lineage,
                 cfg.tracking)
