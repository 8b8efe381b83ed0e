"""params.yaml -> one typed RunConfig, validated across sections before anything runs.

The single configuration path of both engines: `dmd2_pipeline` (ZenML) and `components.stages`
(DVC) call `load_params`, and hand the typed sections to the steps/stages - nothing parses a
section twice. This module sits above what it checks (the data sources, the gate, the method
registry, the feature extractors); components/config.py, the section models, imports none of it.
"""
from __future__ import annotations

from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any, Optional

from components.config import (ComputeConfig, ConfigError, DataConfig, DistillConfig, EvalConfig, ExportConfig,
                               FeatureNetConfig, GateConfig, PairsConfig, TeacherConfig, TrackingConfig, parse_section)


@dataclass(frozen=True)
class RunConfig:
    """Every section of one run, validated (defaults filled)."""

    data: DataConfig
    teacher: TeacherConfig
    pairs: PairsConfig
    features: FeatureNetConfig
    distill: DistillConfig          # the configured method's own Config (a subclass)
    evaluation: EvalConfig
    gate: GateConfig
    export: ExportConfig
    tracking: TrackingConfig
    compute: ComputeConfig

    def as_dict(self) -> dict[str, dict]:
        """Plain JSON-able sections: what a run records as its config (lineage, W&B, model card)."""
        return {f.name: getattr(self, f.name).model_dump(mode="json") for f in fields(self)}


SECTIONS = tuple(f.name for f in fields(RunConfig))
_MODELS = {"data": DataConfig, "teacher": TeacherConfig, "pairs": PairsConfig, "features": FeatureNetConfig,
           "evaluation": EvalConfig, "gate": GateConfig, "export": ExportConfig, "tracking": TrackingConfig,
           "compute": ComputeConfig}


def resolve_config(**sections: Any) -> RunConfig:
    """Validate every section (dicts or models; missing ones take their defaults) and the checks
    across sections and against the filesystem, before any step runs."""
    from components.data import check_data_config
    from components.gate import check_gate_config
    from components.methods import PIPELINE_METHODS, parse_distill_config

    unknown = sorted(set(sections) - set(SECTIONS))
    if unknown:
        raise ConfigError(f"config: unknown section {unknown[0]!r} (valid: {', '.join(SECTIONS)})")
    parsed = {name: parse_section(model, sections.get(name), name) for name, model in _MODELS.items()}
    cfg = RunConfig(distill=parse_distill_config(sections.get("distill")), **parsed)
    if cfg.distill.method not in PIPELINE_METHODS:
        raise ConfigError(f"config field 'distill.method': {cfg.distill.method!r} runs only as the halvings of a "
                          "guided chain: distill.method guided with distill.target_steps (pipelines.guided_pipeline, "
                          "docs/guided.md)")
    check_gate_config(cfg.gate)
    if cfg.distill.method == "msd" and cfg.data.classes:     # the declared classes: the partition checked now
        from components.methods.msd import class_subsets

        class_subsets([1] * len(cfg.data.classes), cfg.distill.students, cfg.distill.partition)
    if cfg.evaluation.feature_net == "inception" and not cfg.evaluation.inception_download:
        from components.metrics.extractors import inception_weights

        inception_weights(cfg.evaluation.inception_dir, download=False)   # missing offline: stop now
    check_data_config(cfg.data)
    if cfg.teacher.path is not None and not Path(cfg.teacher.path).is_dir():
        raise ConfigError(f"teacher.path '{cfg.teacher.path}': no such folder (expected a diffusers "
                          "folder with unet/ and scheduler/)")
    return cfg


def merge(base: dict, override: Any) -> dict:
    """Deep merge: keys of `override` replace those of `base`; nested mappings merge."""
    out = dict(base)
    for key, value in (override or {}).items():
        out[key] = merge(out[key], value) if isinstance(value, dict) and isinstance(out.get(key), dict) else value
    return out


def merge_distill(base: dict, override: dict) -> dict:
    """A distill section with overrides. An override naming another method (method: ctm over a dmd2
    section) keeps only the base's method-independent keys (DistillConfig's: iterations, seed,
    checkpoints, ...): the other method's keys do not apply to it. A method whose Config extends the base's
    (method: msd over a dmd2 section: DMD2 per class subset) keeps all of the base's keys."""
    new, old = (override or {}).get("method", base.get("method")), base.get("method", "dmd2")
    if new != old:
        from components.methods import METHODS

        extends = new in METHODS and old in METHODS and issubclass(METHODS[new].Config, METHODS[old].Config)
        keep = METHODS[old].Config.model_fields if extends else DistillConfig.model_fields
        base = {k: v for k, v in base.items() if k in keep and k != "method"}
    return merge(base, override)


def read_yaml(path: str | Path, label: str, expected: str) -> Any:
    """A YAML file's content; a missing or unparsable file is a ConfigError naming `label` (e.g.
    "params file 'params.yaml'") and what it should be (`expected`)."""
    import yaml

    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"{label}: no such file (expected {expected})")
    try:
        return yaml.safe_load(path.read_text())
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}" if mark else ""
        raise ConfigError(f"{label}: not valid YAML{where}") from None


def read_params(params_file: str) -> dict:
    """The parameter file as a mapping of sections (unvalidated); one-line errors naming the file."""
    base = read_yaml(params_file, f"params file '{params_file}'",
                     f"a YAML mapping with sections {', '.join(SECTIONS)}") or {}
    if not isinstance(base, dict):
        raise ConfigError(f"params file '{params_file}': expected a mapping of sections, got {type(base).__name__}")
    unknown = sorted(set(base) - set(SECTIONS))
    if unknown:
        raise ConfigError(f"params file '{params_file}': unknown section {unknown[0]!r} "
                          f"(valid: {', '.join(SECTIONS)})")
    return base


def read_distill_file(path: str) -> dict:
    """A file holding only a `distill` mapping (params_ctm.yaml), for DVC stages of another method."""
    content = read_yaml(path, f"distill params file '{path}'", "a YAML mapping with one section, distill")
    if not isinstance(content, dict) or set(content) != {"distill"} or not isinstance(content["distill"], dict):
        raise ConfigError(f"distill params file '{path}': expected a YAML mapping with one section, distill")
    return content["distill"]


def load_params(params_file: Optional[str] = None, **overrides: Any) -> RunConfig:
    """The parameter file (params.yaml: one mapping per section, shared by ZenML and DVC), with
    per-section `overrides` merged on top, validated -> RunConfig. A distill override that names another
    method (distill: {method: ctm}) keeps only the file's method-independent distill keys."""
    base = read_params(params_file) if params_file else {}
    for name, value in overrides.items():
        if name not in SECTIONS:
            raise ConfigError(f"config: unknown section {name!r} (valid: {', '.join(SECTIONS)})")
        if value is not None and not isinstance(value, dict):
            raise ConfigError(f"config field '{name}': expected a mapping of keys, got {type(value).__name__}")
        if value:
            base[name] = merge_distill(base.get(name) or {}, value) if name == "distill" else \
                merge(base.get(name) or {}, value)
    return resolve_config(**{name: base.get(name) for name in SECTIONS})


__all__ = ["RunConfig", "SECTIONS", "load_params", "merge", "merge_distill", "read_distill_file", "read_params", "resolve_config"]
