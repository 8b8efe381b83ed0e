"""The ZenML Model Control Plane: the production student, and promotion of this run's version."""
import logging
from typing import Optional

from zenml import get_step_context
from zenml.client import Client
from zenml.enums import ModelStages

from components.diffusion import Denoiser
from steps.names import MODEL_NAME, STUDENT

logger = logging.getLogger(__name__)


def production_student() -> Optional[Denoiser]:
    """The student of this pipeline's model (dmd2_student, guided_student) in `production`, if there is one
    (a guided chain links one `student` per stage: the latest, its last halving, is the model's)."""
    try:
        name = get_step_context().model.name
    except Exception:                    # .entrypoint() or a step without a model: the default model
        name = MODEL_NAME
    try:
        version = Client().get_model_version(name, ModelStages.PRODUCTION)
    except KeyError:
        return None
    artifact = version.get_artifact(STUDENT)
    return artifact.load() if artifact is not None else None


def promote(stage: str) -> str:
    """Move this run's model version to `stage`; the version that held it is archived."""
    try:
        model = get_step_context().model
    except RuntimeError:                 # called via .entrypoint(): no run, nothing to promote
        return ""
    model.set_stage(stage, force=True)
    logger.info("model %s version %s -> %s", model.name, model.version, stage)
    return str(model.version)
