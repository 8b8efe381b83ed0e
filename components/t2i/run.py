"""The text-to-image run: its typed config (params_t2i.yaml; the ZenML t2i_pipeline and `dvc repro
export_t2i` read the same file) and one function per stage. The ZenML steps (steps/t2i.py) and the DVC
stages (components/t2i/stages.py) are thin wrappers over these, so both routes compute the same thing.

    captions -> text parts (tokenizer + text encoder) -> VAE -> latent cache -> teacher
             -> feature net -> distill (DMD2, full or LoRA) -> evaluate -> gate -> export
A user's SD folder (teacher.path) replaces the text parts, the VAE and the teacher."""
from __future__ import annotations

import resource
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Optional

import yaml
from pydantic import BaseModel, ConfigDict, Field

from components.config import ConfigError, GateConfig, parse_section
from components.diffusion.denoiser import state_hash
from components.methods.dmd2 import DMD2, DMD2Config
from components.t2i.captions import CaptionDataset
from components.t2i.config import CaptionDataConfig, LatentTeacherConfig, T2IEvalConfig, TextConfig, VAEConfig
from components.t2i.parts import LatentCache, SDParts, build_cache

PARAMS_FILE = "params_t2i.yaml"
SECTIONS = ("data", "text", "vae", "teacher", "distill", "evaluation", "gate", "export", "compute")
# DMD2's text-to-image defaults: the SD 1.5 recipe's real-score CFG 1.75 (T2I-NOTES.md), a 1-step student at 999
T2I_DISTILL = {"method": "dmd2", "guidance_scale": 1.75, "denoising_timesteps": [999], "iterations": 2400,
               "batch_size": 64, "fid_every": 0, "checkpoint_every": 0, "log_every": 25}


class T2IExportConfig(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)
    path: Optional[str] = None             # also copy the exported folder here (e.g. models/t2i_student)
    overwrite: bool = False                # replace a non-empty path; refused otherwise


class T2IComputeConfig(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)
    threads: int = Field(2, ge=0)          # torch CPU threads of every stage (0: torch's default)


class T2IRunConfig(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)
    data: CaptionDataConfig = CaptionDataConfig()
    text: TextConfig = TextConfig()
    vae: VAEConfig = VAEConfig()
    teacher: LatentTeacherConfig = LatentTeacherConfig()
    distill: DMD2Config = DMD2Config(**T2I_DISTILL)
    evaluation: T2IEvalConfig = T2IEvalConfig()
    gate: GateConfig = GateConfig()
    export: T2IExportConfig = T2IExportConfig()
    compute: T2IComputeConfig = T2IComputeConfig()

    def as_dict(self) -> dict:
        return self.model_dump(mode="json")


def resolve_t2i(values: dict | None) -> T2IRunConfig:
    """Sections -> T2IRunConfig with one-line errors naming the field; cross-field checks."""
    values = dict(values or {})
    unknown = sorted(set(values) - set(SECTIONS))
    if unknown:
        raise ConfigError(f"config: unknown section {unknown[0]!r} (valid: {', '.join(SECTIONS)})")
    models = {"data": CaptionDataConfig, "text": TextConfig, "vae": VAEConfig, "teacher": LatentTeacherConfig,
              "evaluation": T2IEvalConfig, "gate": GateConfig, "export": T2IExportConfig, "compute": T2IComputeConfig}
    out: dict[str, Any] = {k: parse_section(m, values.get(k), k) for k, m in models.items()}
    distill = {**T2I_DISTILL, **(values.get("distill") or {})}
    if distill.get("method", "dmd2") != "dmd2":
        raise ConfigError(f"config field 'distill.method': {distill['method']!r}; the text-to-image route distils with "
                          "dmd2 (full or LoRA students)")
    out["distill"] = parse_section(DMD2Config, distill, "distill")
    cfg = T2IRunConfig(**out)
    if cfg.data.source == "folder" and not cfg.data.path:
        raise ConfigError("config field 'data.path': data.source 'folder' needs the image folder with metadata.jsonl")
    if cfg.teacher.path is not None:                   # the folder's layout and configs, before any step runs
        from components.t2i.sd import check_sd_configs

        check_sd_configs(cfg.teacher.path)
    if cfg.data.resolution % 8:
        raise ConfigError(f"config field 'data.resolution': {cfg.data.resolution} must be a multiple of 8 "
                          "(StableDiffusionPipeline's height and width)")
    return cfg


def load_t2i_params(path: str | Path | None = PARAMS_FILE, **overrides: Any) -> T2IRunConfig:
    """params_t2i.yaml (if it exists) with per-section overrides merged on top."""
    base: dict = {}
    if path is not None and Path(path).is_file():
        try:
            base = yaml.safe_load(Path(path).read_text()) or {}
        except yaml.YAMLError as exc:
            raise ConfigError(f"'{path}': not valid YAML ({str(exc).splitlines()[0]})") from None
        if not isinstance(base, dict):
            raise ConfigError(f"'{path}': expected a mapping of sections")
    elif path is not None and path != PARAMS_FILE:
        raise ConfigError(f"'{path}': no such parameter file")
    for k, v in overrides.items():
        if v:
            base[k] = {**(base.get(k) or {}), **v}
    return resolve_t2i(base)


