"""End to end: the README's `zenml pipeline run` command on a tiny config and a throwaway store."""
import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import yaml

from components.data.builtin import write_npz
from tests.conftest import write_image_folder
from tests.pipelines.conftest import ROOT, run_zenml as _run, tiny_config

INSPECT = r"""
import json, sys
from zenml.client import Client
run = Client().get_pipeline_run(sys.argv[1]) if len(sys.argv) > 1 else Client().list_pipeline_runs(sort_by="desc:created", size=1)[0]
out = {"status": str(run.status), "steps": {n: str(s.status) for n, s in run.steps.items()},
       "outputs": {n: sorted(s.outputs) for n, s in run.steps.items()}}
m = run.steps["evaluate_student"].outputs["metrics"][0].load()
out["metrics"] = {k: m[k] for k in ("teacher_fid", "student_fid", "student_nfe", "teacher_nfe", "feature_net", "num_samples")}
out["run_metadata"] = {k: v for k, v in run.run_metadata.items() if k != "lineage"}
out["gate"] = run.steps["quality_gate"].outputs["gate_decision"][0].load()
out["exported"] = sorted(p.name for p in run.steps["export_model"].outputs["exported_model"][0].load().iterdir())
out["model_stage"] = str(run.model_version.stage) if run.model_version else None
out["report"] = str(run.steps["report_step"].outputs["run_report"][0].load())
out["report_viz"] = [str(v.type) for v in run.steps["report_step"].outputs["run_report"][0].visualizations]
out["wandb_run"] = run.steps["log_to_wandb"].outputs["output"][0].load()
out["history"] = run.steps["distill_step"].outputs["distill_history"][0].load()
student = run.steps["distill_step"].outputs["student"][0]
out["student_uri_files"] = sorted(p.name for p in __import__("pathlib").Path(student.uri).rglob("*") if p.is_file())
print(json.dumps(out))
"""


def _tiny(tmp_path, data_path, gate=None) -> Path:
    """tests/pipelines/tiny.yaml with data.path pointing at a temp dataset (and gate overrides)."""
    cfg = tiny_config(tmp_path, data_path)
    if gate:
        cfg["parameters"]["gate"] = gate
    out = tmp_path / f"tiny-{Path(data_path).stem}{'-gate' if gate else ''}.yaml"
    out.write_text(yaml.safe_dump(cfg))
    return out


def _inspect(env):
    info = subprocess.run([sys.executable, "-c", INSPECT], env=env, cwd=ROOT, capture_output=True, text=True,
                          timeout=300)
    assert info.returncode == 0, info.stderr[-3000:]
    return json.loads(info.stdout.strip().splitlines()[-1])


STEPS = {"record_lineage", "ingest_data", "validate_data", "build_dataset", "feature_net_step", "teacher_step",
         "distill_step", "evaluate_teacher", "evaluate_student", "quality_gate", "export_model",
         "reference_statistics", "report_step", "log_to_wandb", "teacher_pairs"}


