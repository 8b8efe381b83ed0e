"""Step: the Great Expectations suite on the manifest; the report is an artifact with an HTML view.

It does not raise, so the report is stored even when the suite fails; `build_dataset` then stops
the run before any training."""
import logging
from typing import Annotated

import pandas as pd
from zenml import step

from components.config import DataConfig
from components.data import validate
from components.data.validation import DataValidationReport
from steps.materializers import DataValidationMaterializer
from steps.metadata import log_step_metadata
from steps.names import DATA_VALIDATION

logger = logging.getLogger(__name__)


@step(output_materializers={DATA_VALIDATION: DataValidationMaterializer})
def validate_data(manifest: pd.DataFrame, data: DataConfig) -> Annotated[DataValidationReport, DATA_VALIDATION]:
    report = validate(data, manifest)
    log_step_metadata({"data_valid": report.success, "expectations": len(report.outcomes),
                       "failed_expectations": [o.rule for o in report.failures()]})
    if not report.success:
        logger.error(report.error_message(data.path))
    return report
