"""Step: the join of msd_pipeline's fan-out - the K branches' students behind one router (class label -> student),
one model to the evaluation, gate and export steps. Its history is every branch's, with each series suffixed by its
student ('loss_dm[s2]'), and the fan-out's wall-clock on one machine (the branches in turn) beside the longest
branch's (what the Kubeflow DAG, branches in parallel, takes)."""
from typing import Annotated, Any, Dict, List, Tuple

from PIL import Image
from zenml import step

from components.data import ImageDataset
from components.diffusion import Denoiser
from components.methods import parse_distill_config
from components.methods.msd import fan_out_seconds, group_by_branch, merged_history, route
from components.viz import loss_curve
from steps.materializers import DenoiserMaterializer
from steps.metadata import log_step_metadata
from steps.names import DISTILL_HISTORY, DISTILL_LOSS_CURVE, STUDENT


@step(output_materializers={STUDENT: DenoiserMaterializer})
def route_students(students: List[Denoiser], histories: List[List[Dict[str, float]]], dataset: ImageDataset,
                   distill_config: Dict[str, Any]) -> Tuple[
        Annotated[Denoiser, STUDENT], Annotated[List[Dict[str, float]], DISTILL_HISTORY],
        Annotated[Image.Image, DISTILL_LOSS_CURVE]]:
    """students: each branch's last student, in branch order; histories: every stage's history, branch by branch."""
    cfg = parse_distill_config(distill_config)
    routed, branches = route(list(students), cfg, dataset), group_by_branch(list(histories), cfg)
    history = merged_history(branches)
    log_step_metadata({"students": len(routed.students), "subsets": str(routed.subsets),
                       "parameters_per_student": routed.active_parameters, **fan_out_seconds(branches)})
    return routed, history, loss_curve(history, f"msd losses ({len(routed.students)} students)")
