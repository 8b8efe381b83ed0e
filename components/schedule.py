"""Cron expressions for the two schedulers the project uses, checked before anything is created.

A Kubernetes CronJob (`spec.schedule`, also what ZenML's Kubernetes orchestrator writes) takes the
standard 5 fields `minute hour day-of-month month day-of-week`; a Kubeflow Pipelines recurring run
(what ZenML's Kubeflow orchestrator passes to `kfp.Client.create_recurring_run`) takes 6, seconds
first: `second minute hour day-of-month month day-of-week`. Both parse with robfig/cron, so the
accepted syntax is the same: `*` (or `?` in the day fields), numbers, lists `a,b`, ranges `a-b`,
steps `*/n`, `a-b/n`, `a/n`, month names JAN-DEC and day names SUN-SAT, and the macros @yearly,
@annually, @monthly, @weekly, @daily, @midnight, @hourly (expanded here to their fields).
Not supported by either, refused: `L`, `W`, `#`, `@every <duration>`, a `TZ=`/`CRON_TZ=` prefix
(a CronJob takes `spec.timeZone` instead).
"""
from __future__ import annotations

import re
from dataclasses import dataclass

# Robfig/cron's bounds (Kubernetes and KFP): day of week is 0-6 with Sunday 0 (7 is refused).
MONTHS = ("JAN", "FEB", "MAR", "APR", "MAY", "JUN", "JUL", "AUG", "SEP", "OCT", "NOV", "DEC")
DAYS = ("SUN", "MON", "TUE", "WED", "THU", "FRI", "SAT")


@dataclass(frozen=True)
class Field:
    name: str
    low: int
    high: int
    names: tuple[str, ...] = ()          # symbolic values, NAMES[i] == low + i
    question: bool = False               # '?' allowed (day of month / day of week)

    def expected(self) -> str:
        named = f" or {self.names[0]}-{self.names[-1]}" if self.names else ""
        return (f"{self.low}-{self.high}{named}, '*'{' or ?' if self.question else ''}, lists (a,b), "
                f"ranges (a-b) and steps (*/n, a-b/n)")


SECOND = Field("second", 0, 59)
STANDARD_FIELDS = (Field("minute", 0, 59), Field("hour", 0, 23), Field("day of month", 1, 31, question=True),
                   Field("month", 1, 12, MONTHS), Field("day of week", 0, 6, DAYS, question=True))
SECONDS_FIELDS = (SECOND, *STANDARD_FIELDS)

MACROS = {"@yearly": "0 0 1 1 *", "@annually": "0 0 1 1 *", "@monthly": "0 0 1 * *", "@weekly": "0 0 * * 0",
          "@daily": "0 0 * * *", "@midnight": "0 0 * * *", "@hourly": "0 * * * *"}

_NUMBER = re.compile(r"^[0-9]+$")


def _fail(expr: str, detail: str) -> ValueError:
    return ValueError(f"cron expression '{expr}': {detail}")


def _value(expr: str, pos: int, field: Field, token: str) -> int:
    """One number or name of a field, inside its bounds."""
    where = f"field {pos} ({field.name}) '{token}'"
    if _NUMBER.match(token):
        v = int(token)
    elif token.upper() in field.names:
        v = field.low + field.names.index(token.upper())
    elif re.search(r"[LW#]", token.upper()) and token.upper() not in field.names:
        raise _fail(expr, f"{where}: 'L', 'W' and '#' are not supported by Kubernetes or Kubeflow; "
                          f"expected {field.expected()}")
    else:
        raise _fail(expr, f"{where}: expected {field.expected()}")
    if not field.low <= v <= field.high:
        raise _fail(expr, f"{where}: {v} is out of range; expected {field.expected()}")
    return v


