"""Compile a ZenML pipeline to a Kubeflow Pipelines (v2) YAML offline: no cluster, no Docker engine,
no ZenML server, and the user's ZenML state untouched.

    python -m infra.kubeflow.compile --config configs/dmd2_kubeflow.yaml --out build/kubeflow/dmd2_pipeline.yaml

Run it from the project root (the ZenML source root; `params_file: params.yaml` is read from there).
It makes a throwaway ZenML store and repository (temporary ZENML_CONFIG_PATH/ZENML_REPOSITORY_PATH, set
before zenml is imported), registers the `fewstep_kubeflow` flavor (infra/kubeflow/flavor.py) with
`output_path=--out`, a stack of the local artifact store, that orchestrator and a container registry
named after the config's image, and runs the pipeline with the config: ZenML's Kubeflow orchestrator
compiles it, and the file is kept instead of uploaded. The config must name its image with
`settings.docker.parent_image` and `skip_build: true` (nothing is built).

The compiled file is for review, diffs and CI checks: its steps refer to a snapshot in the throwaway
store, so to *run* on a cluster use a Kubeflow stack on a ZenML server (infra/zenml/stacks.py) and
`zenml pipeline run dmd2_pipeline -c configs/dmd2_kubeflow.yaml`.
Exit status: 0 written; 1 the pipeline could not be compiled (e.g. a GPU step without an `accelerator`
node selector); 2 bad arguments or config file. Errors are one line on stderr; nothing is written.
"""
from __future__ import annotations

import argparse
import importlib
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any, Optional

DEFAULT_PIPELINE = "pipelines.dmd2_pipeline.dmd2_pipeline"
STACK = "kubeflow_offline"


class CompileError(Exception):
    """A one-line, user-facing reason the pipeline was not compiled."""


