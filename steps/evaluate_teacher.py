"""Step: the teacher's figures at its default multi-step sampler (cached per teacher + eval config)."""
from typing import Annotated, Any, Dict, Tuple

from PIL import Image
from zenml import step

from components.config import EvalConfig, parse_section
from components.data import ImageDataset
from components.diffusion import Denoiser, state_hash
from components.metrics import FeatureNet
from components.metrics.evaluate import evaluate_generator, real_floor, reference_stats
from components.viz import sample_grid
from steps.metadata import log_step_metadata
from steps.names import TEACHER_METRICS, TEACHER_SAMPLE_STATS, TEACHER_SAMPLES


@step
def evaluate_teacher(teacher: Denoiser, dataset: ImageDataset, feature_net: FeatureNet,
                     evaluation: Dict[str, Any]) -> Tuple[
        Annotated[Dict[str, Any], TEACHER_METRICS], Annotated[Dict[str, Any], TEACHER_SAMPLE_STATS],
        Annotated[Image.Image, TEACHER_SAMPLES]]:
    cfg = parse_section(EvalConfig, evaluation, "evaluation")
    refs = reference_stats(feature_net, dataset)
    metrics, stats, gen = evaluate_generator(teacher, "teacher", feature_net, dataset, refs, cfg.num_samples,
                                             cfg.seed, cfg.batch_size, progress=True)
    metrics.update(teacher_sha256=state_hash(teacher), real_floor=real_floor(refs, feature_net))
    log_step_metadata({"teacher_fid": metrics["fid"], "teacher_class_acc": metrics["class_acc"],
                  "teacher_nfe": metrics["nfe"]})
    stats_json = {"mu": stats.mu.tolist(), "sigma": stats.sigma.tolist(), "n": stats.n, "name": stats.name}
    return metrics, stats_json, sample_grid(gen.images, gen.labels, dataset.num_classes, cfg.grid_per_class)
