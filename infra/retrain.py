"""Retrain when the data or the teacher changed since the production model, or schedule that check.

    python -m infra.retrain [--config configs/dmd2_local.yaml] [--force] [--dry-run]
    python -m infra.retrain schedule --cron "0 3 * * 1" [--config ...] [--dry-run]

The first form compares this checkout (the data's .dvc md5, the resolved `teacher` section of the
config) with what the production version of the ZenML model `dmd2_student` recorded (the run's
lineage metadata: `dvc_md5`, `data_md5`, `config.teacher`; teacher_step's `teacher_sha256` for a
loaded teacher), prints the decision, and runs dmd2_pipeline when it says retrain (exit 0 with
"up to date" otherwise). The second attaches a ZenML `Schedule(cron_expression=...)` to
dmd2_pipeline on the active stack - the Kubernetes orchestrator writes a CronJob (5 fields), the
Kubeflow orchestrator a KFP recurring run (6 fields, seconds first: converted here); orchestrators
that cannot schedule are refused before anything is compiled.

Errors are one line on stderr, exit 2. The decision logic is infra/retrain_decision.py (pure).
"""
from __future__ import annotations

import argparse
import sys
from typing import Any, Optional

from infra.cron import cron_for
from infra.retrain_decision import ModelVersions, RetrainDecision, decide_retrain, short, teacher_identity

DEFAULT_CONFIG = "configs/dmd2_local.yaml"
# How many cron fields an orchestrator's scheduler takes, by its class (subclasses included, e.g. the
# project's `fewstep_kubeflow` flavor): ZenML's KubeflowOrchestrator passes the expression unchanged
# to kfp.Client.create_recurring_run ("6 space-separated fields", robfig/cron with seconds first);
# the KubernetesOrchestrator writes it unchanged into a CronJob's spec.schedule (5 fields). Other
# schedulable orchestrators (Vertex, Airflow, ...) take the standard 5.
CRON_FIELDS = {"KubeflowOrchestrator": 6, "KubernetesOrchestrator": 5}


class RetrainError(Exception):
    """A one-line, user-facing failure (bad config, unsupported orchestrator)."""


# --------------------------------------------------------------------------------------------
# The config: the ZenML run config (parameters: params_file + section overrides), resolved.

def load_run_config(config_path: str) -> dict:
    """The pipeline's resolved sections for a ZenML run config file (as dmd2_pipeline resolves them)."""
    from components.config import ConfigError
    from components.params import load_params, read_yaml

    try:
        raw = read_yaml(config_path, f"--config '{config_path}'",
                        f"a ZenML run config such as {DEFAULT_CONFIG}") or {}
    except ConfigError as exc:
        raise RetrainError(str(exc)) from None
    params = (raw.get("parameters") or {}) if isinstance(raw, dict) else None
    if not isinstance(params, dict):
        raise RetrainError(f"--config '{config_path}': expected a mapping with a 'parameters' mapping")
    params = dict(params)
    params_file = params.pop("params_file", None)
    try:
        return load_params(params_file, **params).as_dict()
    except ConfigError as exc:
        raise RetrainError(f"--config '{config_path}': {exc}") from None


def current_versions(cfg: dict) -> ModelVersions:
    """What a run of `cfg` would be made of: the data's .dvc md5 (or the data's own md5 when DVC does not
    track it) and the teacher identity (a loaded teacher's weights are hashed)."""
    from components.data.versioning import dvc_md5, dvc_tracking

    data_path = cfg["data"]["path"]
    tracked = dvc_tracking(data_path)["dvc_md5"]
    data_md5 = "" if tracked else dvc_md5(data_path)
    teacher = cfg["teacher"]
    weights = ""
    if teacher.get("path"):
        from components.diffusion import load_denoiser, state_hash

        weights = state_hash(load_denoiser(teacher["path"]))
    return ModelVersions(data_dvc_md5=tracked, data_md5=data_md5, teacher=teacher_identity(teacher, weights),
                         teacher_config=teacher, label="this checkout")


# --------------------------------------------------------------------------------------------
# ZenML: the production model version and what its run recorded.

def _teacher_sha_of_run(run: Any) -> str:
    """teacher_step's (else teacher_pairs') recorded `teacher_sha256`, '' when not found."""
    for step_name in ("teacher_step", "teacher_pairs"):
        step = run.steps.get(step_name)
        if step is not None and step.run_metadata.get("teacher_sha256"):
            return str(step.run_metadata["teacher_sha256"])
    return ""


