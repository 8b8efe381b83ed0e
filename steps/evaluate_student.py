"""Step: the student's figures beside the teacher's; prints the summary table of the run."""
import logging
import math
from typing import Annotated, Any, Dict, Tuple

from PIL import Image
from zenml import step

from components.config import EvalConfig
from components.data import ImageDataset
from components.diffusion import Denoiser
from components.metrics import FeatureNet, FeatureSet, ReferenceFeatures
from components.metrics.evaluate import evaluate_student_model
from components.metrics.summary import summary_table
from components.training import pin_threads
from components.viz import sample_grid
from steps.metadata import log_step_metadata
from steps.names import METRICS, STUDENT_SAMPLES

logger = logging.getLogger(__name__)


@step
def evaluate_student(student: Denoiser, teacher: Denoiser, dataset: ImageDataset, feature_net: FeatureNet,
                     references: ReferenceFeatures, teacher_metrics: Dict[str, Any],
                     teacher_sample_features: FeatureSet, evaluation: EvalConfig, threads: int = 0) -> Tuple[
        Annotated[Dict[str, Any], METRICS], Annotated[Image.Image, STUDENT_SAMPLES]]:
    pin_threads(threads)                 # compute.threads (0: as it is)
    result, gen = evaluate_student_model(student, teacher, dataset, feature_net, references, teacher_metrics,
                                         teacher_sample_features, evaluation)
    log_step_metadata({k: v for k, v in result.items() if isinstance(v, (int, str))
                       or (isinstance(v, float) and math.isfinite(v))})
    if result["student_nonfinite_samples"]:
        logger.warning("student: %d of %d samples contain NaN/inf - it cannot be scored",
                       result["student_nonfinite_samples"], result["num_samples"])
    else:
        logger.info("\n%s", summary_table(result))
    return result, sample_grid(gen.images.nan_to_num(0.0), gen.labels, dataset.num_classes, evaluation.grid_per_class)
