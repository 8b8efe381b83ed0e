"""Step: the teacher's figures at its default multi-step sampler (cached per teacher + eval config)."""
from typing import Annotated, Any, Dict, Tuple

from PIL import Image
from zenml import step

from components.config import EvalConfig, parse_section
from components.data import ImageDataset
from components.diffusion import Denoiser
from components.metrics import FeatureNet
from components.metrics.evaluate import evaluate_teacher_model
from components.viz import sample_grid
from steps.metadata import log_step_metadata
from steps.names import TEACHER_METRICS, TEACHER_SAMPLE_STATS, TEACHER_SAMPLES


@step
def evaluate_teacher(teacher: Denoiser, dataset: ImageDataset, feature_net: FeatureNet,
                     evaluation: Dict[str, Any]) -> Tuple[
        Annotated[Dict[str, Any], TEACHER_METRICS], Annotated[Dict[str, Any], TEACHER_SAMPLE_STATS],
        Annotated[Image.Image, TEACHER_SAMPLES]]:
    cfg = parse_section(EvalConfig, evaluation, "evaluation")
    metrics, stats, gen = evaluate_teacher_model(teacher, dataset, feature_net, cfg)
    log_step_metadata({"teacher_fid": metrics["fid"], "teacher_class_acc": metrics["class_acc"],
                  "teacher_nfe": metrics["nfe"]})
    return metrics, stats.to_dict(), sample_grid(gen.images, gen.labels, dataset.num_classes, cfg.grid_per_class)
