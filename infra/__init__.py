"""Environment only: Kubeflow compile, Kubernetes schedule and retrain trigger, stack recipes (never imported by components/)."""
