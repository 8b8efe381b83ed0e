"""The weekly retrain CronJob on a cluster: render infra/k8s/base, patch it, server-side apply it.

    python -m infra.cronjob apply|delete|show [--cron "0 3 * * 1"] [--namespace fewstep]
        [--image registry.example.com/fewstep:0.1.0] [--wandb-secret wandb] [--storage-secret artifact-store]
        [--zenml-secret zenml-server] [--gpus 1] [--config configs/dmd2_local.yaml]
        [--force-conflicts] [--context NAME] [--dry-run]

The base is rendered in Python as `kubectl kustomize` would for what it uses (the resources list,
`namespace`, `images`), then patched: the CronJob's schedule (5 fields, validated by
infra/cron.py; a 6-field one with seconds 0 is converted), the namespace of every object
(and of the RoleBinding's ServiceAccount subject), the container image, the names of the Secrets
the pod reads, the GPU count (0 removes the GPU limit, toleration and node selector) and the
retrain config. `apply` first checks that each Secret exists in the namespace with the keys the pod
reads, then server-side applies every object with field manager "fewstep" (re-running it updates
them); `delete` deletes the objects it owns (label app.kubernetes.io/managed-by=fewstep), keeping
the Namespace, which holds your Secrets; `show` prints whether each exists (and the CronJob's
schedule and last run). `--dry-run` prints the rendered objects as multi-document YAML and never
contacts a cluster. Errors are one line on stderr, exit 2.
"""
from __future__ import annotations

import argparse
import copy
import re
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator, Optional

import yaml

from infra.cron import cron_for

BASE = Path(__file__).resolve().parent / "k8s" / "base"
FIELD_MANAGER = "fewstep"
MANAGED_BY = ("app.kubernetes.io/managed-by", "fewstep")
GPU_RESOURCE = "nvidia.com/gpu"
GPU_NODE_LABEL = "nvidia.com/gpu.present"
# The Secret names the base manifests use, and the option that renames each.
SECRET_OPTIONS = {"wandb": "wandb_secret", "artifact-store": "storage_secret", "zenml-server": "zenml_secret"}
CLUSTER_SCOPED = {"Namespace", "ClusterRole", "ClusterRoleBinding", "PersistentVolume", "StorageClass",
                  "CustomResourceDefinition", "PriorityClass"}
_DNS_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")
_DNS_SUBDOMAIN = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$")


class ScheduleError(Exception):
    """A one-line, user-facing failure."""


@dataclass(frozen=True)
class Options:
    cron: Optional[str] = None            # None: keep the base's schedule
    namespace: str = "fewstep"
    image: Optional[str] = None           # None: the base's image (kustomization images applied)
    wandb_secret: str = "wandb"
    storage_secret: str = "artifact-store"
    zenml_secret: str = "zenml-server"
    gpus: int = 1
    config: Optional[str] = None          # None: keep the base's --config


# --------------------------------------------------------------------------------------------
# Rendering

def load_base(folder: Path = BASE) -> list[dict]:
    """The objects of a kustomize folder: its `resources` files in order, with its `namespace` and
    `images` (name -> newName/newTag/digest) applied."""
    kfile = folder / "kustomization.yaml"
    kust = yaml.safe_load(kfile.read_text()) or {}
    objs: list[dict] = []
    for res in kust.get("resources") or []:
        path = folder / res
        if not path.is_file():
            raise ScheduleError(f"{kfile}: resource '{res}' is not a file (nested kustomizations are not rendered)")
        objs += [d for d in yaml.safe_load_all(path.read_text()) if d]
    if kust.get("namespace"):
        objs = set_namespace(objs, kust["namespace"])
    for rule in kust.get("images") or []:
        for container in containers(objs):
            repo, tag = split_image(container.get("image", ""))
            if repo == rule["name"]:
                new_repo = rule.get("newName", repo)
                container["image"] = (f"{new_repo}@{rule['digest']}" if rule.get("digest") else
                                      f"{new_repo}:{rule.get('newTag', tag)}" if rule.get("newTag", tag) else new_repo)
    return objs


