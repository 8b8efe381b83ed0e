"""infra/cronjob.py (the retrain CronJob: render, patch, server-side apply) and infra/retrain.py
(the retrain decision CLI and ZenML schedules).

The cluster is a fake DynamicClient (infra.cronjob.make_client is replaced); ZenML runs in a
throwaway store (ZENML_CONFIG_PATH / ZENML_REPOSITORY_PATH in a temp folder), never the user's."""
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from infra import cronjob as sched
from infra.cronjob import FIELD_MANAGER, Options, main, render

ROOT = Path(__file__).resolve().parents[2]


def dry_run(capsys, *args):
    assert main(["apply", "--dry-run", *args]) == 0
    return [d for d in yaml.safe_load_all(capsys.readouterr().out) if d]


def by_kind(objs):
    return {o["kind"]: o for o in objs}


def pod_of(objs):
    return by_kind(objs)["CronJob"]["spec"]["jobTemplate"]["spec"]["template"]["spec"]


def secret_names(objs):
    return {e["name"]: e["valueFrom"]["secretKeyRef"]["name"] for e in pod_of(objs)["containers"][0]["env"]
            if "valueFrom" in e}


# ------------------------------------------------------------------------------------- dry run

def test_dry_run_defaults(capsys):
    objs = dry_run(capsys)
    assert [o["kind"] for o in objs] == ["Namespace", "ServiceAccount", "Role", "RoleBinding", "CronJob"]
    assert by_kind(objs)["CronJob"]["spec"]["schedule"] == "0 3 * * 1"
    assert all(o["metadata"]["labels"]["app.kubernetes.io/managed-by"] == "fewstep" for o in objs)
    assert pod_of(objs)["containers"][0]["resources"]["limits"]["nvidia.com/gpu"] == 1


def test_dry_run_patches(capsys):
    objs = dry_run(capsys, "--cron", "30 4 * * SUN", "--namespace", "ml-team", "--image",
                   "registry.example:5000/team/fewstep:2.0", "--wandb-secret", "wb", "--storage-secret", "s3-creds",
                   "--zenml-secret", "zen", "--gpus", "2", "--config", "configs/other.yaml")
    kinds = by_kind(objs)
    assert kinds["CronJob"]["spec"]["schedule"] == "30 4 * * SUN"
    assert kinds["Namespace"]["metadata"]["name"] == "ml-team"
    assert all(o["metadata"]["namespace"] == "ml-team" for o in objs if o["kind"] != "Namespace")
    assert kinds["RoleBinding"]["subjects"][0]["namespace"] == "ml-team"
    container = pod_of(objs)["containers"][0]
    assert container["image"] == "registry.example:5000/team/fewstep:2.0"
    assert container["args"] == ["--config", "configs/other.yaml"]
    assert container["resources"]["limits"]["nvidia.com/gpu"] == 2
    refs = secret_names(objs)
    assert refs["WANDB_API_KEY"] == "wb"
    assert refs["AWS_ACCESS_KEY_ID"] == refs["AWS_SECRET_ACCESS_KEY"] == "s3-creds"
    assert refs["ZENML_STORE_URL"] == refs["ZENML_STORE_API_KEY"] == "zen"


def test_six_field_cron_with_zero_seconds_is_converted(capsys):
    assert by_kind(dry_run(capsys, "--cron", "0 15 2 * * 3"))["CronJob"]["spec"]["schedule"] == "15 2 * * 3"


def test_zero_gpus_removes_gpu_scheduling(capsys):
    pod = pod_of(dry_run(capsys, "--gpus", "0"))
    resources = pod["containers"][0]["resources"]
    assert "nvidia.com/gpu" not in resources.get("limits", {}) and "nvidia.com/gpu" not in resources.get("requests", {})
    assert resources["limits"]["memory"] == "32Gi"              # the other limits stay
    assert not any(t.get("key") == "nvidia.com/gpu" for t in pod.get("tolerations", []))
    assert "nvidia.com/gpu.present" not in pod.get("nodeSelector", {})


def test_rendered_objects_validate_strict():
    kv = pytest.importorskip("kubernetes_validate.utils")
    for gpus in (0, 1):
        for obj in render(Options(cron="0 3 * * 1", namespace="ml", gpus=gpus, wandb_secret="wb")):
            kv.validate(obj, "1.30.0", strict=True)


