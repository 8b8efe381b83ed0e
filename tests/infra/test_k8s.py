"""infra/k8s: every manifest validates against Kubernetes 1.30's schemas (kubernetes-validate,
strict: unknown fields are errors; the schemas ship with the package, nothing is downloaded), every
kustomization lists every manifest beside it, no Secret value is inline, and the pods meet Pod
Security "restricted".

The PyTorchJob (kubeflow.org/v1) is a CRD kubernetes-validate has no schema for (its CLI only
warns and passes it), so its Master/Worker pod templates are validated as core v1 PodTemplates and
its structure (replica specs, restartPolicy, torchrun's --nnodes/--nproc-per-node) is checked here.
"""
import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

kubernetes_validate = pytest.importorskip("kubernetes_validate.utils")

ROOT = Path(__file__).resolve().parents[2]
K8S = ROOT / "infra" / "k8s"
K8S_VERSION = "1.30.0"                  # the cluster version the manifests target (kubernetes client 30.x)
KUSTOMIZATIONS = sorted(K8S.rglob("kustomization.yaml"))
MANIFESTS = sorted(p for p in K8S.rglob("*.yaml") if p.name != "kustomization.yaml")
SECRETISH = re.compile(r"KEY|SECRET|TOKEN|PASSWORD", re.I)
CRD_KINDS = {"PyTorchJob"}


def docs(path):
    return [d for d in yaml.safe_load_all(path.read_text()) if d]


def all_objects():
    return [(p, d) for p in MANIFESTS for d in docs(p)]


def pod_templates(obj):
    spec = obj.get("spec") or {}
    if obj["kind"] == "CronJob":
        return {"job": spec["jobTemplate"]["spec"]["template"]}
    if obj["kind"] == "PyTorchJob":
        return {name: r["template"] for name, r in spec["pytorchReplicaSpecs"].items()}
    return {"pod": spec["template"]} if isinstance(spec.get("template"), dict) else {}


def strict_validate(obj):
    """kubernetes-validate's strict check; raises with the failing path and message."""
    try:
        return kubernetes_validate.validate(obj, K8S_VERSION, strict=True)
    except kubernetes_validate.ValidationError as exc:
        where = ".".join(str(p) for p in exc.path)
        raise AssertionError(f"{obj['kind']}/{obj['metadata'].get('name')}: {where}: {exc.message}") from None


def test_there_are_manifests():
    names = {p.relative_to(K8S).as_posix() for p in MANIFESTS}
    assert {"base/cronjob.yaml", "base/role.yaml", "base/rolebinding.yaml", "base/serviceaccount.yaml",
            "base/namespace.yaml", "distributed/pytorchjob.yaml"} <= names


def test_schemas_are_offline():
    """The 1.30 strict schemas are files inside the package (validation never downloads)."""
    import kubernetes_validate as kv

    folder = Path(kv.__file__).parent / "kubernetes-json-schema" / "v1.30.0-local-strict"
    assert (folder / "cronjob-batch-v1.json").is_file() and (folder / "podtemplate-v1.json").is_file()


@pytest.mark.parametrize("path, obj", [pytest.param(p, d, id=f"{p.relative_to(K8S)}:{d['kind']}")
                                       for p, d in all_objects() if d["kind"] not in CRD_KINDS])
def test_core_manifest_validates_strict(path, obj):
    assert strict_validate(obj) == "1.30"


def test_validator_is_strict():
    """An unknown field fails (so a pass means something)."""
    obj = docs(K8S / "base" / "cronjob.yaml")[0]
    obj["spec"]["jobTemplate"]["spec"]["template"]["spec"]["containers"][0]["imagePullPolcy"] = "Always"
    with pytest.raises(AssertionError, match="imagePullPolcy"):
        strict_validate(obj)