def parse_args(argv: Optional[list[str]] = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m infra.kubeflow.compile", description=__doc__.split("\n\n")[0])
    p.add_argument("--config", required=True, help="ZenML run config (YAML), e.g. configs/dmd2_kubeflow.yaml")
    p.add_argument("--out", required=True, help="where to write the KFP pipeline YAML")
    p.add_argument("--pipeline", default=DEFAULT_PIPELINE, help=f"module.attribute of the pipeline "
                                                                f"(default {DEFAULT_PIPELINE})")
    p.add_argument("--no-gpus", action="store_true", help="compile for a cluster without GPU nodes: steps "
                                                          "with gpu_count > 0 are an error")
    p.add_argument("--gpu-resource", default="nvidia.com/gpu", help="GPU resource name (default nvidia.com/gpu)")
    p.add_argument("--verbose", action="store_true", help="print the traceback of a failure")
    return p.parse_args(argv)


def read_image(config: Path) -> str:
    """The image the pods run: `settings.docker.parent_image` with `skip_build: true`."""
    import yaml

    if not config.is_file():
        raise CompileError(f"config file '{config}' not found")
    try:
        cfg = yaml.safe_load(config.read_text()) or {}
    except yaml.YAMLError as e:
        raise CompileError(f"config file '{config}' is not valid YAML: {' '.join(str(e).split())}") from None
    if not isinstance(cfg, dict):
        raise CompileError(f"config file '{config}': expected a mapping of ZenML run-config keys")
    docker = ((cfg.get("settings") or {}).get("docker")) or {}
    image = docker.get("parent_image")
    if not image:
        raise CompileError(f"config file '{config}': settings.docker.parent_image is missing (the image "
                           "the pods run, see infra/docker/README.md)")
    if docker.get("skip_build") is not True:
        raise CompileError(f"config file '{config}': settings.docker.skip_build must be true (the image is "
                           "built with infra/docker/Dockerfile; nothing is built here)")
    return str(image)


def registry_of(image: str) -> str:
    """'registry.example.com/team/fewstep:0.1' -> 'registry.example.com/team' (Docker Hub for bare names)."""
    name = image.split("@")[0]
    repo = name.rsplit(":", 1)[0] if ":" in name.rsplit("/", 1)[-1] else name
    return repo.rsplit("/", 1)[0] if "/" in repo else "docker.io/library"


def _isolate(tmp: Path, source_root: Path) -> None:
    """A throwaway ZenML store and repository, no telemetry, no client-side cache (every step compiled)."""
    os.environ.update({
        "ZENML_CONFIG_PATH": str(tmp / "config"), "ZENML_REPOSITORY_PATH": str(tmp / "repo"),
        "ZENML_CUSTOM_SOURCE_ROOT": str(source_root), "ZENML_ANALYTICS_OPT_IN": "false",
        "ZENML_PREVENT_CLIENT_SIDE_CACHING": "true", "AUTO_OPEN_DASHBOARD": "false",
        "ZENML_AUTO_OPEN_DASHBOARD": "false", "ZENML_LOGGING_COLORS_DISABLED": "true",
        "DVC_NO_ANALYTICS": "1", "GX_ANALYTICS_ENABLED": "false", "WANDB_MODE": "offline"})
    for key in [k for k in os.environ if k.startswith(("ZENML_STORE_", "ZENML_SECRETS_STORE_"))]:
        del os.environ[key]                     # never reach the user's server or database
    (tmp / "repo").mkdir(parents=True)


def _load_pipeline(path: str) -> Any:
    module, _, attr = path.rpartition(".")
    try:
        return getattr(importlib.import_module(module), attr)
    except (ImportError, AttributeError) as e:
        raise CompileError(f"pipeline '{path}' not found: {e}") from None


def _compile(args: argparse.Namespace, image: str, out: Path) -> None:
    from zenml.client import Client
    from zenml.enums import StackComponentType as T

    from infra.kubeflow.flavor import FLAVOR_NAME, FLAVOR_SOURCE

    Client.initialize(root=Path(os.environ["ZENML_REPOSITORY_PATH"]))
    client = Client()
    client.create_flavor(source=FLAVOR_SOURCE, component_type=T.ORCHESTRATOR)
    client.create_stack_component(name=STACK, flavor=FLAVOR_NAME, component_type=T.ORCHESTRATOR,
                                  configuration={"output_path": str(out), "has_gpus": not args.no_gpus,
                                                 "gpu_resource_name": args.gpu_resource, "synchronous": False})
    client.create_stack_component(name=STACK, flavor="default", component_type=T.CONTAINER_REGISTRY,
                                  configuration={"uri": registry_of(image)})
    client.create_stack(name=STACK, components={T.ORCHESTRATOR: STACK, T.CONTAINER_REGISTRY: STACK,
                                                T.ARTIFACT_STORE: "default"})
    client.activate_stack(STACK)
    pipeline = _load_pipeline(args.pipeline)
    pipeline.with_options(config_path=args.config)()


def main(argv: Optional[list[str]] = None) -> int:
    args = parse_args(argv)
    config, out = Path(args.config), Path(args.out).absolute()
    try:
        image = read_image(config)
    except CompileError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    if "zenml" in sys.modules:      # its global config is already bound to the user's store: start afresh
        return subprocess.call([sys.executable, "-m", "infra.kubeflow.compile",
                                *(argv if argv is not None else sys.argv[1:])])
    from infra.kubeflow.gpu import GpuRequestError

    tmp = Path(tempfile.mkdtemp(prefix="fewstep-kfp-"))
    try:
        _isolate(tmp, Path.cwd())
        _compile(args, image, out)
        if not out.is_file():
            raise CompileError(f"ZenML finished but wrote no pipeline to '{out}'")
    except (GpuRequestError, CompileError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    except Exception as e:  # noqa: BLE001 - one line for the user; --verbose for the traceback
        if args.verbose:
            import traceback

            traceback.print_exc()
        first = (str(e).strip().splitlines() or [""])[0]
        print(f"error: compiling '{args.pipeline}' with '{config}' failed: {type(e).__name__}: {first}",
              file=sys.stderr)
        return 1
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    print(f"Kubeflow pipeline written to {out} (image {image})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
