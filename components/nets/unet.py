"""Network builders: a class-conditional diffusers UNet2DModel with a null class for CFG."""
from __future__ import annotations

from typing import Sequence

from diffusers import UNet2DModel


def build_unet(sample_size: int, in_channels: int, num_classes: int,
               block_out_channels: Sequence[int] = (32, 64), layers_per_block: int = 1,
               norm_num_groups: int = 8) -> UNet2DModel:
    """UNet2DModel without attention; class embedding index `num_classes` is the null class."""
    n = len(block_out_channels)
    return UNet2DModel(
        sample_size=sample_size, in_channels=in_channels, out_channels=in_channels,
        block_out_channels=tuple(block_out_channels), layers_per_block=layers_per_block,
        down_block_types=("DownBlock2D",) * n, up_block_types=("UpBlock2D",) * n,
        norm_num_groups=norm_num_groups, num_class_embeds=num_classes + 1,
        time_embedding_type="positional", flip_sin_to_cos=True, freq_shift=0, add_attention=False,
    )


def unet_bottleneck(unet: UNet2DModel, sample, timestep, class_labels):
    """The first half of UNet2DModel.forward: embeddings -> conv_in -> down blocks -> mid block.
    Returns the bottleneck feature map (B, C_mid, h, w) (DMD2's discriminator reads these)."""
    import torch

    t = timestep if torch.is_tensor(timestep) else torch.tensor([timestep], device=sample.device)
    t = (t[None] if t.ndim == 0 else t).to(sample.device) * torch.ones(sample.shape[0], device=sample.device)
    emb = unet.time_embedding(unet.time_proj(t).to(dtype=unet.dtype))
    if unet.class_embedding is not None:
        emb = emb + unet.class_embedding(class_labels).to(dtype=unet.dtype)
    h = unet.conv_in(sample)
    for block in unet.down_blocks:
        h, _ = block(hidden_states=h, temb=emb)
    return unet.mid_block(h, emb) if unet.mid_block is not None else h
