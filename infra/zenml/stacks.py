"""Register the project's ZenML stacks, idempotently: what exists is updated, what is missing registered.

    python -m infra.zenml.stacks local       [--dry-run] [--set]   # local orchestrator + local artifact store
    python -m infra.zenml.stacks kubeflow    [--dry-run] [--set]   # Kubeflow Pipelines (GPU steps), S3/MinIO/GCS
    python -m infra.zenml.stacks kubernetes  [--dry-run] [--set]   # plain Kubernetes orchestrator, S3/MinIO/GCS

It runs the `zenml` CLI commands it prints (in this process, so a secret value never shows up in a
process list) against the active ZenML store: for the kubeflow/kubernetes stacks, connect to your ZenML
server first (`zenml login <url>`; remote orchestrators need one). `--dry-run` (or DRY_RUN=1) touches
nothing and prints the same steps as a bash script. Secrets come from the environment into ZenML
secrets; the commands name them as "$VAR", never their values.

Every parameter is an environment variable (default in brackets):
  FEWSTEP_STACK              stack name [fewstep_local | fewstep_kubeflow | fewstep_kubernetes]
  FEWSTEP_LOCAL_ARTIFACT_PATH  local stack: artifact folder [empty: ZenML's default in its config dir]
  FEWSTEP_ARTIFACT_FLAVOR    s3 (AWS S3 or MinIO) or gcp [s3]
  FEWSTEP_ARTIFACT_PATH      bucket path [s3://fewstep-artifacts, gs://fewstep-artifacts for gcp]
  FEWSTEP_S3_ENDPOINT        MinIO/S3-compatible endpoint, e.g. http://minio.minio:9000 [empty: AWS]
  FEWSTEP_S3_SECRET          ZenML secret made from AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY (when both
                             are set) and attached to the artifact store [fewstep_s3]; unset keys: the
                             pods' own credentials (IAM role, workload identity)
  FEWSTEP_REGISTRY           container registry URI, the image name's prefix [registry.example.com]
  FEWSTEP_KUBE_CONTEXT       kubectl context of the cluster [empty: in-cluster or a service connector]
  FEWSTEP_KUBEFLOW_HOST      Kubeflow Pipelines URL for multi-tenant deployments [empty]
  FEWSTEP_KUBEFLOW_NAMESPACE namespace of Kubeflow Pipelines [kubeflow]
  FEWSTEP_KUBEFLOW_FLAVOR    fewstep_kubeflow (infra/kubeflow/flavor.py: GPU requests reach the pods) or
                             kubeflow (ZenML's own, which drops pod settings) [fewstep_kubeflow]
  FEWSTEP_K8S_NAMESPACE      namespace the Kubernetes orchestrator runs pods in [fewstep]
  FEWSTEP_WANDB_SECRET       ZenML secret with the W&B key (keys api_key and WANDB_API_KEY) [wandb]
  FEWSTEP_WANDB_PROJECT      W&B project [fewstep];  FEWSTEP_WANDB_ENTITY  W&B entity [empty]
  WANDB_API_KEY              creates/updates that secret; then the stack gets the W&B experiment tracker
                             and the secret (its WANDB_API_KEY becomes the steps' environment) [unset:
                             no tracker, unless the secret already exists]
  DRY_RUN                    1: same as --dry-run [0]
"""
from __future__ import annotations

import argparse
import json
import os
import shlex
import sys
from dataclasses import dataclass, field
from typing import Mapping, Optional, Sequence, Union

KINDS = ("local", "kubeflow", "kubernetes")
KUBEFLOW_FLAVOR_SOURCE = "infra.kubeflow.flavor.FewstepKubeflowOrchestratorFlavor"
KUBEFLOW_FLAVOR = "fewstep_kubeflow"


@dataclass(frozen=True)
class Masked:
    """A command-line token holding a secret from the environment: shown as "$VAR", run with its value."""
    prefix: str
    var: str


Token = Union[str, Masked]


def shown(tokens: Sequence[Token]) -> str:
    return " ".join(shlex.quote(t) if isinstance(t, str) else f'{shlex.quote(t.prefix)}"${t.var}"' for t in tokens)


def real(tokens: Sequence[Token], env: Mapping[str, str]) -> list[str]:
    return [t if isinstance(t, str) else t.prefix + env[t.var] for t in tokens]


