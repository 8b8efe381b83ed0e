"""Step: train the class-conditional teacher, or load a user's diffusers teacher folder."""
from typing import Annotated, Tuple

from PIL import Image
from zenml import step

from components.config import TeacherConfig
from components.data import ImageDataset
from components.diffusion import Denoiser, state_hash
from components.teacher import get_teacher
from components.training import pin_threads, select_device
from components.viz import loss_curve, windowed
from steps.materializers import DenoiserMaterializer
from steps.metadata import log_step_metadata
from steps.names import TEACHER, TEACHER_LOSS_CURVE


@step(output_materializers={TEACHER: DenoiserMaterializer})
def teacher_step(dataset: ImageDataset, teacher: TeacherConfig, threads: int = 0) -> Tuple[
        Annotated[Denoiser, TEACHER], Annotated[Image.Image, TEACHER_LOSS_CURVE]]:
    pin_threads(threads)                 # compute.threads (0: as it is)
    model, losses = get_teacher(teacher, dataset, select_device("auto"))
    history = windowed(losses or [])
    # a loaded teacher has no training curve: a blank picture keeps the artifact set the same
    curve = loss_curve(history, "teacher EDM loss (50-step mean)") if history else Image.new("RGB", (320, 40), "white")
    log_step_metadata({"teacher_sha256": state_hash(model), "loaded_from": teacher.path or "trained",
                       "final_loss": history[-1]["loss"] if history else -1.0})
    return model, curve
