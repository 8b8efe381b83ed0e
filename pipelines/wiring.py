"""The wiring every pipeline shares: the upstream steps (lineage, ingest, validation, dataset, feature net,
reference features, teacher, teacher pairs) and the downstream ones (evaluate, quality gate, export, run
report, W&B). Called inside a @pipeline function, so the steps keep their names (and cache keys) in each
pipeline's DAG. Wiring only."""
from dataclasses import dataclass
from typing import Any, Optional

from components.data.versioning import run_lineage
from components.params import RunConfig
from steps.dataset import build_dataset
from steps.evaluate_student import evaluate_student
from steps.evaluate_teacher import evaluate_teacher
from steps.export import export_model
from steps.feature_net import feature_net_step
from steps.gate import quality_gate
from steps.ingest import ingest_data
from steps.lineage import record_lineage
from steps.pairs import teacher_pairs
from steps.references import reference_statistics
from steps.report import report_step
from steps.teacher import teacher_step
from steps.validate import validate_data
from steps.wandb_log import log_to_wandb


@dataclass
class Upstream:
    """The shared steps' outputs (step artifacts) a method's own steps read."""

    lineage: Any
    dataset: Any
    feature_net: Any
    references: Any
    teacher: Any
    pairs: Any                      # None unless upstream(..., pairs=True)


def upstream(cfg: RunConfig, params_file: Optional[str], pairs: bool) -> Upstream:
    """lineage; ingest -> validate -> dataset -> feature net -> reference features -> teacher (-> teacher pairs)."""
    threads = cfg.compute.threads              # torch CPU threads of every step that computes
    lineage = run_lineage(cfg.as_dict(), params_file)
    record_lineage(lineage)
    manifest = ingest_data(cfg.data, lineage["data_md5"])
    validation = validate_data(manifest, cfg.data)
    dataset = build_dataset(manifest, validation, cfg.data)
    feature_net = feature_net_step(dataset, cfg.features, threads)
    references = reference_statistics(dataset, feature_net, cfg.evaluation.extractor(), threads)
    teacher_model, _ = teacher_step(dataset, cfg.teacher, threads)
    pairs_ = None
    if pairs:
        sampler = {k: getattr(cfg.teacher, k) for k in ("sampler_steps", "rho", "sigma_min", "sigma_max")}
        pairs_ = teacher_pairs(teacher_model, cfg.pairs, sampler, threads)
    return Upstream(lineage, dataset, feature_net, references, teacher_model, pairs_)


def evaluate_teacher_step(cfg: RunConfig, up: Upstream):
    """The teacher's metrics, features and sample grid (the reference of the student's evaluation)."""
    return evaluate_teacher(up.teacher, up.dataset, up.feature_net, up.references, cfg.evaluation,
                            cfg.compute.threads)


def downstream(cfg: RunConfig, up: Upstream, student, history, loss_curve, teacher_eval=None, sweep=None) -> None:
    """evaluate (the teacher's evaluation, unless given) -> quality gate -> export; run report -> W&B."""
    ev, threads = cfg.evaluation, cfg.compute.threads
    teacher_metrics, teacher_features, teacher_grid = teacher_eval or evaluate_teacher_step(cfg, up)
    metrics, student_grid = evaluate_student(student, up.teacher, up.dataset, up.feature_net, up.references,
                                             teacher_metrics, teacher_features, ev, threads)
    decision = quality_gate(metrics, up.dataset, up.feature_net, up.references, ev, cfg.gate,
                            up.lineage["built_at"])
    export_model(student, decision, metrics, up.lineage, up.dataset, cfg.export)
    guidance = {"guidance": sweep} if sweep is not None else {}      # the guided chain's w sweep
    report, fid_plot = report_step(metrics, teacher_metrics, decision, teacher_grid, student_grid, up.lineage,
                                   history, **guidance)
    log_to_wandb(history, metrics, decision, teacher_grid, student_grid, fid_plot, loss_curve, report, up.lineage,
                 cfg.tracking, **guidance)
