"""Step: the latent cache - the images through the VAE and the distinct captions through the text encoder,
once per data, VAE and text-encoder version (ZenML's cache key is exactly those inputs)."""
from typing import Annotated

from zenml import step

from components.t2i.captions import CaptionDataset
from components.t2i.parts import LatentCache, SDParts
from components.t2i.run import stage_latents
from components.training import pin_threads
from steps.materializers import LatentCacheMaterializer
from steps.metadata import log_step_metadata
from steps.names import T2I_LATENTS


@step(output_materializers={T2I_LATENTS: LatentCacheMaterializer})
def t2i_latents(dataset: CaptionDataset, text: SDParts, vae: SDParts, threads: int = 0) -> Annotated[
        LatentCache, T2I_LATENTS]:
    """`text` gives the tokenizer and text encoder, `vae` the VAE (a user's folder gives both)."""
    pin_threads(threads)
    cache = stage_latents(dataset, text.with_parts(vae=vae.vae))
    log_step_metadata({**cache.meta, "latent_shape": str(tuple(cache.latents.shape[1:])), "prompts": len(cache.prompts)})
    return cache
