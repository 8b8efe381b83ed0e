"""`fewstep_kubeflow`: ZenML 0.98's Kubeflow orchestrator with four fixes, and an offline mode.

What stock ZenML 0.98 writes into the KFP YAML (read from its source and from compiled files):
1. `KubeflowOrchestratorSettings` throws a given `pod_settings` away (its migration validator rebuilds
   it from the legacy `node_selectors` key), so `pod_settings.node_selectors.accelerator` never arrives.
2. With the legacy key, the accelerator *node-selector value* becomes the accelerator type; the KFP
   (open source) driver turns that type into the resource-limit name (`nvidia-tesla-a100: 1`, which no
   node has) and no node selector is written at all.
3. One node-selector value is shared by all steps (a loop variable read after the loop).
4. `memory` is passed to KFP as a float of GB, which KFP rejects; tolerations are dropped.
Here: per step, `gpu_count > 0` -> `resources.accelerator` = `nvidia.com/gpu` x count; pod settings
`node_selectors`, `tolerations`, `labels`, `annotations` and `image_pull_secrets` -> the Kubernetes
platform spec (kfp-kubernetes); `cpu_count`/`memory` -> limits; steps asking for GPUs without an
`accelerator` node selector, or on an orchestrator without GPUs, stop the run before anything is written.

Offline mode (`output_path` set): the config is not remote (no ZenML server needed), the stack needs
no image builder and may hold local components, and instead of uploading to Kubeflow the compiled
file is kept at `output_path` (temp file, then rename); the throwaway store's connection
(ZENML_STORE_*) is left out of the steps' environment. Without `output_path` it uploads and runs like
ZenML's own orchestrator (needs a remote ZenML server, a remote stack and a KFP endpoint).
"""
from __future__ import annotations

import contextlib
import logging
from pathlib import Path
from typing import TYPE_CHECKING, Any, Dict, Iterator, List, Optional, Tuple, Type, cast

from kfp import dsl, kubernetes
from pydantic import Field, model_validator
from zenml.enums import StackComponentType
from zenml.integrations.kubeflow.flavors import KubeflowOrchestratorFlavor
from zenml.integrations.kubeflow.flavors.kubeflow_orchestrator_flavor import (
    KubeflowOrchestratorConfig,
    KubeflowOrchestratorSettings,
)
from zenml.integrations.kubeflow.orchestrators import kubeflow_orchestrator as zenml_kfp
from zenml.integrations.kubernetes.pod_settings import KubernetesPodSettings
from zenml.io import fileio
from zenml.logger import get_logger
from zenml.stack import StackValidator
from zenml.utils.pydantic_utils import before_validator_handler

from components.atomic import write_bytes
from infra.kubeflow.gpu import ACCELERATOR_KEY, GPU_RESOURCE, check_gpu_requests, k8s_memory

if TYPE_CHECKING:
    from zenml.config.resource_settings import ResourceSettings
    from zenml.models import PipelineRunResponse, PipelineSnapshotResponse
    from zenml.orchestrators import SubmissionResult
    from zenml.stack import Stack

logger = get_logger(__name__)

FLAVOR_NAME = "fewstep_kubeflow"
FLAVOR_SOURCE = "infra.kubeflow.flavor.FewstepKubeflowOrchestratorFlavor"
# Pod settings this orchestrator writes into the KFP platform spec; others are reported as ignored.
APPLIED_POD_FIELDS = {"node_selectors", "tolerations", "labels", "annotations", "image_pull_secrets"}
# Offline compile: the throwaway ZenML store's connection is left out of the steps' environment.
STORE_ENV_PREFIXES = ("ZENML_STORE_", "ZENML_SECRETS_STORE_", "ZENML_BACKUP_SECRETS_STORE_")


def _keep_pod_settings(data: Dict[str, Any]) -> Dict[str, Any]:
    """Keep a given `pod_settings`; fold the legacy `node_selectors`/`node_affinity` keys into it."""
    selectors = data.pop("node_selectors", None) or {}
    affinity = data.pop("node_affinity", None) or {}
    if selectors or affinity:
        pod = data.get("pod_settings") or {}
        pod = pod.model_dump(exclude_unset=True) if isinstance(pod, KubernetesPodSettings) else dict(pod)
        pod["node_selectors"] = {**selectors, **(pod.get("node_selectors") or {})}
        if affinity and not pod.get("affinity"):
            pod["affinity"] = {"nodeAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": {
                "nodeSelectorTerms": [{"matchExpressions": [
                    {"key": k, "operator": "In", "values": list(v)} for k, v in affinity.items()]}]}}}
        data["pod_settings"] = pod
    if bool(data.get("client_username")) != bool(data.get("client_password")):
        raise ValueError("`client_username` and `client_password` both need to be set together.")
    return data


