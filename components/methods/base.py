"""The one interface every distillation method implements, its config base and the trainer.

build from (teacher, config, data, pairs) -> train_step(batch) -> dict of scalar logs;
state_dict() / load_state_dict() for checkpoints; student() for evaluation and export (its
`.sampling` recipe says how to sample it). Losses are functions with the paper's symbols
returning per-sample values; the reduction lives in train_step.

The trainer `distill` owns what every method shares: seeded batches, the NaN/inf guard (a
method marks a skipped step with logs['skipped'] = 1; K in a row stop the run), checkpoints
every N iterations (method + batch order + RNG + history), exact resume, and data parallelism
over the ranks of torch.distributed (components/distributed.py: each rank trains on its shard of
the global batch; one process is the special case)."""
from __future__ import annotations

import hashlib
import inspect
import json
import shutil
import sys
from abc import ABC, abstractmethod
from pathlib import Path
from typing import Callable, Literal, Optional

import torch
from pydantic import Field
from tqdm.auto import tqdm

from components.config import ConfigError, Section
from components.data import ImageDataset
from components.diffusion.denoiser import Denoiser, state_hash
from components.distributed import current_world
from components.training import BatchSampler, seed_everything, select_device


class DistillConfig(Section):
    """Fields every method shares; a method's Config subclasses this."""

    method: str = "dmd2"                   # registry name (components.methods.METHODS)
    iterations: int = Field(1400, ge=1)    # training iterations (every one a critic turn)
    batch_size: int = Field(64, ge=1)      # images per iteration
    seed: int = 0                          # one seed -> one result (data order, noise, timesteps)
    device: str = "auto"                   # 'auto' = CUDA when present, else CPU
    log_every: int = Field(50, ge=1)       # history / progress-bar granularity (iterations)
    fid_every: int = Field(0, ge=0)        # FID of the student at checkpoints every this many iterations (a
                                           # multiple of log_every; 0: off) - in the history, W&B and plots
    fid_samples: int = Field(1000, ge=10)  # samples per checkpoint FID (fewer than the final evaluation's)
    precision: Literal["auto", "fp32", "bf16"] = "auto"  # auto: bf16 autocast on a CUDA device with bf16, else fp32
    max_bad_steps: int = Field(5, ge=1)    # NaN/inf guard: a bad step is skipped and logged; this many in a row stop
    checkpoint_every: int = Field(0, ge=0)  # save everything needed to resume every this many iterations (0: off;
                                           # a multiple of log_every); always also at the last iteration
    checkpoint_dir: str = "checkpoints"    # runs live in <dir>/<method>-<run key>/step-XXXXXXXX/ (safetensors + JSON)
    resume: str = "auto"                   # auto: continue this run's latest checkpoint (same config, teacher,
                                           # code); never: start over; or a checkpoint folder to continue from


class DivergenceError(ValueError):
    """max_bad_steps non-finite steps in a row."""


# config keys that do not change the result: a checkpoint taken under other values still resumes
RESUME_IGNORES = ("iterations", "device", "log_every", "fid_every", "fid_samples", "max_bad_steps",
                  "checkpoint_every", "checkpoint_dir", "resume")


class Method(ABC):
    """A distillation method: owns its networks and optimisers, trains one batch at a time."""

    Config: type[DistillConfig] = DistillConfig

    def __init__(self, teacher: Denoiser, cfg: DistillConfig, data: ImageDataset, pairs=None):
        self.cfg, self.data, self.pairs = cfg, data, pairs
        self.device = select_device(cfg.device)
        self.amp = cfg.precision == "bf16" or (cfg.precision == "auto" and self.device.type == "cuda"
                                               and torch.cuda.is_bf16_supported())
        self.teacher_sha256 = state_hash(teacher)
        self.world = current_world()        # data-parallel ranks (components/distributed.py); 1 without torchrun
        self.step = 0

    @abstractmethod
    def train_step(self, batch: dict[str, torch.Tensor]) -> dict[str, float]:
        """One iteration on batch = {'real': images, 'class_labels': labels, 'noise': z}."""

    @abstractmethod
    def student(self) -> Denoiser:
        """The generator to evaluate / export, with its `.sampling` recipe (CPU, eval mode)."""

    @abstractmethod
    def state_dict(self) -> dict:
        """Everything needed to resume exactly (networks, optimisers, schedulers, EMA, RNG, step)."""

    @abstractmethod
    def load_state_dict(self, state: dict) -> None:
        """Restore what state_dict() returned."""

    def run_identity(self) -> dict:
        """What a checkpoint must share with this run to resume it: config (less RESUME_IGNORES),
        teacher hash, pairs and the method's code."""
        code = hashlib.sha256()
        for cls in type(self).__mro__:
            if cls.__module__.startswith("components.methods"):
                code.update(inspect.getsource(sys.modules[cls.__module__]).encode())
        pairs = hashlib.sha256(self.pairs.images.numpy().tobytes()).hexdigest() if self.pairs is not None else None
        config = {k: v for k, v in self.cfg.model_dump(mode="json").items() if k not in RESUME_IGNORES}
        return {"distill": config, "teacher_sha256": self.teacher_sha256, "pairs_sha256": pairs,
                "code_sha256": code.hexdigest()}