@dataclass
class Component:
    cli: str                                   # zenml CLI group: artifact-store, orchestrator, ...
    name: str
    flavor: str
    attrs: dict[str, str] = field(default_factory=dict)
    secrets: list[str] = field(default_factory=list)
    flag: str = ""                             # `zenml stack register` option

    @property
    def type(self) -> str:                     # StackComponentType value
        return self.cli.replace("-", "_")

    def _attrs(self) -> list[str]:
        return [f"--{k}={v}" for k, v in self.attrs.items()] + [x for s in self.secrets for x in ("--secret", s)]

    def register(self) -> list[Token]:
        return ["zenml", self.cli, "register", self.name, "-f", self.flavor, *self._attrs()]

    def update(self) -> Optional[list[Token]]:
        return ["zenml", self.cli, "update", self.name, *self._attrs()] if self._attrs() else None

    def exists(self) -> list[Token]:
        return ["zenml", self.cli, "describe", self.name]


@dataclass
class Secret:
    name: str
    values: dict[str, str]                     # secret key -> environment variable

    def _args(self) -> list[Token]:
        return [Masked(f"--{k}=", v) for k, v in self.values.items()]

    def create(self) -> list[Token]:
        return ["zenml", "secret", "create", self.name, *self._args()]

    def update(self) -> list[Token]:
        return ["zenml", "secret", "update", self.name, *self._args()]

    def exists(self) -> list[Token]:
        return ["zenml", "secret", "get", self.name]


@dataclass
class Plan:
    kind: str
    stack: str
    flavors: list[tuple[str, str, str]] = field(default_factory=list)   # (cli group, flavor name, source)
    secrets: list[Secret] = field(default_factory=list)
    components: list[Component] = field(default_factory=list)
    stack_secrets: list[str] = field(default_factory=list)
    optional_secret: Optional[str] = None      # W&B: used only when it exists already (no WANDB_API_KEY)
    optional: list[Component] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    def stack_args(self, components: Sequence[Component], secrets: Sequence[str]) -> list[Token]:
        return [x for c in components for x in (c.flag, c.name)] + [x for s in secrets for x in ("--secret", s)]

    def stack_register(self, components: Sequence[Component], secrets: Sequence[str]) -> list[Token]:
        return ["zenml", "stack", "register", self.stack, *self.stack_args(components, secrets)]

    def stack_update(self, components: Sequence[Component], secrets: Sequence[str]) -> list[Token]:
        return ["zenml", "stack", "update", self.stack, *self.stack_args(components, secrets)]


def _get(env: Mapping[str, str], key: str, default: str) -> str:
    return env.get(key) or default


def plan(kind: str, env: Mapping[str, str]) -> Plan:
    """What to register for `kind`, from the environment alone (pure; no zenml)."""
    if kind not in KINDS:
        raise ValueError(f"stack kind '{kind}': expected one of {', '.join(KINDS)}")
    p = Plan(kind=kind, stack=_get(env, "FEWSTEP_STACK", f"fewstep_{kind}"))
    wandb_secret = _get(env, "FEWSTEP_WANDB_SECRET", "wandb")
    tracker = Component("experiment-tracker", "fewstep_wandb", "wandb",
                        {"api_key": f"{{{{{wandb_secret}.api_key}}}}",
                         "project_name": _get(env, "FEWSTEP_WANDB_PROJECT", "fewstep"),
                         **({"entity": env["FEWSTEP_WANDB_ENTITY"]} if env.get("FEWSTEP_WANDB_ENTITY") else {})},
                        flag="-e")
    if kind == "local":
        path = env.get("FEWSTEP_LOCAL_ARTIFACT_PATH")
        p.components = [Component("artifact-store", "fewstep_local_artifacts", "local",
                                  {"path": os.path.abspath(path)} if path else {}, flag="-a"),
                        Component("orchestrator", "fewstep_local_orchestrator", "local", flag="-o")]
    else:
        p.components = [_artifact_store(env, p),
                        Component("container-registry", "fewstep_registry", "default",
                                  {"uri": _get(env, "FEWSTEP_REGISTRY", "registry.example.com")}, flag="-c"),
                        Component("image-builder", "fewstep_image_builder", "local", flag="-i"),
                        _kubeflow(env, p) if kind == "kubeflow" else _kubernetes(env, p)]
    if env.get("WANDB_API_KEY"):
        p.secrets.append(Secret(wandb_secret, {"api_key": "WANDB_API_KEY", "WANDB_API_KEY": "WANDB_API_KEY"}))
        p.components.append(tracker)
        p.stack_secrets.append(wandb_secret)
    else:
        p.optional_secret, p.optional = wandb_secret, [tracker]
        p.notes.append(f"WANDB_API_KEY is not set: the W&B tracker and secret '{wandb_secret}' are added only "
                       "if that secret exists already")
    return p


