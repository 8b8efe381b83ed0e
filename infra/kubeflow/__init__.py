"""Kubeflow Pipelines: the `fewstep_kubeflow` orchestrator flavor (ZenML's Kubeflow orchestrator with
GPU requests, node selectors and tolerations that reach the compiled YAML) and the offline compile CLI
`python -m infra.kubeflow.compile`. Nothing here imports zenml at package import time."""