def production_versions(client: Any = None) -> Optional[ModelVersions]:
    """The production version of MODEL_NAME, as recorded by the run that created it; None when there
    is no production version (or no such model)."""
    from zenml.client import Client
    from zenml.enums import ModelStages

    from steps.names import MODEL_NAME

    client = client or Client()
    try:
        version = client.get_model_version(MODEL_NAME, ModelStages.PRODUCTION)
    except KeyError:
        return None
    label = f"{MODEL_NAME} version {version.name}"
    links = list(client.list_model_version_pipeline_run_links(model_version_id=version.id, size=100).items)
    runs = [client.get_pipeline_run(link.pipeline_run.id) for link in links]
    runs = [r for r in runs if (r.run_metadata or {}).get("lineage") or (r.run_metadata or {}).get("data_md5")]
    if not runs:                       # a version made outside dmd2_pipeline: nothing recorded to compare
        return ModelVersions(label=label)
    run = max(runs, key=lambda r: r.created)
    meta = run.run_metadata
    lineage = meta.get("lineage") if isinstance(meta.get("lineage"), dict) else {}
    teacher_cfg = ((lineage.get("config") or {}).get("teacher")) if lineage else None
    teacher = teacher_identity(teacher_cfg, _teacher_sha_of_run(run) if (teacher_cfg or {}).get("path") else "") \
        if isinstance(teacher_cfg, dict) else ""
    return ModelVersions(data_dvc_md5=str(lineage.get("dvc_md5") or meta.get("dvc_md5") or ""),
                         data_md5=str(lineage.get("data_md5") or meta.get("data_md5") or ""),
                         teacher=teacher, teacher_config=teacher_cfg, label=f"{label} (run {run.name})")


def run_pipeline(config_path: str, schedule: Any = None) -> None:
    """dmd2_pipeline with the run config (and a schedule) on the active stack."""
    from pipelines.dmd2_pipeline import dmd2_pipeline

    options: dict = {"config_path": config_path}
    if schedule is not None:
        options["schedule"] = schedule
    dmd2_pipeline.with_options(**options)()


def cron_fields_of(orchestrator_class: type) -> int:
    """5 or 6: the cron form the orchestrator's scheduler takes (see CRON_FIELDS)."""
    for cls in orchestrator_class.__mro__:
        if cls.__name__ in CRON_FIELDS:
            return CRON_FIELDS[cls.__name__]
    return 5


def orchestrator_info() -> tuple[str, str, str, bool, int]:
    """(stack name, orchestrator name, flavor, schedulable, cron fields) of the active stack."""
    from zenml.client import Client

    stack = Client().active_stack
    orch = stack.orchestrator
    return stack.name, orch.name, orch.flavor, bool(orch.config.is_schedulable), cron_fields_of(type(orch))


# --------------------------------------------------------------------------------------------
# Commands

def check(config: str, force: bool, dry_run: bool) -> int:
    cfg = load_run_config(config)
    current = current_versions(cfg)
    production = production_versions()
    decision: RetrainDecision = decide_retrain(current, production, force)
    print(f"current: data {short(current.data_dvc_md5 or current.data_md5)}, teacher {short(current.teacher)}; "
          f"production: {production.label if production else 'none'}")
    print(decision.summary())
    if not decision.retrain:
        print("up to date: nothing to retrain")
        return 0
    if dry_run:
        print(f"dry run: would run dmd2_pipeline with {config}")
        return 0
    print(f"running dmd2_pipeline with {config}")
    run_pipeline(config)
    return 0


def schedule(cron: str, config: str, name: Optional[str], dry_run: bool) -> int:
    stack, orch, flavor, schedulable, fields = orchestrator_info()
    if not schedulable:
        raise RetrainError(f"the active stack '{stack}' uses orchestrator '{orch}' (flavor '{flavor}'), which does "
                           "not support schedules; switch to a stack with the kubernetes or kubeflow orchestrator "
                           "(zenml stack set <stack>) or use `python -m infra.cronjob apply` for a CronJob")
    try:
        expr = cron_for(cron, fields)
    except ValueError as exc:
        raise RetrainError(f"--cron: {exc}") from None
    load_run_config(config)          # fail on a bad config before anything is compiled
    print(f"schedule: dmd2_pipeline on stack '{stack}' (orchestrator '{orch}', flavor '{flavor}'), "
          f"cron '{expr}' ({fields} fields)")
    if dry_run:
        print("dry run: no schedule created")
        return 0
    from zenml.config.schedule import Schedule

    run_pipeline(config, Schedule(name=name, cron_expression=expr))
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m infra.retrain", description=__doc__.split("\n\n")[0])
    parser.add_argument("--config", default=DEFAULT_CONFIG, help=f"ZenML run config (default {DEFAULT_CONFIG})")
    parser.add_argument("--force", action="store_true", help="retrain even when nothing changed")
    parser.add_argument("--dry-run", action="store_true", help="print the decision; run nothing")
    sub = parser.add_subparsers(dest="command")
    sched = sub.add_parser("schedule", help="attach a cron schedule to dmd2_pipeline on the active stack")
    sched.add_argument("--cron", required=True, help='5 fields ("0 3 * * 1"), or 6 with seconds first')
    sched.add_argument("--config", dest="schedule_config", default=None, help="ZenML run config")
    sched.add_argument("--name", default=None, help="schedule name (default: ZenML's run name template)")
    sched.add_argument("--dry-run", dest="schedule_dry_run", action="store_true",
                       help="check the stack and the cron; create nothing")
    return parser


def main(argv: Optional[list[str]] = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        if args.command == "schedule":
            return schedule(args.cron, args.schedule_config or args.config, args.name,
                            args.schedule_dry_run or args.dry_run)
        return check(args.config, args.force, args.dry_run)
    except RetrainError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    raise SystemExit(main())
