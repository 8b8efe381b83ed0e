"""Step: the student's figures beside the teacher's; prints the summary table of the run."""
import logging
from typing import Annotated, Any, Dict, Tuple

import numpy as np
from PIL import Image
from zenml import step

from components.config import EvalConfig, parse_section
from components.data import ImageDataset
from components.diffusion import Denoiser
from components.metrics import FeatureNet, FeatureStats, fid
from components.metrics.evaluate import evaluate_generator, reference_stats
from components.metrics.report import summary, summary_table
from components.viz import sample_grid
from steps.metadata import log_step_metadata
from steps.names import METRICS, STUDENT_SAMPLES

logger = logging.getLogger(__name__)


@step
def evaluate_student(student: Denoiser, dataset: ImageDataset, feature_net: FeatureNet,
                     teacher_metrics: Dict[str, Any], teacher_sample_stats: Dict[str, Any],
                     evaluation: Dict[str, Any]) -> Tuple[
        Annotated[Dict[str, Any], METRICS], Annotated[Image.Image, STUDENT_SAMPLES]]:
    cfg = parse_section(EvalConfig, evaluation, "evaluation")
    refs = reference_stats(feature_net, dataset)
    student_m, stats, gen = evaluate_generator(student, "student", feature_net, dataset, refs, cfg.num_samples,
                                               cfg.seed, cfg.batch_size, progress=True)
    t = teacher_sample_stats
    teacher_stats = FeatureStats(np.asarray(t["mu"]), np.asarray(t["sigma"]), t["n"], t["name"])
    gap = fid(stats, teacher_stats, feature_net.name).as_dict()
    result = summary(teacher_metrics, student_m, gap)
    log_step_metadata({k: v for k, v in result.items() if isinstance(v, (int, float, str))})
    logger.info("\n%s", summary_table(result))
    return result, sample_grid(gen.images, gen.labels, dataset.num_classes, cfg.grid_per_class)
