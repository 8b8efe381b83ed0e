"""Step: FID and class accuracy of one model at each guidance strength w (evaluation.guidance_w), appended to
the points of the models swept before it - a guided chain sweeps the CFG teacher, then each of its students."""
from typing import Annotated, Any, Dict, List, Optional

from zenml import step

from components.config import EvalConfig
from components.data import ImageDataset
from components.diffusion import Denoiser
from components.metrics import FeatureNet, ReferenceFeatures
from components.metrics.evaluate import extractor_for, guidance_sweep
from components.training import pin_threads
from steps.names import GUIDANCE_SWEEP


@step
def guidance_sweep_step(model: Denoiser, name: str, earlier: Optional[List[Dict[str, Any]]], dataset: ImageDataset,
                        feature_net: FeatureNet, references: ReferenceFeatures, evaluation: EvalConfig,
                        threads: int = 0) -> Annotated[List[Dict[str, Any]], GUIDANCE_SWEEP]:
    pin_threads(threads)                 # compute.threads (0: as it is)
    points = guidance_sweep(model, name, evaluation.guidance_w, extractor_for(evaluation, feature_net), feature_net,
                            dataset, references, evaluation)
    return [*(earlier or []), *points]