def test_pipeline_runs_end_to_end(zenml_env, tmp_path, digits_npz):
    data = tmp_path / "digits.npz"
    shutil.copy(digits_npz, data)
    # first run: a gate no student can pass (FID at most 1% of the teacher's) -> rejected, nothing exported
    r = _run(zenml_env, _tiny(tmp_path, data, gate={"fid_ratio_max": 0.01}))
    assert r.returncode == 0, (r.stdout + r.stderr)[-4000:]
    assert "FID vs eval split" in r.stdout + r.stderr          # the summary table is printed
    out = _inspect(zenml_env)
    assert out["status"].endswith("completed")
    assert set(out["steps"]) == STEPS
    assert all(s.endswith("completed") for s in out["steps"].values())
    assert out["outputs"]["distill_step"] == ["distill_history", "distill_loss_curve", "student"]
    assert out["outputs"]["evaluate_student"] == ["metrics", "student_samples"]
    assert out["metrics"]["student_nfe"] == 1 and out["metrics"]["teacher_nfe"] == 5
    assert out["metrics"]["num_samples"] == 100
    # models are stored as safetensors + JSON, no pickle
    assert "diffusion_pytorch_model.safetensors" in out["student_uri_files"]
    assert not any(f.endswith((".pkl", ".pickle", ".pt", ".bin")) for f in out["student_uri_files"])

    assert out["outputs"]["validate_data"] == ["data_validation"] and out["outputs"]["ingest_data"] == ["data_manifest"]
    # the gate's decision is an artifact; a pass promotes the run's model version and exports the student
    gate = out["gate"]
    assert {c["rule"] for c in gate["checks"]} >= {"FID ratio to teacher", "class accuracy floor"}
    assert not gate["passed"] and any(r.startswith("FID ratio to teacher") for r in gate["reasons"])
    assert out["exported"] == ["REJECTED.md"] and out["model_stage"] in (None, "None")
    # the run report (an HTML visualization in the dashboard) says what the gate decided and why
    assert out["report_viz"] and out["report_viz"][0].endswith("html")
    assert "REJECTED" in out["report"] and "FID vs NFE" in out["report"]
    assert all(reason in out["report"] for reason in gate["reasons"])
    # checkpoint FIDs in the history; W&B got an offline run (under WANDB_DIR)
    assert [h["iteration"] for h in out["history"]] == [3, 6] and "fid" in out["history"][1]
    wandb_run = Path(out["wandb_run"])
    assert wandb_run.parent == Path(zenml_env["WANDB_DIR"]) / "wandb" and list(wandb_run.glob("run-*.wandb"))
    # lineage: the git commit and the data's DVC hash are run metadata
    meta = out["run_metadata"]
    assert len(meta["git_commit"]) == 40
    from components.data.versioning import dvc_md5
    assert meta["data_md5"] == dvc_md5(data) and meta["params_file"] == "params.yaml"

    # second run, with a gate the tiny student passes: ingest, feature net and teacher come from the
    # cache; the gate runs again, promotes this run's model version and the student is exported
    r2 = _run(zenml_env, _tiny(tmp_path, data, gate={"class_acc_min": None, "fid_ratio_max": 100.0}))
    assert r2.returncode == 0, (r2.stdout + r2.stderr)[-4000:]
    out2 = _inspect(zenml_env)
    assert out2["gate"]["passed"] and out2["model_stage"].endswith("staging")
    assert {"model_index.json", "unet", "scheduler", "README.md", "onnx"} <= set(out2["exported"])
    assert "PASSED" in out2["report"] and "staging" in out2["report"]
    steps2 = out2["steps"]
    assert steps2["ingest_data"].endswith("cached") and steps2["teacher_step"].endswith("cached")
    assert steps2["reference_statistics"].endswith("cached")     # once per dataset version
    assert steps2["record_lineage"].endswith("completed")        # lineage is recorded on every run

    # changed data (one pixel, same path): a new hash re-runs ingest and everything downstream
    with np.load(data) as z:
        images, labels = z["images"].copy(), z["labels"].copy()
    images[0, 3, 3, 0] ^= 1
    write_npz(data, {"images": images, "labels": labels})
    r3 = _run(zenml_env, _tiny(tmp_path, data))
    assert r3.returncode == 0, (r3.stdout + r3.stderr)[-4000:]
    out3 = _inspect(zenml_env)
    assert out3["run_metadata"]["data_md5"] == dvc_md5(data) != meta["data_md5"]
    for name in ("ingest_data", "build_dataset", "feature_net_step", "teacher_step", "evaluate_teacher"):
        assert out3["steps"][name].endswith("completed"), (name, out3["steps"][name])


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
    cfg.write_text(f"parameters:\n  data: {{path: '{tmp_path / 'imgs'}'}}\n")
    r = _run(zenml_env, cfg)
    out = r.stdout + r.stderr
    assert r.returncode != 0
    assert "no images found" in out and str(tmp_path / "imgs") in out
    assert "Step teacher_step has started" not in out


def test_failed_validation_stops_before_training_and_keeps_the_report(zenml_env, tmp_path):
    write_image_folder(tmp_path / "imgs", mode="L")
    (tmp_path / "imgs" / "dog" / "zero.png").write_bytes(b"")
    cfg = tmp_path / "bad-data.yaml"
    cfg.write_text(f"parameters:\n  data: {{path: '{tmp_path / 'imgs'}', min_per_class: 5}}\n")
    r = _run(zenml_env, cfg)
    out = r.stdout + r.stderr
    assert r.returncode != 0
    assert "data validation failed" in out and "every image readable" in out and "zero.png" in out
    assert "Step teacher_step has started" not in out and "Step feature_net_step has started" not in out
    check = subprocess.run([sys.executable, "-c", VALIDATION], env=zenml_env, cwd=ROOT, capture_output=True,
                           text=True, timeout=300)
    assert check.returncode == 0, check.stderr[-3000:]
    result = json.loads(check.stdout.strip().splitlines()[-1])
    assert result["validate"].endswith("completed") and result["build"].endswith("failed")
    assert result["success"] is False and "zero.png" in result["html"]


VALIDATION = r"""
import json
from zenml.client import Client
run = Client().list_pipeline_runs(sort_by="desc:created", size=1)[0]
art = run.steps["validate_data"].outputs["data_validation"][0]
html = art.visualizations and __import__("pathlib").Path(art.visualizations[0].uri).read_text()
print(json.dumps({"validate": str(run.steps["validate_data"].status), "build": str(run.steps["build_dataset"].status),
                  "success": art.load().success, "html": html or ""}))
"""
