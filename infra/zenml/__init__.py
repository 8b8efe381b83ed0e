"""ZenML stack recipes: `python -m infra.zenml.stacks {local,kubeflow,kubernetes} [--dry-run] [--set]`."""