def split_image(image: str) -> tuple[str, str]:
    """'repo[:tag]' -> (repo, tag); a ':' in a registry host port is not a tag."""
    name = image.split("@")[0]
    if ":" in name.rsplit("/", 1)[-1]:
        repo, tag = name.rsplit(":", 1)
        return repo, tag
    return name, ""


def pod_specs(objs: list[dict]) -> Iterator[dict]:
    """Every pod spec in the objects (CronJob, Job, Deployment-like, PyTorchJob replicas)."""
    for obj in objs:
        spec = obj.get("spec") or {}
        if obj.get("kind") == "CronJob":
            yield spec["jobTemplate"]["spec"]["template"]["spec"]
        elif obj.get("kind") == "PyTorchJob":
            for replica in (spec.get("pytorchReplicaSpecs") or {}).values():
                yield replica["template"]["spec"]
        elif isinstance(spec.get("template"), dict) and "spec" in spec["template"]:
            yield spec["template"]["spec"]


def containers(objs: list[dict]) -> Iterator[dict]:
    for pod in pod_specs(objs):
        yield from pod.get("initContainers") or []
        yield from pod.get("containers") or []


def set_namespace(objs: list[dict], namespace: str) -> list[dict]:
    """Kustomize's namespace transformer: namespaced objects, Namespace objects, and RoleBinding
    subjects that are ServiceAccounts."""
    for obj in objs:
        meta = obj.setdefault("metadata", {})
        if obj["kind"] == "Namespace":
            meta["name"] = namespace
        elif obj["kind"] not in CLUSTER_SCOPED:
            meta["namespace"] = namespace
        if obj["kind"] in ("RoleBinding", "ClusterRoleBinding"):
            for subject in obj.get("subjects") or []:
                if subject.get("kind") == "ServiceAccount":
                    subject["namespace"] = namespace
    return objs


def check_options(opts: Options) -> Options:
    """One-line errors for bad options; -> the options with the cron normalised (5 fields)."""
    cron = opts.cron
    if cron is not None:
        try:
            cron = cron_for(cron, 5)
        except ValueError as exc:
            raise ScheduleError(f"--cron: {exc} (a Kubernetes CronJob takes 5 fields)") from None
    if not opts.namespace or len(opts.namespace) > 63 or not _DNS_LABEL.match(opts.namespace):
        raise ScheduleError(f"--namespace '{opts.namespace}': expected a Kubernetes namespace name (lower-case "
                            "letters, digits and '-', at most 63 characters)")
    if opts.image is not None and (not opts.image.strip() or any(c.isspace() for c in opts.image)):
        raise ScheduleError(f"--image '{opts.image}': expected an image reference such as "
                            "registry.example.com/fewstep:0.1.0")
    for default, attr in SECRET_OPTIONS.items():
        name = getattr(opts, attr)
        flag = "--" + attr.replace("_", "-")
        if not name or not name.strip():
            raise ScheduleError(f"{flag}: empty; expected the name of a Secret in namespace '{opts.namespace}' "
                                f"(default '{default}')")
        if len(name) > 253 or not _DNS_SUBDOMAIN.match(name):
            raise ScheduleError(f"{flag} '{name}': expected a Secret name (lower-case letters, digits, '-' and '.')")
    if not isinstance(opts.gpus, int) or opts.gpus < 0:
        raise ScheduleError(f"--gpus {opts.gpus}: expected a whole number >= 0 (0: no GPU)")
    if opts.config is not None and not opts.config.strip():
        raise ScheduleError("--config: empty; expected a ZenML run config path inside the image, such as "
                            "configs/dmd2_local.yaml")
    return Options(**{**opts.__dict__, "cron": cron})


