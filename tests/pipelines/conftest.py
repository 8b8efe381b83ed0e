"""Shared by the end-to-end tests: a throwaway ZenML store and repository, the CLI runner, and the
tiny dmd2_pipeline runs that several test files look at (run once per session)."""
import json
import os
import shutil
import subprocess
import sys
import uuid
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[2]
ZENML = str(Path(sys.executable).with_name("zenml"))
PASS_GATE = {"class_acc_min": None, "class_acc_min_real": None, "fid_ratio_max": 100.0, "excess_fid_ratio_max": None}  # the tiny student passes
REJECT_GATE = {"fid_ratio_max": 0.01}        # FID at most 1% of the teacher's: no student passes
OPEN_GATE = {"class_acc_min": None, "class_acc_min_real": None, "fid_ratio_max": None, "excess_fid_ratio_max": None}   # every model passes
# a LowDiff cascade (4x4 -> 8x8 digits) trained from scratch for a few iterations (3 + 3 NFE), then distilled by
# DMD2 to one evaluation per level (distill.cascade_dmd2: a second distill step, distill_cascade)
LOWDIFF = {"method": "lowdiff", "resolutions": [4, 8], "steps": [2, 2], "start_sigma": [1.0], "iterations": 4,
           "batch_size": 16, "log_every": 2, "fid_every": 4, "checkpoint_every": 2,
           "cascade_dmd2": {"iterations": 4, "dfake_gen_update_ratio": 2}}


def make_zenml_env(tmp: Path) -> dict:
    """A throwaway ZenML store and repository under `tmp`: never touches the user's stack."""
    env = dict(os.environ, ZENML_CONFIG_PATH=str(tmp / "config"), ZENML_ANALYTICS_OPT_IN="false",
               DVC_NO_ANALYTICS="1", WANDB_MODE="offline", AUTO_OPEN_DASHBOARD="false", ZENML_AUTO_OPEN_DASHBOARD="false",
               ZENML_REPOSITORY_PATH=str(tmp / "repo"), ZENML_CUSTOM_SOURCE_ROOT=str(ROOT),
               ZENML_LOGGING_COLORS_DISABLED="true", WANDB_DIR=str(tmp / "wandb"))
    (tmp / "repo").mkdir()
    subprocess.run([ZENML, "init", "--path", str(tmp / "repo")], env=env, check=True, capture_output=True,
                   cwd=ROOT, timeout=300)
    return env


def tiny_config(tmp_path, data_path, gate=None) -> dict:
    """tests/pipelines/tiny.yaml with data.path, pairs.work_dir and distill.checkpoint_dir in temp folders."""
    cfg = yaml.safe_load((ROOT / "tests" / "pipelines" / "tiny.yaml").read_text())
    p = cfg["parameters"]
    p["data"] = {"path": str(data_path)}
    p["pairs"] = {**p["pairs"], "work_dir": str(tmp_path / "pairs")}
    p["distill"] = {**p["distill"], "checkpoint_dir": str(tmp_path / "checkpoints")}
    if gate:
        p["gate"] = gate
    return cfg


def run_zenml(env, config, pipeline: str = "dmd2_pipeline") -> subprocess.CompletedProcess:
    """The README's command: zenml pipeline run <pipeline> -c <config> (the short form: a module of the
    pipeline's name at the repository root, ZenML's source root)."""
    return subprocess.run([ZENML, "pipeline", "run", pipeline, "-c", str(config)],
                          env=env, cwd=ROOT, capture_output=True, text=True, timeout=1200)


# A tiny guided chain (guided_pipeline): stage 1 on 4 DDIM steps, halved to 2; the 'guided_longer' run asks for
# one more halving (to 1) and must reuse the rest from the cache.
GUIDED = {"method": "guided", "iterations": 4, "batch_size": 16, "log_every": 2, "fid_every": 4,
          "checkpoint_every": 0, "sampling_steps": 4, "target_steps": 2, "halving": {"iterations": 2}}


