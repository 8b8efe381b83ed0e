"""Step: the caption dataset - built-in captioned Fashion-MNIST, or an image folder with metadata.jsonl
validated by Great Expectations (a failed suite stops the run with one line naming the files)."""
from typing import Annotated

from zenml import step

from components.t2i.captions import CaptionDataset
from components.t2i.config import CaptionDataConfig
from components.t2i.run import stage_captions
from steps.materializers import CaptionDatasetMaterializer
from steps.metadata import log_step_metadata
from steps.names import T2I_DATASET


@step(output_materializers={T2I_DATASET: CaptionDatasetMaterializer})
def t2i_captions(data: CaptionDataConfig) -> Annotated[CaptionDataset, T2I_DATASET]:
    dataset = stage_captions(data)
    log_step_metadata({"num_images": len(dataset), "num_eval": int(dataset.is_eval.sum()),
                       "prompts": len(dataset.prompts()), "fingerprint": dataset.fingerprint()})
    return dataset
