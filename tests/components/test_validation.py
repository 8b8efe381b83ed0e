import json
import logging
import math
import subprocess
import sys
import textwrap
from pathlib import Path

import pandas as pd
import pytest

from components.data.validation import (
    DataValidationError,
    DataValidationReport,
    ExpectationOutcome,
    validate_manifest,
)

CLASSES = ["0", "1", "2"]
ALL_RULES = [
    ("every image readable", "readable"),
    ("one image size", "height"),
    ("one image size", "width"),
    ("one channel count", "channels"),
    ("labels within the declared classes", "class_name"),
    ("every declared class present", "class_name"),
    ("at least 3 images per class", "class_count"),
    ("no exact duplicates across train/eval", "dup_across_split"),
    ("no NaN pixels", "has_nan"),
    ("pixels within 0..255", "min"),
    ("pixels within 0..255", "max"),
    ("no constant images", "std"),
]


def make_manifest(per_class=6, classes=CLASSES):
    """A good manifest: `per_class` readable 8x8 grey images per class, every 3rd one in eval."""
    rows = []
    for c in classes:
        for k in range(per_class):
            i = len(rows)
            rows.append(dict(
                path=f"data/img/{c}/{k}.png", index=i, label=int(c) if c.isdigit() else -1, class_name=c,
                split="eval" if k % 3 == 0 else "train", readable=True, error="", height=8, width=8,
                channels=1, mode="L", min=0.0, max=255.0, mean=90.0 + i, std=40.0, has_nan=False,
                sha256=f"{i:064x}", class_count=0, dup_across_split=False,
            ))
    return recount(pd.DataFrame(rows))


def recount(df):
    df = df.reset_index(drop=True)
    df["class_count"] = df.groupby("class_name")["class_name"].transform("size").astype(int)
    return df


def make_unreadable(df, i):
    df.loc[i, ["readable", "error"]] = [False, "cannot identify image file"]
    df.loc[i, ["height", "width", "channels"]] = 0
    df.loc[i, ["min", "max", "mean", "std"]] = math.nan
    df.loc[i, ["mode", "sha256"]] = ""


def failed(report):
    return [(o.rule, o.column) for o in report.failures()]


def outcome(report, rule, column):
    (o,) = [o for o in report.outcomes if o.rule == rule and o.column == column]
    return o


def test_good_manifest_passes_every_expectation():
    df = make_manifest()
    report = validate_manifest(df, CLASSES, min_per_class=3)
    assert report.success and report.failures() == []
    assert [(o.rule, o.column) for o in report.outcomes] == ALL_RULES
    assert all(o.success and o.unexpected_count == 0 and o.offending == [] for o in report.outcomes)
    assert report.num_rows == len(df) == 18
    assert report.gx_version.startswith("1.")
    assert outcome(report, "every image readable", "readable").expectation == "expect_column_values_to_be_in_set"
    assert outcome(report, "one image size", "height").expectation == \
        "expect_column_unique_value_count_to_be_between"


def _unreadable(df):
    make_unreadable(df, 4)  # height/width/channels 0 and NaN stats: only the readable rule may fail
    return [4]


def _other_height(df):
    df.loc[7, "height"] = 9
    return [7]


def _other_width(df):
    df.loc[[2, 13], "width"] = 16
    return [2, 13]


def _other_channels(df):
    df.loc[10, "channels"] = 3
    return [10]


def _unknown_class(df):
    df.loc[5, "class_name"] = "cat"
    return [5]


def _cross_split_duplicate(df):
    df.loc[[0, 1], "dup_across_split"] = True
    return [0, 1]


def _nan_pixels(df):
    df.loc[8, "has_nan"] = True
    return [8]


def _negative_min(df):
    df.loc[3, "min"] = -1.0
    return [3]


def _max_over_255(df):
    df.loc[[6, 16], "max"] = 256.0
    return [6, 16]


def _constant_image(df):
    df.loc[11, "std"] = 0.0
    df.loc[12, "std"] = 1e-6  # strictly > 0 passes
    return [11]