def test_cli_strict_passes_every_core_manifest():
    """The command line the docs give: kubernetes-validate --strict --kubernetes-version 1.30.0."""
    files = [str(p) for p, d in all_objects() if d["kind"] not in CRD_KINDS]
    cli = Path(sys.executable).with_name("kubernetes-validate")
    out = subprocess.run([str(cli), "--strict", "--kubernetes-version", K8S_VERSION, *sorted(set(files))],
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stdout + out.stderr
    assert "ERROR" not in out.stdout and "WARN" not in out.stdout
    assert out.stdout.count("passed for resource") == len(files)


@pytest.mark.parametrize("replica", ["Master", "Worker"])
def test_pytorchjob_pod_templates_validate_as_core(replica):
    job = docs(K8S / "distributed" / "pytorchjob.yaml")[0]
    template = job["spec"]["pytorchReplicaSpecs"][replica]["template"]
    wrapped = {"apiVersion": "v1", "kind": "PodTemplate",
               "metadata": {"name": f"{job['metadata']['name']}-{replica.lower()}",
                            "namespace": job["metadata"]["namespace"]},
               "template": template}
    assert strict_validate(wrapped) == "1.30"


def test_pytorchjob_structure():
    job = docs(K8S / "distributed" / "pytorchjob.yaml")[0]
    assert job["apiVersion"] == "kubeflow.org/v1" and job["kind"] == "PyTorchJob"
    specs = job["spec"]["pytorchReplicaSpecs"]
    assert set(specs) == {"Master", "Worker"}
    assert specs["Master"]["replicas"] == 1 and specs["Worker"]["replicas"] >= 1
    nodes = specs["Master"]["replicas"] + specs["Worker"]["replicas"]
    for name, spec in specs.items():
        assert spec["restartPolicy"] in ("OnFailure", "Never", "ExitCode"), name
        pod = spec["template"]["spec"]
        assert "restartPolicy" not in pod           # the replica's restartPolicy is the one that counts
        (container,) = pod["containers"]
        assert container["name"] == "pytorch"       # the operator finds its container by this name
        assert any(p.get("name") == "pytorchjob-port" for p in container.get("ports", []))
        args = container["args"]
        assert container["command"] == ["torchrun"]
        gpus = int(container["resources"]["limits"]["nvidia.com/gpu"])
        assert f"--nnodes={nodes}" in args and f"--nproc-per-node={gpus}" in args
        assert args[args.index("-m") + 1:args.index("-m") + 3] == ["components.stages", "distill"]
        from components.stages import build_parser        # the arguments parse with the stage CLI's own parser
        parsed = build_parser().parse_args(args[args.index("-m") + 2:])
        assert parsed.stage == "distill" and parsed.pairs == "artifacts/pairs" and parsed.out == "artifacts/student"
        mounts = {m["name"]: m["mountPath"] for m in container["volumeMounts"]}
        claims = {v["name"]: v["persistentVolumeClaim"]["claimName"] for v in pod["volumes"]
                  if "persistentVolumeClaim" in v}
        assert mounts["artifacts"] == "/app/artifacts" and claims["artifacts"] == "fewstep-artifacts"
        assert "--rdzv-endpoint=$(MASTER_ADDR):$(MASTER_PORT)" in args
    # master and workers run the same pod
    assert specs["Master"]["template"] == specs["Worker"]["template"]


def test_kustomizations_list_every_manifest():
    assert KUSTOMIZATIONS, "no kustomization.yaml under infra/k8s"
    for kfile in KUSTOMIZATIONS:
        kust = yaml.safe_load(kfile.read_text())
        listed = set(kust.get("resources") or [])
        beside = {p.name for p in kfile.parent.glob("*.yaml") if p.name != "kustomization.yaml"}
        assert listed == beside, f"{kfile}: lists {sorted(listed)}, folder has {sorted(beside)}"
    covered = {(k.parent / r).resolve() for k in KUSTOMIZATIONS for r in yaml.safe_load(k.read_text())["resources"]}
    assert {p.resolve() for p in MANIFESTS} <= covered


def _env_entries(obj):
    for template in pod_templates(obj).values():
        for c in template["spec"].get("containers", []) + template["spec"].get("initContainers", []):
            yield from c.get("env") or []


def test_no_inline_secret_values():
    found = 0
    for path, obj in all_objects():
        assert obj["kind"] != "Secret", f"{path}: a Secret belongs in the cluster, not in the repo"
        for env in _env_entries(obj):
            if SECRETISH.search(env["name"]):
                found += 1
                assert "value" not in env, f"{path}: {env['name']} has an inline value"
                assert "secretKeyRef" in env.get("valueFrom", {}), f"{path}: {env['name']} is not a secretKeyRef"
    assert found >= 5        # WANDB_API_KEY, the AWS pair, the ZenML key (CronJob) + the PyTorchJob's


def test_same_secret_refs_in_cronjob_and_pytorchjob():
    def refs(obj):
        return {(e["name"], e["valueFrom"]["secretKeyRef"]["name"]) for e in _env_entries(obj) if "valueFrom" in e}
    cron = docs(K8S / "base" / "cronjob.yaml")[0]
    job = docs(K8S / "distributed" / "pytorchjob.yaml")[0]
    assert {("WANDB_API_KEY", "wandb"), ("AWS_ACCESS_KEY_ID", "artifact-store"),
            ("AWS_SECRET_ACCESS_KEY", "artifact-store")} <= refs(cron) & refs(job)


@pytest.mark.parametrize("path, obj", [pytest.param(p, d, id=f"{p.relative_to(K8S)}:{d['kind']}")
                                       for p, d in all_objects() if pod_templates(d)])
def test_pod_security_restricted(path, obj):
    for name, template in pod_templates(obj).items():
        pod = template["spec"]
        psc = pod["securityContext"]
        assert psc["runAsNonRoot"] is True and psc["runAsUser"] > 0, name
        assert psc["seccompProfile"]["type"] == "RuntimeDefault", name
        for c in pod["containers"]:
            sc = c["securityContext"]
            assert sc["allowPrivilegeEscalation"] is False and sc["readOnlyRootFilesystem"] is True
            assert sc["capabilities"]["drop"] == ["ALL"] and "add" not in sc["capabilities"]
            assert sc.get("runAsUser", psc["runAsUser"]) > 0 and sc.get("privileged") is not True
            mounts = {m["mountPath"]: m["name"] for m in c.get("volumeMounts", [])}
            assert "/tmp" in mounts
            assert int(c["resources"]["limits"]["nvidia.com/gpu"]) >= 1
        volumes = {v["name"]: v for v in pod.get("volumes", [])}
        # volume types Pod Security "restricted" allows (no hostPath): emptyDir, PVCs (the PyTorchJob's workspace)
        assert all(set(v) <= {"name", "emptyDir", "persistentVolumeClaim"} for v in volumes.values()), volumes
        assert any(t.get("key") == "nvidia.com/gpu" for t in pod.get("tolerations", []))
        assert pod.get("nodeSelector")
        assert not pod.get("hostNetwork") and not pod.get("hostPID") and not pod.get("hostIPC")


def test_cronjob_settings():
    cron = docs(K8S / "base" / "cronjob.yaml")[0]
    spec = cron["spec"]
    assert spec["concurrencyPolicy"] == "Forbid"
    assert spec["startingDeadlineSeconds"] > 0
    assert spec["successfulJobsHistoryLimit"] >= 1 and spec["failedJobsHistoryLimit"] >= 1
    job = spec["jobTemplate"]["spec"]
    assert job["backoffLimit"] >= 0 and job["activeDeadlineSeconds"] > 0
    pod = job["template"]["spec"]
    assert pod["serviceAccountName"] == "fewstep-retrain" and pod["restartPolicy"] == "Never"
    (container,) = pod["containers"]
    assert container["command"] == ["python", "-m", "infra.retrain"]
    assert container["image"] == "registry.example.com/fewstep:0.1.0"
    from infra.cron import validate_cron

    validate_cron(spec["schedule"], 5)


def test_role_least_privilege():
    role = docs(K8S / "base" / "role.yaml")[0]
    grants = {(g, r, v) for rule in role["rules"] for g in rule["apiGroups"] for r in rule["resources"]
              for v in rule["verbs"]}
    assert ("batch", "jobs", "create") in grants and ("", "pods/log", "get") in grants
    assert not any(r == "secrets" for _, r, _ in grants), "the job reads Secrets via secretKeyRef, not the API"
    assert not any(v in ("*", "escalate", "bind", "impersonate") or r == "*" for _, r, v in grants)
    binding = docs(K8S / "base" / "rolebinding.yaml")[0]
    assert binding["roleRef"] == {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": "fewstep-retrain"}
    assert binding["subjects"] == [{"kind": "ServiceAccount", "name": "fewstep-retrain", "namespace": "fewstep"}]
