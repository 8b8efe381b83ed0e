"""Step: log the run to Weights & Biases (offline by default): config, distillation losses and
checkpoint FIDs by iteration, final metrics, sample grids, FID vs NFE (and vs w for a guided chain) and the report."""
import logging
from typing import Any, Dict, List, Optional

from PIL import Image
from zenml import get_step_context, step
from zenml.types import HTMLString

from components.config import TrackingConfig
from components.tracking import log_run
from components.viz import fid_vs_w
from steps.metadata import log_step_metadata

logger = logging.getLogger(__name__)


@step
def log_to_wandb(history: List[Dict[str, float]], metrics: Dict[str, Any], decision: Dict[str, Any],
                 teacher_samples: Image.Image, student_samples: Image.Image, fid_plot: Image.Image,
                 loss_curve: Image.Image, report: HTMLString, lineage: Dict[str, Any],
                 tracking: TrackingConfig, guidance: Optional[List[Dict[str, Any]]] = None) -> str:
    """-> the local W&B run folder ('' when disabled)."""
    try:
        run_name = get_step_context().pipeline_run.name
    except RuntimeError:                    # .entrypoint(): no ZenML run
        run_name = "fewstep"
    images = {"teacher": teacher_samples, "student": student_samples, "fid_vs_nfe": fid_plot, "losses": loss_curve}
    if guidance:                            # a guided chain: FID and class accuracy vs w
        images["fid_vs_w"] = fid_vs_w(guidance)
    config = {**lineage["config"], "lineage": {k: v for k, v in lineage.items() if k != "config"},
              "gate": decision}
    folder = log_run(tracking, run_name, lineage["config"]["distill"]["method"], config, history,
                     {**metrics, "gate_passed": int(decision["passed"])},
                     images, str(report))
    if folder is not None:
        logger.info("W&B run written to %s (upload: wandb sync %s)", folder, folder)
    log_step_metadata({"wandb_run": str(folder or "")})
    return str(folder or "")
