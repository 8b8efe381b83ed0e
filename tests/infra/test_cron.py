"""infra/cron.py (cron for Kubernetes: 5 fields, Kubeflow: 6) and infra/retrain_decision.py
(the pure retrain decision)."""
import pytest

from infra.cron import cron_for, parse_cron, to_five_fields, to_six_fields, validate_cron
from infra.retrain_decision import ModelVersions, decide_retrain, teacher_identity

# ---------------------------------------------------------------------------------------- cron


@pytest.mark.parametrize("expr", ["0 3 * * 1", "*/15 0-6/2 1,15 JAN-MAR mon-fri", "0 3 ? * SUN", "5/10 * * * *",
                                  "0 0 1-31/2 * 0-6", "  0   3 * * 1  "])
def test_valid_five_fields(expr):
    assert len(parse_cron(expr, 5)) == 5
    assert validate_cron(expr) == " ".join(expr.split())


@pytest.mark.parametrize("expr, field, words", [
    ("0 3 * * 7", "field 5 (day of week) '7'", "0-6 or SUN-SAT"),
    ("60 3 * * 1", "field 1 (minute) '60'", "0-59"),
    ("0 24 * * 1", "field 2 (hour) '24'", "0-23"),
    ("0 3 0 * 1", "field 3 (day of month) '0'", "1-31"),
    ("0 3 * 13 1", "field 4 (month) '13'", "1-12 or JAN-DEC"),
    ("0 3 * FOO 1", "field 4 (month) 'FOO'", "JAN-DEC"),
    ("0 3 * * 5-1", "field 5 (day of week) '5-1'", "range start 5 is after its end 1"),
    ("*/0 3 * * 1", "field 1 (minute) '*/0'", "positive whole number"),
    ("0 3 L * *", "field 3 (day of month) 'L'", "not supported"),
    ("0 3 * * FRI#2", "field 5 (day of week) 'FRI#2'", "not supported"),
    ("0 ? * * 1", "field 2 (hour) '?'", "day-of-month or day-of-week"),
    ("1,,2 3 * * 1", "field 1 (minute) '1,,2'", "empty list element"),
])
def test_malformed_field_named(expr, field, words):
    with pytest.raises(ValueError) as exc:
        validate_cron(expr)
    msg = str(exc.value)
    assert "\n" not in msg and f"'{expr}'" in msg and field in msg and words in msg


@pytest.mark.parametrize("expr, words", [("0 3 * *", "4 fields; expected 5"), ("", "empty"),
                                         ("0 0 3 * * 1", "Kubeflow form with seconds first"),
                                         ("TZ=UTC 0 3 * * 1", "spec.timeZone"), ("@every 1h", "not supported"),
                                         ("@fortnightly", "unknown macro")])
def test_malformed_expression(expr, words):
    with pytest.raises(ValueError, match="cron expression") as exc:
        validate_cron(expr)
    assert words in str(exc.value) and "\n" not in str(exc.value)


def test_macros_expand():
    assert validate_cron("@weekly") == "0 0 * * 0"
    assert validate_cron("@daily", 6) == "0 0 0 * * *"
    assert to_six_fields("@hourly") == "0 0 * * * *"


def test_five_to_six_and_back():
    assert to_six_fields("0 3 * * 1") == "0 0 3 * * 1"
    assert to_five_fields("0 0 3 * * 1") == "0 3 * * 1"
    assert to_five_fields(to_six_fields("*/5 1-3 ? JAN,JUL MON")) == "*/5 1-3 ? JAN,JUL MON"


def test_six_to_five_refuses_seconds():
    with pytest.raises(ValueError, match=r"field 1 \(second\) '30'.*only '0' converts"):
        to_five_fields("30 0 3 * * 1")
    with pytest.raises(ValueError, match="seconds first"):      # already 6 fields: not a 5-field input
        to_six_fields("0 0 3 * * 1")


def test_seconds_field_validated():
    with pytest.raises(ValueError, match=r"field 1 \(second\) '61'"):
        validate_cron("61 0 3 * * 1", 6)


def test_cron_for_converts_either_way():
    assert cron_for("0 3 * * 1", 6) == "0 0 3 * * 1"
    assert cron_for("0 0 3 * * 1", 5) == "0 3 * * 1"
    assert cron_for("0 3 * * 1", 5) == "0 3 * * 1"
    with pytest.raises(ValueError, match="4 fields"):
        cron_for("0 3 * *", 5)


# ------------------------------------------------------------------------------ retrain decision

TEACHER = {"path": None, "train_steps": 1000, "seed": 0, "block_out_channels": [32, 64]}


def versions(data="aaaa1111.dir", teacher=TEACHER, weights=""):
    return ModelVersions(data_dvc_md5=data, teacher=teacher_identity(teacher, weights), teacher_config=teacher,
                         label="dmd2_student version 3")


def test_no_production_model():
    d = decide_retrain(versions(), None)
    assert d.retrain and d.reason == "no production model"


def test_forced_even_when_unchanged():
    d = decide_retrain(versions(), versions(), force=True)
    assert d.retrain and d.reasons == ("forced",)


def test_unchanged():
    d = decide_retrain(versions(), versions())
    assert not d.retrain and d.reason.startswith("unchanged") and "dmd2_student version 3" in d.reason


def test_data_changed():
    d = decide_retrain(versions(data="bbbb2222.dir"), versions(data="aaaa1111.dir"))
    assert d.retrain and d.reasons == ("data changed aaaa1111->bbbb2222 (the data's .dvc file)",)


def test_teacher_changed_names_keys():
    d = decide_retrain(versions(teacher={**TEACHER, "train_steps": 2000}), versions())
    assert d.retrain and d.reasons == ("teacher changed (teacher.train_steps 1000->2000)",)


def test_data_and_teacher_changed():
    d = decide_retrain(versions(data="bbbb2222.dir", teacher={**TEACHER, "seed": 1}), versions(), force=True)
    assert d.reasons[0] == "forced" and "data changed" in d.reason and "teacher.seed 0->1" in d.reason


def test_teacher_identity_canonical():
    """A recorded config (JSON: lists, any key order) names the same teacher as a fresh one (tuples)."""
    fresh = {**TEACHER, "block_out_channels": (32, 64)}
    recorded = dict(reversed(list(TEACHER.items())))
    assert teacher_identity(fresh) == teacher_identity(recorded)


def test_loaded_teacher_compared_by_weights():
    a = {**TEACHER, "path": "/models/teacher"}
    moved = {**TEACHER, "path": "/elsewhere/teacher"}
    assert teacher_identity(a, "w1") == teacher_identity(moved, "w1")        # moved folder: same teacher
    d = decide_retrain(versions(teacher=a, weights="w2"), versions(teacher=a, weights="w1"))
    assert d.retrain and d.reason.startswith("teacher changed")
    assert teacher_identity(a) == ""                                         # weights unknown


def test_unrecorded_versions_retrain():
    prod = ModelVersions(label="dmd2_student version 1")                    # a version made elsewhere
    d = decide_retrain(versions(), prod)
    assert d.retrain
    assert "records no data version" in d.reason and "teacher identity not recorded" in d.reason


def test_untracked_data_compares_content_hash():
    cur = ModelVersions(data_md5="cccc", teacher="t")
    assert not decide_retrain(cur, ModelVersions(data_md5="cccc", teacher="t")).retrain
    assert decide_retrain(cur, ModelVersions(data_md5="dddd", teacher="t")).reason == "data changed dddd->cccc"
