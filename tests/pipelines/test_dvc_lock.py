"""The committed dvc.lock, metrics and plots are the result of `dvc repro` on the committed parameters: a change
to params.yaml (or a chain's params_*.yaml) or to dvc.yaml's stages without a new `dvc repro` fails here, in CI,
not in a user's checkout. Reads files only (no DVC run)."""
import hashlib
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
LOCK = yaml.safe_load((ROOT / "dvc.lock").read_text())["stages"]


def _stages() -> list[str]:
    """dvc.yaml's stage names as dvc.lock writes them (a foreach stage once per item: halve@1, distill_msd@0)."""
    names = []
    for name, stage in yaml.safe_load((ROOT / "dvc.yaml").read_text())["stages"].items():
        items = stage.get("foreach")
        names += [f"{name}@{item}" for item in items] if items is not None else [name]
    return names


def _lookup(values: dict, dotted: str):
    for part in dotted.split("."):
        values = values[part]
    return values


def test_dvc_lock_records_every_stage_of_dvc_yaml():
    assert sorted(LOCK) == sorted(_stages()), "dvc.lock is stale: run `dvc repro` (make repro) and commit dvc.lock"


@pytest.mark.parametrize("stage", sorted(LOCK))
def test_dvc_lock_params_are_the_committed_params(stage):
    for file, recorded in LOCK[stage].get("params", {}).items():
        current = yaml.safe_load((ROOT / file).read_text())
        for key, value in recorded.items():
            assert _lookup(current, key) == value, (f"dvc.lock: stage {stage!r} was run with {file}'s {key} = {value!r}, "
                                                    "which has changed since: run `dvc repro` and commit dvc.lock")


@pytest.mark.parametrize("stage", sorted(LOCK))
def test_committed_metrics_and_plots_are_the_locked_ones(stage):
    """The outputs DVC leaves to git (metrics.json, plots/*.csv) are the bytes the lock records."""
    for out in LOCK[stage].get("outs", []):
        path = ROOT / out["path"]
        if path.is_file():
            assert hashlib.md5(path.read_bytes()).hexdigest() == out["md5"], (  # noqa: S324 - DVC's hash
                f"{out['path']} differs from what dvc.lock records for stage {stage!r}: rerun `dvc repro`")