def _set_gpus(pod: dict, gpus: int) -> None:
    for container in pod.get("containers") or []:
        resources = container.setdefault("resources", {})
        for kind in ("limits", "requests"):
            section = resources.get(kind) or {}
            section.pop(GPU_RESOURCE, None)
            if gpus and kind == "limits":
                section[GPU_RESOURCE] = gpus
            if section:
                resources[kind] = section
            else:
                resources.pop(kind, None)
    if gpus:
        return
    tolerations = [t for t in pod.get("tolerations") or [] if t.get("key") != GPU_RESOURCE]
    if tolerations:
        pod["tolerations"] = tolerations
    else:
        pod.pop("tolerations", None)
    selector = {k: v for k, v in (pod.get("nodeSelector") or {}).items() if k != GPU_NODE_LABEL}
    if selector:
        pod["nodeSelector"] = selector
    else:
        pod.pop("nodeSelector", None)


def render(opts: Options, folder: Path = BASE) -> list[dict]:
    """The base objects patched with `opts` (checked first)."""
    opts = check_options(opts)
    objs = set_namespace(copy.deepcopy(load_base(folder)), opts.namespace)
    renames = {default: getattr(opts, attr) for default, attr in SECRET_OPTIONS.items()}
    for obj in objs:
        obj["metadata"].setdefault("labels", {})[MANAGED_BY[0]] = MANAGED_BY[1]
        if obj["kind"] == "CronJob" and opts.cron is not None:
            obj["spec"]["schedule"] = opts.cron
    for pod in pod_specs(objs):
        _set_gpus(pod, opts.gpus)
        for container in pod.get("containers") or []:
            if opts.image is not None:
                container["image"] = opts.image
            if opts.config is not None and "--config" in (container.get("args") or []):
                args = container["args"]
                args[args.index("--config") + 1] = opts.config
            for env in container.get("env") or []:
                ref = (env.get("valueFrom") or {}).get("secretKeyRef")
                if ref and ref.get("name") in renames:
                    ref["name"] = renames[ref["name"]]
    return objs


def required_secrets(objs: list[dict]) -> dict[str, list[str]]:
    """Secret name -> the keys the pods read from it (optional references left out)."""
    out: dict[str, list[str]] = {}
    for container in containers(objs):
        for env in container.get("env") or []:
            ref = (env.get("valueFrom") or {}).get("secretKeyRef")
            if ref and not ref.get("optional"):
                keys = out.setdefault(ref["name"], [])
                if ref["key"] not in keys:
                    keys.append(ref["key"])
    return out


def to_yaml(objs: list[dict]) -> str:
    return yaml.safe_dump_all(objs, sort_keys=False, default_flow_style=False)


# --------------------------------------------------------------------------------------------
# The cluster (kubernetes' DynamicClient; tests replace make_client)

def make_client(context: Optional[str] = None) -> Any:
    """A DynamicClient from the in-cluster service account, else the kubeconfig (KUBECONFIG, ~/.kube/config)."""
    import os

    from kubernetes import client as k8s_client
    from kubernetes import config as k8s_config
    from kubernetes.dynamic import DynamicClient

    try:
        if os.environ.get("KUBERNETES_SERVICE_HOST") and context is None:
            k8s_config.load_incluster_config()
        else:
            k8s_config.load_kube_config(context=context)
    except (k8s_config.ConfigException, OSError) as exc:
        raise ScheduleError(f"no Kubernetes configuration ({str(exc).splitlines()[0] if str(exc) else exc!r}); "
                            "set KUBECONFIG or --context, or use --dry-run") from None
    return DynamicClient(k8s_client.ApiClient())


def _api_errors():
    from kubernetes.client.exceptions import ApiException
    from kubernetes.dynamic.exceptions import NotFoundError

    return NotFoundError, ApiException


