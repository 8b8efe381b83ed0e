"""The trainer every method shares: `distill` runs a Method for cfg.iterations on seeded batches.

It owns seeded batches, the NaN/inf guard (a method marks a skipped step with logs['skipped'] = 1;
K in a row stop the run), checkpoints every N iterations (method + batch order + RNG + history),
exact resume, and data parallelism over the ranks of torch.distributed
(components/distributed.py: each rank trains on its shard of the global batch; one process is
the special case)."""
from __future__ import annotations

import hashlib
import json
import shutil
import sys
from pathlib import Path
from typing import Callable, Optional

import torch
from tqdm.auto import tqdm

from components.config import ConfigError
from components.methods.interface import Method
from components.training import BatchSampler, seed_everything


class DivergenceError(ValueError):
    """max_bad_steps non-finite steps in a row."""


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


__all__ = ["Checkpoints", "DivergenceError", "distill"]