def _check_field(expr: str, pos: int, field: Field, text: str) -> None:
    """Validate one field: comma-separated parts, each `*`, `?`, `a`, `a-b`, optionally `/step`."""
    for part in text.split(","):
        where = f"field {pos} ({field.name}) '{text}'"
        if not part:
            raise _fail(expr, f"{where}: empty list element; expected {field.expected()}")
        base, slash, step = part.partition("/")
        if slash:
            if not _NUMBER.match(step) or int(step) == 0:
                raise _fail(expr, f"{where}: step '{step}' must be a positive whole number")
        if base in ("*", "?"):
            if base == "?" and (not field.question or slash or text != "?"):
                raise _fail(expr, f"{where}: '?' stands alone and only in the day-of-month or day-of-week "
                                  f"field; expected {field.expected()}")
            continue
        lo_text, dash, hi_text = base.partition("-")
        lo = _value(expr, pos, field, lo_text)
        if dash:
            hi = _value(expr, pos, field, hi_text)
            if lo > hi:
                raise _fail(expr, f"{where}: range start {lo} is after its end {hi}")


def parse_cron(expr: str, fields: int = 5) -> tuple[str, ...]:
    """Validate a cron expression of `fields` (5: Kubernetes CronJob, 6: KFP, seconds first);
    -> its fields (a macro is expanded). Raises ValueError: one line naming the expression,
    the bad field and what is expected."""
    if fields not in (5, 6):
        raise ValueError(f"cron fields: expected 5 (Kubernetes) or 6 (Kubeflow, seconds first), got {fields}")
    if not isinstance(expr, str) or not expr.strip():
        raise _fail(str(expr if expr is not None else ""), f"empty; expected {fields} space-separated fields "
                                                            f"such as '{'0 ' if fields == 6 else ''}0 3 * * 1'")
    text = expr.strip()
    if re.match(r"^(CRON_)?TZ=", text):
        raise _fail(expr, "a TZ=/CRON_TZ= prefix is not accepted; set the time zone separately "
                          "(a CronJob's spec.timeZone)")
    if text.startswith("@"):
        macro = text.split()[0].lower()
        if macro == "@every":
            raise _fail(expr, "'@every <duration>' is not supported; use a cron expression or a macro "
                              f"({', '.join(MACROS)})")
        if macro not in MACROS or len(text.split()) != 1:
            raise _fail(expr, f"unknown macro; expected one of {', '.join(MACROS)}")
        parts = tuple(MACROS[macro].split())
        return ("0", *parts) if fields == 6 else parts
    parts = tuple(text.split())
    if len(parts) != fields:
        layout = ("second minute hour day-of-month month day-of-week" if fields == 6
                  else "minute hour day-of-month month day-of-week")
        hint = ""
        if fields == 5 and len(parts) == 6:
            hint = " (6 fields is the Kubeflow form with seconds first; convert with to_five_fields)"
        elif fields == 6 and len(parts) == 5:
            hint = " (5 fields is the Kubernetes form; convert with to_six_fields)"
        raise _fail(expr, f"{len(parts)} fields; expected {fields}: {layout}{hint}")
    spec = SECONDS_FIELDS if fields == 6 else STANDARD_FIELDS
    for pos, (field, text_) in enumerate(zip(spec, parts), start=1):
        _check_field(expr, pos, field, text_)
    return parts


def validate_cron(expr: str, fields: int = 5) -> str:
    """The expression normalised to single spaces (a macro expanded), after validation."""
    return " ".join(parse_cron(expr, fields))


def to_six_fields(expr: str) -> str:
    """Kubernetes (5 fields) -> Kubeflow (6 fields): a seconds field '0' in front."""
    return " ".join(("0", *parse_cron(expr, 5)))


def to_five_fields(expr: str) -> str:
    """Kubeflow (6 fields) -> Kubernetes (5): only when the seconds field is '0' (a CronJob has no seconds)."""
    parts = parse_cron(expr, 6)
    if parts[0] not in ("0", "00"):
        raise _fail(expr, f"field 1 (second) '{parts[0]}': a Kubernetes CronJob has no seconds field, so only "
                          "'0' converts to 5 fields; change the seconds to 0")
    return " ".join(parts[1:])


def count_fields(expr: str) -> int:
    """5 or 6 for an expression as written (a macro counts as 5); anything else is left to parse_cron."""
    text = (expr or "").strip()
    return 5 if text.startswith("@") else len(text.split())


def cron_for(expr: str, fields: int) -> str:
    """`expr` (5 or 6 fields as written) validated and converted to `fields` fields."""
    given = count_fields(expr)
    if given == fields or given not in (5, 6):
        return validate_cron(expr, fields)
    return to_six_fields(expr) if fields == 6 else to_five_fields(expr)
