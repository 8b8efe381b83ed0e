"""Step: the quality gate on the latent student (components/gate.py's rules; prompt-class agreement is the class
accuracy). No production comparison yet: a production text-to-image student is not rescored on this run."""
import logging
from typing import Annotated, Any, Dict

from zenml import step

from components.config import GateConfig
from components.t2i.run import decide_gate
from steps.metadata import log_step_metadata
from steps.model_registry import promote
from steps.names import GATE_DECISION

logger = logging.getLogger(__name__)


@step
def t2i_gate(metrics: Dict[str, Any], gate: GateConfig, decided_at: str) -> Annotated[Dict[str, Any], GATE_DECISION]:
    decision = decide_gate(gate, metrics)
    version = promote(decision.promote_to) if decision.passed else ""
    log_step_metadata({"gate_passed": decision.passed, "gate_reasons": decision.reasons,
                       "promoted_to": decision.promote_to or ""})
    (logger.info if decision.passed else logger.warning)(decision.summary())
    return {**decision.to_dict(), "model_version": version, "decided_at": decided_at}