class FewstepKubeflowOrchestratorSettings(KubeflowOrchestratorSettings):
    """ZenML's Kubeflow settings, with `pod_settings` kept as given (fix 1 above)."""

    @model_validator(mode="before")
    @classmethod
    @before_validator_handler
    def _validate_and_migrate_pod_settings(cls, data: Dict[str, Any]) -> Dict[str, Any]:
        return _keep_pod_settings(data)


class FewstepKubeflowOrchestratorConfig(KubeflowOrchestratorConfig):
    """ZenML's Kubeflow orchestrator config plus the offline switch and the cluster's GPU facts."""

    output_path: Optional[str] = Field(
        None, description="Offline compile: write the KFP pipeline YAML here (temp file, then rename) and "
                          "submit nothing. Unset: upload and run on Kubeflow like ZenML's orchestrator.")
    has_gpus: bool = Field(True, description="False for a cluster without GPU nodes: any step with "
                                             "gpu_count > 0 is then an error.")
    gpu_resource_name: str = Field(GPU_RESOURCE, description="Extended resource a GPU step requests "
                                                             "(what the device plugin advertises).")

    @model_validator(mode="before")
    @classmethod
    @before_validator_handler
    def _validate_and_migrate_pod_settings(cls, data: Dict[str, Any]) -> Dict[str, Any]:
        return _keep_pod_settings(data)

    @property
    def is_remote(self) -> bool:
        """Offline compile runs here and needs no ZenML server; otherwise steps run in the cluster."""
        return not self.output_path

    @property
    def is_local(self) -> bool:
        return bool(self.output_path)


