"""Step: read the configured dataset into the shared ImageDataset (with its seeded split)."""
from typing import Annotated, Any, Dict

from zenml import step

from components.config import DataConfig, parse_section
from components.data import ImageDataset, load_dataset
from steps.metadata import log_step_metadata
from steps.materializers import ImageDatasetMaterializer
from steps.names import DATASET


@step(output_materializers=ImageDatasetMaterializer)
def ingest_data(data: Dict[str, Any]) -> Annotated[ImageDataset, DATASET]:
    dataset = load_dataset(parse_section(DataConfig, data, "data"))
    log_step_metadata({"dataset_fingerprint": dataset.fingerprint(), "num_train": int((~dataset.is_eval).sum()),
                  "num_eval": int(dataset.is_eval.sum()), "shape": str(dataset.shape)})
    return dataset