# What the tests read of a run, loaded from the store in one subprocess for all runs (newest last).
INSPECT = r"""
import json, pathlib, sys
from zenml.client import Client
def view(run):
    steps = run.steps
    out = {"id": str(run.id), "status": str(run.status), "steps": {n: str(s.status) for n, s in steps.items()},
           "outputs": {n: sorted(s.outputs) for n, s in steps.items()}}
    if "evaluate_student" not in steps or not str(run.status).endswith("completed"):
        return out
    out["metrics"] = steps["evaluate_student"].outputs["metrics"][0].load()
    out["run_metadata"] = {k: v for k, v in run.run_metadata.items() if k != "lineage"}
    out["gate"] = steps["quality_gate"].outputs["gate_decision"][0].load()
    out["exported"] = sorted(p.name for p in steps["export_model"].outputs["exported_model"][0].load().iterdir())
    out["model_stage"] = str(run.model_version.stage) if run.model_version else None
    report = steps["report_step"].outputs["run_report"][0]
    out["report"], out["report_viz"] = str(report.load()), [str(v.type) for v in report.visualizations]
    out["wandb_run"] = steps["log_to_wandb"].outputs["output"][0].load()
    first = "distill_step" if "distill_step" in steps else "route_students"     # msd_pipeline: the join
    out["history"] = steps[first].outputs["distill_history"][0].load()
    if "distill_cascade" in steps:                                                # a LowDiff cascade's DMD2 step
        out["cascade_history"] = steps["distill_cascade"].outputs["distill_history"][0].load()
    if "guidance_sweep_teacher" in steps:
        last = max((n for n in steps if n.startswith("guidance_sweep_") and n.endswith("_steps")),
                   key=lambda n: -int(n.split("_")[2]))
        out["guidance"] = steps[last].outputs["guidance_sweep"][0].load()
        out["student_kinds"] = {n: s.outputs["student"][0].load().kind for n, s in steps.items()
                                if n == "distill_step" or n.startswith("halve_to_")}
    if "route_students" in steps:
        out["route_metadata"] = {k: v for k, v in steps["route_students"].run_metadata.items()}
        out["branch_students"] = {n: sum(p.numel() for p in s.outputs["student"][0].load().parameters())
                                  for n, s in steps.items() if n.startswith("student_")}
        out["routed_subsets"] = steps["route_students"].outputs["student"][0].load().subsets
    student = steps[first].outputs["student"][0]
    out["student_uri_files"] = sorted(p.name for p in pathlib.Path(student.uri).rglob("*") if p.is_file())
    return out
print(json.dumps([view(Client().get_pipeline_run(name)) for name in sys.argv[1:]]))
"""


# A tiny msd_pipeline: K = 2 smaller students (three stages each: tsm -> dm -> adv); 'msd_killed' is SIGKILLed as
# branch 1's last stage starts (the local orchestrator runs the branches' stages level by level), 'msd' (the same
# config) must rerun only that stage and what reads it.
MSD_KILL_AT = "student_1_adv"
MSD = {"method": "msd", "students": 2, "iterations": 2, "batch_size": 16, "dfake_gen_update_ratio": 2, "log_every": 1,
       "fid_every": 0, "checkpoint_every": 0, "student_channels": [8, 16], "tsm_iterations": 2, "dm_iterations": 1}


def run_until_step(env, config, pipeline: str, step: str) -> str:
    """Start `zenml pipeline run` and SIGKILL it as soon as the step `step` has started (a node lost mid-run);
    -> what it printed."""
    proc = subprocess.Popen([ZENML, "pipeline", "run", pipeline, "-c", str(config)], env=env, cwd=ROOT,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    lines = []
    try:
        for line in proc.stdout:
            lines.append(line)
            if f"`{step}` has started" in line:
                proc.kill()
                break
    finally:
        proc.kill()
        proc.wait(timeout=60)
    return "".join(lines)


def inspect_runs(env, names: list[str]) -> list[dict]:
    """The named runs of the store (see INSPECT), in one subprocess."""
    info = subprocess.run([sys.executable, "-c", INSPECT, *names], env=env, cwd=ROOT, capture_output=True, text=True,
                          timeout=600)
    assert info.returncode == 0, info.stderr[-3000:]
    return json.loads(info.stdout.strip().splitlines()[-1])


# Runs a list of pipeline runs in one process (each ZenML start-up costs ~15 s of CPU: the tiny runs are most of
# the end-to-end tests' time). argv[1]: JSON [{"pipeline", "config", "flip_pixel"}]; flip_pixel: an npz whose first
# image gets one pixel changed just before that run. Each run's output follows a line "=== run <config> ===".
RUN_BATCH = r"""
import importlib, json, sys
import numpy as np
from components.data.builtin import write_npz
import os
for item in json.loads(sys.argv[1]):
    os.environ.update(item.get("env", {}))
    if item.get("flip_pixel"):
        with np.load(item["flip_pixel"]) as z:
            images, labels = z["images"].copy(), z["labels"].copy()
        images[0, 3, 3, 0] ^= 1
        write_npz(item["flip_pixel"], {"images": images, "labels": labels})
    print(f"=== run {item['config']} ===", flush=True)
    module = importlib.import_module("pipelines." + item["pipeline"])
    getattr(module, item["pipeline"]).with_options(config_path=item["config"])()
"""


def run_batch(env, items: list[dict]) -> dict:
    """RUN_BATCH in one subprocess -> {config: that run's output}; every run must complete."""
    proc = subprocess.run([sys.executable, "-c", RUN_BATCH, json.dumps(items)], env=env, cwd=ROOT,
                          capture_output=True, text=True, timeout=1800)
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-4000:]
    chunks = (proc.stdout + proc.stderr).split("=== run ")
    return {c.split(" ===", 1)[0]: c for c in chunks[1:]}


