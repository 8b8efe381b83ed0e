"""Validate a dataset manifest (one row per image) with a Great Expectations 1.x suite.

The manifest is a pandas DataFrame with the columns of `components.data.manifest.COLUMNS`
(path, label, class_name, split, readable, height, width, channels, pixel stats, sha256, ...). `validate_manifest` builds one
expectation per rule with small `_..._check(s)` builders (each also says how to read its result
back), runs them through GX on an ephemeral context and turns GX's per-expectation results into a
`DataValidationReport` that names the offending manifest paths.

GX is imported lazily (only once `validate_manifest` runs): importing it takes seconds, and a report
read back with `DataValidationReport.from_dict` needs no GX. Never imports zenml or torch.
"""
from __future__ import annotations

import html
import logging
import os
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from functools import partial
from typing import Any

import pandas as pd

# A GX result_format that returns every unexpected row index and value.
_RESULT_FORMAT = {"result_format": "COMPLETE"}


class DataValidationError(ValueError):
    """Raised by callers when a manifest fails validation; the message is `report.error_message()`."""


@dataclass
class ExpectationOutcome:
    """One GX expectation's result, in terms of the manifest."""

    rule: str               # plain words, e.g. "every image readable"
    expectation: str        # GX expectation type, e.g. "expect_column_values_to_be_in_set"
    column: str
    success: bool
    unexpected_count: int   # failing rows (or failing classes where unit == "class")
    offending: list[str] = field(default_factory=list)  # first max_offending paths / class entries
    unit: str = "row"       # what unexpected_count counts: "row" or "class"


@dataclass
class DataValidationReport:
    success: bool
    outcomes: list[ExpectationOutcome]
    num_rows: int
    gx_version: str

    def failures(self) -> list[ExpectationOutcome]:
        return [o for o in self.outcomes if not o.success]

    def _label(self, outcome: ExpectationOutcome) -> str:
        """Rule text, plus the column where the rule has several expectations (e.g. height/width)."""
        same_rule = sum(1 for o in self.outcomes if o.rule == outcome.rule)
        return f"{outcome.rule} ({outcome.column})" if same_rule > 1 and outcome.column else outcome.rule

    def error_message(self, source: str = "") -> str:
        """One line naming each failed rule, its count and its first offending paths."""
        where = f" for {source!r}" if source else ""
        n = len(self.outcomes)
        if self.success:
            return _one_line(f"data validation passed{where} ({n} expectations, {self.num_rows} rows)")
        parts = []
        for o in self.failures():
            text = self._label(o)
            if o.unexpected_count:
                unit = o.unit if o.unexpected_count == 1 else _plural(o.unit)
                text += f": {o.unexpected_count} {unit}"
                if o.offending:
                    more = ", ..." if o.unexpected_count > len(o.offending) else ""
                    text += f" ({', '.join(o.offending)}{more})"
            elif o.offending:
                text += f": {', '.join(o.offending)}"
            parts.append(text)
        head = f"data validation failed{where} ({len(self.failures())} of {n} expectations)"
        return _one_line(f"{head}: {'; '.join(parts)}")

    def to_dict(self) -> dict:
        return {
            "success": bool(self.success),
            "num_rows": int(self.num_rows),
            "gx_version": str(self.gx_version),
            "outcomes": [asdict(o) for o in self.outcomes],
        }

    @classmethod
    def from_dict(cls, d: dict) -> "DataValidationReport":
        return cls(
            success=bool(d["success"]),
            outcomes=[ExpectationOutcome(**o) for o in d.get("outcomes", [])],
            num_rows=int(d["num_rows"]),
            gx_version=str(d.get("gx_version", "")),
        )

    def to_html(self, title: str = "Data validation") -> str:
        """A standalone HTML page (inline CSS, no external assets), everything escaped."""
        e = html.escape
        n_fail = len(self.failures())
        verdict = "PASSED" if self.success else "FAILED"
        summary = (f"{verdict}: {len(self.outcomes) - n_fail} of {len(self.outcomes)} expectations met "
                   f"on {self.num_rows} manifest rows (Great Expectations {self.gx_version})")
        rows = []
        for o in self.outcomes:
            status = "pass" if o.success else "fail"
            examples = "<br>".join(e(x) for x in o.offending)
            if o.unexpected_count > len(o.offending):
                examples += "<br>&hellip;" if examples else "&hellip;"
            rows.append(
                f'<tr class="{status}"><td>{e(o.rule)}</td><td><code>{e(o.expectation)}</code></td>'
                f"<td><code>{e(o.column)}</code></td><td class=\"status\">{status}</td>"
                f"<td class=\"num\">{int(o.unexpected_count)}</td><td>{examples}</td></tr>"
            )
        return f"""<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<title>{e(title)}</title>
<style>
body {{ font-family: system-ui, sans-serif; margin: 2em; color: #222; }}
.summary {{ font-weight: bold; padding: .5em .8em; border-radius: 4px; display: inline-block; }}
.summary.pass {{ background: #e3f6e5; color: #1b5e20; }}
.summary.fail {{ background: #fde8e8; color: #b71c1c; }}
table {{ border-collapse: collapse; margin-top: 1em; }}
th, td {{ border: 1px solid #ccc; padding: .3em .6em; text-align: left; vertical-align: top; }}
th {{ background: #f3f3f3; }}
td.num {{ text-align: right; }}
tr.pass td.status {{ background: #c8e6c9; color: #1b5e20; font-weight: bold; }}
tr.fail td.status {{ background: #ffcdd2; color: #b71c1c; font-weight: bold; }}
code {{ font-size: .9em; }}
</style>
</head>
<body>
<h1>{e(title)}</h1>
<p class="summary {'pass' if self.success else 'fail'}">{e(summary)}</p>
<table>
<thead><tr><th>Rule</th><th>GX expectation</th><th>Column</th><th>Result</th><th>Unexpected</th>\
<th>Offending examples</th></tr></thead>
<tbody>
{chr(10).join(rows)}
</tbody>
</table>
</body>
</html>
"""


