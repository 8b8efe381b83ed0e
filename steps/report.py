"""Step: the run report - an HTML page in the dashboard (gate decision, metrics table, FID vs NFE,
FID during distillation, FID and class accuracy vs guidance w for a guided chain, teacher vs student samples,
provenance) and the FID-vs-NFE picture."""
from typing import Annotated, Any, Dict, List, Optional, Tuple

from PIL import Image
from zenml import step
from zenml.types import HTMLString

from components.run_report import fid_points, run_report, training_curve
from components.viz import fid_vs_nfe, fid_vs_w
from steps.names import FID_VS_NFE_PLOT, RUN_REPORT


@step
def report_step(metrics: Dict[str, Any], teacher_metrics: Dict[str, Any], decision: Dict[str, Any],
                teacher_samples: Image.Image, student_samples: Image.Image, lineage: Dict[str, Any],
                history: List[Dict[str, float]], guidance: Optional[List[Dict[str, Any]]] = None) -> Tuple[
        Annotated[HTMLString, RUN_REPORT], Annotated[Image.Image, FID_VS_NFE_PLOT]]:
    curve = fid_vs_nfe(fid_points(teacher_metrics["fid_vs_nfe"], metrics))
    provenance = {"data": f"{lineage['data_path']} (DVC md5 {lineage['data_md5']})",
                  "git commit": lineage.get("git_commit") or "", "params.yaml sha256": lineage.get("params_sha256", ""),
                  "teacher sha256": metrics.get("teacher_sha256", ""), "built at": lineage.get("built_at", "")}
    page = run_report(metrics, decision, curve, teacher_samples, student_samples, provenance,
                      training=training_curve(history, metrics),
                      guidance=(fid_vs_w(guidance), guidance) if guidance else None)
    return HTMLString(page), curve
