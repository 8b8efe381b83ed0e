"""Step: build the shared ImageDataset from a validated manifest (a failed suite stops here)."""
from typing import Annotated

import pandas as pd
from zenml import step

from components.config import DataConfig
from components.data import ImageDataset, load_images
from components.data.validation import DataValidationError, DataValidationReport
from steps.materializers import ImageDatasetMaterializer
from steps.metadata import log_step_metadata
from steps.names import DATASET


@step(output_materializers=ImageDatasetMaterializer)
def build_dataset(manifest: pd.DataFrame, validation: DataValidationReport,
                  data: DataConfig) -> Annotated[ImageDataset, DATASET]:
    if not validation.success:
        raise DataValidationError(validation.error_message(data.path))
    dataset = load_images(data, manifest)
    log_step_metadata({"dataset_fingerprint": dataset.fingerprint(), "num_train": int((~dataset.is_eval).sum()),
                       "num_eval": int(dataset.is_eval.sum()), "shape": str(dataset.shape)})
    return dataset
