"""Step: train the UNet2DConditionModel teacher on the cached latents (epsilon prediction on SD's DDPM schedule,
caption dropout for CFG) -> a complete StableDiffusionPipeline; a user's folder (teacher.path) passes through."""
from typing import Annotated

from zenml import step

from components.t2i.config import LatentTeacherConfig
from components.t2i.parts import LatentCache, SDParts
from components.t2i.run import stage_teacher
from components.training import pin_threads
from steps.materializers import SDPartsMaterializer
from steps.metadata import log_step_metadata
from steps.names import T2I_TEACHER


@step(output_materializers={T2I_TEACHER: SDPartsMaterializer})
def t2i_teacher(cache: LatentCache, text: SDParts, vae: SDParts, teacher: LatentTeacherConfig,
                threads: int = 0) -> Annotated[SDParts, T2I_TEACHER]:
    pin_threads(threads)
    base = text if teacher.path else text.with_parts(vae=vae.vae)
    full, report = stage_teacher(teacher, cache, base)
    log_step_metadata(report)
    return full
