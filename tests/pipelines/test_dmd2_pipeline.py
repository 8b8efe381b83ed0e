"""End to end: the README's `zenml pipeline run` command on a tiny config and a throwaway store."""
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
ZENML = str(Path(sys.executable).with_name("zenml"))

INSPECT = r"""
import json, sys
from zenml.client import Client
run = Client().get_pipeline_run(sys.argv[1]) if len(sys.argv) > 1 else Client().list_pipeline_runs(sort_by="desc:created", size=1)[0]
out = {"status": str(run.status), "steps": {n: str(s.status) for n, s in run.steps.items()},
       "outputs": {n: sorted(s.outputs) for n, s in run.steps.items()}}
m = run.steps["evaluate_student"].outputs["metrics"][0].load()
out["metrics"] = {k: m[k] for k in ("teacher_fid", "student_fid", "student_nfe", "teacher_nfe", "feature_net", "num_samples")}
student = run.steps["distill_step"].outputs["student"][0]
out["student_uri_files"] = sorted(p.name for p in __import__("pathlib").Path(student.uri).rglob("*") if p.is_file())
print(json.dumps(out))
"""


@pytest.fixture(scope="module")
def zenml_env(tmp_path_factory):
    """A throwaway ZenML store and repository: never touches the user's stack."""
    tmp = tmp_path_factory.mktemp("zenml")
    env = dict(os.environ, ZENML_CONFIG_PATH=str(tmp / "config"), ZENML_ANALYTICS_OPT_IN="false",
               DVC_NO_ANALYTICS="1", WANDB_MODE="offline", AUTO_OPEN_DASHBOARD="false",
               ZENML_REPOSITORY_PATH=str(tmp / "repo"), ZENML_CUSTOM_SOURCE_ROOT=str(ROOT),
               ZENML_LOGGING_COLORS_DISABLED="true")
    (tmp / "repo").mkdir()
    subprocess.run([ZENML, "init", "--path", str(tmp / "repo")], env=env, check=True, capture_output=True,
                   cwd=ROOT, timeout=300)
    yield env
    shutil.rmtree(tmp, ignore_errors=True)


def _run(env, config):
    return subprocess.run([ZENML, "pipeline", "run", "pipelines.dmd2_pipeline", "-c", str(config)],
                          env=env, cwd=ROOT, capture_output=True, text=True, timeout=1200)


def test_pipeline_runs_end_to_end(zenml_env):
    r = _run(zenml_env, ROOT / "tests" / "pipelines" / "tiny.yaml")
    assert r.returncode == 0, (r.stdout + r.stderr)[-4000:]
    assert "FID vs eval split" in r.stdout + r.stderr          # the summary table is printed
    info = subprocess.run([sys.executable, "-c", INSPECT], env=zenml_env, cwd=ROOT, capture_output=True,
                          text=True, timeout=300)
    assert info.returncode == 0, info.stderr[-3000:]
    out = json.loads(info.stdout.strip().splitlines()[-1])
    assert out["status"].endswith("completed")
    assert set(out["steps"]) == {"ingest_data", "feature_net_step", "teacher_step", "distill_step",
                                 "evaluate_teacher", "evaluate_student"}
    assert all(s.endswith("completed") for s in out["steps"].values())
    assert out["outputs"]["distill_step"] == ["distill_history", "distill_loss_curve", "student"]
    assert out["outputs"]["evaluate_student"] == ["metrics", "student_samples"]
    assert out["metrics"]["student_nfe"] == 1 and out["metrics"]["teacher_nfe"] == 5
    assert out["metrics"]["num_samples"] == 100
    # models are stored as safetensors + JSON, no pickle
    assert "diffusion_pytorch_model.safetensors" in out["student_uri_files"]
    assert not any(f.endswith((".pkl", ".pickle", ".pt", ".bin")) for f in out["student_uri_files"])

    # second run: ingest, feature net and teacher come from the cache
    r2 = _run(zenml_env, ROOT / "tests" / "pipelines" / "tiny.yaml")
    assert r2.returncode == 0, (r2.stdout + r2.stderr)[-4000:]
    info2 = subprocess.run([sys.executable, "-c", INSPECT], env=zenml_env, cwd=ROOT, capture_output=True,
                           text=True, timeout=300)
    steps2 = json.loads(info2.stdout.strip().splitlines()[-1])["steps"]
    assert steps2["teacher_step"].endswith("cached")


def test_bad_config_fails_before_any_step(zenml_env, tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("parameters:\n  teacher: {train_steps: lots}\n")
    r = _run(zenml_env, bad)
    assert r.returncode != 0
    assert "config field 'teacher.train_steps': expected an integer" in r.stdout + r.stderr
    assert "Step ingest_data has started" not in r.stdout + r.stderr


def test_empty_image_folder_fails_in_ingest_with_nothing_downstream(zenml_env, tmp_path):
    (tmp_path / "imgs" / "cat").mkdir(parents=True)
    cfg = tmp_path / "folder.yaml"
    cfg.write_text(f"parameters:\n  data: {{source: folder, path: '{tmp_path / 'imgs'}'}}\n")
    r = _run(zenml_env, cfg)
    out = r.stdout + r.stderr
    assert r.returncode != 0
    assert "no images found" in out and str(tmp_path / "imgs") in out
    assert "Step teacher_step has started" not in out
