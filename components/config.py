"""Typed configuration for every stage, with one-line errors that name the field.

Each section is a pydantic model whose fields carry a short "why" comment; the defaults are the
embedded default's values, the same as params.yaml (tests/components/test_config.py fails when
they drift). `parse_section` turns a plain dict (from YAML) into the model and converts
pydantic's multi-line report into a single `ConfigError` line such as
``config field 'teacher.train_steps': expected an integer``.

A leaf module: it imports no other project module. Checks across sections and against the
filesystem (params.yaml, the data, the gate against the data) live in components/params.py.
"""
from __future__ import annotations

from typing import Any, Literal, Optional, Type, TypeVar

from pydantic import BaseModel, ConfigDict, Field, ValidationError


class ConfigError(ValueError):
    """A bad configuration value or input file; the message is one line naming the culprit."""


class Section(BaseModel):
    """Base of every config section: unknown keys are errors, values are validated strictly."""

    model_config = ConfigDict(extra="forbid", strict=False, frozen=True)


class DataConfig(Section):
    path: str = "data/digits.npz"          # the dataset under data/ (tracked by data/<name>.dvc): an .npz or an image folder
    format: Literal["auto", "npz", "folder"] = "auto"   # auto: a folder is an image folder, *.npz is npz
    classes: Optional[tuple[str, ...]] = None  # declared classes (label i = classes[i]); None: folder names / npz labels
    resolution: Optional[int] = Field(None, ge=4, le=512)  # None: keep the source size (all must share one); else resize
    channels: Optional[Literal[1, 3]] = None   # None: keep the source's (all must share one); else convert
    eval_fraction: float = Field(0.25, gt=0.0, lt=1.0)  # held out of ALL training (teacher, features, student)
    split_seed: int = 0                    # seeded, class-stratified split: same seed, same split
    split: Literal["auto", "seeded", "source"] = "auto"  # auto: the source's own split when it has one (an npz's
                                           # is_eval, e.g. Fashion-MNIST's test set), else the seeded one
    min_per_class: int = Field(10, ge=1)   # validation: every declared class needs at least this many images


class TeacherConfig(Section):
    path: Optional[str] = None             # a diffusers teacher folder to load; None trains one
    train_steps: int = Field(1000, ge=1)   # 8x8 digits: class accuracy of samples > 0.9 by ~1000 steps
    batch_size: int = Field(128, ge=1)
    lr: float = Field(1e-3, gt=0)          # Adam; small UNet, small data
    ema_decay: float = Field(0.999, ge=0, lt=1)  # the EMA weights are the teacher
    label_dropout: float = Field(0.1, ge=0, lt=1)  # drop to the null class -> classifier-free guidance
    block_out_channels: tuple[int, ...] = (32, 64)  # UNet width per resolution level
    layers_per_block: int = Field(1, ge=1)
    norm_num_groups: int = Field(8, ge=1)
    sigma_data: float = Field(0.5, gt=0)   # EDM: std of the data, pixels in [-1, 1]
    sigma_min: float = Field(0.002, gt=0)  # EDM / consistency-model boundary
    sigma_max: float = Field(80.0, gt=0)   # EDM: x_T ~ N(0, sigma_max^2)
    P_mean: float = -1.2                   # EDM training noise: ln(sigma) ~ N(P_mean, P_std^2)
    P_std: float = Field(1.2, gt=0)
    sampler_steps: int = Field(18, ge=1)   # Heun on Karras sigmas: 2*steps-1 NFE (18 -> 35)
    rho: float = Field(7.0, gt=0)          # EDM time discretisation exponent
    seed: int = 0


class PairsConfig(Section):
    """Teacher noise -> image pairs (the teacher's deterministic ODE sampler): DMD's regression
    loss and the one-step ODE-regression warm start (components/diffusion/pairs.py)."""

    num_pairs: int = Field(2000, ge=1)     # pairs in all (balanced over classes)
    shard_size: int = Field(500, ge=1)     # pairs per shard file; finished shards survive a crash
    batch_size: int = Field(250, ge=1)     # teacher sampling batch
    seed: int = 0                          # noise of shard i comes from (seed, i): shards are independent
    work_dir: str = ".cache/pairs"         # ZenML step: shards go to <work_dir>/<key>/ first (a crashed step
                                           # resumes there); DVC writes them straight into artifacts/pairs