def _artifact_store(env: Mapping[str, str], p: Plan) -> Component:
    flavor = _get(env, "FEWSTEP_ARTIFACT_FLAVOR", "s3")
    if flavor not in ("s3", "gcp"):
        raise ValueError(f"FEWSTEP_ARTIFACT_FLAVOR '{flavor}': expected s3 (AWS S3, MinIO) or gcp")
    scheme = "s3" if flavor == "s3" else "gs"
    path = _get(env, "FEWSTEP_ARTIFACT_PATH", f"{scheme}://fewstep-artifacts")
    if not path.startswith(f"{scheme}://"):
        raise ValueError(f"FEWSTEP_ARTIFACT_PATH '{path}': a {flavor} artifact store needs a {scheme}:// path")
    store = Component("artifact-store", "fewstep_artifacts", flavor, {"path": path}, flag="-a")
    if flavor == "s3":
        if env.get("FEWSTEP_S3_ENDPOINT"):
            store.attrs["client_kwargs"] = json.dumps({"endpoint_url": env["FEWSTEP_S3_ENDPOINT"]})
        if env.get("AWS_ACCESS_KEY_ID") and env.get("AWS_SECRET_ACCESS_KEY"):
            name = _get(env, "FEWSTEP_S3_SECRET", "fewstep_s3")
            p.secrets.append(Secret(name, {"AWS_ACCESS_KEY_ID": "AWS_ACCESS_KEY_ID",
                                           "AWS_SECRET_ACCESS_KEY": "AWS_SECRET_ACCESS_KEY"}))
            store.secrets.append(name)
        else:
            p.notes.append("AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY are not set: the artifact store uses the "
                           "pods' own credentials")
    return store


def _kubeflow(env: Mapping[str, str], p: Plan) -> Component:
    flavor = _get(env, "FEWSTEP_KUBEFLOW_FLAVOR", KUBEFLOW_FLAVOR)
    if flavor == KUBEFLOW_FLAVOR:
        p.flavors.append(("orchestrator", KUBEFLOW_FLAVOR, KUBEFLOW_FLAVOR_SOURCE))
    elif flavor == "kubeflow":
        p.notes.append("ZenML's own kubeflow flavor drops pod settings: GPU steps get no GPU "
                       "(infra/kubeflow/flavor.py)")
    else:
        raise ValueError(f"FEWSTEP_KUBEFLOW_FLAVOR '{flavor}': expected {KUBEFLOW_FLAVOR} or kubeflow")
    attrs = {"kubeflow_namespace": _get(env, "FEWSTEP_KUBEFLOW_NAMESPACE", "kubeflow")}
    if env.get("FEWSTEP_KUBEFLOW_HOST"):
        attrs["kubeflow_hostname"] = env["FEWSTEP_KUBEFLOW_HOST"]
    elif env.get("FEWSTEP_KUBE_CONTEXT"):
        attrs["kubernetes_context"] = env["FEWSTEP_KUBE_CONTEXT"]
    else:
        p.notes.append("neither FEWSTEP_KUBE_CONTEXT nor FEWSTEP_KUBEFLOW_HOST is set: connect the orchestrator "
                       "to a service connector (zenml orchestrator connect fewstep_kfp ...) before running")
    return Component("orchestrator", "fewstep_kfp", flavor, attrs, flag="-o")


def _kubernetes(env: Mapping[str, str], p: Plan) -> Component:
    attrs = {"kubernetes_namespace": _get(env, "FEWSTEP_K8S_NAMESPACE", "fewstep")}
    if env.get("FEWSTEP_KUBE_CONTEXT"):
        attrs["kubernetes_context"] = env["FEWSTEP_KUBE_CONTEXT"]
    else:
        p.notes.append("FEWSTEP_KUBE_CONTEXT is not set: connect the orchestrator to a service connector "
                       "(zenml orchestrator connect fewstep_k8s ...) or set kubernetes_context before running")
    return Component("orchestrator", "fewstep_k8s", "kubernetes", attrs, flag="-o")


