"""End to end: the README's `zenml pipeline run` command on a tiny config and a throwaway store.

The runs (reject; two guided chains on the same data, tests/pipelines/test_guided_pipeline.py; changed data,
CTM) are the session's `pipeline_runs` (tests/conftest.py), shared with the DVC-vs-ZenML and the dashboard
tests."""
from pathlib import Path

STEPS = {"record_lineage", "ingest_data", "validate_data", "build_dataset", "feature_net_step", "teacher_step",
         "distill_step", "evaluate_teacher", "evaluate_student", "quality_gate", "export_model",
         "reference_statistics", "report_step", "log_to_wandb", "teacher_pairs"}


def test_pipeline_runs_end_to_end(pipeline_runs, zenml_env):
    first = pipeline_runs["reject"]
    assert "FID vs eval split" in first["output"]          # the summary table is printed
    out = first["info"]
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
    # the gate's decision is an artifact; a gate no student passes rejects: nothing promoted or exported
    gate = out["gate"]
    assert {c["rule"] for c in gate["checks"]} >= {"FID ratio to teacher",
                                                   "class accuracy floor, relative to real images"}
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
    assert meta["data_md5"] == first["data_md5"] and meta["params_file"] == "params.yaml"


def test_second_run_reuses_the_cache_and_a_pass_promotes_and_exports(pipeline_runs):
    """The second run of the store ('guided': guided_pipeline on the same data) takes the data, the teacher and
    the reference features from the cache; it passes, promotes its model version and exports; 'changed' (a
    dmd2_pipeline pass) exports the stock-diffusers folder with ONNX."""
    first, out2 = pipeline_runs["reject"]["info"], pipeline_runs["guided"]["info"]
    assert out2["gate"]["passed"] and out2["gate"]["promote_to"] == "staging" and out2["gate"]["model_version"]
    assert "PASSED" in out2["report"] and "staging" in out2["report"]
    assert "onnx" in out2["exported"]
    steps2 = out2["steps"]
    assert steps2["ingest_data"].endswith("cached") and steps2["teacher_step"].endswith("cached")
    assert steps2["reference_statistics"].endswith("cached")     # once per dataset version
    assert steps2["evaluate_teacher"].endswith("cached")
    assert steps2["record_lineage"].endswith("completed")        # lineage is recorded on every run
    assert out2["run_metadata"]["data_md5"] == first["run_metadata"]["data_md5"]
    changed = pipeline_runs["changed"]["info"]
    assert changed["gate"]["passed"] and changed["model_stage"].endswith("staging")     # the last pass is staging
    assert {"model_index.json", "unet", "scheduler", "README.md", "onnx"} <= set(changed["exported"])


def test_changed_data_reruns_everything_downstream(pipeline_runs):
    """One pixel changed at the same path: a new hash re-runs ingest and everything after it."""
    before, changed = pipeline_runs["reject"], pipeline_runs["changed"]
    out3 = changed["info"]
    assert out3["run_metadata"]["data_md5"] == changed["data_md5"] != before["info"]["run_metadata"]["data_md5"]
    for name in ("ingest_data", "build_dataset", "feature_net_step", "teacher_step", "evaluate_teacher"):
        assert out3["steps"][name].endswith("completed"), (name, out3["steps"][name])


def test_the_same_pipeline_distils_with_ctm(pipeline_runs):
    """The 'changed' run has distill.method ctm: the same steps train, score (its step x gamma sweep in the
    report's FID-vs-NFE picture), gate and export a CTM student (with its s embedding)."""
    out = pipeline_runs["changed"]["info"]
    assert "s_embedding.safetensors" in out["exported"] and "unet" in out["exported"]
    assert "PASSED" in out["report"]
    assert all("loss_ctm" in row for row in out["history"])
    assert "s_embedding.safetensors" in out["student_uri_files"]             # the student artifact keeps G
    sweep = out["metrics"]["student_fid_vs_nfe"]
    assert {(p["steps"], p["gamma"]) for p in sweep} == {(n, g) for n in (1, 2, 4) for g in (0.0, 0.5, 1.0)}
    assert {p["nfe"] for p in sweep} == {1, 2, 4}


def test_the_same_pipeline_trains_a_lowdiff_cascade_and_distils_it(pipeline_runs):
    """The 'lowdiff' run (distill.method lowdiff with distill.cascade_dmd2, the data of 'reject'): the upstream steps
    come from the cache; distill_step trains the unified network, distill_cascade distils it with DMD2 at both
    levels; the evaluation samples the distilled cascade (1 + 1 NFE, the trained one's recipe was 3 + 3), the gate
    passes and the export is fewstep's cascade folder with its three-line loader in the card."""
    out = pipeline_runs["lowdiff"]["info"]
    assert out["steps"]["teacher_step"].endswith("cached") and out["steps"]["distill_step"].endswith("completed")
    assert out["steps"]["distill_cascade"].endswith("completed")
    assert all({"loss_4px", "loss_8px"} <= set(row) for row in out["history"])
    assert all({"loss_fake", "loss_dm_4px", "loss_dm_8px"} <= set(row) for row in out["cascade_history"])
    assert out["metrics"]["student_nfe"] == 2 and out["gate"]["passed"]
    assert {"cascade.json", "res_embedding.safetensors", "unet", "README.md"} <= set(out["exported"])
    assert "cascade.json" in out["student_uri_files"]