@pytest.mark.parametrize("breaker, rule, column", [
    (_unreadable, "every image readable", "readable"),
    (_other_height, "one image size", "height"),
    (_other_width, "one image size", "width"),
    (_other_channels, "one channel count", "channels"),
    (_unknown_class, "labels within the declared classes", "class_name"),
    (_cross_split_duplicate, "no exact duplicates across train/eval", "dup_across_split"),
    (_nan_pixels, "no NaN pixels", "has_nan"),
    (_negative_min, "pixels within 0..255", "min"),
    (_max_over_255, "pixels within 0..255", "max"),
    (_constant_image, "no constant images", "std"),
])
def test_each_row_rule_fails_alone_and_names_only_the_offending_paths(breaker, rule, column):
    df = make_manifest()
    bad_rows = breaker(df)
    df = recount(df)
    report = validate_manifest(df, CLASSES, min_per_class=1)
    assert not report.success
    assert failed(report) == [(rule, column)]
    o = outcome(report, rule, column)
    assert o.offending == [df.loc[i, "path"] for i in bad_rows]
    assert o.unexpected_count == len(bad_rows) and o.unit == "row"


def test_size_rule_offends_the_minority_whatever_the_row_order():
    df = make_manifest()
    df.loc[[0, 1], "height"] = 16  # first rows differ; the most common height (8) is the reference
    report = validate_manifest(df, CLASSES, min_per_class=3)
    assert outcome(report, "one image size", "height").offending == ["data/img/0/0.png", "data/img/0/1.png"]


def test_missing_declared_class():
    df = make_manifest()
    report = validate_manifest(df, CLASSES + ["7"], min_per_class=3)
    assert failed(report) == [("every declared class present", "class_name")]
    o = report.failures()[0]
    assert o.offending == ["class '7': 0 images"]
    assert o.unexpected_count == 1 and o.unit == "class"


def test_too_few_per_class_gives_one_entry_per_class():
    df = make_manifest()
    df = recount(df.drop(index=[6, 7, 8, 9, 12, 13]))  # class '1' keeps 2, class '2' keeps 4
    report = validate_manifest(df, CLASSES, min_per_class=5)
    assert failed(report) == [("at least 5 images per class", "class_count")]
    o = report.failures()[0]
    assert o.offending == ["class '1': 2 images", "class '2': 4 images"]
    assert o.unexpected_count == 2 and o.unit == "class"
    # the same manifest meets a lower minimum
    assert validate_manifest(df, CLASSES, min_per_class=2).success


def test_offending_is_capped_but_the_count_is_not():
    df = make_manifest()
    for i in range(7):
        make_unreadable(df, i)
    report = validate_manifest(df, CLASSES, min_per_class=3, max_offending=3)
    o = outcome(report, "every image readable", "readable")
    assert o.unexpected_count == 7
    assert o.offending == [f"data/img/0/{k}.png" for k in range(3)]
    assert "7 rows (data/img/0/0.png, data/img/0/1.png, data/img/0/2.png, ...)" in report.error_message()


def test_check_size_false_skips_the_size_rule():
    df = make_manifest()
    df.loc[3, "height"] = 32
    df.loc[4, "width"] = 32
    assert failed(validate_manifest(df, CLASSES, min_per_class=3)) == [
        ("one image size", "height"), ("one image size", "width")]
    report = validate_manifest(df, CLASSES, min_per_class=3, check_size=False)
    assert report.success
    assert not [o for o in report.outcomes if o.rule == "one image size"]
    assert len(report.outcomes) == len(ALL_RULES) - 2


def test_check_channels_false_skips_the_channel_rule():
    df = make_manifest()
    df.loc[3, "channels"] = 3
    assert failed(validate_manifest(df, CLASSES, min_per_class=3)) == [("one channel count", "channels")]
    report = validate_manifest(df, CLASSES, min_per_class=3, check_channels=False)
    assert report.success
    assert not [o for o in report.outcomes if o.rule == "one channel count"]


def test_a_non_range_index_still_maps_to_the_right_paths():
    df = make_manifest()
    df.index = [100 + 2 * i for i in range(len(df))]
    df.loc[df.index[9], "has_nan"] = True
    report = validate_manifest(df, CLASSES, min_per_class=3)
    assert outcome(report, "no NaN pixels", "has_nan").offending == [df["path"].iloc[9]]


def test_a_gx_exception_is_a_failed_outcome_not_a_crash():
    df = make_manifest()
    df["std"] = df["std"].astype(object)
    df.loc[4, "std"] = "n/a"  # GX cannot compare a string with 0
    report = validate_manifest(df, CLASSES, min_per_class=3)
    assert failed(report) == [("no constant images", "std")]
    o = report.failures()[0]
    assert o.offending and o.offending[0].startswith("error: ")
    assert "no constant images: error: " in report.error_message()


def test_missing_column_is_a_clear_error():
    with pytest.raises(ValueError, match="manifest lacks column.*has_nan"):
        validate_manifest(make_manifest().drop(columns=["has_nan"]), CLASSES, min_per_class=3)


