"""Step: teacher (CFG, its default steps) and student on the same held-out prompts and noise: FID, prompt-class
and attribute agreement, the VAE's reconstruction floor and the real floor."""
from pathlib import Path
from typing import Annotated, Any, Dict, Tuple

from PIL import Image
from zenml import step

from components.metrics import FeatureNet
from components.t2i.captions import CaptionDataset
from components.t2i.config import LatentTeacherConfig, T2IEvalConfig
from components.t2i.parts import LatentCache, SDParts
from components.t2i.run import evaluate_models, samples_picture
from components.training import pin_threads
from steps.metadata import log_step_metadata
from steps.names import METRICS, STUDENT_SAMPLES


@step
def t2i_evaluate(teacher: SDParts, student: Path, cache: LatentCache, dataset: CaptionDataset, feature_net: FeatureNet,
                 teacher_config: LatentTeacherConfig, evaluation: T2IEvalConfig, threads: int = 0) -> Tuple[
        Annotated[Dict[str, Any], METRICS], Annotated[Image.Image, STUDENT_SAMPLES]]:
    """The metrics, and a picture: real held-out images, teacher, student - the same captions and noise per column."""
    pin_threads(threads)
    metrics = evaluate_models(teacher, {"student": student}, cache, dataset, feature_net, teacher_config, evaluation)
    log_step_metadata({f"{who}_{k}": v for who in ("teacher", "student", "vae_floor", "real")
                       for k, v in metrics[who].items() if isinstance(v, (int, float))})
    return metrics, samples_picture(teacher, {"student": student}, cache, dataset, teacher_config, seed=evaluation.seed)
