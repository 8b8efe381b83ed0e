"""Weights & Biases: a run's config, losses and checkpoint FIDs (by iteration), final metrics,
sample grids, the FID-vs-NFE plot and the HTML report. Offline by default - no account needed;
`wandb sync <dir>/wandb/offline-run-*` uploads later. Online needs WANDB_API_KEY in the
environment (a ZenML secret or a Kubernetes Secret), never in a file."""
from __future__ import annotations

import math
import os
from pathlib import Path
from typing import Optional

from PIL import Image

from components.config import ConfigError, TrackingConfig


def wandb_mode(cfg: TrackingConfig) -> str:
    mode = os.environ.get("WANDB_MODE") or cfg.wandb
    if mode not in ("offline", "online", "disabled", "dryrun", "run"):
        raise ConfigError(f"WANDB_MODE '{mode}': expected offline, online or disabled")
    if mode in ("online", "run") and not os.environ.get("WANDB_API_KEY"):
        raise ConfigError("tracking.wandb 'online' needs WANDB_API_KEY in the environment (from a ZenML secret or "
                          "a Kubernetes Secret); use 'offline' and `wandb sync` later")
    return "offline" if mode == "dryrun" else "online" if mode == "run" else mode


def _finite(d: dict) -> dict:
    return {k: v for k, v in d.items() if isinstance(v, (int, float)) and not isinstance(v, bool)
            and math.isfinite(v)}


def log_run(cfg: TrackingConfig, name: str, group: str, config: dict, history: list[dict], metrics: dict,
            pictures: dict[str, Image.Image], report_html: Optional[str] = None) -> Optional[Path]:
    """One W&B run: history rows at their `iteration`, metrics as summary, pictures at the last
    step. -> the local run folder (None when disabled)."""
    mode = wandb_mode(cfg)
    if mode == "disabled":
        return None
    import wandb

    directory = cfg.dir or os.environ.get("WANDB_DIR") or os.getcwd()
    Path(directory).mkdir(parents=True, exist_ok=True)
    run = wandb.init(project=cfg.project, entity=cfg.entity, name=name, group=group, job_type="distill",
                     config=config, dir=directory, mode=mode, reinit="finish_previous",
                     settings=wandb.Settings(silent=True, console="off", x_disable_stats=True))
    try:
        rows, last = {}, 0
        for row in history:                 # rows sharing an iteration merge into one
            it = int(row.get("iteration", last + 1))
            last = max(last, it)
            rows.setdefault(it, {}).update({f"distill/{k}": v for k, v in _finite(row).items() if k != "iteration"})
        media = {f"samples/{k}": wandb.Image(v, caption=k) for k, v in pictures.items()}
        if report_html is not None:
            media["report"] = wandb.Html(report_html, inject=False)
        rows.setdefault(last, {}).update(media)
        # each row committed at once (commit=True) rather than left open until the next step arrives:
        # a later row at a lower step would be dropped by W&B, so steps only increase and pictures join the last row
        for step in sorted(rows):
            run.log(rows[step], step=step, commit=True)
        for k, v in _finite(metrics).items():
            run.summary[f"eval/{k}"] = v
        folder = Path(run.dir).parent
    finally:
        run.finish()
    return folder