def test_error_message_is_one_line_and_names_rule_and_first_path():
    df = make_manifest()
    make_unreadable(df, 3)
    df.loc[[7, 9], "height"] = 9
    report = validate_manifest(df, CLASSES, min_per_class=3)
    msg = report.error_message("data/img")
    assert "\n" not in msg
    assert msg.startswith("data validation failed for 'data/img' (2 of 12 expectations): ")
    assert "every image readable: 1 row (data/img/0/3.png)" in msg
    assert "one image size (height): 2 rows (data/img/1/1.png, data/img/1/3.png)" in msg
    assert "one image size (width)" not in msg
    err = DataValidationError(msg)
    assert isinstance(err, ValueError) and str(err) == msg


def test_error_message_keeps_one_line_for_paths_with_newlines():
    df = make_manifest()
    df.loc[2, "path"] = "data/img/0/odd\nname.png"
    df.loc[2, "std"] = 0.0
    msg = validate_manifest(df, CLASSES, min_per_class=3).error_message()
    assert "\n" not in msg and "no constant images: 1 row (data/img/0/odd\\nname.png)" in msg


def test_error_message_of_a_passing_report():
    report = validate_manifest(make_manifest(), CLASSES, min_per_class=3)
    msg = report.error_message("data/img")
    assert "\n" not in msg and msg.startswith("data validation passed for 'data/img'")


def test_empty_manifest_is_a_failed_report_not_a_crash():
    for empty in (pd.DataFrame(), make_manifest().iloc[0:0]):
        report = validate_manifest(empty, CLASSES, min_per_class=3)
        assert not report.success and report.num_rows == 0
        assert failed(report) == [("at least one image", "")]
        assert "at least one image" in report.error_message()
        assert "\n" not in report.error_message()


def test_to_dict_from_dict_round_trip():
    df = make_manifest()
    make_unreadable(df, 0)
    report = validate_manifest(df, CLASSES + ["9"], min_per_class=3)
    d = json.loads(json.dumps(report.to_dict()))  # JSON-serialisable
    back = DataValidationReport.from_dict(d)
    assert back == report
    assert isinstance(back.outcomes[0], ExpectationOutcome)
    assert back.error_message("x") == report.error_message("x")


def test_to_html_lists_every_rule_and_escapes_paths():
    df = make_manifest()
    df.loc[5, "path"] = "data/img/0/<x>.png"
    df.loc[5, "has_nan"] = True
    report = validate_manifest(df, CLASSES, min_per_class=3)
    page = report.to_html(title="Data validation <digits>")
    assert page.startswith("<!DOCTYPE html>") and page.rstrip().endswith("</html>")
    for rule, _ in ALL_RULES:
        assert rule in page
    assert "expect_column_values_to_be_in_set" in page
    assert "data/img/0/&lt;x&gt;.png" in page and "<x>.png" not in page
    assert "Data validation &lt;digits&gt;" in page
    assert page.count('<tr class="fail">') == 1 and page.count('<tr class="pass">') == len(ALL_RULES) - 1
    assert "<style>" in page and "<link" not in page and "<script" not in page and "http" not in page


def test_no_gx_info_logging(caplog):
    with caplog.at_level(logging.INFO):
        assert validate_manifest(make_manifest(), CLASSES, min_per_class=3).success
    assert not [r for r in caplog.records if r.name.startswith("great_expectations")]


def test_module_imports_neither_zenml_nor_torch_and_prints_nothing():
    """Load the module on its own (the components.data package itself imports torch)."""
    module = Path(__file__).resolve().parents[2] / "components" / "data" / "validation.py"
    code = textwrap.dedent(f"""
        import importlib.util, sys
        import pandas as pd
        spec = importlib.util.spec_from_file_location("validation", {str(module)!r})
        v = importlib.util.module_from_spec(spec)
        sys.modules["validation"] = v
        spec.loader.exec_module(v)
        df = pd.DataFrame([dict(path="a.png", index=0, label=0, class_name="0", split="train",
            readable=True, error="", height=8, width=8, channels=1, mode="L", min=0.0, max=255.0,
            mean=1.0, std=1.0, has_nan=False, sha256="ab", class_count=1, dup_across_split=False)])
        assert v.validate_manifest(df, ["0"], 1).success
        bad = [m for m in ("torch", "zenml") if m in sys.modules]
        assert not bad, bad
    """)
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout == "" and proc.stderr == "", proc.stderr  # no GX progress bars or log noise
