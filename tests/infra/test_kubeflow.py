"""infra/: the offline Kubeflow compile (checked in the compiled YAML, not trusted), the GPU rules, the
image's Dockerfile and the ZenML stack recipes. Every zenml call runs in a process of its own (a forked child
of one driver process, see FORK_DRIVER) on a throwaway store."""
import functools
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest
import yaml

from infra.kubeflow.gpu import GpuRequestError, check_gpu_requests, gpu_request_problems, k8s_memory
from infra.zenml import stacks

ROOT = Path(__file__).resolve().parents[2]
PYTHON = sys.executable
KUBEFLOW_CONFIG = ROOT / "configs" / "dmd2_kubeflow.yaml"
GUIDED_KUBEFLOW_CONFIG = ROOT / "configs" / "guided_kubeflow.yaml"
MSD_KUBEFLOW_CONFIG = ROOT / "configs" / "msd_kubeflow.yaml"
LOWDIFF_DMD2_KUBEFLOW_CONFIG = ROOT / "configs" / "lowdiff_dmd2_kubeflow.yaml"
T2I_KUBEFLOW_CONFIG = ROOT / "configs" / "t2i_kubeflow.yaml"
DOCKERFILE = ROOT / "infra" / "docker" / "Dockerfile"
INFRA_KEYS = {"settings", "environment", "steps", "secrets"}      # what may differ between local and kubeflow
SECRET_NAME = re.compile(r"(^|_)(KEY|TOKEN|SECRET|PASSWORD)(S)?($|_)", re.I)     # WANDB_API_KEY, ..._TOKEN
# what a compile imports, less zenml and the project's modules: imported once by FORK_DRIVER, before its forks
COMPILE_PRELOAD = ["numpy", "torch", "torchvision", "diffusers", "accelerate", "scipy", "sklearn", "pandas", "sympy",
                   "pydantic", "sqlalchemy", "sqlmodel", "alembic", "kfp", "kfp.dsl", "kfp.kubernetes", "kfp.compiler",
                   "kubernetes", "docker", "structlog", "rich", "click", "requests", "cryptography", "jsonschema",
                   "huggingface_hub", "PIL", "opentelemetry"]


