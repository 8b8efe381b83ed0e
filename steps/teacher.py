"""Step: train the class-conditional teacher, or load a user's diffusers teacher folder."""
from typing import Annotated, Any, Dict, Tuple

from PIL import Image
from zenml import step

from components.config import TeacherConfig, parse_section
from components.data import ImageDataset
from components.diffusion import Denoiser, state_hash
from components.teacher import get_teacher
from components.training import select_device
from components.viz import loss_curve
from steps.metadata import log_step_metadata
from steps.materializers import DenoiserMaterializer
from steps.names import TEACHER, TEACHER_LOSS_CURVE


@step(output_materializers={TEACHER: DenoiserMaterializer})
def teacher_step(dataset: ImageDataset, teacher: Dict[str, Any]) -> Tuple[
        Annotated[Denoiser, TEACHER], Annotated[Image.Image, TEACHER_LOSS_CURVE]]:
    cfg = parse_section(TeacherConfig, teacher, "teacher")
    model, losses = get_teacher(cfg, dataset, select_device("auto"))
    if losses:
        hist = [{"iteration": i + 1, "loss": sum(losses[max(0, i - 49):i + 1]) / len(losses[max(0, i - 49):i + 1])}
                for i in range(49, len(losses), 50)] or [{"iteration": len(losses), "loss": losses[-1]}]
        curve = loss_curve(hist, "teacher EDM loss (50-step mean)")
    else:
        curve = Image.new("RGB", (320, 40), "white")    # loaded teacher: no training curve
    log_step_metadata({"teacher_sha256": state_hash(model), "loaded_from": cfg.path or "trained",
                  "final_loss": float(sum(losses[-50:]) / len(losses[-50:])) if losses else -1.0})
    return model, curve
