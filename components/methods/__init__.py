"""Distillation methods behind one interface; METHODS maps a config name to its class.

A new method is one file here: a `Method` subclass (components/methods/interface.py) with its own
`Config` (a subclass of components.config.DistillConfig whose `method` is a Literal of its
name), added to METHODS. The trainer (components/methods/trainer.py) runs every method alike."""
from __future__ import annotations

from components.config import ConfigError, DistillConfig, parse_section
from components.diffusion.routed import check_partition
from components.methods.cascade_dmd2 import CascadeDMD2, CascadeDMD2Config, cascade_stage
from components.methods.ctm import CTM, CTMConfig
from components.methods.dmd2 import DMD2, DMD2Config
from components.methods.guided import GuidedConfig, GuidedDistillation
from components.methods.interface import Method
from components.methods.lowdiff import LowDiff, LowDiffConfig
from components.methods.msd import MSD, MSDConfig
from components.methods.progressive import Progressive, ProgressiveConfig, halvings
from components.methods.trainer import DivergenceError, distill

METHODS: dict[str, type[Method]] = {"dmd2": DMD2, "ctm": CTM, "guided": GuidedDistillation,
                                     "progressive": Progressive, "msd": MSD, "lowdiff": LowDiff,
                                     "cascade_dmd2": CascadeDMD2}
# which ZenML pipeline runs which distill.method; progressive runs only as the halvings of a guided chain
# (distill.method guided with distill.target_steps: components/methods/progressive.py, halvings), cascade_dmd2
# only after a LowDiff training (distill.method lowdiff with distill.cascade_dmd2: distill_stages)
PIPELINES = {"dmd2_pipeline": ("dmd2", "ctm", "lowdiff"), "guided_pipeline": ("guided",), "msd_pipeline": ("msd",)}
PIPELINE_METHODS = tuple(m for methods in PIPELINES.values() for m in methods)


def check_pipeline(method: str, pipeline: str) -> None:
    """ConfigError unless `pipeline` runs distill.method `method` (the line names the one that does)."""
    if method not in PIPELINES[pipeline]:
        other = next((p for p, ms in PIPELINES.items() if method in ms), None)
        where = f"pipelines.{other}" if other else "no pipeline"
        raise ConfigError(f"config field 'distill.method': {pipeline} does not run {method!r} "
                          f"(it runs {', '.join(PIPELINES[pipeline])}); use {where}")


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
    if isinstance(cfg, GuidedConfig):
        halvings(cfg)                            # the chain's bookkeeping and each halving's config, checked now
    if isinstance(cfg, LowDiffConfig):
        cascade_stage(cfg)                       # the cascade's DMD2 step's config, checked now
    if isinstance(cfg, MSDConfig) and cfg.partition is not None:
        if len(cfg.partition) != cfg.students:   # the classes are checked against the data's (msd.partition)
            raise ConfigError(f"config field 'distill.partition': {len(cfg.partition)} subset(s) but "
                              f"distill.students is {cfg.students}; give one subset per student")
        check_partition(cfg.partition)
    return cfg


def distill_stages(cfg: DistillConfig) -> list[tuple[str | None, dict]]:
    """The distill steps a dmd2_pipeline config runs, in order: [(step id, its distill section as plain data)], each
    step distilling the previous one's student (the first: the teacher). One step (id None: `distill_step`), or for
    a LowDiff training with distill.cascade_dmd2 two: the cascade's training (without that key, so a change to the
    second step leaves the first's cache) and `distill_cascade`, DMD2 on the trained cascade."""
    section = cfg.model_dump(mode="json")
    if not isinstance(cfg, LowDiffConfig) or cfg.cascade_dmd2 is None:
        return [(None, section)]
    return [(None, {k: v for k, v in section.items() if k != "cascade_dmd2"}), ("distill_cascade", cascade_stage(cfg))]


def build_method(teacher, cfg: DistillConfig | dict, data, pairs=None, init=None) -> Method:
    """The configured method on (teacher, data); `pairs` = TeacherPairs for regression / warm start; `init` = the
    network the generator starts from instead of the teacher (DMD2 and MSD: a previous stage's student).
    A plain dict (tests, benchmarks) is validated first; a section from load_params is used as is."""
    cfg = cfg if isinstance(cfg, DistillConfig) else parse_distill_config(cfg)
    cls = method_class(cfg.method)
    if init is None:
        return cls(teacher, cfg, data, pairs)
    if not issubclass(cls, DMD2):
        raise ConfigError(f"config field 'distill.method': {cfg.method} starts from the teacher; only dmd2 and msd "
                          "take a starting generator (init)")
    return cls(teacher, cfg, data, pairs, init=init)


__all__ = ["METHODS", "PIPELINES", "PIPELINE_METHODS", "check_pipeline", "CascadeDMD2", "CascadeDMD2Config", "CTM",
           "CTMConfig", "distill_stages", "DMD2", "DMD2Config", "DistillConfig", "DivergenceError", "GuidedConfig",
           "GuidedDistillation", "LowDiff", "LowDiffConfig", "MSD", "MSDConfig", "Method", "Progressive", "ProgressiveConfig",
           "build_method", "distill", "method_class", "parse_distill_config"]