def _status(exc: Any) -> str:
    """'409 Conflict: <the server's message>' on one line."""
    text = f"{getattr(exc, 'status', '?')} {getattr(exc, 'reason', '') or ''}".strip()
    try:
        message = exc.summary() if hasattr(exc, "summary") and getattr(exc, "body", None) else ""
    except ValueError:                       # a body that is not the JSON it claims to be
        message = ""
    message = " ".join(str(message or "").split())
    return f"{text}: {message}" if message and message != text else text


def _as_dict(obj: Any) -> dict:
    return obj.to_dict() if hasattr(obj, "to_dict") else dict(obj)


def _resource(client: Any, obj: dict) -> Any:
    from kubernetes.dynamic.exceptions import ResourceNotFoundError

    try:
        return client.resources.get(api_version=obj["apiVersion"], kind=obj["kind"])
    except ResourceNotFoundError:
        raise ScheduleError(f"the cluster does not serve {obj['apiVersion']} {obj['kind']}") from None


def _namespace_of(obj: dict) -> Optional[str]:
    return None if obj["kind"] in CLUSTER_SCOPED else obj["metadata"].get("namespace")


def _kn(obj: dict) -> str:
    return f"{obj['kind'].lower()}/{obj['metadata']['name']}"


def check_secrets(client: Any, namespace: str, required: dict[str, list[str]]) -> None:
    """Each Secret exists in `namespace` and holds the keys the pod reads; else a one-line error
    naming it and how to create it."""
    not_found, api_error = _api_errors()
    secrets = _resource(client, {"apiVersion": "v1", "kind": "Secret"})
    for name, keys in required.items():
        literals = " ".join(f"--from-literal={k}=<value>" for k in keys)
        how = f"create it with `kubectl -n {namespace} create secret generic {name} {literals}`"
        try:
            secret = _as_dict(secrets.get(name=name, namespace=namespace))
        except not_found:
            raise ScheduleError(f"Secret '{name}' not found in namespace '{namespace}': {how}") from None
        except api_error as exc:
            raise ScheduleError(f"cannot read Secret '{name}' in namespace '{namespace}' ({_status(exc)}); "
                                "check your access, or create it as described in infra/k8s/base/kustomization.yaml"
                                ) from None
        present = set((secret.get("data") or {}).keys()) | set((secret.get("stringData") or {}).keys())
        missing = [k for k in keys if k not in present]
        if missing:
            raise ScheduleError(f"Secret '{name}' in namespace '{namespace}' has no key {', '.join(missing)}: "
                                f"recreate it with `kubectl -n {namespace} create secret generic {name} {literals}`")


def apply(client: Any, objs: list[dict], namespace: str, force_conflicts: bool = False) -> list[str]:
    """Check the Secrets, then server-side apply every object (field manager "fewstep")."""
    _, api_error = _api_errors()
    check_secrets(client, namespace, required_secrets(objs))
    done = []
    for obj in objs:
        try:
            _resource(client, obj).server_side_apply(body=obj, name=obj["metadata"]["name"],
                                                     namespace=_namespace_of(obj), field_manager=FIELD_MANAGER,
                                                     force_conflicts=True if force_conflicts else None)
        except api_error as exc:
            hint = "; another manager owns some fields: rerun with --force-conflicts" \
                if getattr(exc, "status", None) == 409 else ""
            raise ScheduleError(f"apply {_kn(obj)} in namespace '{namespace}' failed ({_status(exc)}){hint}") from None
        done.append(_kn(obj))
        print(f"applied {_kn(obj)}" + (f" (namespace {namespace})" if _namespace_of(obj) else ""))
    return done


def _live(client: Any, obj: dict) -> Optional[dict]:
    not_found, api_error = _api_errors()
    try:
        return _as_dict(_resource(client, obj).get(name=obj["metadata"]["name"], namespace=_namespace_of(obj)))
    except not_found:
        return None
    except api_error as exc:
        raise ScheduleError(f"cannot read {_kn(obj)} ({_status(exc)})") from None