def tiny_runs(tmp: Path, env: dict, digits_npz: str) -> dict:
    """Seven tiny runs in `env`'s store -> {name: {"output", "info", "data", "data_md5", "run_name"}} (JSON):
    'reject' (dmd2_pipeline; a gate no student passes); then guided_pipeline on the
    same data (upstream steps and teacher from the cache): 'guided' (GUIDED: 4 -> 2 steps; the gate passes and
    promotes) and 'guided_longer' (one more halving, -> 1 step: the rest from the cache); msd_pipeline (MSD: K = 2
    smaller students) 'msd_killed' (killed as MSD_KILL_AT starts) then 'msd' (the same config: only the unfinished
    stage and what follows run; passes, exports the bundle); 'lowdiff' (dmd2_pipeline on the same data, upstream
    from the cache: a LowDiff cascade, passes, exported as fewstep's folder); 'changed' (dmd2_pipeline, one pixel of
    the data changed: everything re-runs; a CTM student; passes, promotes over 'lowdiff' and exports with ONNX).
    The runs go in two batches of one process each (RUN_BATCH), around the killed one (the README's command line,
    `zenml pipeline run <name>`: tests/pipelines/test_short_form.py)."""
    from components.data.versioning import dvc_md5

    data = tmp / "digits.npz"
    shutil.copy(digits_npz, data)
    runs, configs = {}, {}
    for name, gate in (("reject", REJECT_GATE), ("guided", PASS_GATE), ("guided_longer", PASS_GATE),
                       ("msd_killed", PASS_GATE), ("msd", PASS_GATE), ("lowdiff", OPEN_GATE),
                       ("changed", PASS_GATE)):
        config, cfg = tmp / f"{name}.yaml", tiny_config(tmp, data, gate)
        if name == "changed":
            # the same pipeline and steps distil with CTM: distill.method switches the method
            # (params.yaml's DMD2 keys drop out; its method-independent ones stay)
            shared = {k: v for k, v in cfg["parameters"]["distill"].items() if k != "dfake_gen_update_ratio"}
            cfg["parameters"]["distill"] = {**shared, "method": "ctm", "max_heun_steps": 1}
        if name == "lowdiff":                                 # a LowDiff cascade on the data of 'reject'
            cfg["parameters"]["distill"] = {**LOWDIFF, "checkpoint_dir": str(tmp / "checkpoints")}
            cfg["parameters"]["export"] = {"onnx": False}        # ONNX per level: tests/components/test_lowdiff.py
        if name.startswith("guided"):                         # a guided chain on the teacher of 'reject'
            cfg["parameters"]["export"] = {"onnx": name == "guided"}     # its ONNX with w as an input, once
            cfg["parameters"]["distill"] = {**GUIDED, "checkpoint_dir": str(tmp / "checkpoints"),
                                            "target_steps": 1 if name == "guided_longer" else 2}
        if name.startswith("msd"):                            # K students on the same teacher
            cfg["parameters"]["distill"] = {**MSD, "checkpoint_dir": str(tmp / "checkpoints")}
            cfg["parameters"]["export"] = {"onnx": False}        # ONNX per student: tests/components/test_msd.py
        cfg["run_name"] = f"tiny_{name}_{uuid.uuid4().hex[:8]}"      # found again by name, whatever else ran
        config.write_text(yaml.safe_dump(cfg))
        configs[name] = config
        runs[name] = {"data": str(data), "run_name": cfg["run_name"]}

    def pipeline(name):
        return next((f"{m}_pipeline" for m in ("guided", "msd") if name.startswith(m)), "dmd2_pipeline")

    quiet = {**env, "WANDB_MODE": "disabled"}   # W&B is checked on the first run only (the environment wins)
    batches = (("reject", "guided", "guided_longer"), ("msd", "lowdiff", "changed"))
    out = run_batch(env, [{"pipeline": pipeline(n), "config": str(configs[n]),
                           **({} if n == "reject" else {"env": {"WANDB_MODE": "disabled"}})} for n in batches[0]])
    for n in batches[0]:
        runs[n].update(output=out[str(configs[n])], data_md5=dvc_md5(data))
    killed = run_until_step(quiet, configs["msd_killed"], "msd_pipeline", MSD_KILL_AT)
    assert f"`{MSD_KILL_AT}` has started" in killed, killed[-4000:]
    runs["msd_killed"].update(output=killed, data_md5=dvc_md5(data))
    before = dvc_md5(data)
    out = run_batch(quiet, [{"pipeline": pipeline(n), "config": str(configs[n]),
                             **({"flip_pixel": str(data)} if n == "changed" else {})} for n in batches[1]])
    for n in batches[1]:
        runs[n].update(output=out[str(configs[n])], data_md5=dvc_md5(data) if n == "changed" else before)
    for name, info in zip(runs, inspect_runs(env, [r["run_name"] for r in runs.values()])):
        runs[name]["info"] = info
    return runs
