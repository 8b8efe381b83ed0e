"""Step: write the student as a stock-diffusers folder (ConsistencyModelPipeline) - only on a pass.

The artifact is the folder; on a rejection it holds only REJECTED.md with the gate's reasons."""
import atexit
import logging
import shutil
import tempfile
from pathlib import Path
from typing import Annotated, Any, Dict

from zenml import step

from components.config import ExportConfig, parse_section
from components.data import ImageDataset
from components.diffusion import Denoiser
from components.export import check_export_target, export_student
from steps.metadata import log_step_metadata
from steps.names import EXPORTED_MODEL

logger = logging.getLogger(__name__)


@step
def export_model(student: Denoiser, decision: Dict[str, Any], metrics: Dict[str, Any], lineage: Dict[str, Any],
                 dataset: ImageDataset, export: Dict[str, Any]) -> Annotated[Path, EXPORTED_MODEL]:
    cfg = parse_section(ExportConfig, export, "export")
    scratch = tempfile.mkdtemp(prefix="export-")
    atexit.register(shutil.rmtree, scratch, True)     # ZenML copies the returned folder after the step
    folder = Path(scratch) / "model"
    if not decision["passed"]:
        folder.mkdir()
        (folder / "REJECTED.md").write_text("Not exported: " + "; ".join(decision["reasons"]) + "\n")
        logger.warning("export skipped: the quality gate rejected the student (%s)", "; ".join(decision["reasons"]))
        log_step_metadata({"exported": False})
        return folder
    if cfg.path:
        check_export_target(cfg.path, cfg.overwrite)       # refuse before writing anything
    card = {"method": lineage["config"]["distill"]["method"], "metrics": metrics, "teacher_nfe": metrics["teacher_nfe"],
            "class_names": dataset.class_names, "data_path": lineage["data_path"], "data_md5": lineage["data_md5"],
            "git_commit": lineage["git_commit"], "config": lineage["config"], "name": "fewstep DMD2 student"}
    export_student(student, folder, card)
    if cfg.path:
        export_student(student, cfg.path, card, overwrite=cfg.overwrite)
        logger.info("exported to %s", cfg.path)
    log_step_metadata({"exported": True, "export_path": cfg.path or ""})
    return folder