class FeatureNetConfig(Section):
    dim: int = Field(64, ge=2)             # feature size for FID (d small vs. eval-split size)
    train_steps: int = Field(600, ge=1)    # ~10 s on 2 CPU cores for digits
    batch_size: int = Field(128, ge=1)
    lr: float = Field(2e-3, gt=0)
    shift: int = Field(0, ge=0)            # augmentation: random translation by up to this many pixels (background
                                           # padded), so features describe shapes, not the train images' exact pixels
    noise: float = Field(0.0, ge=0)        # augmentation: std of Gaussian noise added to the pixels ([-1, 1] scale)
    seed: int = 0


class ExtractorConfig(Section):
    """The evaluation keys that decide the FID features: the reference features' (and the checkpoint
    FIDs') cache key, so other evaluation settings never re-run them."""

    feature_net: Literal["dataset", "inception"] = "dataset"  # FID/KID features: the dataset feature net
                                           # (offline) or clean-fid's InceptionV3 (needs its weights file)
    inception_dir: Optional[str] = None    # folder holding inception-2015-12-05.pt (None: /tmp, clean-fid's)
    inception_download: bool = False       # let clean-fid download the weights (needs the internet)


class EvalConfig(Section):
    num_samples: int = Field(5000, ge=10)  # images per FID, every FID of a run: teacher, student, checkpoints, the
                                           # FID-vs-NFE points and the real floor (balanced over classes)
    batch_size: int = Field(500, ge=1)
    seed: int = 0                          # sampling seed of the pipeline's evaluate step
    grid_per_class: int = Field(8, ge=1)   # columns of the sample grid picture
    feature_net: Literal["dataset", "inception"] = "dataset"  # as ExtractorConfig (these three keys are its)
    inception_dir: Optional[str] = None
    inception_download: bool = False
    kid_subsets: int = Field(100, ge=1)    # KID: mean over this many random subsets
    latency_repeats: int = Field(20, ge=1)  # p50 per-image latency over this many batch-1 generations
    agreement_samples: int = Field(500, ge=1)  # student vs teacher on the same noise and labels
    teacher_nfe_steps: tuple[int, ...] = (2, 4, 8)  # extra teacher Heun step counts for the FID-vs-NFE curve
    # a guided chain (guided_pipeline): FID and class accuracy at each guidance strength w (CFG scale 1 + w) of the
    # CFG teacher (2 NFE per step) and of each student of the chain (1 NFE per step)
    guidance_w: tuple[float, ...] = Field((0.0, 0.5, 1.0, 2.0), min_length=1)

    def extractor(self) -> ExtractorConfig:
        """The keys of this section that change the FID features."""
        return ExtractorConfig(**{k: getattr(self, k) for k in ExtractorConfig.model_fields})


class DistillConfig(Section):
    """Fields every method shares; a method's Config subclasses this."""

    method: str = "dmd2"                   # registry name (components.methods.METHODS)
    iterations: int = Field(900, ge=1)     # training iterations (every one a critic turn); digits: < 6 min on 2 CPU cores
    batch_size: int = Field(64, ge=1)      # images per iteration
    seed: int = 0                          # one seed -> one result (data order, noise, timesteps)
    device: str = "auto"                   # 'auto' = CUDA when present, else CPU
    log_every: int = Field(50, ge=1)       # history / progress-bar granularity (iterations)
    fid_every: int = Field(300, ge=0)      # FID of the student at checkpoints every this many iterations (a
                                           # multiple of log_every; 0: off) - in the history, W&B and plots; on
                                           # evaluation.num_samples samples, like every FID of a run
    precision: Literal["auto", "fp32", "bf16"] = "auto"  # auto: bf16 autocast on a CUDA device with bf16, else fp32
    max_bad_steps: int = Field(5, ge=1)    # NaN/inf guard: a bad step is skipped and logged; this many in a row stop
    checkpoint_every: int = Field(300, ge=0)  # save everything needed to resume every this many iterations (0: off;
                                           # a multiple of log_every); always also at the last iteration
    checkpoint_dir: str = "checkpoints"    # runs live in <dir>/<method>-<run key>/step-XXXXXXXX/ (safetensors + JSON)
    resume: str = "auto"                   # auto: continue this run's latest checkpoint (same config, teacher,
                                           # code); never: start over; or a checkpoint folder to continue from