# -- stages --------------------------------------------------------------------------------------------
def stage_captions(cfg: CaptionDataConfig) -> CaptionDataset:
    """The caption dataset: the built-in captioned Fashion-MNIST, or a validated caption folder."""
    if cfg.source == "builtin":
        from components.t2i.builtin import fashion_captions

        return fashion_captions("data/fashion_mnist.npz", cfg.train_per_class, cfg.eval_per_class, cfg.seed)
    from components.t2i.caption_folder import load_caption_folder

    return load_caption_folder(cfg.path, cfg.resolution, cfg.eval_fraction, cfg.seed)


def stage_text(cfg: TextConfig, data: CaptionDataset) -> SDParts:
    """The project's tokenizer (from the captions' words) and a small frozen CLIPTextModel."""
    from components.t2i.sd import build_text_encoder, build_tokenizer, caption_words

    with tempfile.TemporaryDirectory() as tmp:
        tok = build_tokenizer(caption_words(data.captions), cfg.max_length, tmp)
        from transformers import CLIPTokenizer

        tok = CLIPTokenizer.from_pretrained(tmp, local_files_only=True)     # as a stock pipeline reloads it
    enc = build_text_encoder(tok, cfg.hidden, cfg.layers, cfg.heads, cfg.seed)
    return SDParts(tokenizer=tok, text_encoder=enc, meta={"vocabulary": len(tok)})


def stage_vae(cfg: VAEConfig, data: CaptionDataset, progress: bool = True) -> tuple[SDParts, dict]:
    from components.t2i.train import train_vae

    x = data.images[~data.is_eval]
    vae, report = train_vae(cfg, x, data.shape[-1], progress)
    return SDParts(vae=vae, meta={"vae": report}), report


def stage_user_teacher(path: str) -> SDParts:
    """A user's SD 1.5 / 2.x folder, component by component, offline."""
    from components.t2i.sd import load_sd_folder

    return SDParts.from_pipeline(load_sd_folder(path), {"loaded_from": str(path)})


def stage_latents(data: CaptionDataset, parts: SDParts) -> LatentCache:
    res = data.shape[-1]
    factor = 2 ** (len(parts.vae.config.block_out_channels) - 1)
    if parts.unet is not None and parts.unet.config.sample_size * factor != res:
        print(f"note: the teacher's UNet sample_size {parts.unet.config.sample_size} x {factor} != the data's "
              f"{res}x{res}", file=sys.stderr)
    return build_cache(data, parts)


def stage_teacher(cfg: LatentTeacherConfig, cache: LatentCache, parts: SDParts,
                  progress: bool = True) -> tuple[SDParts, dict]:
    """Train the UNet teacher on the cached latents (built-in), or keep the user's (teacher.path)."""
    if cfg.path is not None:
        return parts, {"loaded_from": cfg.path, "teacher_sha256": state_hash(parts.unet)}
    from diffusers import DDIMScheduler

    from components.t2i.sd import SD_SCHEDULE
    from components.t2i.train import train_latent_teacher

    t0 = time.perf_counter()
    unet, report = train_latent_teacher(cfg, cache.latents[~cache.is_eval], cache.prompt_ids[~cache.is_eval],
                                        cache.embeddings, progress)
    report = {**report, "train_seconds": time.perf_counter() - t0, "teacher_sha256": state_hash(unet)}
    full = parts.with_parts(unet=unet, scheduler=DDIMScheduler(**SD_SCHEDULE))
    full.meta = {**parts.meta, "teacher": report}
    return full, report