def isolated_env(tmp: Path) -> dict:
    """The user's ZenML state out of reach: a temp store and repository, telemetry off, one thread."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("ZENML_STORE_", "ZENML_SECRETS_STORE_"))}
    (tmp / "repo").mkdir(parents=True, exist_ok=True)
    env.update(ZENML_CONFIG_PATH=str(tmp / "config"), ZENML_REPOSITORY_PATH=str(tmp / "repo"),
               ZENML_ANALYTICS_OPT_IN="false", DVC_NO_ANALYTICS="1", WANDB_MODE="offline",
               GX_ANALYTICS_ENABLED="false", AUTO_OPEN_DASHBOARD="false", OMP_NUM_THREADS="1",
               ZENML_LOGGING_COLORS_DISABLED="true")
    return env


def compile_args(config: Path, out: Path, *extra: str) -> list:
    return ["--config", str(config), "--out", str(out), *extra]


def compile_cmd(config: Path, out: Path, *extra: str) -> list:
    """The real CLI (`python -m`), for the cases that fail before zenml is imported (well under a second)."""
    return [PYTHON, "-m", "infra.kubeflow.compile", *compile_args(config, out, *extra)]


# One process runs all the zenml cases of a test: it imports what they share once (~10 s of torch, kfp,
# sqlalchemy... for a compile; zenml for the stack recipes), then forks a child per case, which takes the
# case's environment, writes its stdout/stderr to files and exits with the case's status, as a process of
# its own would. zenml binds its global config and client to a store on first use, not on import, so the
# parent checks that neither exists before each fork: no case sees another's store. The compiles preload no
# zenml at all (compile.main() would start a subprocess if it found it imported). Run from a file, not with
# `python -c`: a frame with no module file at the bottom of the stack (`-c`'s <string>, `-m`'s runpy) makes
# each of kfp's ~200 inspect.stack() calls per compile scan sys.modules, ~8 s of CPU a frame.
FORK_DRIVER = r'''"""argv[1]: JSON {"preload": [modules], "not_imported": [modules], "parallel": bool, "cases":
[{"name", "target": "module:function", "argv", "env", "stdout", "stderr"}]}. Each case runs in a forked child:
exit status function(argv). Prints {name: exit status} as JSON."""
import importlib
import json
import os
import sys
import threading

sys.path[0] = os.getcwd()               # the repository root, as with `python -m` (not this file's folder)


def local_stack_summary(argv):
    from zenml.client import Client

    c = Client()
    print(len(c.list_stacks(name="fewstep_local").items), c.active_stack_model.name,
          len(c.list_stack_components(name="fewstep_local_artifacts").items))
    return 0


def zenml_bound():
    config, client = sys.modules.get("zenml.config.global_config"), sys.modules.get("zenml.client")
    return bool(config and config.GlobalConfiguration._global_config or client and client.Client._global_client)


def threads():
    return len(os.listdir("/proc/self/task")) if os.path.isdir("/proc/self/task") else threading.active_count()


def run(case):
    os.environ.clear()
    os.environ.update(case["env"])
    for fd, path in ((1, case["stdout"]), (2, case["stderr"])):
        new = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
        os.dup2(new, fd)
        os.close(new)
    module, _, function = case["target"].partition(":")
    return getattr(importlib.import_module(module), function)(case["argv"])


spec = json.loads(open(sys.argv[1]).read())
for name in spec["preload"]:         # a speed hint: a child imports what is missing
    try:
        importlib.import_module(name)
    except ImportError:
        pass
assert not [m for m in spec["not_imported"] if m in sys.modules], "preloaded: " + str(spec["not_imported"])
status, running = {}, {}
for case in spec["cases"]:
    assert not zenml_bound(), "zenml is bound to a store: the children would share it"
    assert threads() == 1, "a thread at fork time: a lock it holds would stay locked in the child"
    sys.stdout.flush()
    sys.stderr.flush()
    pid = os.fork()
    if pid == 0:
        raise SystemExit(run(case))     # a normal exit: atexit handlers run, buffers are flushed
    running[pid] = case["name"]
    while running and (not spec["parallel"] or case is spec["cases"][-1]):
        pid, st = os.wait()
        status[running.pop(pid)] = os.waitstatus_to_exitcode(st)
print(json.dumps(status))
'''


def run_forked(tmp: Path, cases: dict, preload: list, env: dict, parallel: bool, not_imported: list = ()) -> dict:
    """cases: name -> (target "module:function", argv, env); FORK_DRIVER runs them (started with `env`) in
    forked children, all at once if `parallel`, else in order. name -> {"rc", "stdout", "stderr"}."""
    tmp.mkdir(parents=True, exist_ok=True)
    files = {name: (tmp / f"{name}.stdout", tmp / f"{name}.stderr") for name in cases}
    (tmp / "fork_driver.py").write_text(FORK_DRIVER)
    (tmp / "cases.json").write_text(json.dumps({
        "preload": preload, "not_imported": list(not_imported), "parallel": parallel,
        "cases": [{"name": name, "target": target, "argv": argv, "env": case_env, "stdout": str(files[name][0]),
                   "stderr": str(files[name][1])} for name, (target, argv, case_env) in cases.items()]}))
    proc = subprocess.Popen([PYTHON, str(tmp / "fork_driver.py"), str(tmp / "cases.json")], cwd=ROOT, env=env,
                            text=True, stdout=subprocess.PIPE, stderr=subprocess.PIPE, start_new_session=True)
    try:
        stdout, stderr = proc.communicate(timeout=900)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)          # the driver and its children: a session of their own
        proc.communicate()
        raise
    assert proc.returncode == 0, stderr[-3000:]
    status = json.loads(stdout.strip().splitlines()[-1])
    return {name: {"rc": status[name], "stdout": out.read_text(), "stderr": err.read_text()}
            for name, (out, err) in files.items()}


FLOW_SCRIPT = """
import json, sys
from pipelines import dmd2_pipeline
flows = []
for distill in json.loads(sys.argv[4]):                            # config distill sections, or null
    p = dmd2_pipeline.copy()
    p.prepare(params_file=sys.argv[1], data={"path": sys.argv[3]},  # an empty .npz: no step runs, none reads it
              **({"distill": distill} if distill else {}))
    flows.append({name: sorted({a.invocation_id for a in inv.input_artifacts.values()} | set(inv.upstream_steps))
                  for name, inv in p.invocations.items()})
