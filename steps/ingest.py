"""Step: scan the dataset under data/ into the manifest (one row per image, with its seeded split)."""
from typing import Annotated

import pandas as pd
from zenml import step

from components.config import DataConfig
from components.data import build_manifest, data_format
from steps.materializers import ManifestMaterializer
from steps.metadata import log_step_metadata
from steps.names import MANIFEST


@step(output_materializers={MANIFEST: ManifestMaterializer})
def ingest_data(data: DataConfig, data_md5: str) -> Annotated[pd.DataFrame, MANIFEST]:
    """`data_md5` (DVC's hash of data.path, computed when the pipeline is built) keys the cache:
    changed data re-runs this step and everything downstream."""
    manifest = build_manifest(data)
    log_step_metadata({"data_path": data.path, "data_md5": data_md5, "format": data_format(data),
                       "num_images": len(manifest), "num_unreadable": int((~manifest["readable"]).sum()),
                       "num_eval": int((manifest["split"] == "eval").sum())})
    return manifest
