"""Retrain or not: compare what a new run would be made of with what the production model was made of.

Pure decision logic (no ZenML): `infra/retrain.py` reads the production model version's recorded
lineage from ZenML, builds both `ModelVersions` and asks `decide_retrain`.

What is compared:
- the data version: the md5 that the data's .dvc file (data.dvc for the built-in digits) records (DVC's content hash;
  `components.data.versioning.dvc_tracking`), or, for data DVC does not track, the content md5 of
  the data path itself (`dvc_md5`). A run records both in its lineage (`dvc_md5`, `data_md5`).
- the teacher identity: sha256 of the resolved `teacher` config section (what a trained teacher is
  a deterministic function of, with the data); for a loaded teacher (`teacher.path`) the section
  without its path plus the sha256 of the teacher's weights (`state_hash`, what teacher_step
  records as `teacher_sha256`), so a moved folder is the same teacher and changed weights are not.
"""
from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from typing import Any, Mapping, Optional


def _canonical(value: Any) -> str:
    """JSON with sorted keys, tuples as lists: a recorded config (JSON) and a fresh one compare equal."""
    return json.dumps(json.loads(json.dumps(value, default=list)), sort_keys=True, separators=(",", ":"))


def teacher_identity(teacher: Mapping[str, Any], weights_sha256: str = "") -> str:
    """sha256 naming the teacher: its config section, or for a loaded teacher (path set) the section
    without the path plus its weights' hash. '' when a loaded teacher's weights hash is unknown."""
    section = dict(teacher)
    if section.get("path"):
        if not weights_sha256:
            return ""
        section["path"] = None
        payload = _canonical({"config": section, "weights_sha256": weights_sha256})
    else:
        payload = _canonical(section)
    return hashlib.sha256(payload.encode()).hexdigest()


@dataclass(frozen=True)
class ModelVersions:
    """What a model is made of. Empty strings mean "not recorded / unknown"."""

    data_dvc_md5: str = ""                # the md5 the data's .dvc file records
    data_md5: str = ""                    # content md5 of the data path (used when DVC does not track it)
    teacher: str = ""                     # teacher_identity(...)
    teacher_config: Optional[Mapping[str, Any]] = None   # the teacher section, to name changed keys
    label: str = ""                       # e.g. "dmd2_student version 3", for messages


@dataclass(frozen=True)
class RetrainDecision:
    retrain: bool
    reasons: tuple[str, ...] = field(default_factory=tuple)

    @property
    def reason(self) -> str:
        return "; ".join(self.reasons)

    def summary(self) -> str:
        return f"retrain: {'yes' if self.retrain else 'no'} ({self.reason})"


def short(h: str) -> str:
    """First 8 characters of a hash, for messages ('' -> 'none')."""
    return h[:8] if h else "none"


def _changed_keys(old: Optional[Mapping[str, Any]], new: Optional[Mapping[str, Any]]) -> list[str]:
    if old is None or new is None:
        return []
    keys = sorted(set(old) | set(new))
    missing = object()
    out = []
    for k in keys:
        a, b = old.get(k, missing), new.get(k, missing)
        if a is missing or b is missing or _canonical(a) != _canonical(b):
            fmt = lambda v: "absent" if v is missing else json.dumps(v, default=list)  # noqa: E731
            out.append(f"teacher.{k} {fmt(a)}->{fmt(b)}")
    return out


def _data_change(current: ModelVersions, production: ModelVersions) -> Optional[str]:
    """A reason when the data differ (or cannot be compared), else None."""
    if current.data_dvc_md5 and production.data_dvc_md5:
        if current.data_dvc_md5 != production.data_dvc_md5:
            return f"data changed {short(production.data_dvc_md5)}->{short(current.data_dvc_md5)} (the data's .dvc file)"
        return None
    if current.data_md5 and production.data_md5:
        if current.data_md5 != production.data_md5:
            return f"data changed {short(production.data_md5)}->{short(current.data_md5)}"
        return None
    return "data version not comparable: the production model records " + (
        "no data version" if not (production.data_dvc_md5 or production.data_md5) else
        "a .dvc hash of its data and this checkout's data is not tracked by DVC" if production.data_dvc_md5 else
        "only the data file's hash and this checkout tracks the data with DVC")


def _teacher_change(current: ModelVersions, production: ModelVersions) -> Optional[str]:
    if not production.teacher:
        return "teacher identity not recorded for the production model"
    if not current.teacher:
        return "teacher identity of this checkout unknown"
    if current.teacher == production.teacher:
        return None
    keys = _changed_keys(production.teacher_config, current.teacher_config)
    detail = ", ".join(keys) if keys else f"{short(production.teacher)}->{short(current.teacher)}"
    return f"teacher changed ({detail})"


def decide_retrain(current: ModelVersions, production: Optional[ModelVersions], force: bool = False) -> RetrainDecision:
    """Retrain when forced, when there is no production model, or when its data or teacher differ
    from the current ones (a version it does not record counts as differing: retraining records it)."""
    reasons: list[str] = ["forced"] if force else []
    if production is None:
        reasons.append("no production model")
        return RetrainDecision(True, tuple(reasons))
    for change in (_data_change(current, production), _teacher_change(current, production)):
        if change:
            reasons.append(change)
    if reasons:
        return RetrainDecision(True, tuple(reasons))
    what = f"data {short(current.data_dvc_md5 or current.data_md5)}, teacher {short(current.teacher)}"
    return RetrainDecision(False, (f"unchanged: {what} as in {production.label or 'the production model'}",))
