"""Step: the teacher's deterministic ODE sampler turns seeded noise into images -> teacher pairs
(DMD regression loss, one-step ODE-regression warm start). ZenML's cache key holds the teacher
artifact and the `sampler` parameter (the teacher's recipe settings), so pairs are reused while
both are unchanged; shards land in pairs.work_dir first, so a crashed step resumes there."""
from pathlib import Path
from typing import Annotated, Any, Dict

from zenml import step

from components.config import PairsConfig
from components.diffusion import Denoiser, state_hash
from components.diffusion.pairs import TeacherPairs, generate_pairs, pairs_key
from components.training import pin_threads, select_device
from steps.materializers import TeacherPairsMaterializer
from steps.metadata import log_step_metadata
from steps.names import TEACHER_PAIRS


@step(output_materializers=TeacherPairsMaterializer)
def teacher_pairs(teacher: Denoiser, pairs: PairsConfig,
                  sampler: Dict[str, Any], threads: int = 0) -> Annotated[TeacherPairs, TEACHER_PAIRS]:
    """`sampler`: the teacher config's sampler settings (part of the cache key; the teacher
    artifact carries the recipe itself)."""
    pin_threads(threads)                 # compute.threads (0: as it is)
    sha = state_hash(teacher)
    work = Path(pairs.work_dir) / pairs_key(sha, teacher.sampling, pairs)[:16]
    result = generate_pairs(teacher.to(select_device("auto")), pairs, work, teacher_sha256=sha)
    log_step_metadata({"num_pairs": len(result), "teacher_sha256": sha, "work_dir": str(work), **sampler})
    return result
