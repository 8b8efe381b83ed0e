"""Step: the project's CLIP tokenizer (from the captions' words) and a small frozen CLIPTextModel."""
from typing import Annotated

from zenml import step

from components.t2i.captions import CaptionDataset
from components.t2i.config import TextConfig
from components.t2i.parts import SDParts
from components.t2i.run import stage_text
from steps.materializers import SDPartsMaterializer
from steps.names import T2I_TEXT


@step(output_materializers={T2I_TEXT: SDPartsMaterializer})
def t2i_text_encoder(dataset: CaptionDataset, text: TextConfig) -> Annotated[SDParts, T2I_TEXT]:
    return stage_text(text, dataset)
