"""GPU requests of a pipeline's steps, checked before anything is compiled; Kubernetes quantities.

Pure (no zenml, no kfp), so the rules are testable in milliseconds. The rule: a step that asks for
`gpu_count > 0` (ZenML `ResourceSettings`) runs on a GPU node only when its orchestrator pod settings
name the node pool with the node selector `accelerator`, and only on an orchestrator that has GPUs.
"""
from __future__ import annotations

import re
from typing import Mapping, Optional, Tuple

ACCELERATOR_KEY = "accelerator"        # node label that picks the GPU node pool (ZenML's KFP convention)
GPU_RESOURCE = "nvidia.com/gpu"        # extended resource the NVIDIA device plugin advertises


class GpuRequestError(ValueError):
    """A step asks for GPUs the stack/config cannot give it (the message is one line)."""


def gpu_request_problems(steps: Mapping[str, Tuple[Optional[int], Mapping[str, str]]], *, has_gpus: bool,
                         orchestrator: str) -> list[str]:
    """One message per step whose `(gpu_count, node_selectors)` cannot be scheduled, in step order."""
    problems = []
    for step, (gpu_count, node_selectors) in steps.items():
        if not gpu_count:
            continue
        if not has_gpus:
            problems.append(f"step '{step}' asks for gpu_count={gpu_count} but orchestrator '{orchestrator}' has no "
                            "GPUs (has_gpus: false); set steps.{0}.settings.resources.gpu_count to 0 or use a "
                            "stack with GPU nodes".format(step))
        elif not (node_selectors or {}).get(ACCELERATOR_KEY):
            problems.append(f"step '{step}' asks for gpu_count={gpu_count} but has no node selector "
                            f"'{ACCELERATOR_KEY}': add steps.{step}.settings.orchestrator.pod_settings."
                            f"node_selectors.{ACCELERATOR_KEY} (the GPU node pool's label, e.g. nvidia-tesla-a100)")
    return problems


def check_gpu_requests(steps: Mapping[str, Tuple[Optional[int], Mapping[str, str]]], *, has_gpus: bool,
                       orchestrator: str) -> None:
    """Raise `GpuRequestError` (one line naming every offending step and the missing key) on any problem."""
    problems = gpu_request_problems(steps, has_gpus=has_gpus, orchestrator=orchestrator)
    if problems:
        raise GpuRequestError("; ".join(problems))


_MEMORY = re.compile(r"^(\d+)(KB|KiB|MB|MiB|GB|GiB|TB|TiB|PB|PiB)$")


def k8s_memory(memory: str) -> str:
    """ZenML's memory string ('16GB', '512MiB') -> a Kubernetes quantity ('16G', '512Mi')."""
    match = _MEMORY.match(memory.strip())
    if not match:
        raise ValueError(f"memory '{memory}': expected a number and a unit such as 16GB or 512MiB")
    number, unit = match.groups()
    return number + unit.replace("B", "")
