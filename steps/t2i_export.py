"""Step: on a pass, the student as a stock StableDiffusionPipeline folder (LCMScheduler at its timesteps, LoRA fused;
a LoRA student's file in lora/); on a rejection the folder holds only REJECTED.md with the gate's reasons."""
import atexit
import logging
import shutil
import tempfile
from pathlib import Path
from typing import Annotated, Any, Dict, Optional

from zenml import step

from components.export import check_export_target
from components.t2i.export import export_student
from components.t2i.parts import SDParts
from steps.metadata import log_step_metadata
from steps.names import EXPORTED_MODEL

logger = logging.getLogger(__name__)


@step
def t2i_export(student: Path, teacher: SDParts, decision: Dict[str, Any], metrics: Dict[str, Any],
               path: Optional[str] = None, overwrite: bool = False) -> Annotated[Path, EXPORTED_MODEL]:
    scratch = tempfile.mkdtemp(prefix="t2i-export-")
    atexit.register(shutil.rmtree, scratch, True)
    folder = Path(scratch) / "model"
    if not decision["passed"]:
        folder.mkdir()
        (folder / "REJECTED.md").write_text("# Not exported: the quality gate rejected the student\n\n" +
                                            "".join(f"- {r}\n" for r in decision["reasons"]))
        logger.warning("export skipped: the quality gate rejected the student (%s)", "; ".join(decision["reasons"]))
        log_step_metadata({"exported": False})
        return folder
    if path:
        check_export_target(path, overwrite)                      # refuse before writing anything
    card = export_student(student, teacher, folder, {"student_fid": metrics["student"]["fid"],
                                                     "teacher_fid": metrics["teacher"]["fid"]})
    if path:
        if Path(path).exists():
            shutil.rmtree(path)
        shutil.copytree(folder, path)
        logger.info("exported to %s", path)
    log_step_metadata({"exported": True, "export_path": path or "", "steps": card["steps"]})
    return folder
