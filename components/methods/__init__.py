"""Distillation methods behind one interface; METHODS maps a config name to its class."""
from __future__ import annotations

from components.config import ConfigError, parse_section
from components.methods.base import DistillConfig, DivergenceError, Method, distill
from components.methods.dmd2 import DMD2, DMD2Config

METHODS: dict[str, type[Method]] = {"dmd2": DMD2}


def method_class(name) -> type[Method]:
    if name not in METHODS:
        raise ConfigError(f"config field 'distill.method': unknown method {name!r}; "
                          f"valid: {', '.join(sorted(METHODS))}")
    return METHODS[name]


def parse_distill_config(values: dict | None) -> DistillConfig:
    """Validate the 'distill' section with the Config of the method it names."""
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


def build_method(teacher, values: dict | DistillConfig | None, data, pairs=None) -> Method:
    """The configured method on (teacher, data); `pairs` = TeacherPairs for regression / warm start."""
    cfg = values if isinstance(values, DistillConfig) else parse_distill_config(values)
    return method_class(cfg.method)(teacher, cfg, data, pairs)


__all__ = ["METHODS", "DMD2", "DMD2Config", "DistillConfig", "DivergenceError", "Method", "build_method", "distill",
           "method_class", "parse_distill_config"]