def peak_rss_mb() -> float:
    """This process's peak resident memory so far: Linux's VmHWM of /proc/self/status (per address space, so a
    freshly started child reports its own peak; getrusage's ru_maxrss survives exec and would report the parent's
    peak at fork), else ru_maxrss."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def stage_distill(cfg: DMD2Config, teacher: SDParts, cache: LatentCache, sampler_steps: int = 25,
                  progress: bool = True):
    """DMD2 on the latent teacher (prompt ids -> cached embeddings). -> (method, history, seconds)."""
    from components.methods.trainer import distill
    from components.t2i.latent import teacher_denoiser

    den = teacher_denoiser(teacher.pipeline(), cache.table(), sampler_steps)
    method = DMD2(den, cfg, cache.dataset())
    t0 = time.perf_counter()
    history = distill(method, progress=progress)
    return method, history, time.perf_counter() - t0


def evaluate_models(teacher: SDParts, students: dict[str, Any], cache: LatentCache, data: CaptionDataset, net,
                    cfg: LatentTeacherConfig, ev: T2IEvalConfig, teacher_metrics: dict | None = None) -> dict:
    """Teacher with CFG at its default steps, each student (name -> TextDenoiser or saved folder), the VAE floor and
    the real floor, all on the same held-out prompts, seed and feature net."""
    from components.t2i.evaluate import PromptScorer
    from components.t2i.latent import generate_latents, nfe, teacher_denoiser
    from components.t2i.parts import load_student
    from components.t2i.train import decode_latents

    scorer = PromptScorer(data, net, ev.num_samples)
    t_den = teacher_denoiser(teacher.pipeline(), cache.table(), cfg.sampler_steps)
    out: dict = {"num_samples": len(scorer.prompt_ids), "feature_net": net.name, "seed": ev.seed}
    if teacher_metrics is None:
        out["real"] = scorer.real_floor(ev.seed)
        out["vae_floor"] = scorer.vae_floor(teacher.vae)
        lat, sec = generate_latents(t_den, scorer.prompt_ids, ev.seed, ev.batch_size, cfg.guidance_scale)
        out["teacher"] = {**scorer.score(decode_latents(teacher.vae, lat), "teacher"), "sampling_seconds": sec,
                          "nfe": nfe(t_den, cfg.guidance_scale), "guidance_scale": cfg.guidance_scale}
    else:
        out.update({k: teacher_metrics[k] for k in ("real", "vae_floor", "teacher")})
    for name, s in students.items():
        den = s if not isinstance(s, (str, Path)) else load_student(s, cache.table(), t_den)
        lat, sec = generate_latents(den, scorer.prompt_ids, ev.seed, ev.batch_size)
        out[name] = {**scorer.score(decode_latents(teacher.vae, lat), name), "sampling_seconds": sec,
                     "nfe": nfe(den)}
    return out


def samples_picture(teacher: SDParts, students: dict[str, Any], cache: LatentCache, data: CaptionDataset,
                    cfg: LatentTeacherConfig, n: int = 10, seed: int = 0):
    """Rows: real held-out images, the teacher (CFG), each student; columns: the first n held-out captions, the
    same noise in every row (a PIL image for the dashboard and the docs)."""
    import torch

    from components.t2i.latent import generate_latents, teacher_denoiser
    from components.t2i.parts import load_student
    from components.t2i.train import decode_latents
    from components.viz import sample_grid

    ev = torch.nonzero(data.is_eval).flatten()[:n]
    ids = data.prompt_ids()[ev]
    t_den = teacher_denoiser(teacher.pipeline(), cache.table(), cfg.sampler_steps)
    rows = [data.images[ev], decode_latents(teacher.vae, generate_latents(t_den, ids, seed,
                                                                          guidance_scale=cfg.guidance_scale)[0])]
    for s in students.values():
        den = s if not isinstance(s, (str, Path)) else load_student(s, cache.table(), t_den)
        rows.append(decode_latents(teacher.vae, generate_latents(den, ids, seed)[0]))
    labels = torch.arange(len(rows)).repeat_interleave(len(ids))
    return sample_grid(torch.cat(rows), labels, len(rows), per_class=len(ids), cell=64)


def gate_metrics(metrics: dict, student: str = "student") -> dict:
    """The gate's inputs (components/gate.py) from evaluate_models' output: prompt-class agreement is the
    class accuracy, the real images' own accuracy its scale."""
    out = {"student_fid": metrics[student]["fid"], "teacher_fid": metrics["teacher"]["fid"],
           "real_floor_fid": metrics["real"]["fid"], "num_samples": metrics["num_samples"]}
    if "class_agreement" in metrics[student]:
        out.update(student_class_acc=metrics[student]["class_agreement"],
                   real_class_acc=metrics["real"]["class_accuracy"])
    return out


def decide_gate(cfg: GateConfig, metrics: dict, student: str = "student"):
    """components.gate.decide on the student; captions that state no class (a user's folder) skip the class
    rules, and the decision says so."""
    from components.gate import decide

    m = gate_metrics(metrics, student)
    skipped = None
    if "student_class_acc" not in m and (cfg.class_acc_min is not None or cfg.class_acc_min_real is not None):
        cfg = cfg.model_copy(update={"class_acc_min": None, "class_acc_min_real": None})
        skipped = "class-accuracy rules skipped: the captions state no class to check a generated image against"
    decision = decide(cfg, m)
    if skipped:
        decision.checks.append({"rule": "class accuracy", "value": "n/a", "threshold": skipped, "passed": True})
    return decision


__all__ = ["PARAMS_FILE", "T2IRunConfig", "evaluate_models", "gate_metrics", "load_t2i_params", "peak_rss_mb",
           "decide_gate", "resolve_t2i", "samples_picture", "stage_captions", "stage_distill", "stage_latents", "stage_teacher", "stage_text",
           "stage_user_teacher", "stage_vae"]
