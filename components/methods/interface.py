"""The one interface every distillation method implements.

build from (teacher, config, data, pairs[, init]) -> train_step(batch) -> dict of scalar logs;
checkpoint_parts() (-> state_dict() / load_state_dict()) for checkpoints; student() for evaluation and export (its
`.sampling` recipe says how to sample it). Losses are functions with the paper's symbols
returning per-sample values; the reduction lives in train_step. The config a method reads is its
`Config`, a subclass of components.config.DistillConfig. The training loop that drives a Method
(batches, NaN guard, checkpoints, resume, data parallelism) is components/methods/trainer.py."""
from __future__ import annotations

import hashlib
import inspect
import sys
from abc import ABC, abstractmethod
from contextlib import nullcontext

import torch

from components.config import DistillConfig
from components.data import ImageDataset
from components.diffusion.denoiser import Denoiser, state_hash
from components.distributed import current_world
from components.training import select_device

# config keys that do not change the result: a checkpoint taken under other values still resumes
RESUME_IGNORES = ("iterations", "device", "log_every", "fid_every", "max_bad_steps",
                  "checkpoint_every", "checkpoint_dir", "resume")


class Method(ABC):
    """A distillation method: owns its networks and optimisers, trains one batch at a time."""

    Config: type[DistillConfig] = DistillConfig

    def __init__(self, teacher: Denoiser, cfg: DistillConfig, data: ImageDataset, pairs=None,
                 init: Denoiser | None = None):
        self.cfg, self.data, self.pairs = cfg, data, pairs
        self.device = select_device(cfg.device)
        self.amp = cfg.precision == "bf16" or (cfg.precision == "auto" and self.device.type == "cuda"
                                               and torch.cuda.is_bf16_supported())
        self.teacher_sha256 = state_hash(teacher)
        self.init_sha256 = state_hash(init) if init is not None else None   # the generator's start, when not the teacher
        self.world = current_world()        # data-parallel ranks (components/distributed.py); 1 without torchrun
        self.step = 0

    @abstractmethod
    def train_step(self, batch: dict[str, torch.Tensor]) -> dict[str, float]:
        """One iteration on batch = {'real': images, 'class_labels': labels, 'noise': z}."""

    @abstractmethod
    def student(self) -> Denoiser:
        """The generator to evaluate / export, with its `.sampling` recipe (CPU, eval mode)."""

    @abstractmethod
    def checkpoint_parts(self) -> dict:
        """What a checkpoint holds besides the RNG (self.rng) and the step: name -> network, EMA, optimiser or LR
        scheduler (anything with state_dict / load_state_dict; None: not in this run, saved as None)."""

    def state_dict(self) -> dict:
        """Everything needed to resume exactly: checkpoint_parts()' states, the RNG, the step."""
        return {**{k: (m.state_dict() if m is not None else None) for k, m in self.checkpoint_parts().items()},
                "rng": self.rng.get_state(), "step": self.step}

    def load_state_dict(self, state: dict) -> None:
        """Restore what state_dict() returned."""
        for k, m in self.checkpoint_parts().items():
            if m is not None:
                m.load_state_dict(state[k])
        self.rng.set_state(state["rng"])
        self.step = int(state["step"])

    # -- helpers every method shares (a subclass sets self.rng, a torch.Generator, and cfg.grad_clip) -----
    def _autocast(self):
        return torch.autocast(self.device.type, dtype=torch.bfloat16) if self.amp else nullcontext()

    # Random draws are made for the global batch and sharded (components/distributed.py): a rank sees
    # the numbers one process would use for its samples. `parts`: n holds that many batches end to end.
    def _randn(self, shape, parts: int = 1) -> torch.Tensor:
        z = torch.randn((self.world.global_size(shape[0]), *shape[1:]), generator=self.rng)
        return self.world.shard(z, parts).to(self.device)

    def _update(self, loss: torch.Tensor, params, opt, sched, name: str, logs: dict) -> bool:
        """Backward + clip + step, unless the loss or the gradient is NaN/inf (then skip and log)."""
        opt.zero_grad(set_to_none=True)
        if self.world.any(not _finite(loss)):                          # any rank bad: all skip together
            logs[f"bad_{name}"] = 1.0
            return False
        loss.backward(inputs=params)
        self.world.average_gradients(params)                           # data parallel: mean over ranks
        norm = torch.nn.utils.clip_grad_norm_(params, self.cfg.grad_clip)
        if not _finite(norm):
            opt.zero_grad(set_to_none=True)
            logs[f"bad_{name}"] = 1.0
            return False
        logs[f"grad_norm_{name}"] = float(norm)
        opt.step()
        sched.step()
        return True

    def _finish(self, logs: dict) -> dict:
        self.step += 1
        logs["skipped"] = float(any(k.startswith("bad_") for k in logs))   # the trainer counts these in a row
        return logs

    def run_identity(self) -> dict:
        """What a checkpoint must share with this run to resume it: config (less RESUME_IGNORES),
        teacher hash, pairs and the method's code."""
        code = hashlib.sha256()
        for cls in type(self).__mro__:
            if cls.__module__.startswith("components.methods"):
                code.update(inspect.getsource(sys.modules[cls.__module__]).encode())
        pairs = hashlib.sha256(self.pairs.images.numpy().tobytes()).hexdigest() if self.pairs is not None else None
        config = {k: v for k, v in self.cfg.model_dump(mode="json").items() if k not in RESUME_IGNORES}
        out = {"distill": config, "teacher_sha256": self.teacher_sha256, "pairs_sha256": pairs,
               "code_sha256": code.hexdigest()}
        if self.init_sha256 is not None:
            out["init_sha256"] = self.init_sha256
        return out


def _finite(t: torch.Tensor) -> bool:
    return bool(torch.isfinite(t).all())


__all__ = ["DistillConfig", "Method", "RESUME_IGNORES"]
