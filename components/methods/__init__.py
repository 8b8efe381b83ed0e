"""Distillation methods behind one interface; METHODS maps a config name to its class.

A new method is one file here: a `Method` subclass (components/methods/interface.py) with its own
`Config` (a subclass of components.config.DistillConfig whose `method` is a Literal of its
name), added to METHODS. The trainer (components/methods/trainer.py) runs every method alike."""
from __future__ import annotations

from components.config import ConfigError, DistillConfig, parse_section
from components.methods.ctm import CTM, CTMConfig
from components.methods.dmd2 import DMD2, DMD2Config
from components.methods.guided import GuidedConfig, GuidedDistillation
from components.methods.interface import Method
from components.methods.progressive import Progressive, ProgressiveConfig
from components.methods.trainer import DivergenceError, distill

METHODS: dict[str, type[Method]] = {"dmd2": DMD2, "ctm": CTM, "guided": GuidedDistillation,
                                     "progressive": Progressive}
# the methods the pipelines (ZenML, DVC) and the leaderboard run; guided + progressive (issue 17) are components
# only so far: their chain (stage 1, then one run per halving) is not wired into the steps yet
PIPELINE_METHODS = ("dmd2", "ctm")


def method_class(name) -> type[Method]:
    if name not in METHODS:
        raise ConfigError(f"config field 'distill.method': unknown method {name!r}; "
                          f"valid: {', '.join(sorted(METHODS))}")
    return METHODS[name]


def parse_distill_config(values: dict | DistillConfig | None) -> DistillConfig:
    """Validate the 'distill' section with the Config of the method it names."""
    if isinstance(values, DistillConfig):
        values = values.model_dump()
    values = dict(values or {})
    cls = method_class(values.get("method", "dmd2"))
    cfg = parse_section(cls.Config, values, "distill")
    if cfg.fid_every % cfg.log_every:
        raise ConfigError(f"config field 'distill.fid_every': {cfg.fid_every} is not a multiple of "
                          f"distill.log_every ({cfg.log_every})")
    if cfg.checkpoint_every % cfg.log_every:
        raise ConfigError(f"config field 'distill.checkpoint_every': {cfg.checkpoint_every} is not a multiple of "
                          f"distill.log_every ({cfg.log_every})")
    return cfg


def build_method(teacher, cfg: DistillConfig | dict, data, pairs=None) -> Method:
    """The configured method on (teacher, data); `pairs` = TeacherPairs for regression / warm start.
    A plain dict (tests, benchmarks) is validated first; a section from load_params is used as is."""
    cfg = cfg if isinstance(cfg, DistillConfig) else parse_distill_config(cfg)
    return method_class(cfg.method)(teacher, cfg, data, pairs)


__all__ = ["METHODS", "PIPELINE_METHODS", "CTM", "CTMConfig", "DMD2", "DMD2Config", "DistillConfig", "DivergenceError", "GuidedConfig",
           "GuidedDistillation", "Method", "Progressive", "ProgressiveConfig",
           "build_method", "distill", "method_class", "parse_distill_config"]