def test_dry_run_needs_no_cluster(tmp_path):
    """python -m infra.cronjob ... --dry-run with no kubeconfig at all."""
    env = dict(os.environ, KUBECONFIG=str(tmp_path / "missing"), HOME=str(tmp_path))
    env.pop("KUBERNETES_SERVICE_HOST", None)
    out = subprocess.run([sys.executable, "-m", "infra.cronjob", "apply", "--dry-run", "--cron", "0 3 * * 1"],
                         cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert len([d for d in yaml.safe_load_all(out.stdout) if d]) == 5


# ---------------------------------------------------------------------------------- bad input

@pytest.mark.parametrize("args, words", [
    (["--cron", "0 3 * *"], "--cron: cron expression '0 3 * *': 4 fields; expected 5"),
    (["--cron", "0 3 * * 8"], "field 5 (day of week) '8'"),
    (["--cron", "30 0 3 * * 1"], "field 1 (second) '30'"),
    (["--wandb-secret", ""], "--wandb-secret: empty"),
    (["--storage-secret", " "], "--storage-secret: empty"),
    (["--wandb-secret", "Bad_Name"], "--wandb-secret 'Bad_Name': expected a Secret name"),
    (["--gpus", "-1"], "--gpus -1: expected a whole number >= 0"),
    (["--gpus", "two"], "--gpus 'two': expected a whole number"),
    (["--namespace", "Fewstep"], "--namespace 'Fewstep'"),
    (["--image", ""], "--image ''"),
])
def test_bad_input_one_line(capsys, args, words):
    assert main(["apply", "--dry-run", *args]) == 2
    err = capsys.readouterr().err
    assert words in err and err.count("\n") == 1 and err.startswith("error: ")


def test_no_kubeconfig_is_one_line(capsys, monkeypatch, tmp_path):
    monkeypatch.setenv("KUBECONFIG", str(tmp_path / "missing"))
    monkeypatch.delenv("KUBERNETES_SERVICE_HOST", raising=False)
    assert main(["show"]) == 2
    err = capsys.readouterr().err
    assert "no Kubernetes configuration" in err and err.count("\n") == 1


# ------------------------------------------------------------------------- a fake cluster

def _api_error(status, reason):
    from kubernetes.client.exceptions import ApiException
    from kubernetes.dynamic.exceptions import ConflictError, NotFoundError

    exc = ApiException(status=status, reason=reason)
    return {404: NotFoundError, 409: ConflictError}[status](exc)


class FakeResource:
    def __init__(self, cluster, api_version, kind):
        self.cluster, self.api_version, self.kind = cluster, api_version, kind

    def _key(self, name, namespace):
        return (self.kind, namespace, name)

    def get(self, name=None, namespace=None):
        obj = self.cluster.objects.get(self._key(name, namespace))
        if obj is None:
            raise _api_error(404, "Not Found")
        return obj

    def server_side_apply(self, body=None, name=None, namespace=None, field_manager=None, force_conflicts=None):
        self.cluster.calls.append(("apply", self.kind, name, namespace, field_manager, force_conflicts))
        if self.cluster.conflict:
            raise _api_error(409, "Conflict")
        self.cluster.objects[self._key(name, namespace)] = body
        return body

    def delete(self, name=None, namespace=None, propagation_policy=None):
        self.cluster.calls.append(("delete", self.kind, name, namespace))
        del self.cluster.objects[self._key(name, namespace)]


class FakeCluster:
    """What infra.cronjob uses of kubernetes.dynamic.DynamicClient: resources.get(...).get /
    server_side_apply / delete."""

    def __init__(self, secrets=None):
        self.objects, self.calls, self.conflict = {}, [], False
        for (namespace, name), data in (secrets or {}).items():
            self.objects[("Secret", namespace, name)] = {"metadata": {"name": name}, "data": data}
        self.resources = self

    def get(self, api_version=None, kind=None):     # client.resources.get(api_version=..., kind=...)
        return FakeResource(self, api_version, kind)


ALL_SECRETS = {("fewstep", "wandb"): {"WANDB_API_KEY": "eA=="},
               ("fewstep", "artifact-store"): {"AWS_ACCESS_KEY_ID": "eA==", "AWS_SECRET_ACCESS_KEY": "eA=="},
               ("fewstep", "zenml-server"): {"ZENML_STORE_URL": "eA==", "ZENML_STORE_API_KEY": "eA=="}}


@pytest.fixture
def cluster(monkeypatch):
    fake = FakeCluster(ALL_SECRETS)
    monkeypatch.setattr(sched, "make_client", lambda context=None: fake)
    return fake


def test_apply_server_side_applies_every_object(cluster, capsys):
    assert main(["apply", "--cron", "0 5 * * 2"]) == 0
    objs = render(Options(cron="0 5 * * 2"))
    applied = [c for c in cluster.calls if c[0] == "apply"]
    assert [(c[1], c[2]) for c in applied] == [(o["kind"], o["metadata"]["name"]) for o in objs]
    assert all(c[4] == FIELD_MANAGER == "fewstep" and c[5] is None for c in applied)
    assert [c[3] for c in applied] == [None] + ["fewstep"] * 4           # the Namespace is cluster-scoped
    assert cluster.objects[("CronJob", "fewstep", "fewstep-retrain")]["spec"]["schedule"] == "0 5 * * 2"
    assert capsys.readouterr().out.count("applied ") == 5


def test_reapply_updates(cluster):
    assert main(["apply"]) == 0
    assert main(["apply", "--cron", "0 6 * * 3", "--force-conflicts"]) == 0
    second = [c for c in cluster.calls if c[0] == "apply"][5:]
    assert len(second) == 5 and all(c[5] is True for c in second)
    assert cluster.objects[("CronJob", "fewstep", "fewstep-retrain")]["spec"]["schedule"] == "0 6 * * 3"


def test_apply_refuses_a_missing_secret(monkeypatch, capsys):
    fake = FakeCluster({k: v for k, v in ALL_SECRETS.items() if k[1] != "wandb"})
    monkeypatch.setattr(sched, "make_client", lambda context=None: fake)
    assert main(["apply"]) == 2
    err = capsys.readouterr().err
    assert "Secret 'wandb' not found in namespace 'fewstep'" in err
    assert "kubectl -n fewstep create secret generic wandb --from-literal=WANDB_API_KEY=<value>" in err
    assert err.count("\n") == 1 and not [c for c in fake.calls if c[0] == "apply"]


def test_apply_checks_renamed_secret_in_its_namespace(monkeypatch, capsys):
    fake = FakeCluster(ALL_SECRETS)
    monkeypatch.setattr(sched, "make_client", lambda context=None: fake)
    assert main(["apply", "--namespace", "other", "--storage-secret", "s3"]) == 2
    assert "Secret 'wandb' not found in namespace 'other'" in capsys.readouterr().err
    fake2 = FakeCluster({("other", n if n != "artifact-store" else "s3"): d for (_, n), d in ALL_SECRETS.items()})
    monkeypatch.setattr(sched, "make_client", lambda context=None: fake2)
    assert main(["apply", "--namespace", "other", "--storage-secret", "s3"]) == 0


def test_apply_refuses_a_secret_without_its_key(monkeypatch, capsys):
    secrets = dict(ALL_SECRETS)
    secrets[("fewstep", "artifact-store")] = {"AWS_ACCESS_KEY_ID": "eA=="}
    fake = FakeCluster(secrets)
    monkeypatch.setattr(sched, "make_client", lambda context=None: fake)
    assert main(["apply"]) == 2
    err = capsys.readouterr().err
    assert "Secret 'artifact-store' in namespace 'fewstep' has no key AWS_SECRET_ACCESS_KEY" in err


def test_apply_conflict_suggests_force(cluster, capsys):
    cluster.conflict = True
    assert main(["apply"]) == 2
    err = capsys.readouterr().err
    assert "409" in err and "--force-conflicts" in err and err.count("\n") == 1


def test_delete_removes_what_it_owns_and_keeps_the_namespace(cluster, capsys):
    assert main(["apply"]) == 0
    cluster.objects[("Role", "fewstep", "fewstep-retrain")]["metadata"]["labels"] = {}   # someone else's now
    cluster.calls.clear()
    assert main(["delete"]) == 0
    deleted = [(c[1], c[2]) for c in cluster.calls if c[0] == "delete"]
    assert deleted == [("CronJob", "fewstep-retrain"), ("RoleBinding", "fewstep-retrain"),
                       ("ServiceAccount", "fewstep-retrain")]
    out = capsys.readouterr().out
    assert "kept namespace/fewstep" in out and "skipped role/fewstep-retrain: not managed by fewstep" in out
    assert ("Namespace", None, "fewstep") in cluster.objects and ("Secret", "fewstep", "wandb") in cluster.objects
    assert main(["delete"]) == 0                                   # again: nothing left, no error
    assert "absent cronjob/fewstep-retrain" in capsys.readouterr().out


def test_show(cluster, capsys):
    assert main(["show"]) == 0
    assert "cronjob/fewstep-retrain: absent" in capsys.readouterr().out
    main(["apply"])
    capsys.readouterr()
    assert main(["show"]) == 0
    assert "cronjob/fewstep-retrain: present, schedule '0 3 * * 1', last run never" in capsys.readouterr().out


def test_dry_run_never_builds_a_client(monkeypatch, capsys):
    def boom(context=None):
        raise AssertionError("dry run contacted a cluster")
    monkeypatch.setattr(sched, "make_client", boom)
    for action in ("apply", "delete", "show"):
        assert main([action, "--dry-run"]) == 0
    capsys.readouterr()


# ---------------------------------------------------------------------- infra.retrain (ZenML)

@pytest.fixture(scope="module")
def zenml_tmp_env(tmp_path_factory):
    """A throwaway ZenML store; the repository path is an empty folder, so the repo's .zen is not read."""
    tmp = tmp_path_factory.mktemp("zenml-retrain")
    (tmp / "repo").mkdir()
    return dict(os.environ, ZENML_CONFIG_PATH=str(tmp / "config"), ZENML_REPOSITORY_PATH=str(tmp / "repo"),
                ZENML_ANALYTICS_OPT_IN="false", DVC_NO_ANALYTICS="1", WANDB_MODE="offline",
                GX_ANALYTICS_ENABLED="false", AUTO_OPEN_DASHBOARD="false", ZENML_LOGGING_COLORS_DISABLED="true",
                OMP_NUM_THREADS="1")


def retrain_cli(env, *args):
    return subprocess.run([sys.executable, "-m", "infra.retrain", *args], cwd=ROOT, env=env, capture_output=True,
                          text=True, timeout=600)


@pytest.fixture
def run_config(tmp_path, digits_npz):
    cfg = tmp_path / "run.yaml"
    cfg.write_text(yaml.safe_dump({"parameters": {"params_file": str(ROOT / "params.yaml"),
                                                  "data": {"path": digits_npz}}}))
    return cfg


def test_retrain_dry_run_without_production_model(zenml_tmp_env, run_config):
    out = retrain_cli(zenml_tmp_env, "--config", str(run_config), "--dry-run")
    assert out.returncode == 0, out.stderr[-2000:]
    assert "retrain: yes (no production model)" in out.stdout
    assert f"dry run: would run dmd2_pipeline with {run_config}" in out.stdout
    assert "running dmd2_pipeline" not in out.stdout


def test_schedule_refused_on_local_stack(zenml_tmp_env, run_config):
    out = retrain_cli(zenml_tmp_env, "schedule", "--cron", "0 3 * * 1", "--config", str(run_config))
    assert out.returncode == 2
    err = out.stderr.strip().splitlines()[-1]
    assert err.startswith("error: the active stack 'default' uses orchestrator 'default' (flavor 'local'), which "
                          "does not support schedules")


def test_retrain_up_to_date_and_runs_when_changed(monkeypatch, capsys, run_config):
    """The CLI's branches with ZenML replaced: up to date -> exit 0, nothing run; changed -> the pipeline runs."""
    from infra import retrain
    from infra.retrain_decision import ModelVersions

    cfg = retrain.load_run_config(str(run_config))
    current = retrain.current_versions(cfg)
    ran = []
    monkeypatch.setattr(retrain, "run_pipeline", lambda config, schedule=None: ran.append((config, schedule)))
    same = ModelVersions(data_dvc_md5=current.data_dvc_md5, data_md5=current.data_md5, teacher=current.teacher,
                         teacher_config=current.teacher_config, label="dmd2_student version 7")
    monkeypatch.setattr(retrain, "production_versions", lambda client=None: same)
    assert retrain.main(["--config", str(run_config)]) == 0
    out = capsys.readouterr().out
    assert "retrain: no (unchanged" in out and "up to date" in out and not ran

    older = ModelVersions(data_dvc_md5=current.data_dvc_md5, data_md5="0123456789abcdef", teacher=current.teacher,
                          label="dmd2_student version 6")
    monkeypatch.setattr(retrain, "production_versions", lambda client=None: older)
    assert retrain.main(["--config", str(run_config)]) == 0
    assert f"data changed 01234567->{current.data_md5[:8]}" in capsys.readouterr().out
    assert ran == [(str(run_config), None)]


def test_retrain_schedule_converts_for_kubeflow(monkeypatch, capsys, run_config):
    from infra import retrain

    made = []
    monkeypatch.setattr(retrain, "orchestrator_info", lambda: ("kf", "kfp", "fewstep_kubeflow", True, 6))
    monkeypatch.setattr(retrain, "run_pipeline", lambda config, schedule=None: made.append(schedule))
    assert retrain.main(["schedule", "--cron", "0 3 * * 1", "--config", str(run_config)]) == 0
    assert made[0].cron_expression == "0 0 3 * * 1"                     # KFP: 6 fields, seconds first
    monkeypatch.setattr(retrain, "orchestrator_info", lambda: ("k8s", "k8s", "kubernetes", True, 5))
    assert retrain.main(["schedule", "--cron", "0 0 3 * * 1", "--config", str(run_config)]) == 0
    assert made[1].cron_expression == "0 3 * * 1"                       # CronJob: 5 fields
    assert retrain.main(["schedule", "--cron", "0 3 * * 9", "--config", str(run_config)]) == 2
    assert "--cron: cron expression '0 3 * * 9': field 5 (day of week)" in capsys.readouterr().err
    assert len(made) == 2


def test_cron_fields_by_orchestrator_class():
    """Kubeflow (and subclasses such as the project's fewstep_kubeflow flavor): 6; Kubernetes and others: 5."""
    pytest.importorskip("kfp")
    from zenml.integrations.kubeflow.orchestrators.kubeflow_orchestrator import KubeflowOrchestrator
    from zenml.integrations.kubernetes.orchestrators.kubernetes_orchestrator import KubernetesOrchestrator
    from zenml.orchestrators.local.local_orchestrator import LocalOrchestrator

    from infra.retrain import cron_fields_of

    class Subclassed(KubeflowOrchestrator):
        pass

    assert cron_fields_of(KubeflowOrchestrator) == cron_fields_of(Subclassed) == 6
    assert cron_fields_of(KubernetesOrchestrator) == cron_fields_of(LocalOrchestrator) == 5


def test_retrain_bad_config_one_line(capsys, tmp_path):
    from infra import retrain

    assert retrain.main(["--config", str(tmp_path / "nope.yaml")]) == 2
    err = capsys.readouterr().err
    assert "--config '" in err and "no such file" in err and err.count("\n") == 1


FAKE_RUN = '''
"""Stand-ins for dmd2_pipeline runs (the same lineage metadata and teacher_step metadata, a version of the
same ZenML model, promoted to production), each followed by `python -m infra.retrain` in this process:
one process for the whole story instead of four."""
import contextlib, io, json, sys
from zenml import Model, get_step_context, log_metadata, pipeline, step
from zenml.client import Client
from components.data.versioning import run_lineage
from infra import retrain
from infra.retrain import load_run_config
from steps.names import MODEL_NAME

@step
def record_lineage(lineage: dict) -> None:
    log_metadata(metadata={"lineage": lineage, **{k: v for k, v in lineage.items() if not isinstance(v, dict)}},
                 run_id_name_or_prefix=get_step_context().pipeline_run.id)

@step
def teacher_step() -> int:
    log_metadata({"teacher_sha256": "0" * 64})
    return 0

@pipeline(model=Model(name=MODEL_NAME), enable_cache=False)
def fake_dmd2(lineage: dict):
    record_lineage(lineage)
    teacher_step()

def fake_run(config, teacher_override):
    cfg = load_run_config(config)
    cfg["teacher"].update(teacher_override)
    run = fake_dmd2(run_lineage(cfg, None))
    Client().get_pipeline_run(run.id).model_version.set_stage("production", force=True)

def retrain_cli(*args):
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        rc = retrain.main(list(args))
    return {"rc": rc, "stdout": out.getvalue(), "stderr": err.getvalue()}

if __name__ == "__main__":
    config = sys.argv[1]
    fake_run(config, {})
    unchanged = retrain_cli("--config", config)
    fake_run(config, {"train_steps": 7})                # the new production version had another teacher
    changed = retrain_cli("--config", config, "--dry-run")
    print(json.dumps({"unchanged": unchanged, "changed": changed}))
'''


def test_retrain_reads_the_production_model_from_zenml(zenml_tmp_env, run_config, tmp_path):
    """production_versions against a real (temp) ZenML store: unchanged, then a changed teacher."""
    script = tmp_path / "fake_run.py"
    script.write_text(FAKE_RUN)
    # the stand-in pipeline lives in tmp_path: its own folder is the source root, not the repository
    env = {k: v for k, v in zenml_tmp_env.items() if k != "ZENML_CUSTOM_SOURCE_ROOT"}
    env["PYTHONPATH"] = str(ROOT)
    out = subprocess.run([sys.executable, str(script), str(run_config)], cwd=ROOT, env=env, capture_output=True,
                         text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-3000:]
    story = json.loads(out.stdout.strip().splitlines()[-1])
    unchanged, changed = story["unchanged"], story["changed"]
    assert unchanged["rc"] == 0, unchanged["stderr"][-2000:]
    assert "retrain: no (unchanged" in unchanged["stdout"] and "up to date" in unchanged["stdout"]
    assert "retrain: yes (teacher changed (teacher.train_steps 7->1000))" in changed["stdout"], changed
