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

croniter parses each field (bounds, names, steps, `?`); this module adds the field count, what
croniter accepts and robfig/cron refuses, and one-line errors that name the field.
"""
from __future__ import annotations

import re
from dataclasses import dataclass

from croniter import croniter
from croniter.croniter import DAY_FIELD, DOW_FIELD, HOUR_FIELD, MINUTE_FIELD, MONTH_FIELD, SECOND_FIELD


@dataclass(frozen=True)
class Field:
    name: str
    index: int                           # croniter's field index (croniter.RANGES, croniter.ALPHACONV)
    question: bool = False               # '?' allowed (day of month / day of week)

    @property
    def bounds(self) -> tuple[int, int]:
        return croniter.RANGES[self.index]

    @property
    def names(self) -> dict[str, int]:
        """croniter's month/day names (lower case) -> numbers; its 'l' (last day) is no name."""
        return {k: v for k, v in croniter.ALPHACONV[self.index].items() if isinstance(v, int)}

    def expected(self) -> str:
        names = list(self.names)
        named = f" or {names[0].upper()}-{names[-1].upper()}" if names else ""
        return (f"{self.bounds[0]}-{self.bounds[1]}{named}, '*'{' or ?' if self.question else ''}, lists (a,b), "
                f"ranges (a-b) and steps (*/n, a-b/n)")


SECOND = Field("second", SECOND_FIELD)
STANDARD_FIELDS = (Field("minute", MINUTE_FIELD), Field("hour", HOUR_FIELD),
                   Field("day of month", DAY_FIELD, question=True), Field("month", MONTH_FIELD),
                   Field("day of week", DOW_FIELD, question=True))
SECONDS_FIELDS = (SECOND, *STANDARD_FIELDS)

# Hand-written: croniter knows these macros but keeps their fields private to croniter._expand.
MACROS = {"@yearly": "0 0 1 1 *", "@annually": "0 0 1 1 *", "@monthly": "0 0 1 * *", "@weekly": "0 0 * * 0",
          "@daily": "0 0 * * *", "@midnight": "0 0 * * *", "@hourly": "0 * * * *"}


def _fail(expr: str, detail: str) -> ValueError:
    return ValueError(f"cron expression '{expr}': {detail}")


def _number(field: Field, token: str) -> int | None:
    """A number or a month/day name as its number; None for anything else."""
    return int(token) if re.fullmatch(r"[0-9]+", token) else field.names.get(token.lower())


def _check_field(expr: str, pos: int, field: Field, text: str, fields: int) -> None:
    """Field `pos` (1-based) of a `fields`-field expression: croniter's parse, then robfig/cron's limits."""
    where = f"field {pos} ({field.name}) '{text}'"
    probe = ["*"] * fields
    probe[pos - 1] = text
    if not croniter.is_valid(" ".join(probe), second_at_beginning=fields == 6):
        # Hand-written wording: croniter's errors name neither the field nor, in these cases, the cause.
        steps = [part.partition("/")[2] for part in text.split(",") if "/" in part]
        bad_step = next((s for s in steps if not re.fullmatch(r"[0-9]+", s) or int(s) == 0), None)
        reason = ("empty list element" if "" in text.split(",") else
                  "'?' stands alone and only in the day-of-month or day-of-week field" if "?" in text else
                  f"step '{bad_step}' must be a positive whole number" if bad_step is not None else
                  f"not a valid {field.name}")
        raise _fail(expr, f"{where}: {reason}; expected {field.expected()}")
    # Hand-written: croniter also accepts its extensions (L, W, #, R), day of week 7 and wrapping ranges (5-1),
    # which robfig/cron (Kubernetes, KFP) refuses.
    for part in text.split(","):
        base = part.partition("/")[0]
        if base in ("*", "?"):
            continue
        ends = [_number(field, token) for token in base.split("-")]
        if None in ends:
            raise _fail(expr, f"{where}: 'L', 'W', '#' and 'R' are not supported by Kubernetes or Kubeflow; "
                              f"expected {field.expected()}")
        outside = [v for v in ends if not field.bounds[0] <= v <= field.bounds[1]]
        if outside:
            raise _fail(expr, f"{where}: {outside[0]} is out of range; expected {field.expected()}")
        if len(ends) == 2 and ends[0] > ends[1]:
            raise _fail(expr, f"{where}: range start {ends[0]} is after its end {ends[1]}")


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
    # Hand-written: croniter would only report a wrong column count for these robfig forms, not what to do.
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
    # Hand-written: croniter takes 5, 6 (seconds last unless second_at_beginning) or 7 fields; a scheduler takes one.
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
    for pos, (field, part) in enumerate(zip(spec, parts), start=1):
        _check_field(expr, pos, field, part, fields)
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
