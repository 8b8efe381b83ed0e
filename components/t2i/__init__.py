"""Text-to-image distillation on Stable-Diffusion-layout latent teachers: caption datasets, the
built-in tiny SD setting (tokenizer, text encoder, VAE, UNet teacher), latent caches, export as a
stock diffusers StableDiffusionPipeline (full or LoRA students) and prompt-agreement evaluation.

The distillation itself is DMD2 (components/methods/dmd2.py) on a TextDenoiser
(components/diffusion/text_denoiser.py): prompts enter as ids into a table of cached prompt
embeddings, so every method, sampler and the trainer see the same interface as a class label."""
