"""Stable-Diffusion-layout parts: the project's own tokenizer, tiny text encoder, VAE and UNet built
from configs (nothing downloaded), a complete StableDiffusionPipeline around them, a user's SD 1.5 /
2.x folder loaded component by component, and prompts encoded exactly as the stock pipeline does.

Facts this relies on were checked with diffusers 0.42 / transformers 5.25 (../shared/T2I-NOTES.md,
re-checked by tests/components/test_t2i.py): the tokenizer's model_max_length must be set and must
not exceed the text encoder's positions; the text config's bos/eos/pad ids must come from the
tokenizer; the UNet's sample_size is the latent size; a self-trained VAE carries its
scaling_factor in its config."""
from __future__ import annotations

import json
import re
from pathlib import Path

import torch

from components.config import ConfigError

BOS, EOS = "<|startoftext|>", "<|endoftext|>"
SD_PARTS = ("unet", "vae", "text_encoder", "tokenizer", "scheduler")
# SD's DDPM training schedule ("scaled_linear" betas 0.00085 .. 0.012 over 1000 steps): alphas_cumprod[999]
# = 0.0047, not 0, so an epsilon-predicting student can still recover x0 at t = 999 (T2I-NOTES.md)
SD_SCHEDULE = dict(num_train_timesteps=1000, beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear",
                   clip_sample=False, set_alpha_to_one=False, steps_offset=1, prediction_type="epsilon")


# -- tokenizer ------------------------------------------------------------------------------------
def _bytes_to_unicode() -> dict[int, str]:
    """GPT-2 / CLIP byte-level BPE's table: every byte as a printable unicode character."""
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("\xa1"), ord("\xac") + 1)) + \
        list(range(ord("\xae"), ord("\xff") + 1))
    cs, n = bs[:], 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return dict(zip(bs, map(chr, cs)))


def caption_words(captions: list[str]) -> list[str]:
    """The distinct lower-case letter runs of the captions (CLIP lower-cases), sorted."""
    return sorted({w for c in captions for w in re.findall(r"[^\W\d_]+", c.lower())})


def learn_merges(words: list[str], table: dict[int, str]) -> list[tuple[str, str]]:
    """Byte-pair merges learned on the words (Sennrich et al. 2016): repeatedly merge the most frequent adjacent
    pair (ties: the smaller pair) until every word is one symbol. Replayed by a BPE encoder in this order, each
    word ends as one token; a hand-made chain per word would not (another word's merge can split it first)."""
    segs = []
    for w in words:
        pieces = [table[b] for b in w.encode("utf-8")]
        pieces[-1] += "</w>"
        segs.append(pieces)
    merges: list[tuple[str, str]] = []
    while True:
        counts: dict[tuple[str, str], int] = {}
        for seg in segs:
            for pair in zip(seg, seg[1:]):
                counts[pair] = counts.get(pair, 0) + 1
        if not counts:
            return merges
        best = min(counts, key=lambda p: (-counts[p], p))
        merges.append(best)
        for i, seg in enumerate(segs):
            out, j = [], 0
            while j < len(seg):
                if j + 1 < len(seg) and (seg[j], seg[j + 1]) == best:
                    out.append(seg[j] + seg[j + 1])
                    j += 2
                else:
                    out.append(seg[j])
                    j += 1
            segs[i] = out


def build_tokenizer(words: list[str], max_length: int, directory: str | Path):
    """A CLIPTokenizer whose vocabulary is the 512 byte symbols (with and without '</w>'), the merges learned on
    the caption words (so each word is one token; anything else falls back to byte pieces) and the two specials.
    Written to `directory` (vocab.json, merges.txt, then save_pretrained) and returned."""
    from transformers import CLIPTokenizer

    if max_length < 3:
        raise ConfigError(f"config field 'text.max_length': {max_length} leaves no room for a word (>= 3)")
    table = _bytes_to_unicode()
    symbols = list(table.values())
    vocab = {s: i for i, s in enumerate(symbols + [s + "</w>" for s in symbols])}
    merges = []
    for a, b in learn_merges(words, table):
        merges.append(f"{a} {b}")
        vocab.setdefault(a + b, len(vocab))
    for special in (BOS, EOS):
        vocab[special] = len(vocab)
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "vocab.json").write_text(json.dumps(vocab, ensure_ascii=False))
    (directory / "merges.txt").write_text("#version: 0.2\n" + "\n".join(merges) + "\n", encoding="utf-8")
    tok = CLIPTokenizer(str(directory / "vocab.json"), str(directory / "merges.txt"), model_max_length=max_length,
                        bos_token=BOS, eos_token=EOS, pad_token=EOS, unk_token=EOS)
    tok.save_pretrained(directory)
    return tok