def _plural(unit: str) -> str:
    return unit + ("es" if unit.endswith("s") else "s")


def _one_line(text: str) -> str:
    return text.replace("\r", "\\r").replace("\n", "\\n")


def _gx():
    """Import great_expectations with telemetry off."""
    os.environ.setdefault("GX_ANALYTICS_ENABLED", "False")
    import great_expectations as gx

    return gx


# GX sets this logger to INFO itself, and every ephemeral context then logs "Created temporary
# directory ... for ephemeral docs site", which shows wherever the root logger has an INFO handler
# (pipeline step logs, for one).
_NOISY_GX_LOGGERS = ("great_expectations", "great_expectations.data_context.types.base")


@contextmanager
def _quiet_gx_logging():
    """Raise GX's loggers to WARNING for the duration of one validation, then restore them."""
    loggers = [logging.getLogger(name) for name in _NOISY_GX_LOGGERS]
    levels = [lg.level for lg in loggers]
    for lg in loggers:
        lg.setLevel(logging.WARNING)
    try:
        yield
    finally:
        for lg, level in zip(loggers, levels):
            lg.setLevel(level)


@dataclass
class _Check:
    """One expectation to run and how to read its result back."""

    rule: str
    expectation: Any          # a gx.expectations.* instance
    column: str
    offending: Any = None     # callable(gx_result) -> (count, offending, unit); None: rows from GX


@dataclass
class _Manifest:
    """The manifest as the checks read it back: rows by position, their paths, the declared classes."""

    df: pd.DataFrame          # index reset, so GX's unexpected_index_list are row positions
    paths: pd.Series          # df["path"] as str (empty when the manifest has no path column)
    class_names: list[str]
    max_offending: int


def validate_manifest(manifest: pd.DataFrame, class_names: list[str], min_per_class: int,
                      check_size: bool = True, check_channels: bool = True,
                      max_offending: int = 5) -> DataValidationReport:
    """Run the manifest suite through Great Expectations and report each expectation's outcome."""
    gx = _gx()
    m = _read_manifest(manifest, class_names, max_offending, check_size)
    if len(m.df):
        checks = _manifest_checks(gx.expectations, m, min_per_class, check_size, check_channels)
    else:
        checks = [_at_least_one_image_check(gx.expectations)]
    results = _run_suite(gx, checks, m.df)
    outcomes = [_outcome(check, results.get(i), m) for i, check in enumerate(checks)]
    return DataValidationReport(success=all(o.success for o in outcomes), outcomes=outcomes,
                                num_rows=int(len(m.df)), gx_version=str(gx.__version__))


def _read_manifest(manifest: pd.DataFrame, class_names: list[str], max_offending: int,
                   check_size: bool) -> _Manifest:
    """The manifest with a fresh index and normalised arguments; raises if a needed column is missing."""
    df = manifest.reset_index(drop=True)
    class_names = [str(c) for c in class_names]
    max_offending = max(int(max_offending), 0)
    if len(df):
        missing_cols = [c for c in _needed_columns(check_size) if c not in df.columns]
        if missing_cols:
            raise ValueError(f"manifest lacks column(s) {', '.join(missing_cols)}")
    paths = df["path"].astype(str) if "path" in df.columns else pd.Series([], dtype=str)
    return _Manifest(df, paths, class_names, max_offending)


