"""Step: train the AutoencoderKL (32x32 -> 4x8x8 latents, scaling_factor from the latents' std)."""
from typing import Annotated

from zenml import step

from components.t2i.captions import CaptionDataset
from components.t2i.config import VAEConfig
from components.t2i.parts import SDParts
from components.t2i.run import stage_vae
from components.training import pin_threads
from steps.materializers import SDPartsMaterializer
from steps.metadata import log_step_metadata
from steps.names import T2I_VAE


@step(output_materializers={T2I_VAE: SDPartsMaterializer})
def t2i_vae(dataset: CaptionDataset, vae: VAEConfig, threads: int = 0) -> Annotated[SDParts, T2I_VAE]:
    pin_threads(threads)
    parts, report = stage_vae(vae, dataset)
    log_step_metadata(report)
    return parts
