"""Step: write the student as a stock-diffusers folder (ConsistencyModelPipeline) - only on a pass.

The artifact is the folder; on a rejection it holds only REJECTED.md with the gate's reasons."""
import atexit
import logging
import shutil
import tempfile
from pathlib import Path
from typing import Annotated, Any, Dict

from zenml import step

from components.config import ExportConfig
from components.data import ImageDataset
from components.diffusion import Denoiser
from components.export import card_fields, check_export_target, export_if_passed, export_student
from steps.metadata import log_step_metadata
from steps.names import EXPORTED_MODEL

logger = logging.getLogger(__name__)


@step
def export_model(student: Denoiser, decision: Dict[str, Any], metrics: Dict[str, Any], lineage: Dict[str, Any],
                 dataset: ImageDataset, export: ExportConfig) -> Annotated[Path, EXPORTED_MODEL]:
    scratch = tempfile.mkdtemp(prefix="export-")
    atexit.register(shutil.rmtree, scratch, True)     # ZenML copies the returned folder after the step
    folder = Path(scratch) / "model"
    if decision["passed"] and export.path:
        check_export_target(export.path, export.overwrite)       # refuse before writing anything
    card = card_fields(lineage["config"]["distill"]["method"], metrics, dataset.class_names, lineage["data_path"],
                       lineage["data_md5"], lineage["config"], lineage["git_commit"])
    if not export_if_passed(student, folder, decision["passed"], decision["reasons"], card, onnx=export.onnx):
        logger.warning("export skipped: the quality gate rejected the student (%s)", "; ".join(decision["reasons"]))
        log_step_metadata({"exported": False})
        return folder
    if export.path:
        export_student(student, export.path, card, overwrite=export.overwrite, onnx=export.onnx)
        logger.info("exported to %s", export.path)
    log_step_metadata({"exported": True, "export_path": export.path or ""})
    return folder