class _DropZenmlPodWarning(logging.Filter):
    """ZenML warns that pod settings other than node selectors are ignored; here they are not."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not str(record.msg).startswith("The following pod settings are not supported")


@contextlib.contextmanager
def _without_zenml_pod_warning() -> Iterator[None]:
    flt = _DropZenmlPodWarning()
    zenml_kfp.logger.addFilter(flt)
    try:
        yield
    finally:
        zenml_kfp.logger.removeFilter(flt)


def _without_store(env: Dict[str, str]) -> Dict[str, str]:
    return {k: v for k, v in env.items() if not k.startswith(STORE_ENV_PREFIXES)}


def _cpu(count: float) -> str:
    return str(int(count)) if float(count).is_integer() else str(count)


class FewstepKubeflowOrchestrator(zenml_kfp.KubeflowOrchestrator):
    """Per-step GPU, node selector and toleration handling; offline compile when `output_path` is set."""

    _step_pods: Dict[str, Optional[KubernetesPodSettings]] = {}
    _component_step: Dict[str, str] = {}

    @property
    def config(self) -> FewstepKubeflowOrchestratorConfig:
        return cast(FewstepKubeflowOrchestratorConfig, self._config)

    @property
    def settings_class(self) -> Type[FewstepKubeflowOrchestratorSettings]:
        return FewstepKubeflowOrchestratorSettings

    @property
    def validator(self) -> Optional[StackValidator]:
        """Offline: only the container registry ZenML's `submit_pipeline` asserts; no image builder
        (images are not built: `skip_build`), local artifact store allowed, no Kubernetes context."""
        if not self.config.output_path:
            return super().validator
        return StackValidator(required_components={StackComponentType.CONTAINER_REGISTRY})

    def submit_pipeline(self, snapshot: "PipelineSnapshotResponse", stack: "Stack",
                        base_environment: Dict[str, str], step_environments: Dict[str, Dict[str, str]],
                        placeholder_run: Optional["PipelineRunResponse"] = None) -> Optional["SubmissionResult"]:
        """Check every step's GPU request, then let ZenML build the KFP pipeline."""
        requests: Dict[str, Tuple[Optional[int], Dict[str, str]]] = {}
        pods: Dict[str, Optional[KubernetesPodSettings]] = {}
        for name, step in snapshot.step_configurations.items():
            pod = cast(FewstepKubeflowOrchestratorSettings, self.get_settings(step)).pod_settings
            pods[name] = pod
            requests[name] = (step.config.resource_settings.gpu_count, dict(pod.node_selectors) if pod else {})
            ignored = sorted(f for f in (pod.model_fields_set if pod else set()) - APPLIED_POD_FIELDS
                             if getattr(pod, f))
            if ignored:
                logger.warning("Step '%s': pod settings %s are not written to the KFP pipeline (supported: %s).",
                               name, ignored, sorted(APPLIED_POD_FIELDS))
        check_gpu_requests(requests, has_gpus=self.config.has_gpus, orchestrator=self.name)
        self._step_pods, self._component_step = pods, {}
        if self.config.output_path:     # the throwaway store's connection means nothing in a cluster
            base_environment = _without_store(base_environment)
            step_environments = {k: _without_store(v) for k, v in step_environments.items()}
        with _without_zenml_pod_warning():
            return super().submit_pipeline(snapshot=snapshot, stack=stack, base_environment=base_environment,
                                           step_environments=step_environments, placeholder_run=placeholder_run)

    def _create_dynamic_component(self, image: str, command: List[str], arguments: List[str],
                                  component_name: str) -> Any:
        """Remember which step a KFP component (sanitised name) belongs to."""
        component = super()._create_dynamic_component(image, command, arguments, component_name)
        self._component_step[component.component_spec.name] = component_name
        return component

    def _configure_container_resources(self, dynamic_component: dsl.PipelineTask,
                                       resource_settings: "ResourceSettings",
                                       node_selector_constraint: Optional[Tuple[str, str]] = None
                                       ) -> dsl.PipelineTask:
        """CPU/memory limits, the GPU request and the step's own pod settings (ZenML's shared
        `node_selector_constraint` is ignored: fix 3)."""
        task = dynamic_component
        step = self._component_step[task.component_spec.name]
        if resource_settings.cpu_count:
            task = task.set_cpu_limit(_cpu(resource_settings.cpu_count))
        if resource_settings.memory:
            task = task.set_memory_limit(k8s_memory(resource_settings.memory))
        gpus = resource_settings.gpu_count or 0
        if gpus > 0:
            task = task.set_accelerator_type(self.config.gpu_resource_name).set_accelerator_limit(str(gpus))
        pod = self._step_pods.get(step)
        if pod is None:
            return task
        if pod.node_selectors.get(ACCELERATOR_KEY) and gpus == 0:
            logger.warning("Step '%s' has node selector '%s' but gpu_count 0: it waits for a GPU node and "
                           "leaves its GPU idle.", step, ACCELERATOR_KEY)
        for key, value in pod.node_selectors.items():
            kubernetes.add_node_selector(task, label_key=key, label_value=value)
        for tol in pod.tolerations:
            kubernetes.add_toleration(task, key=tol.get("key"), operator=tol.get("operator"),
                                      value=tol.get("value"), effect=tol.get("effect"),
                                      toleration_seconds=tol.get("toleration_seconds", tol.get("tolerationSeconds")))
        for key, value in pod.labels.items():
            kubernetes.add_pod_label(task, label_key=key, label_value=value)
        for key, value in pod.annotations.items():
            kubernetes.add_pod_annotation(task, annotation_key=key, annotation_value=value)
        if pod.image_pull_secrets:
            kubernetes.set_image_pull_secrets(task, list(pod.image_pull_secrets))
        return task

    def _upload_and_run_pipeline(self, snapshot: "PipelineSnapshotResponse", pipeline_file_path: str,
                                 run_name: str) -> Optional["SubmissionResult"]:
        """Offline: keep the compiled file at `output_path` (temp file in the same folder, then rename)."""
        if not self.config.output_path:
            return super()._upload_and_run_pipeline(snapshot=snapshot, pipeline_file_path=pipeline_file_path,
                                                    run_name=run_name)
        out = Path(self.config.output_path)
        with fileio.open(pipeline_file_path, "rb") as src:
            write_bytes(out, src.read())
        logger.info("Kubeflow pipeline '%s' compiled to %s (offline: nothing uploaded).", run_name, out)
        return None


class FewstepKubeflowOrchestratorFlavor(KubeflowOrchestratorFlavor):
    """Register with `zenml orchestrator flavor register infra.kubeflow.flavor.FewstepKubeflowOrchestratorFlavor`."""

    @property
    def name(self) -> str:
        return FLAVOR_NAME

    @property
    def config_class(self) -> Type[FewstepKubeflowOrchestratorConfig]:
        return FewstepKubeflowOrchestratorConfig

    @property
    def implementation_class(self) -> Type[FewstepKubeflowOrchestrator]:
        return FewstepKubeflowOrchestrator