open(sys.argv[2], "w").write(json.dumps(flows))
"""

# The distill sections the tests ask pipeline_flow about, wired in one process (the imports take most of it).
FLOW_VARIANTS = ("null", json.dumps(yaml.safe_load((ROOT / "configs" / "lowdiff_dmd2_fashion16.yaml").read_text())
                                    ["parameters"]["distill"], sort_keys=True))


@functools.lru_cache(maxsize=None)
def _pipeline_flows(variants: tuple[str, ...]) -> dict:
    tmp = Path(tempfile.mkdtemp(prefix="flow-"))
    (tmp / "none.npz").touch()                       # the wiring, not the data: a fresh clone has no data/ yet
    try:
        proc = subprocess.run([PYTHON, "-c", FLOW_SCRIPT, str(ROOT / "params.yaml"), str(tmp / "flow.json"),
                               str(tmp / "none.npz"), "[" + ",".join(variants) + "]"], cwd=ROOT,
                              env=isolated_env(tmp), capture_output=True, text=True, timeout=300)
        assert proc.returncode == 0, proc.stderr[-3000:]
        flows = json.loads((tmp / "flow.json").read_text())
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return {v: {step: set(deps) for step, deps in flow.items()} for v, flow in zip(variants, flows)}


def pipeline_flow(distill: str = "null") -> dict:
    """step -> the steps whose outputs it takes, as ZenML records dmd2_pipeline's wiring (pipelines/dmd2_pipeline.py
    and the shared steps of pipelines/wiring.py) when the pipeline function runs - each step invocation's input
    artifacts and explicit upstream steps - in a process of its own on a throwaway store, apart from the Kubeflow
    compile the tests compare with it. `distill`: a distill section (JSON) over params.yaml's."""
    return _pipeline_flows(FLOW_VARIANTS if distill in FLOW_VARIANTS else (distill,))[distill]


def gpu_steps_in_config(cfg: dict) -> set:
    return {s for s, c in (cfg.get("steps") or {}).items()
            if ((c.get("settings") or {}).get("resources") or {}).get("gpu_count", 0) > 0}


def load_kfp(path: Path) -> dict:
    """step name -> {deps, container, platform} from the compiled YAML (pipeline spec + Kubernetes platform spec)."""
    docs = list(yaml.safe_load_all(path.read_text()))
    spec = next(d for d in docs if "root" in d)
    platform = next((d for d in docs if "platforms" in d), {"platforms": {}})
    executors = ((platform["platforms"].get("kubernetes") or {}).get("deploymentSpec") or {}).get("executors") or {}
    tasks = spec["root"]["dag"]["tasks"]
    step = {key: t["taskInfo"]["name"] for key, t in tasks.items()}
    out = {}
    for key, t in tasks.items():
        label = spec["components"][t["componentRef"]["name"]]["executorLabel"]
        out[step[key]] = {"deps": {step[d] for d in t.get("dependentTasks", [])},
                          "container": spec["deploymentSpec"]["executors"][label]["container"],
                          "platform": executors.get(label, {})}
    return out


@pytest.fixture(scope="module")
def compiles(tmp_path_factory, digits_npz):
    """Compiles side by side, forked from one process (see FORK_DRIVER): the kubeflow config as is but with the
    built-in digits from a temp file; the same without distill_step's node selector; `--no-gpus`; the guided chain
    and the MSD fan-out."""
    tmp = tmp_path_factory.mktemp("kfp")
    cfg = yaml.safe_load(KUBEFLOW_CONFIG.read_text())
    cfg["parameters"] = {**cfg["parameters"], "data": {"path": digits_npz}}
    good = tmp / "dmd2_kubeflow.yaml"
    good.write_text(yaml.safe_dump(cfg))
    bad_cfg = yaml.safe_load(good.read_text())
    del bad_cfg["steps"]["distill_step"]["settings"]["orchestrator"]
    no_selector = tmp / "no_selector.yaml"
    no_selector.write_text(yaml.safe_dump(bad_cfg))
    guided_cfg = yaml.safe_load(GUIDED_KUBEFLOW_CONFIG.read_text())
    guided_cfg["parameters"] = {**guided_cfg["parameters"], "data": {"path": digits_npz}}
    guided = tmp / "guided_kubeflow.yaml"
    guided.write_text(yaml.safe_dump(guided_cfg))
    msd_cfg = yaml.safe_load(MSD_KUBEFLOW_CONFIG.read_text())
    msd_cfg["parameters"] = {**msd_cfg["parameters"], "data": {"path": digits_npz}}
    msd = tmp / "msd_kubeflow.yaml"
    msd.write_text(yaml.safe_dump(msd_cfg))
    cascade_cfg = yaml.safe_load(LOWDIFF_DMD2_KUBEFLOW_CONFIG.read_text())
    cascade_cfg["parameters"] = {**cascade_cfg["parameters"], "data": {**cascade_cfg["parameters"]["data"],
                                                                       "path": digits_npz}}
    cascade = tmp / "lowdiff_dmd2_kubeflow.yaml"
    cascade.write_text(yaml.safe_dump(cascade_cfg))
    t2i_cfg = yaml.safe_load(T2I_KUBEFLOW_CONFIG.read_text())
    runs = {"good": (good, ()), "no_selector": (no_selector, ()), "no_gpus": (good, ("--no-gpus",)),
            "guided": (guided, ("--pipeline", "pipelines.guided_pipeline.guided_pipeline")),
            "msd": (msd, ("--pipeline", "pipelines.msd_pipeline.msd_pipeline")), "cascade": (cascade, ()),
            "t2i": (T2I_KUBEFLOW_CONFIG, ("--pipeline", "pipelines.t2i_pipeline.t2i_pipeline"))}
    outs = {name: tmp / name / "out" / "dmd2_pipeline.yaml" for name in runs}
    cases = {name: ("infra.kubeflow.compile:main", compile_args(config, outs[name], *extra),
                    isolated_env(tmp / name / "zenml")) for name, (config, extra) in runs.items()}
    results = run_forked(tmp / "driver", cases, preload=COMPILE_PRELOAD, env=isolated_env(tmp / "driver" / "zenml"),
                         parallel=True, not_imported=["zenml"])
    for name, r in results.items():
        r.update(out=outs[name], config={"guided": guided_cfg, "msd": msd_cfg, "cascade": cascade_cfg,
                                         "t2i": t2i_cfg}.get(name, cfg))
    yield results
    shutil.rmtree(tmp, ignore_errors=True)