# -- the tiny models -------------------------------------------------------------------------------
def build_text_encoder(tokenizer, hidden: int = 64, layers: int = 2, heads: int = 4, seed: int = 0):
    """A small CLIPTextModel (random, frozen: the prompts' words only need distinct embeddings) sized to the
    tokenizer: vocab, positions = model_max_length, and the tokenizer's bos/eos/pad ids."""
    from transformers import CLIPTextConfig, CLIPTextModel

    cfg = CLIPTextConfig(vocab_size=len(tokenizer), hidden_size=hidden, intermediate_size=2 * hidden,
                         num_hidden_layers=layers, num_attention_heads=heads, projection_dim=hidden,
                         max_position_embeddings=tokenizer.model_max_length, bos_token_id=tokenizer.bos_token_id,
                         eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return CLIPTextModel(cfg).eval().requires_grad_(False)


def build_vae(block_out_channels=(16, 32, 32), latent_channels: int = 4, resolution: int = 32,
              norm_num_groups: int = 8):
    """AutoencoderKL: 2^(len(blocks) - 1) downsampling (3 blocks: 32x32 -> 4x8x8 latents)."""
    from diffusers import AutoencoderKL

    n = len(block_out_channels)
    return AutoencoderKL(in_channels=3, out_channels=3, down_block_types=("DownEncoderBlock2D",) * n,
                         up_block_types=("UpDecoderBlock2D",) * n, block_out_channels=tuple(block_out_channels),
                         layers_per_block=1, latent_channels=latent_channels, norm_num_groups=norm_num_groups,
                         sample_size=resolution)


def build_unet(latent_size: int, latent_channels: int, cross_attention_dim: int,
               block_out_channels=(32, 64), layers_per_block: int = 1, norm_num_groups: int = 8,
               attention_head_dim: int = 8):
    """UNet2DConditionModel: cross-attention to the prompt embeddings on every level below the first
    (SD's layout: CrossAttnDownBlock2D ... UpBlock2D); sample_size is the latent size."""
    from diffusers import UNet2DConditionModel

    n = len(block_out_channels)
    down = ("DownBlock2D",) + ("CrossAttnDownBlock2D",) * (n - 1)
    up = ("CrossAttnUpBlock2D",) * (n - 1) + ("UpBlock2D",)
    return UNet2DConditionModel(sample_size=latent_size, in_channels=latent_channels, out_channels=latent_channels,
                                block_out_channels=tuple(block_out_channels), layers_per_block=layers_per_block,
                                down_block_types=down, up_block_types=up, cross_attention_dim=cross_attention_dim,
                                norm_num_groups=norm_num_groups, attention_head_dim=attention_head_dim)


def assemble(unet, vae, text_encoder, tokenizer, scheduler=None):
    """A complete StableDiffusionPipeline (no safety checker) from the parts; SD's DDPM schedule by default."""
    from diffusers import DDIMScheduler, StableDiffusionPipeline

    scheduler = scheduler if scheduler is not None else DDIMScheduler(**SD_SCHEDULE)
    return StableDiffusionPipeline(vae=vae, text_encoder=text_encoder, tokenizer=tokenizer, unet=unet,
                                   scheduler=scheduler, safety_checker=None, feature_extractor=None,
                                   requires_safety_checker=False)


# -- a user's folder ---------------------------------------------------------------------------------
def check_sd_folder(path: str | Path, what: str = "teacher.path") -> Path:
    """The SD 1.5 / 2.x layout: unet/, vae/, text_encoder/, tokenizer/, scheduler/ (ConfigError naming the
    first missing part). SDXL (text_encoder_2/, added time ids) is refused: not supported yet."""
    path = Path(path)
    if not path.is_dir():
        raise ConfigError(f"{what} '{path}': no such folder (expected a Stable Diffusion folder with "
                          f"{', '.join(p + '/' for p in SD_PARTS)})")
    if (path / "text_encoder_2").is_dir():
        raise ConfigError(f"{what} '{path}': an SDXL folder (text_encoder_2/); only the SD 1.5 / 2.x layout "
                          "(one text encoder) is supported")
    for part in SD_PARTS:
        if not (path / part).is_dir():
            raise ConfigError(f"{what} '{path}': missing {part}/ (a Stable Diffusion folder has "
                              f"{', '.join(p + '/' for p in SD_PARTS)})")
    return path


def check_sd_configs(path: str | Path, what: str = "teacher.path") -> Path:
    """check_sd_folder, then what the parts' JSON configs say, before anything loads: the tokenizer's
    model_max_length against the text encoder's positions, the UNet's cross-attention width against the text
    encoder's, the scheduler's prediction type."""
    path = check_sd_folder(path, what)

    def read(rel):
        f = path / rel
        try:
            return json.loads(f.read_text())
        except (OSError, ValueError) as exc:
            raise ConfigError(f"{what} '{f}': cannot read ({type(exc).__name__}: {str(exc).splitlines()[0]})") from None

    text, unet, sched = read("text_encoder/config.json"), read("unet/config.json"), read("scheduler/scheduler_config.json")
    tok = read("tokenizer/tokenizer_config.json") if (path / "tokenizer/tokenizer_config.json").is_file() else {}
    positions, length = text.get("max_position_embeddings"), tok.get("model_max_length")
    if positions is not None and length is not None and length > positions:
        raise ConfigError(f"{what} '{path / 'tokenizer'}': model_max_length {length} exceeds the text encoder's "
                          f"max_position_embeddings {positions}")
    if unet.get("cross_attention_dim") not in (None, text.get("hidden_size")):
        raise ConfigError(f"{what} '{path / 'unet'}': cross_attention_dim {unet.get('cross_attention_dim')} != the "
                          f"text encoder's hidden_size {text.get('hidden_size')}")
    if sched.get("rescale_betas_zero_snr"):
        raise ConfigError(f"{what} '{path / 'scheduler'}': rescale_betas_zero_snr is true (abar = 0 at the last "
                          "timestep: no finite noise level there); a zero-terminal-SNR teacher is not supported yet")
    if sched.get("prediction_type", "epsilon") not in ("epsilon", "v_prediction"):
        raise ConfigError(f"{what} '{path / 'scheduler'}': prediction_type {sched['prediction_type']!r}; expected "
                          "epsilon or v_prediction")
    return path


def load_sd_folder(path: str | Path, what: str = "teacher.path"):
    """A local SD-layout folder -> StableDiffusionPipeline, component by component, offline, float32."""
    from diffusers import AutoencoderKL, DDIMScheduler, UNet2DConditionModel
    from transformers import CLIPTextModel, CLIPTokenizer

    path = check_sd_configs(path, what)
    try:
        tokenizer = CLIPTokenizer.from_pretrained(path / "tokenizer", local_files_only=True)
        text_encoder = CLIPTextModel.from_pretrained(path / "text_encoder", local_files_only=True)
        vae = AutoencoderKL.from_pretrained(path / "vae", local_files_only=True)
        unet = UNet2DConditionModel.from_pretrained(path / "unet", local_files_only=True)
        scheduler = DDIMScheduler.from_pretrained(path / "scheduler", local_files_only=True)
    except (OSError, ValueError, KeyError) as exc:
        raise ConfigError(f"{what} '{path}': cannot load ({str(exc).splitlines()[0]})") from None
    positions = text_encoder.config.max_position_embeddings
    if tokenizer.model_max_length > positions:
        raise ConfigError(f"{what} '{path / 'tokenizer'}': model_max_length {tokenizer.model_max_length} exceeds the "
                          f"text encoder's max_position_embeddings {positions}")
    if unet.config.cross_attention_dim != text_encoder.config.hidden_size:
        raise ConfigError(f"{what} '{path / 'unet'}': cross_attention_dim {unet.config.cross_attention_dim} != the "
                          f"text encoder's hidden_size {text_encoder.config.hidden_size}")
    if scheduler.config.prediction_type not in ("epsilon", "v_prediction"):
        raise ConfigError(f"{what} '{path / 'scheduler'}': prediction_type {scheduler.config.prediction_type!r}; "
                          "expected epsilon or v_prediction")
    pipe = assemble(unet.eval(), vae.eval(), text_encoder.eval().requires_grad_(False), tokenizer, scheduler)
    pipe.set_progress_bar_config(disable=True)
    return pipe


@torch.no_grad()
def encode_prompts(tokenizer, text_encoder, prompts: list[str], batch_size: int = 256) -> torch.Tensor:
    """(len(prompts) + 1, L, D): each prompt's embedding as StableDiffusionPipeline.encode_prompt makes it
    (padding to model_max_length, truncation, the attention mask only where the text config asks for one,
    the last hidden state), then the empty prompt - the unconditional embedding of the stock pipeline's
    classifier-free guidance. tests/components/test_t2i.py checks equality with encode_prompt."""
    rows, texts = [], list(prompts) + [""]
    use_mask = bool(getattr(text_encoder.config, "use_attention_mask", False))
    for i in range(0, len(texts), batch_size):
        tok = tokenizer(texts[i:i + batch_size], padding="max_length", max_length=tokenizer.model_max_length,
                        truncation=True, return_tensors="pt")
        mask = tok.attention_mask if use_mask else None
        rows.append(text_encoder(tok.input_ids, attention_mask=mask)[0].float())
    return torch.cat(rows)


__all__ = ["SD_PARTS", "SD_SCHEDULE", "assemble", "build_text_encoder", "build_tokenizer", "build_unet",
           "build_vae", "caption_words", "check_sd_configs", "check_sd_folder", "encode_prompts", "load_sd_folder"]
