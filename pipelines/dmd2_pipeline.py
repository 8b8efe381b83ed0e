"""dmd2_pipeline: ingest -> feature net -> teacher -> distill (DMD2) -> evaluate. Wiring only."""
from typing import Any, Dict, Optional

from zenml import pipeline

from components.config import resolve_config
from steps.distill import distill_step
from steps.evaluate_student import evaluate_student
from steps.evaluate_teacher import evaluate_teacher
from steps.feature_net import feature_net_step
from steps.ingest import ingest_data
from steps.teacher import teacher_step


@pipeline(name="dmd2_pipeline")
def dmd2_pipeline(data: Optional[Dict[str, Any]] = None, teacher: Optional[Dict[str, Any]] = None,
                  features: Optional[Dict[str, Any]] = None, distill: Optional[Dict[str, Any]] = None,
                  evaluation: Optional[Dict[str, Any]] = None) -> None:
    cfg = resolve_config(data, teacher, features, distill, evaluation)   # fail before any step runs
    dataset = ingest_data(cfg["data"])
    feature_net = feature_net_step(dataset, cfg["features"])
    teacher_model, _ = teacher_step(dataset, cfg["teacher"])
    student, _, _ = distill_step(teacher_model, dataset, cfg["distill"])
    teacher_metrics, teacher_stats, _ = evaluate_teacher(teacher_model, dataset, feature_net, cfg["evaluation"])
    evaluate_student(student, dataset, feature_net, teacher_metrics, teacher_stats, cfg["evaluation"])