def _manifest_checks(expect, m: _Manifest, min_per_class: int, check_size: bool,
                     check_channels: bool) -> list[_Check]:
    """Every check of a non-empty manifest, in report order (`expect` is gx.expectations)."""
    checks = [_readable_check(expect)]
    if check_size:
        checks += [_one_value_check(expect, m, "one image size", col) for col in ("height", "width")]
    if check_channels:
        checks.append(_one_value_check(expect, m, "one channel count", "channels"))
    return checks + [
        _labels_declared_check(expect, m),
        _classes_present_check(expect, m),
        _min_per_class_check(expect, m, min_per_class),
        _no_cross_split_duplicates_check(expect),
        _no_nan_pixels_check(expect),
        *_pixel_range_checks(expect),
        _no_constant_images_check(expect),
    ]


def _at_least_one_image_check(expect) -> _Check:
    """The only check of an empty manifest: it has at least one row."""
    return _Check("at least one image", expect.ExpectTableRowCountToBeBetween(min_value=1), "",
                  _no_rows)


def _readable_check(expect) -> _Check:
    """Every image could be read."""
    return _Check("every image readable",
                  expect.ExpectColumnValuesToBeInSet(column="readable", value_set=[True]), "readable")


def _one_value_check(expect, m: _Manifest, rule: str, column: str) -> _Check:
    """All readable images share one value of `column` (height, width or channels)."""
    from great_expectations.expectations.row_conditions import Column

    expectation = expect.ExpectColumnUniqueValueCountToBeBetween(
        column=column, min_value=0, max_value=1, row_condition=Column("channels") != 0)
    return _Check(rule, expectation, column, partial(_rows_off_the_common_value, m, column))


def _labels_declared_check(expect, m: _Manifest) -> _Check:
    """Every label is one of the declared classes."""
    return _Check("labels within the declared classes",
                  expect.ExpectColumnValuesToBeInSet(column="class_name", value_set=m.class_names),
                  "class_name")


def _classes_present_check(expect, m: _Manifest) -> _Check:
    """Every declared class has at least one image."""
    return _Check("every declared class present",
                  expect.ExpectColumnDistinctValuesToContainSet(column="class_name", value_set=m.class_names),
                  "class_name", partial(_absent_classes, m))


def _min_per_class_check(expect, m: _Manifest, min_per_class: int) -> _Check:
    """Every class has at least `min_per_class` images."""
    return _Check(f"at least {min_per_class} images per class",
                  expect.ExpectColumnValuesToBeBetween(column="class_count", min_value=min_per_class),
                  "class_count", partial(_classes_below_minimum, m))


def _no_cross_split_duplicates_check(expect) -> _Check:
    """No image appears, byte for byte, in both train and eval."""
    return _Check("no exact duplicates across train/eval",
                  expect.ExpectColumnValuesToBeInSet(column="dup_across_split", value_set=[False]),
                  "dup_across_split")


def _no_nan_pixels_check(expect) -> _Check:
    """No image has a NaN pixel."""
    return _Check("no NaN pixels", expect.ExpectColumnValuesToBeInSet(column="has_nan", value_set=[False]),
                  "has_nan")


def _pixel_range_checks(expect) -> list[_Check]:
    """Pixel minimum at least 0 and maximum at most 255 (two expectations, one rule)."""
    rule = "pixels within 0..255"
    return [
        _Check(rule, expect.ExpectColumnValuesToBeBetween(column="min", min_value=0), "min"),
        _Check(rule, expect.ExpectColumnValuesToBeBetween(column="max", max_value=255), "max"),
    ]


def _no_constant_images_check(expect) -> _Check:
    """No image is one flat colour (pixel std strictly above 0)."""
    return _Check("no constant images",
                  expect.ExpectColumnValuesToBeBetween(column="std", min_value=0, strict_min=True), "std")


def _no_rows(_res) -> tuple[int, list[str], str]:
    """Offending entry of the empty-manifest check."""
    return 0, ["the manifest has 0 rows"], "row"


def _rows_where(m: _Manifest, mask: pd.Series) -> tuple[int, list[str], str]:
    """Count and first paths of the rows selected by a boolean mask."""
    bad = m.paths[mask.to_numpy()]
    return len(bad), bad.iloc[:m.max_offending].tolist(), "row"