def _if(test: Sequence[Token], then: Optional[Sequence[Token]], other: Optional[Sequence[Token]]) -> str:
    t = f"{shown(test)} >/dev/null 2>&1"
    if then and other:
        return f"if {t}; then\n  {shown(then)}\nelse\n  {shown(other)}\nfi"
    if then:
        return f"if {t}; then\n  {shown(then)}\nfi"
    return f"if ! {t}; then\n  {shown(other or [])}\nfi"


def render(p: Plan, activate: bool = False) -> str:
    """The plan as a bash script (--dry-run): what exists is updated, what is missing registered."""
    out = ["#!/usr/bin/env bash", f"# ZenML stack '{p.stack}' ({p.kind}); dry run: nothing was registered.",
           "set -euo pipefail"]
    out += [f"# note: {n}" for n in p.notes]
    for cli, name, source in p.flavors:
        out.append(_if(["zenml", cli, "flavor", "describe", name], None, ["zenml", cli, "flavor", "register", source]))
    for s in p.secrets:
        out.append(_if(s.exists(), s.update(), s.create()))
    for c in p.components:
        out.append(_if(c.exists(), c.update(), c.register()))
    out.append(_if(["zenml", "stack", "describe", p.stack], p.stack_update(p.components, p.stack_secrets),
                   p.stack_register(p.components, p.stack_secrets)))
    if activate:
        out.append(shown(["zenml", "stack", "set", p.stack]))
    return "\n".join(out) + "\n"


def apply(p: Plan, env: Mapping[str, str], activate: bool = False) -> None:
    """Run the plan's zenml commands in this process against the active store."""
    from zenml.cli.cli import cli
    from zenml.client import Client
    from zenml.enums import StackComponentType

    client = Client()

    def run(tokens: Sequence[Token]) -> None:
        print(f"+ {shown(tokens)}", flush=True)
        cli.main(args=real(tokens, env)[1:], prog_name="zenml", standalone_mode=False)

    def found(getter, *args, **kwargs) -> Optional[object]:
        try:
            return getter(*args, **kwargs)
        except KeyError:
            return None

    for cli_group, name, source in p.flavors:
        if not found(client.get_flavor_by_name_and_type, name, StackComponentType(cli_group.replace("-", "_"))):
            run(["zenml", cli_group, "flavor", "register", source])
    for s in p.secrets:
        run(s.update() if found(client.get_secret, s.name, allow_partial_name_match=False) else s.create())
    components, secrets = list(p.components), list(p.stack_secrets)
    if p.optional_secret and found(client.get_secret, p.optional_secret, allow_partial_name_match=False):
        components += p.optional
        secrets.append(p.optional_secret)
    for c in components:
        existing = found(client.get_stack_component, StackComponentType(c.type), c.name,
                         allow_name_prefix_match=False)
        if existing is None:
            run(c.register())
        elif existing.flavor_name != c.flavor:
            raise RuntimeError(f"{c.type} '{c.name}' exists with flavor '{existing.flavor_name}', not "
                               f"'{c.flavor}': delete it (zenml {c.cli} delete {c.name}) and run again")
        elif c.update():
            run(c.update())
    stack_exists = found(client.get_stack, p.stack, allow_name_prefix_match=False)
    run((p.stack_update if stack_exists else p.stack_register)(components, secrets))
    if activate:
        run(["zenml", "stack", "set", p.stack])


def main(argv: Optional[list[str]] = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m infra.zenml.stacks", description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter,
                                 epilog=__doc__.split("\n\n", 2)[2])
    ap.add_argument("kind", choices=KINDS)
    ap.add_argument("--dry-run", action="store_true", help="print the zenml commands; change nothing")
    ap.add_argument("--set", action="store_true", help="make the stack the active one")
    args = ap.parse_args(argv)
    env = dict(os.environ)
    try:
        p = plan(args.kind, env)
        if args.dry_run or env.get("DRY_RUN", "0") not in ("", "0", "false"):
            print(render(p, args.set), end="")
            return 0
        for n in p.notes:
            print(f"note: {n}", file=sys.stderr)
        apply(p, env, args.set)
    except Exception as e:  # noqa: BLE001 - one line for the user
        first = (str(e).strip().splitlines() or [""])[0]
        print(f"error: {args.kind} stack '{os.environ.get('FEWSTEP_STACK') or 'fewstep_' + args.kind}': "
              f"{type(e).__name__}: {first}", file=sys.stderr)
        return 1
    print(f"stack '{p.stack}' is registered" + (" and active" if args.set else ""))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