def delete(client: Any, objs: list[dict]) -> list[str]:
    """Delete the objects this tool owns (managed-by label), newest first; the Namespace is kept."""
    _, api_error = _api_errors()
    done = []
    for obj in reversed(objs):
        if obj["kind"] == "Namespace":
            print(f"kept {_kn(obj)} (it holds your Secrets; `kubectl delete namespace "
                  f"{obj['metadata']['name']}` removes it)")
            continue
        live = _live(client, obj)
        if live is None:
            print(f"absent {_kn(obj)}")
            continue
        labels = (live.get("metadata") or {}).get("labels") or {}
        if labels.get(MANAGED_BY[0]) != MANAGED_BY[1]:
            print(f"skipped {_kn(obj)}: not managed by fewstep (no label {MANAGED_BY[0]}={MANAGED_BY[1]})")
            continue
        try:
            _resource(client, obj).delete(name=obj["metadata"]["name"], namespace=_namespace_of(obj),
                                          propagation_policy="Background")
        except api_error as exc:
            raise ScheduleError(f"delete {_kn(obj)} failed ({_status(exc)})") from None
        done.append(_kn(obj))
        print(f"deleted {_kn(obj)}")
    return done


def show(client: Any, objs: list[dict]) -> None:
    for obj in objs:
        live = _live(client, obj)
        if live is None:
            print(f"{_kn(obj)}: absent")
            continue
        line = f"{_kn(obj)}: present"
        if obj["kind"] == "CronJob":
            spec, status = live.get("spec") or {}, live.get("status") or {}
            suspended = " (suspended)" if spec.get("suspend") else ""
            last = status.get("lastScheduleTime") or "never"
            line += (f", schedule '{spec.get('schedule')}'{suspended}, last run {last}, "
                     f"active jobs {len(status.get('active') or [])}")
        print(line)


# --------------------------------------------------------------------------------------------
# CLI

def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m infra.cronjob", description=__doc__.split("\n\n")[0])
    parser.add_argument("action", choices=("apply", "delete", "show"))
    parser.add_argument("--cron", default=None, help='5 fields, e.g. "0 3 * * 1" (default: the base\'s)')
    parser.add_argument("--namespace", default="fewstep")
    parser.add_argument("--image", default=None, help="container image (default: the base's)")
    parser.add_argument("--wandb-secret", default="wandb", help="Secret with WANDB_API_KEY")
    parser.add_argument("--storage-secret", default="artifact-store",
                        help="Secret with AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY")
    parser.add_argument("--zenml-secret", default="zenml-server",
                        help="Secret with ZENML_STORE_URL and ZENML_STORE_API_KEY")
    parser.add_argument("--gpus", default="1", help="GPUs of the retrain pod (0: none)")
    parser.add_argument("--config", default=None, help="ZenML run config inside the image (default: the base's)")
    parser.add_argument("--force-conflicts", action="store_true",
                        help="server-side apply: take over fields another manager owns")
    parser.add_argument("--context", default=None, help="kubeconfig context")
    parser.add_argument("--dry-run", action="store_true", help="print the objects as YAML; contact no cluster")
    return parser


def main(argv: Optional[list[str]] = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        try:
            gpus = int(args.gpus)
        except ValueError:
            raise ScheduleError(f"--gpus '{args.gpus}': expected a whole number >= 0 (0: no GPU)") from None
        opts = Options(cron=args.cron, namespace=args.namespace, image=args.image, wandb_secret=args.wandb_secret,
                       storage_secret=args.storage_secret, zenml_secret=args.zenml_secret, gpus=gpus,
                       config=args.config)
        objs = render(opts)
        if args.dry_run:
            print(to_yaml(objs), end="")
            return 0
        client = make_client(args.context)
        if args.action == "apply":
            apply(client, objs, opts.namespace, args.force_conflicts)
        elif args.action == "delete":
            delete(client, objs)
        else:
            show(client, objs)
        return 0
    except ScheduleError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    raise SystemExit(main())
