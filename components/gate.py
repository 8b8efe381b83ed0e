"""Quality gate: promote a student only when it is measurably good.

Rules (each optional, see GateConfig): an absolute FID ceiling, a ceiling on student/teacher FID,
a ceiling on the excess-FID ratio (how many times further above the real-vs-real floor than the
teacher: raw FID ratios look kind when the floor is a large part of both FIDs), a class-accuracy
floor (absolute, or a fraction of the real eval images' own class accuracy, which differs by dataset:
the default), and "no worse than the production model" with the production student
scored on the same reference statistics as this run. The decision lists every check with its
value and threshold, so a rejection says why.
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from typing import Optional

from components.config import ConfigError, GateConfig
from components.metrics.summary import excess_fid_ratio


def check_gate_config(cfg: GateConfig) -> None:
    """Thresholds that cannot work together are an error before anything runs."""
    fid_rules = (cfg.fid_max, cfg.fid_ratio_max, cfg.excess_fid_ratio_max)
    acc_rules = (cfg.class_acc_min, cfg.class_acc_min_real)
    if all(r is None for r in fid_rules + acc_rules) and not cfg.beat_production:
        raise ConfigError("config field 'gate': every rule is off (fid_max, fid_ratio_max, excess_fid_ratio_max, "
                          "class_acc_min, class_acc_min_real null and beat_production false) - a gate that passes "
                          "anything; set at least one rule")
    if cfg.promote_to == "production" and not cfg.beat_production and all(r is None for r in fid_rules):
        raise ConfigError("config field 'gate.promote_to': 'production' needs an FID rule (fid_max, fid_ratio_max, "
                          "excess_fid_ratio_max or beat_production) so a worse model cannot replace the current one")


@dataclass
class GateDecision:
    passed: bool
    promote_to: Optional[str]                  # the stage a pass promotes to; None on a rejection
    checks: list[dict] = field(default_factory=list)   # {rule, value, threshold, passed}
    reasons: list[str] = field(default_factory=list)   # one line per failed check

    def to_dict(self) -> dict:
        return asdict(self)

    def summary(self) -> str:
        head = f"quality gate: {'PASSED -> ' + str(self.promote_to) if self.passed else 'REJECTED'}"
        return head + ("" if self.passed else ": " + "; ".join(self.reasons))


def _fmt(v) -> str:
    return format(v, ".4g") if isinstance(v, float) else str(v)


def decide(cfg: GateConfig, metrics: dict, production_fid: Optional[float] = None) -> GateDecision:
    """metrics: the run's summary (student_fid, teacher_fid, student_class_acc, real_floor_fid, real_class_acc);
    production_fid: the production student's FID on this run's references (None: no production model)."""
    if cfg.fid_max is not None and cfg.fid_max < metrics["real_floor_fid"]:
        raise ConfigError(f"config field 'gate.fid_max': {cfg.fid_max} is below the real-data floor "
                          f"{metrics['real_floor_fid']:.3f} (FID of real train vs eval images): no model can pass")
    fid = float(metrics["student_fid"])
    finite = math.isfinite(fid)
    bad = int(metrics.get("student_nonfinite_samples") or 0)
    finite = finite and not bad
    checks = [{"rule": "student samples finite",
               "value": f"{bad} of {metrics.get('num_samples', '?')} samples NaN/inf" if bad else fid,
               "threshold": "no NaN/inf, finite FID", "passed": finite}]
    if not finite:                            # the FID rules below cannot be judged
        cfg = cfg.model_copy(update={"fid_max": None, "fid_ratio_max": None, "excess_fid_ratio_max": None,
                                     "beat_production": False})
    if cfg.fid_max is not None:
        checks.append({"rule": "FID ceiling", "value": fid, "threshold": cfg.fid_max, "passed": fid <= cfg.fid_max})
    if cfg.fid_ratio_max is not None:
        ratio = fid / float(metrics["teacher_fid"])
        checks.append({"rule": "FID ratio to teacher", "value": ratio, "threshold": cfg.fid_ratio_max,
                       "passed": ratio <= cfg.fid_ratio_max})
    if cfg.excess_fid_ratio_max is not None:
        floor = float(metrics["real_floor_fid"])
        ratio = excess_fid_ratio(fid - floor, float(metrics["teacher_fid"]) - floor)
        checks.append({"rule": "excess FID ratio to teacher", "value": ratio, "threshold": cfg.excess_fid_ratio_max,
                       "passed": ratio <= cfg.excess_fid_ratio_max})
    if cfg.class_acc_min is not None:
        acc = float(metrics["student_class_acc"])
        checks.append({"rule": "class accuracy floor", "value": acc, "threshold": cfg.class_acc_min,
                       "passed": acc >= cfg.class_acc_min})
    if cfg.class_acc_min_real is not None:
        if metrics.get("real_class_acc") is None:
            raise ValueError("gate.class_acc_min_real: the run's metrics have no real_class_acc (the real eval "
                             "images' class accuracy, written by the teacher evaluation); re-run the evaluation")
        acc, floor = float(metrics["student_class_acc"]), cfg.class_acc_min_real * float(metrics["real_class_acc"])
        checks.append({"rule": "class accuracy floor, relative to real images", "value": acc, "threshold": floor,
                       "passed": acc >= floor})
    if cfg.beat_production and production_fid is not None:
        checks.append({"rule": "no worse than production", "value": fid, "threshold": production_fid,
                       "passed": fid <= production_fid})
    reasons = [f"{c['rule']}: {_fmt(c['value'])} vs {_fmt(c['threshold'])}" for c in checks if not c["passed"]]
    passed = not reasons
    return GateDecision(passed, cfg.promote_to if passed else None, checks, reasons)