def _rows_off_the_common_value(m: _Manifest, column: str, _res) -> tuple[int, list[str], str]:
    """Readable rows whose `column` differs from its most common value (the smallest one on a tie)."""
    df = m.df
    values = df.loc[df["channels"] != 0, column]
    if values.empty:
        return 0, [], "row"
    counts = values.value_counts()
    mode = min(counts.index[counts == counts.max()])
    return _rows_where(m, (df["channels"] != 0) & (df[column] != mode))


def _absent_classes(m: _Manifest, _res) -> tuple[int, list[str], str]:
    """Declared classes with no image."""
    present = set(m.df["class_name"].astype(str))
    absent = [c for c in m.class_names if c not in present]
    return len(absent), [f"class {c!r}: 0 images" for c in absent[:m.max_offending]], "class"


def _classes_below_minimum(m: _Manifest, res) -> tuple[int, list[str], str]:
    """Classes of GX's unexpected rows with their image counts, in declared order."""
    idx = res.result.get("unexpected_index_list") or []
    small = m.df.iloc[list(idx)]
    per_class = small.groupby(small["class_name"].astype(str), sort=False)["class_count"].first()
    names = _in_declared_order(per_class.index, m.class_names)
    return (len(names), [f"class {c!r}: {int(per_class[c])} images" for c in names[:m.max_offending]],
            "class")


def _in_declared_order(names, class_names: list[str]) -> list[str]:
    """`names` in the order of `class_names`, undeclared ones last, alphabetically."""
    rank = {c: i for i, c in enumerate(class_names)}
    return [c for _, c in sorted((rank.get(c, len(rank)), c) for c in names)]


def _unexpected_rows(m: _Manifest, res) -> tuple[int, list[str], str]:
    """Count and first paths of the rows GX reported as unexpected."""
    idx = res.result.get("unexpected_index_list") or []
    count = int(res.result.get("unexpected_count", len(idx)))
    return count, [str(m.paths.iloc[int(j)]) for j in idx[:m.max_offending]], "row"


def _run_suite(gx, checks: list[_Check], df: pd.DataFrame) -> dict:
    """Validate `df` with one GX suite of the checks' expectations; GX results keyed by check index."""
    from great_expectations.data_context.types.base import ProgressBarsConfig

    # The context must exist before the suite is filled: ExpectationSuite.add_expectation looks up
    # the current (global) GX project to see whether the suite has been saved.
    with _quiet_gx_logging():
        context = gx.get_context(mode="ephemeral")
        context.variables.progress_bars = ProgressBarsConfig(globally=False, metric_calculations=False)
        suite = gx.ExpectationSuite(name="manifest")
        for i, check in enumerate(checks):
            check.expectation.meta = {"fewstep_check": i}
            suite.add_expectation(check.expectation)

        batch_definition = (context.data_sources.add_pandas("manifest")
                            .add_dataframe_asset("manifest")
                            .add_batch_definition_whole_dataframe("whole manifest"))
        batch = batch_definition.get_batch(batch_parameters={"dataframe": df})
        results = batch.validate(suite, result_format=_RESULT_FORMAT)
    return {(r.expectation_config.meta or {}).get("fewstep_check"): r for r in results.results}


def _outcome(check: _Check, res, m: _Manifest) -> ExpectationOutcome:
    """One check's GX result (None: missing) as an outcome naming manifest paths or classes."""
    error = "no result from Great Expectations" if res is None else _gx_error(res)
    if error:
        return ExpectationOutcome(check.rule, check.expectation.expectation_type, check.column, False, 0,
                                  [_one_line(f"error: {error}")[:300]], "row")
    read_offending = check.offending or partial(_unexpected_rows, m)
    count, offending, unit = read_offending(res)
    return ExpectationOutcome(check.rule, res.expectation_config.type, check.column, bool(res.success),
                              int(count), [str(x) for x in offending], unit)


def _needed_columns(check_size: bool) -> list[str]:
    cols = ["path", "readable", "channels", "class_name", "class_count", "dup_across_split", "has_nan",
            "min", "max", "std"]
    if check_size:
        cols += ["height", "width"]
    return cols


def _gx_error(res) -> str | None:
    """The message of an exception GX caught while computing this expectation's metrics, if any.

    exception_info is either one {"raised_exception", "exception_message", ...} dict or, when a
    metric failed, a dict of such dicts keyed by metric id.
    """
    info = res.exception_info or {}
    for entry in [info, *[v for v in info.values() if isinstance(v, dict)]]:
        if entry.get("raised_exception"):
            return str(entry.get("exception_message") or "exception in Great Expectations")
    return None
