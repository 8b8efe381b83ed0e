"""Step: DMD2 on the latent teacher (prompts as cached embeddings), a full or a LoRA student (distill.lora)."""
import atexit
import shutil
import tempfile
from pathlib import Path
from typing import Annotated, Any, Dict, List, Tuple

from PIL import Image
from zenml import step

from components.config import parse_section
from components.methods.dmd2 import DMD2Config
from components.nets.lora import count_parameters
from components.t2i.parts import LatentCache, SDParts, save_student
from components.t2i.run import peak_rss_mb, stage_distill
from components.training import pin_threads
from steps.metadata import log_step_metadata
from components.viz import loss_curve
from steps.names import DISTILL_HISTORY, DISTILL_LOSS_CURVE, T2I_STUDENT


@step
def t2i_distill(teacher: SDParts, cache: LatentCache, distill: Dict[str, Any], sampler_steps: int = 25,
                threads: int = 0) -> Tuple[Annotated[Path, T2I_STUDENT], Annotated[List[Dict[str, float]], DISTILL_HISTORY],
                                           Annotated[Image.Image, DISTILL_LOSS_CURVE]]:
    """The student folder (unet/ with LoRA fused, lora/, student.json), the loss history and its picture."""
    pin_threads(threads)
    cfg = parse_section(DMD2Config, distill, "distill")
    method, history, seconds = stage_distill(cfg, teacher, cache, sampler_steps)
    scratch = tempfile.mkdtemp(prefix="t2i-student-")
    atexit.register(shutil.rmtree, scratch, True)      # ZenML copies the returned folder after the step
    info = save_student(method.student(), Path(scratch) / "student")
    log_step_metadata({"distill_seconds": seconds, "peak_rss_mb": peak_rss_mb(), "timesteps": info["timesteps"],
                       "trainable_parameters": count_parameters(method.G, trainable_only=True),
                       "lora": info["lora"] or "full"})
    return Path(scratch) / "student", history, loss_curve(history, "latent DMD2 losses")
