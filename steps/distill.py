"""Step: distill the teacher into a few-step student with the configured method (with the
student's FID at checkpoints when distill.fid_every > 0). A guided chain runs it once per stage:
the guided stage on the teacher, then each halving on the previous student (pairs None); msd_pipeline once per
subset and stage (a smaller student's later stages start from `init`, the previous stage's student)."""
import time
from typing import Annotated, Any, Dict, List, Optional, Tuple

from PIL import Image
from zenml import step

from components.config import ExtractorConfig
from components.data import ImageDataset
from components.diffusion import Denoiser
from components.diffusion.pairs import TeacherPairs
from components.methods import build_method, distill
from components.metrics import FeatureNet, ReferenceFeatures
from components.metrics.evaluate import checkpoint_fid
from components.training import pin_threads
from components.viz import loss_curve
from steps.materializers import DenoiserMaterializer
from steps.metadata import log_step_metadata
from steps.names import DISTILL_HISTORY, DISTILL_LOSS_CURVE, STUDENT


@step(output_materializers={STUDENT: DenoiserMaterializer})
def distill_step(teacher: Denoiser, dataset: ImageDataset, pairs: Optional[TeacherPairs], feature_net: FeatureNet,
                 references: ReferenceFeatures, distill_config: Dict[str, Any], extractor: ExtractorConfig,
                 fid_samples: int = 1000, threads: int = 0, init: Optional[Denoiser] = None) -> Tuple[
        Annotated[Denoiser, STUDENT], Annotated[List[Dict[str, float]], DISTILL_HISTORY],
        Annotated[Image.Image, DISTILL_LOSS_CURVE]]:
    threads = pin_threads(threads)       # compute.threads (0: as it is) -> the count in effect
    # the distill section as plain data: its method's Config validates it (ZenML cannot validate a union of
    # Configs told apart by `method`; load_params checked it before any step ran)
    method = build_method(teacher, distill_config, dataset, pairs, init)   # init: a previous stage's student (MSD)
    callback = checkpoint_fid(method, feature_net, references, extractor, fid_samples)
    t0 = time.perf_counter()
    history = distill(method, callback=callback)
    seconds = time.perf_counter() - t0
    history[-1:] = [{**history[-1], "distill_seconds": seconds}] if history else []   # the fan-out's wall-clock
    log_step_metadata({"distill_seconds": seconds, "torch_threads": threads, "method": method.cfg.method,
                       "iterations": method.cfg.iterations,
                       "student_steps": len(method.student().sampling["sigmas"]) - 1,
                       **{f"final_{k}": v for k, v in (history[-1] if history else {}).items()}})
    return method.student(), history, loss_curve(history, f"{method.cfg.method} losses")
