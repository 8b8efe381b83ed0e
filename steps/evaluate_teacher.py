"""Step: the teacher's figures at its default multi-step sampler and at fewer NFE (cached per
teacher + eval config)."""
from typing import Annotated, Any, Dict, Tuple

from PIL import Image
from zenml import step

from components.config import EvalConfig
from components.data import ImageDataset
from components.diffusion import Denoiser
from components.metrics import FeatureNet, FeatureSet, ReferenceFeatures
from components.metrics.evaluate import evaluate_teacher_model
from components.training import pin_threads
from components.viz import sample_grid
from steps.materializers import FeatureSetMaterializer
from steps.metadata import log_step_metadata
from steps.names import TEACHER_METRICS, TEACHER_SAMPLE_FEATURES, TEACHER_SAMPLES


@step(output_materializers={TEACHER_SAMPLE_FEATURES: FeatureSetMaterializer})
def evaluate_teacher(teacher: Denoiser, dataset: ImageDataset, feature_net: FeatureNet,
                     references: ReferenceFeatures, evaluation: EvalConfig, threads: int = 0) -> Tuple[
        Annotated[Dict[str, Any], TEACHER_METRICS], Annotated[FeatureSet, TEACHER_SAMPLE_FEATURES],
        Annotated[Image.Image, TEACHER_SAMPLES]]:
    pin_threads(threads)                 # compute.threads (0: as it is)
    metrics, feats, gen = evaluate_teacher_model(teacher, dataset, feature_net, references, evaluation)
    log_step_metadata({"teacher_fid": metrics["fid"], "teacher_class_acc": metrics["class_acc"],
                       "real_class_acc": metrics["real_class_acc"], "teacher_nfe": metrics["nfe"],
                       "teacher_latency_p50_ms": 1000 * metrics["latency_p50"],
                       **({"teacher_kid": metrics["kid"]} if metrics["kid"] is not None else {})})
    return metrics, feats, sample_grid(gen.images, gen.labels, dataset.num_classes, evaluation.grid_per_class)