@pytest.fixture(scope="module")
def compiled(compiles):
    r = compiles["good"]
    assert r["rc"] == 0, r["stderr"][-3000:]
    return load_kfp(r["out"])


def test_compile_writes_one_complete_file(compiles):
    r = compiles["good"]
    assert r["rc"] == 0, r["stderr"][-3000:]
    assert sorted(p.name for p in r["out"].parent.iterdir()) == [r["out"].name]   # no temp file left
    assert oct(r["out"].stat().st_mode & 0o777) != oct(0o600)
    assert f"written to {r['out']}" in r["stdout"]


def test_compiled_yaml_is_a_valid_kfp_pipeline(compiles):
    """Both documents parse into KFP's own protobuf types (unknown fields are errors)."""
    from google.protobuf import json_format
    from kfp.kubernetes import kubernetes_executor_config_pb2
    from kfp.pipeline_spec import pipeline_spec_pb2

    docs = list(yaml.safe_load_all(compiles["good"]["out"].read_text()))
    assert len(docs) == 2
    json_format.ParseDict(docs[0], pipeline_spec_pb2.PipelineSpec())
    json_format.ParseDict(docs[1], pipeline_spec_pb2.PlatformSpec())
    for config in docs[1]["platforms"]["kubernetes"]["deploymentSpec"]["executors"].values():
        json_format.ParseDict(config, kubernetes_executor_config_pb2.KubernetesExecutorConfig())


def test_one_task_per_pipeline_step(compiled):
    flow = pipeline_flow()
    assert {"distill_step", "teacher_pairs", "teacher_step", "evaluate_student"} <= set(flow)
    assert set(compiled) == set(flow)


def test_task_dependencies_follow_the_data_flow(compiled):
    flow = pipeline_flow()
    for step, upstream in flow.items():
        assert compiled[step]["deps"] == upstream, step
    assert {"teacher_pairs", "teacher_step", "build_dataset"} <= compiled["distill_step"]["deps"]
    assert compiled["teacher_pairs"]["deps"] == {"teacher_step"}


