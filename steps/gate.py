"""Step: the quality gate - decide, record why, and promote the model version on a pass."""
import logging
from typing import Annotated, Any, Dict

from zenml import step

from components.config import EvalConfig, GateConfig
from components.data import ImageDataset
from components.gate import decide
from components.metrics import FeatureNet, ReferenceFeatures
from components.metrics.evaluate import fid_on_this_run
from steps.metadata import log_step_metadata
from steps.model_registry import production_student, promote
from steps.names import GATE_DECISION

logger = logging.getLogger(__name__)


@step
def quality_gate(metrics: Dict[str, Any], dataset: ImageDataset, feature_net: FeatureNet, references: ReferenceFeatures,
                 evaluation: EvalConfig, gate: GateConfig, decided_at: str) -> Annotated[Dict[str, Any],
                                                                                                 GATE_DECISION]:
    """`decided_at` (when the run was built) keeps the decision from being cached: the production
    model it compares against can change between runs."""
    production = production_student() if gate.beat_production else None
    production_fid = None
    if production is not None:
        production_fid = fid_on_this_run(production, dataset, feature_net, references, evaluation)
    decision = decide(gate, metrics, production_fid)
    version = promote(decision.promote_to) if decision.passed else ""
    out = {**decision.to_dict(), "production_fid": production_fid, "model_version": version,
           "decided_at": decided_at}
    log_step_metadata({"gate_passed": decision.passed, "gate_reasons": decision.reasons,
                       "promoted_to": decision.promote_to or "", "production_fid": production_fid or -1.0})
    (logger.info if decision.passed else logger.warning)(decision.summary())
    return out
