"""Shared by the end-to-end tests: a throwaway ZenML store and repository, and the CLI runner."""
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
ZENML = str(Path(sys.executable).with_name("zenml"))


@pytest.fixture(scope="session")
def zenml_env(tmp_path_factory):
    """A throwaway ZenML store and repository: never touches the user's stack."""
    tmp = tmp_path_factory.mktemp("zenml")
    env = dict(os.environ, ZENML_CONFIG_PATH=str(tmp / "config"), ZENML_ANALYTICS_OPT_IN="false",
               DVC_NO_ANALYTICS="1", WANDB_MODE="offline", AUTO_OPEN_DASHBOARD="false",
               ZENML_REPOSITORY_PATH=str(tmp / "repo"), ZENML_CUSTOM_SOURCE_ROOT=str(ROOT),
               ZENML_LOGGING_COLORS_DISABLED="true", WANDB_DIR=str(tmp / "wandb"))
    (tmp / "repo").mkdir()
    subprocess.run([ZENML, "init", "--path", str(tmp / "repo")], env=env, check=True, capture_output=True,
                   cwd=ROOT, timeout=300)
    yield env
    shutil.rmtree(tmp, ignore_errors=True)


def tiny_config(tmp_path, data_path) -> dict:
    """tests/pipelines/tiny.yaml with data.path, pairs.work_dir and distill.checkpoint_dir in temp folders."""
    import yaml

    cfg = yaml.safe_load((ROOT / "tests" / "pipelines" / "tiny.yaml").read_text())
    p = cfg["parameters"]
    p["data"] = {"path": str(data_path)}
    p["pairs"] = {**p["pairs"], "work_dir": str(tmp_path / "pairs")}
    p["distill"] = {**p["distill"], "checkpoint_dir": str(tmp_path / "checkpoints")}
    return cfg


def run_zenml(env, config) -> subprocess.CompletedProcess:
    """The README's command: zenml pipeline run pipelines.dmd2_pipeline -c <config>."""
    return subprocess.run([ZENML, "pipeline", "run", "pipelines.dmd2_pipeline", "-c", str(config)],
                          env=env, cwd=ROOT, capture_output=True, text=True, timeout=1200)