class Checkpoints:
    """Checkpoints of one run: <checkpoint_dir>/<method>-<run key>/ (components/checkpoint.py format)."""

    def __init__(self, method: Method):
        self.method, cfg = method, method.cfg
        self.identity = method.run_identity()
        key = hashlib.sha256(json.dumps(self.identity, sort_keys=True).encode()).hexdigest()[:16]
        self.dir = Path(cfg.checkpoint_dir) / f"{cfg.method}-{key}"

    def source(self) -> Optional[Path]:
        """The checkpoint to resume from (None: start over), checked against this run."""
        from components.checkpoint import config_diff, describe_diff, latest_checkpoint, load_checkpoint

        cfg = self.method.cfg
        if cfg.resume == "never":
            return None
        if cfg.resume == "auto":
            path = latest_checkpoint(self.dir)
            if path is not None and int(path.name.split("-")[1]) > cfg.iterations:
                return None                      # a longer run of the same config: start over (folder reset)
            return path
        path = Path(cfg.resume)
        if path.is_dir() and not (path / "state.json").is_file():
            path = latest_checkpoint(path) or path
        state, meta = load_checkpoint(path)
        saved = meta.get("identity", {})
        keys = config_diff(saved, self.identity)
        if keys:
            raise ConfigError(f"distill.resume '{cfg.resume}': the checkpoint's run differs from this one in "
                              f"{describe_diff(saved, self.identity, keys)}; resume with the same config or "
                              "set distill.resume: never")
        if int(state["iteration"]) > cfg.iterations:
            raise ConfigError(f"distill.resume '{cfg.resume}': checkpoint at iteration {state['iteration']} is past "
                              f"distill.iterations ({cfg.iterations})")
        return path

    def save(self, iteration: int, state: dict, history: list[dict]) -> Path:
        from components.checkpoint import save_checkpoint

        return save_checkpoint(self.dir, iteration, state, {"identity": self.identity, "history": history})


def distill(method: Method, progress: bool = True,
            callback: Optional[Callable[[int, dict], None]] = None) -> list[dict]:
    """Run cfg.iterations train steps on seeded batches of the TRAIN split; -> log history.
    With cfg.checkpoint_every, saves checkpoints and resumes the latest one of the same run: the
    result equals an uninterrupted run's."""
    cfg, world = method.cfg, method.world
    g = seed_everything(cfg.seed)
    images, labels = method.data.split("train")
    batch_size = min(cfg.batch_size, len(images))          # the global batch, over all data-parallel ranks
    if batch_size % world.size:
        raise ConfigError(f"config field 'distill.batch_size': {batch_size} does not divide over {world.size} "
                          "processes; use a multiple of the number of processes")
    batches = BatchSampler(images, labels, batch_size=batch_size, generator=g)
    history, window, start, bad = [], [], 0, 0
    ckpt = Checkpoints(method) if cfg.checkpoint_every else None
    if ckpt is not None:
        src = ckpt.source()
        if src is None:
            if world.is_main:
                shutil.rmtree(ckpt.dir, ignore_errors=True)
            world.barrier()
        else:
            from components.checkpoint import load_checkpoint

            state, meta = load_checkpoint(src)
            method.load_state_dict(state["method"])
            batches.load_state_dict(state["batches"])
            torch.set_rng_state(state["torch_rng"])
            history, start, bad = meta["history"], int(state["iteration"]), int(state["bad_in_a_row"])
            print(f"distill: resumed from {src} (iteration {start})", file=sys.stderr)
    bar = tqdm(range(start, cfg.iterations), desc=f"distill ({cfg.method})", disable=not (progress and world.is_main),
               mininterval=2, initial=start, total=cfg.iterations)
    for it in bar:
        x_real, y = batches.next()                         # every rank draws the global batch ...
        z = torch.randn(x_real.shape, generator=g)
        batch = {"real": x_real, "class_labels": y, "noise": z}
        logs = world.mean_logs(method.train_step({k: world.shard(v) for k, v in batch.items()}))   # ... keeps its shard
        bad = bad + 1 if logs.get("skipped") else 0
        if bad >= cfg.max_bad_steps:
            which = ", ".join(k[4:] for k in logs if k.startswith("bad_")) or "a"
            raise DivergenceError(f"distill: {bad} non-finite steps in a row (last at iteration {it + 1}: NaN/inf "
                                  f"in the {which} update); lower distill.lr_gen / distill.lr_fake, check the "
                                  "teacher, or raise distill.max_bad_steps")
        window.append(logs)
        if (it + 1) % cfg.log_every == 0 or it + 1 == cfg.iterations:
            keys = {k for w in window for k in w}
            mean = {k: sum(w[k] for w in window if k in w) / sum(k in w for w in window) for k in keys}
            mean["iteration"] = it + 1
            history.append(mean)
            bar.set_postfix({k: f"{v:.4f}" for k, v in mean.items() if k.startswith("loss")})
            if callback is not None and world.is_main:
                callback(it + 1, mean)
            window = []
        if ckpt is not None and ((it + 1) % cfg.checkpoint_every == 0 or it + 1 == cfg.iterations):
            if world.is_main:                              # the ranks hold the same state: rank 0 writes it
                ckpt.save(it + 1, {"method": method.state_dict(), "batches": batches.state_dict(),
                                   "torch_rng": torch.get_rng_state(), "iteration": it + 1, "bad_in_a_row": bad},
                          history)
            world.barrier()
    return history