class GateConfig(Section):
    fid_max: Optional[float] = Field(None, gt=0)          # absolute ceiling on the student's FID (eval split)
    fid_ratio_max: Optional[float] = Field(None, gt=0)    # student FID / teacher FID at most this
    excess_fid_ratio_max: Optional[float] = Field(5.0, gt=0)  # (student FID - floor) / (teacher FID - floor) at
                                          # most this: how much further above the real-vs-real floor than the teacher
                                          # (one sampling seed each: docs/dmd2.md#quality-gate says why 5)
    class_acc_min: Optional[float] = Field(None, ge=0, le=1)  # absolute floor on the student's class accuracy
                                          # (None: off)
    class_acc_min_real: Optional[float] = Field(0.9, gt=0, le=1)  # floor as a fraction of the class accuracy of
                                          # the real eval images on the same feature net (None: off): one value
                                          # fits every dataset (results.md gives each dataset's real accuracy)
    beat_production: bool = True            # FID no worse than the production model's on the same references
    promote_to: Literal["staging", "production"] = "staging"  # stage of the ZenML model version on a pass


class ExportConfig(Section):
    path: Optional[str] = None              # also copy the exported folder here (the artifact is always stored)
    overwrite: bool = False                 # replace a non-empty path; refused otherwise
    onnx: bool = True                       # also onnx/model.onnx for a one-step student (the slow part of an export)


class ComputeConfig(Section):
    """How every stage runs on this machine (not what it computes)."""

    threads: int = Field(2, ge=0)          # torch intra-op CPU threads in every stage and step (0: torch's default,
                                           # one per core). Float sums run in a thread-count-dependent order: the
                                           # same params give the same bytes only at the same count (docs/dvc.md)


class TrackingConfig(Section):
    """Weights & Biases logging of each pipeline run (components/tracking.py)."""

    wandb: Literal["offline", "online", "disabled"] = "offline"  # WANDB_MODE in the environment wins
    project: str = "fewstep"
    entity: Optional[str] = None            # W&B team/user (online)
    dir: Optional[str] = None               # parent of wandb/ (None: WANDB_DIR, else the working directory)


S = TypeVar("S", bound=BaseModel)


def _describe(err: dict) -> str:
    kind = err.get("type", "")
    expected = {
        "int_parsing": "expected an integer", "int_type": "expected an integer",
        "int_from_float": "expected an integer",
        "float_parsing": "expected a number", "float_type": "expected a number",
        "bool_parsing": "expected true/false", "bool_type": "expected true/false",
        "string_type": "expected a string", "tuple_type": "expected a list",
        "extra_forbidden": "unknown key (check spelling)",
        "missing": "required",
    }.get(kind, err.get("msg", "invalid value"))
    if "input" in err and kind not in ("missing",):
        return f"{expected} (got {err['input']!r})"
    return expected


def parse_section(model: Type[S], values: Any, prefix: str) -> S:
    """Validate `values` into `model`; raise ConfigError('config field <prefix.key>: ...')."""
    if isinstance(values, model):
        return values
    if values is None:
        values = {}
    if not isinstance(values, dict):
        raise ConfigError(f"config field '{prefix}': expected a mapping of keys, got {type(values).__name__}")
    try:
        return model.model_validate(values)
    except ValidationError as exc:
        err = exc.errors()[0]
        loc = ".".join(str(p) for p in (prefix, *err.get("loc", ())) if str(p))
        more = f" (+{exc.error_count() - 1} more)" if exc.error_count() > 1 else ""
        raise ConfigError(f"config field '{loc}': {_describe(err)}{more}") from None