def test_gpu_and_node_selector_only_on_gpu_steps(compiled, compiles):
    cfg = compiles["good"]["config"]
    gpu_steps = gpu_steps_in_config(cfg)
    assert gpu_steps == {"distill_step", "teacher_pairs"}
    for step, task in compiled.items():
        accelerator = task["container"].get("resources", {}).get("accelerator")
        selector = task["platform"].get("nodeSelector", {}).get("labels", {})
        if step in gpu_steps:
            pod = cfg["steps"][step]["settings"]["orchestrator"]["pod_settings"]
            assert accelerator["resourceType"] == "nvidia.com/gpu" and accelerator["resourceCount"] == "1", step
            assert selector == pod["node_selectors"] and selector["accelerator"], step
            assert {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"} in \
                task["platform"]["tolerations"], step
        else:
            assert accelerator is None, step
            assert not task["platform"], step              # no node selector, no toleration


def test_cpu_and_memory_limits_from_the_config(compiled, compiles):
    cfg = compiles["good"]["config"]
    default = cfg["settings"]["resources"]
    for step, task in compiled.items():
        res = {**default, **(((cfg.get("steps") or {}).get(step) or {}).get("settings", {}).get("resources") or {})}
        limits = task["container"]["resources"]
        assert limits["resourceCpuLimit"] == str(res["cpu_count"]), step
        assert limits["resourceMemoryLimit"] == k8s_memory(res["memory"]), step


def test_image_and_environment(compiled, compiles):
    cfg = compiles["good"]["config"]
    image = cfg["settings"]["docker"]["parent_image"]
    for step, task in compiled.items():
        container = task["container"]
        assert container["image"] == image, step
        assert container["args"][-2:] == ["--step_name", step]
        env = {e["name"]: e["value"] for e in container["env"]}
        assert {k: str(v) for k, v in cfg["environment"].items()}.items() <= env.items(), step
        assert not [k for k in env if k.startswith("ZENML_STORE")], step   # the throwaway store stays out
        assert not [k for k in env if SECRET_NAME.search(k)], step


def test_gpu_step_without_accelerator_selector_fails_cleanly(compiles):
    r = compiles["no_selector"]
    assert r["rc"] == 1
    last = r["stderr"].strip().splitlines()[-1]
    assert last.startswith("error: step 'distill_step' asks for gpu_count=1")
    assert "node selector 'accelerator'" in last and "teacher_pairs" not in last
    assert not r["out"].parent.exists() or not any(r["out"].parent.iterdir())


def compiled_gpu_tasks(r: dict, gpu: set) -> dict:
    """The compiled tasks of a compile case that succeeded, after checking that exactly the steps `gpu` ask for a
    GPU in its config and in the compiled file: one each, on a node selector."""
    assert r["rc"] == 0, r["stderr"][-3000:]
    tasks = load_kfp(r["out"])
    assert gpu_steps_in_config(r["config"]) == gpu
    for step, task in tasks.items():
        accelerator = task["container"].get("resources", {}).get("accelerator")
        assert bool(accelerator) == (step in gpu), step
        if step in gpu:
            assert accelerator["resourceCount"] == "1" and task["platform"]["nodeSelector"]["labels"], step
    return tasks


def test_the_guided_chain_compiles_with_a_gpu_task_per_halving(compiles):
    """guided_pipeline with configs/guided_kubeflow.yaml: the guided stage and each halving (16 -> 8 -> 4) are
    tasks of their own, in a chain, each on one GPU; the sweeps over w and everything else on CPU."""
    tasks = compiled_gpu_tasks(compiles["guided"], {"distill_step", "halve_to_8", "halve_to_4"})
    assert "teacher_step" in tasks["distill_step"]["deps"]
    assert "distill_step" in tasks["halve_to_8"]["deps"] and "halve_to_8" in tasks["halve_to_4"]["deps"]
    assert {"guidance_sweep_teacher", "guidance_sweep_16_steps", "guidance_sweep_8_steps",
            "guidance_sweep_4_steps"} <= set(tasks)
    assert "halve_to_4" in tasks["evaluate_student"]["deps"] and "teacher_pairs" not in tasks   # no pairs used
    assert "halve_to_4" in tasks["export_model"]["deps"]


def test_the_msd_fan_out_compiles_to_k_parallel_gpu_tasks(compiles):
    """msd_pipeline with configs/msd_kubeflow.yaml: one task per student (K = distill.students = 4), each on one
    GPU, each depending on the shared upstream steps and on no other branch; the join reads all K."""
    r = compiles["msd"]
    branches = [f"student_{k}_dmd2" for k in range(r["config"]["parameters"]["distill"]["students"])]
    assert len(branches) == 4
    tasks = compiled_gpu_tasks(r, set(branches))
    for b in branches:
        assert {"teacher_step", "teacher_pairs"} <= set(tasks[b]["deps"])
        assert not set(tasks[b]["deps"]) & set(branches)                 # parallel: no branch waits on another
        assert b in tasks["route_students"]["deps"]
    assert "route_students" in tasks["evaluate_student"]["deps"] and "route_students" in tasks["export_model"]["deps"]


def test_the_distilled_cascade_compiles_with_a_gpu_task_per_training_step(compiles):
    """dmd2_pipeline with configs/lowdiff_dmd2_kubeflow.yaml: the cascade's training (distill_step) and DMD2 on it
    (distill_cascade) are two tasks in a chain, each on one GPU; evaluation and export read the distilled cascade."""
    tasks = compiled_gpu_tasks(compiles["cascade"], {"teacher_pairs", "distill_step", "distill_cascade"})
    assert "distill_step" in tasks["distill_cascade"]["deps"]
    assert "distill_cascade" in tasks["evaluate_student"]["deps"] and "distill_cascade" in tasks["export_model"]["deps"]
    assert "distill_step" not in tasks["export_model"]["deps"]


def test_gpu_steps_on_an_orchestrator_without_gpus_fail_cleanly(compiles):
    r = compiles["no_gpus"]
    assert r["rc"] == 1
    last = r["stderr"].strip().splitlines()[-1]
    assert last.startswith("error: ") and "has_gpus: false" in last
    assert "'distill_step'" in last and "'teacher_pairs'" in last
    assert not r["out"].parent.exists() or not any(r["out"].parent.iterdir())


def test_missing_config_file_is_named(tmp_path):
    out = tmp_path / "out.yaml"
    r = subprocess.run(compile_cmd(tmp_path / "nope.yaml", out), cwd=ROOT, env=isolated_env(tmp_path),
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 2
    assert r.stderr.strip() == f"error: config file '{tmp_path / 'nope.yaml'}' not found"
    assert not out.exists()


def test_config_without_an_image_is_refused(tmp_path):
    cfg = yaml.safe_load(KUBEFLOW_CONFIG.read_text())
    del cfg["settings"]["docker"]
    config = tmp_path / "no_image.yaml"
    config.write_text(yaml.safe_dump(cfg))
    r = subprocess.run(compile_cmd(config, tmp_path / "out.yaml"), cwd=ROOT, env=isolated_env(tmp_path),
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 2 and "settings.docker.parent_image is missing" in r.stderr
    assert len(r.stderr.strip().splitlines()) == 1


@pytest.mark.parametrize("local_name, kfp_name", [("dmd2_local.yaml", "dmd2_kubeflow.yaml"),
                                                   ("dmd2_4step_local.yaml", "dmd2_4step_kubeflow.yaml"),
                                                   ("ctm_local.yaml", "ctm_kubeflow.yaml"),
                                                   ("lowdiff_fashion16.yaml", "lowdiff_kubeflow.yaml"),
                                                   ("lowdiff_dmd2_fashion16.yaml", "lowdiff_dmd2_kubeflow.yaml")])
def test_kubeflow_config_differs_from_local_only_in_infrastructure(local_name, kfp_name):
    local = yaml.safe_load((ROOT / "configs" / local_name).read_text())
    kfp = yaml.safe_load((ROOT / "configs" / kfp_name).read_text())
    distill = local["parameters"].get("distill") or {}
    assert kfp["parameters"] == local["parameters"] and kfp["parameters"]["params_file"] == "params.yaml"
    assert set(kfp) ^ set(local) <= INFRA_KEYS
    reference = yaml.safe_load(KUBEFLOW_CONFIG.read_text())        # one set of infrastructure keys ...
    extra = {s: c for s, c in kfp["steps"].items() if s not in reference["steps"]}
    kept = {**kfp, "steps": {s: c for s, c in kfp["steps"].items() if s not in extra}}
    assert {k: v for k, v in kept.items() if k in INFRA_KEYS} == {k: v for k, v in reference.items() if k in INFRA_KEYS}
    assert set(extra) == ({"distill_cascade"} if "cascade_dmd2" in distill else set())   # ... and DMD2 on a cascade
    assert all(c == reference["steps"]["distill_step"] for c in extra.values())          # on distill_step's GPU
    assert {k: v for k, v in kfp.items() if k not in INFRA_KEYS} == {k: v for k, v in local.items()
                                                                      if k not in INFRA_KEYS}
    # cascade_dmd2 is the one distill key that adds a step to dmd2_pipeline (distill_cascade)
    flow = pipeline_flow(json.dumps(distill, sort_keys=True) if "cascade_dmd2" in distill else "null")
    for step, conf in kfp["steps"].items():
        assert step in flow and set(conf) == {"settings"}, step
    docker = kfp["settings"]["docker"]
    assert docker["skip_build"] is True and docker["parent_image"]


@pytest.mark.parametrize("image, registry", [("registry.example.com/fewstep:0.1.0", "registry.example.com"),
                                             ("ghcr.io/acme/fewstep@sha256:ab", "ghcr.io/acme"),
                                             ("localhost:5000/fewstep", "localhost:5000"),
                                             ("fewstep:dev", "docker.io/library")])
def test_registry_of_image(image, registry):
    from infra.kubeflow.compile import registry_of

    assert registry_of(image) == registry


# --- GPU rules and quantities (pure) ---

def test_gpu_request_rules():
    sel = {"accelerator": "nvidia-tesla-a100"}
    assert gpu_request_problems({"a": (1, sel), "b": (0, {}), "c": (None, {})}, has_gpus=True, orchestrator="o") == []
    [msg] = gpu_request_problems({"a": (2, {"pool": "x"})}, has_gpus=True, orchestrator="o")
    assert "step 'a' asks for gpu_count=2" in msg and "steps.a.settings.orchestrator.pod_settings" \
        ".node_selectors.accelerator" in msg
    [msg] = gpu_request_problems({"a": (1, sel)}, has_gpus=False, orchestrator="kfp")
    assert "orchestrator 'kfp' has no GPUs" in msg
    with pytest.raises(GpuRequestError, match="^step 'a'.*; step 'b'") as err:
        check_gpu_requests({"a": (1, {}), "b": (1, {})}, has_gpus=True, orchestrator="o")
    assert "\n" not in str(err.value)


@pytest.mark.parametrize("zenml, k8s", [("16GB", "16G"), ("512MiB", "512Mi"), ("1TB", "1T"), ("64KiB", "64Ki")])
def test_k8s_memory(zenml, k8s):
    assert k8s_memory(zenml) == k8s


def test_k8s_memory_rejects_nonsense():
    with pytest.raises(ValueError, match="16 GB"):
        k8s_memory("16 GB x")


# --- the image ---

def dockerfile_instructions():
    text = re.sub(r"\\\n", " ", DOCKERFILE.read_text())
    return [(m.group(1).upper(), m.group(2).strip()) for m in re.finditer(r"^\s*([A-Za-z]+)\s+(.*)$", text, re.M)
            if not m.group(0).lstrip().startswith("#")]


def test_dockerfile_is_cuda_python311_nonroot_without_secrets():
    ins = dockerfile_instructions()
    froms = [arg for op, arg in ins if op == "FROM"]
    assert len(froms) == 1 and re.match(r"nvidia/cuda:\d+\.\d+(\.\d+)?-(cudnn-)?runtime-ubuntu", froms[0])
    runs = [i for i, (op, arg) in enumerate(ins) if op == "RUN"]
    installs = [i for i in runs if "pip install" in ins[i][1]]
    users = [(i, arg) for i, (op, arg) in enumerate(ins) if op == "USER"]
    assert installs and users and users[-1][0] > max(installs)
    assert users[-1][1].split(":")[0] not in ("root", "0")
    assert any(op == "WORKDIR" and arg == "/app" for op, arg in ins)
    assert any(op == "RUN" and "python3.11" in arg for op, arg in ins)
    assert any(op == "RUN" and "pip install --no-deps ." in arg for op, arg in ins)
    env_names = [tok.split("=")[0] for op, arg in ins if op == "ENV" for tok in arg.split() if "=" in tok]
    assert "ZENML_ANALYTICS_OPT_IN" in env_names
    assert not [n for n in env_names if SECRET_NAME.search(n)]
    assert not [arg for op, arg in ins if op == "ARG" and SECRET_NAME.search(arg.split("=")[0])]


def test_image_named_in_config_and_readme():
    image = yaml.safe_load(KUBEFLOW_CONFIG.read_text())["settings"]["docker"]["parent_image"]
    readme = (ROOT / "infra" / "docker" / "README.md").read_text()
    assert image in readme and "docker build -f infra/docker/Dockerfile" in readme and "docker push" in readme
    assert "torch==2.14.1" in (ROOT / "pyproject.toml").read_text()     # the image installs pyproject's pins


# --- ZenML stacks ---

def test_local_stack_registers_idempotently(tmp_path):
    """`stacks local --set` twice, then a read-back: three processes on one store, forked from one that has
    imported zenml (not bound it to a store; see FORK_DRIVER)."""
    env = isolated_env(tmp_path)
    stack_run = ("infra.zenml.stacks:main", ["local", "--set"], env)
    r = run_forked(tmp_path / "driver", {"first": stack_run, "second": stack_run,
                                         "check": ("__main__:local_stack_summary", [], env)},
                   preload=["zenml.cli.cli", "zenml.client", "zenml.zen_stores.sql_zen_store", "infra.zenml.stacks"],
                   env=env, parallel=False)
    for attempt, name in ((1, "first"), (2, "second")):
        assert r[name]["rc"] == 0, r[name]["stderr"][-3000:]
        assert "stack 'fewstep_local' is registered and active" in r[name]["stdout"]
        verb = "register" if attempt == 1 else "update"
        assert f"+ zenml stack {verb} fewstep_local -a fewstep_local_artifacts -o fewstep_local_orchestrator" \
            in r[name]["stdout"]
    assert r["check"]["rc"] == 0, r["check"]["stderr"][-3000:]
    assert r["check"]["stdout"].split()[-3:] == ["1", "fewstep_local", "1"]


@pytest.fixture
def stack_env(monkeypatch):
    for key in [k for k in os.environ if k.startswith(("FEWSTEP_", "AWS_", "WANDB_API_KEY", "DRY_RUN"))]:
        monkeypatch.delenv(key)
    return monkeypatch


def test_kubeflow_stack_dry_run(stack_env, capsys):
    for key, value in {"WANDB_API_KEY": "sk-not-a-real-key-123", "AWS_ACCESS_KEY_ID": "AKIAEXAMPLE",
                       "AWS_SECRET_ACCESS_KEY": "aws-secret-example", "FEWSTEP_S3_ENDPOINT": "http://minio:9000",
                       "FEWSTEP_KUBE_CONTEXT": "gpu-cluster", "FEWSTEP_REGISTRY": "ghcr.io/acme"}.items():
        stack_env.setenv(key, value)
    assert stacks.main(["kubeflow", "--dry-run", "--set"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("#!/usr/bin/env bash") and "set -euo pipefail" in out
    for part in ("zenml orchestrator flavor register infra.kubeflow.flavor.FewstepKubeflowOrchestratorFlavor",
                 "zenml orchestrator register fewstep_kfp -f fewstep_kubeflow --kubeflow_namespace=kubeflow "
                 "--kubernetes_context=gpu-cluster",
                 "zenml artifact-store register fewstep_artifacts -f s3 --path=s3://fewstep-artifacts "
                 "'--client_kwargs={\"endpoint_url\": \"http://minio:9000\"}' --secret fewstep_s3",
                 "zenml container-registry register fewstep_registry -f default --uri=ghcr.io/acme",
                 "zenml image-builder register fewstep_image_builder -f local",
                 "zenml experiment-tracker register fewstep_wandb -f wandb '--api_key={{wandb.api_key}}'",
                 'zenml secret create wandb --api_key="$WANDB_API_KEY" --WANDB_API_KEY="$WANDB_API_KEY"',
                 "zenml stack register fewstep_kubeflow -a fewstep_artifacts -c fewstep_registry "
                 "-i fewstep_image_builder -o fewstep_kfp -e fewstep_wandb --secret wandb",
                 "zenml stack update fewstep_kubeflow", "zenml stack set fewstep_kubeflow"):
        assert part in out, part
    for secret in ("sk-not-a-real-key-123", "AKIAEXAMPLE", "aws-secret-example"):
        assert secret not in out


def test_kubernetes_stack_dry_run_from_env(stack_env, capsys):
    stack_env.setenv("DRY_RUN", "1")
    stack_env.setenv("FEWSTEP_ARTIFACT_FLAVOR", "gcp")
    assert stacks.main(["kubernetes"]) == 0
    out = capsys.readouterr().out
    assert "zenml orchestrator register fewstep_k8s -f kubernetes --kubernetes_namespace=fewstep" in out
    assert "zenml artifact-store register fewstep_artifacts -f gcp --path=gs://fewstep-artifacts" in out
    assert "zenml stack register fewstep_kubernetes" in out
    assert "secret create" not in out and "fewstep_wandb" not in out      # no key: no tracker
    assert "# note: WANDB_API_KEY is not set" in out


def test_stack_bad_parameter_is_one_line(stack_env, capsys):
    stack_env.setenv("FEWSTEP_ARTIFACT_FLAVOR", "azure")
    assert stacks.main(["kubeflow", "--dry-run"]) == 1
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "FEWSTEP_ARTIFACT_FLAVOR 'azure'" in err


def test_guided_kubeflow_config_differs_from_local_only_in_infrastructure():
    """configs/guided_kubeflow.yaml: configs/guided_local.yaml's parameters, dmd2_kubeflow.yaml's image, resources
    and environment; its own `steps` (the guided stage and each halving on a GPU: compiled above)."""
    local = yaml.safe_load((ROOT / "configs" / "guided_local.yaml").read_text())
    kfp = yaml.safe_load(GUIDED_KUBEFLOW_CONFIG.read_text())
    reference = yaml.safe_load(KUBEFLOW_CONFIG.read_text())
    assert kfp["parameters"] == local["parameters"] and set(kfp) ^ set(local) <= INFRA_KEYS
    assert {k: kfp[k] for k in ("settings", "environment")} == {k: reference[k] for k in ("settings", "environment")}
    assert set(kfp["steps"]) == {"distill_step", "halve_to_8", "halve_to_4"}
    assert all(c["settings"] == reference["steps"]["distill_step"]["settings"] for c in kfp["steps"].values())


def test_t2i_pipeline_compiles_with_gpus_sized_for_sd15(compiles):
    """The text-to-image pipeline's DAG: the built-in branch's steps, distill after the teacher and the latent cache,
    a GPU (and the 80 GB node pool) on the distill step, the configured GPU steps only."""
    r = compiles["t2i"]
    assert r["rc"] == 0, r["stderr"][-3000:]
    tasks = load_kfp(r["out"])
    assert {"t2i_captions", "t2i_text_encoder", "t2i_vae", "t2i_latents", "t2i_teacher", "t2i_feature_net",
            "t2i_distill", "t2i_evaluate", "t2i_gate", "t2i_export"} == set(tasks)
    assert {"t2i_teacher", "t2i_latents"} <= tasks["t2i_distill"]["deps"]
    gpu = {name for name, t in tasks.items() if (t["container"].get("resources") or {}).get("accelerator")}
    assert gpu == gpu_steps_in_config(r["config"]) == {"t2i_latents", "t2i_teacher", "t2i_distill", "t2i_evaluate"}
    assert tasks["t2i_distill"]["platform"]["nodeSelector"]["labels"] == {"accelerator": "nvidia-a100-80gb"}
    limits = tasks["t2i_distill"]["container"]["resources"]
    assert limits["accelerator"]["resourceCount"] == "1" and limits["resourceMemoryLimit"] == k8s_memory("96GB")
