"""Run metadata that is a no-op outside a running step (so `.entrypoint()` works in tests)."""
from typing import Any, Dict


def log_step_metadata(metadata: Dict[str, Any]) -> None:
    """Attach metadata to the running step; silently skip when called via `.entrypoint()`."""
    from zenml import get_step_context, log_metadata

    try:
        get_step_context()
    except RuntimeError:
        return
    log_metadata(metadata)
