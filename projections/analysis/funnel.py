"""Touchpoint funnels as a question: the spec, the step grammar and its parser, the result.

The SQL that answers a FunnelSpec is projections/clickhouse/builders/funnel.py; nothing
here knows of it.
"""

from __future__ import annotations

import difflib
import math
import re
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from enum import StrEnum
from typing import Any, NoReturn

from projections.analysis.spec import SpecError, before
from projections.durations import MAX_WINDOW_SECONDS, DurationError, parse_window
from schemas.catalogue import TOUCHPOINT_TYPES

# One bit per step (and per exclusion) in a UInt64 mask.
MAX_STEPS = 64
MAX_EXCLUSIONS = 64
DEFAULT_WINDOW = "14d"
PERCENTILES = (0.5, 0.9)
DEFAULT_DROPPED_LIMIT = 100

# Envelope fields a filter or a breakdown may name; any other name is a property. The
# SQL reads them as columns of the touchpoints table (the builder takes each from the
# table registry, which refuses a name it does not declare).
ENVELOPE_FIELDS = frozenset(
    {"channel", "source", "session_id", "case_id", "customer_id", "anonymous_id"}
)
PROPERTY_PREFIX = "properties."

# The operators of a step filter, longest first for the scanner.
OPERATORS = ("!=", ">=", "<=", "=", ">", "<", "~")
NUMERIC_OPERATORS = frozenset({">", ">=", "<", "<="})

_TYPE = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_BARE_FIELD = re.compile(r"[^\s=!<>~,\[\]\"]+")
_BARE_VALUE = re.compile(r"[^,\]\"]*")
_NUMBER = re.compile(r"[+-]?(?:\d+(?:\.\d*)?|\.\d+)(?:[eE][+-]?\d+)?")
_EXCLUDED_RANGE = re.compile(r"@\s*(\d+)\s*-\s*(\d+)")


class FunnelSpecError(SpecError):
    """A funnel definition that cannot run; the message is one line naming the part."""


class FunnelOrder(StrEnum):
    ordered = "ordered"  # steps in order, anything may happen in between
    strict = "strict"  # steps in order, nothing else in between
    any = "any"  # steps in any order within the window


class Attribution(StrEnum):
    start = "start"  # the event that began the counted attempt
    first_touch = "first-touch"  # the person's earliest non-empty value in the range
    last_touch = "last-touch"  # the latest non-empty value up to the furthest step


# ---- the spec --------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Field:
    """An envelope column (from ENVELOPE_FIELDS) or a top-level key of `properties`."""

    name: str
    envelope: bool

    def __post_init__(self) -> None:
        # An envelope field is a column in the SQL: only the declared ones are.
        if self.envelope and self.name not in ENVELOPE_FIELDS:
            fields = ", ".join(sorted(ENVELOPE_FIELDS))
            raise FunnelSpecError(
                f"{self.name!r} is not an envelope field ({fields}); name it as a property"
            )

    def __str__(self) -> str:
        if self.envelope or self.name not in ENVELOPE_FIELDS:
            return self.name
        return f"{PROPERTY_PREFIX}{self.name}"


@dataclass(frozen=True, slots=True)
class StepFilter:
    """`field op value`. `number` is set when the comparison is numeric."""

    field: Field
    operator: str
    value: str
    number: float | None = None


@dataclass(frozen=True, slots=True)
class FunnelStep:
    type: str
    filters: tuple[StepFilter, ...] = ()
    optional: bool = False
    # Most seconds after the previous matched step (inclusive); None: only the window.
    within_seconds: int | None = None
    label: str = ""


@dataclass(frozen=True, slots=True)
class FunnelExclusion:
    """An event that ends an attempt between steps `after_step` and `before_step` (1-based)."""

    type: str
    filters: tuple[StepFilter, ...]
    after_step: int
    before_step: int
    label: str = ""


@dataclass(frozen=True, slots=True)
class Breakdown:
    field: Field
    attribution: Attribution = Attribution.start


@dataclass(frozen=True, slots=True)
class FunnelSpec:
    """A whole funnel question; built by `parse_funnel` or directly (it checks itself)."""

    steps: tuple[FunnelStep, ...]
    exclusions: tuple[FunnelExclusion, ...] = ()
    order: FunnelOrder = FunnelOrder.ordered
    window_seconds: int = 14 * 86400
    breakdown: Breakdown | None = None
    since: datetime | None = None
    until: datetime | None = None

    def __post_init__(self) -> None:
        n = len(self.steps)
        if not 1 <= n <= MAX_STEPS:
            raise FunnelSpecError(f"a funnel takes 1 to {MAX_STEPS} steps, got {n}")
        if self.steps[0].optional:
            raise FunnelSpecError("step 1 cannot be optional: every attempt starts there")
        if self.steps[0].within_seconds is not None:
            raise FunnelSpecError("step 1 cannot have a per-step window: nothing comes before it")
        if not 0 < self.window_seconds <= MAX_WINDOW_SECONDS:
            raise FunnelSpecError(
                f"the window must be between 1s and {MAX_WINDOW_SECONDS // 86400}d"
            )
        for number, step in enumerate(self.steps, 1):
            within = step.within_seconds
            if within is not None and not 0 < within <= MAX_WINDOW_SECONDS:
                raise FunnelSpecError(f"step {number}: the per-step window must be positive")
        if len(self.exclusions) > MAX_EXCLUSIONS:
            raise FunnelSpecError(f"at most {MAX_EXCLUSIONS} exclusions")
        for exclusion in self.exclusions:
            if not 1 <= exclusion.after_step < exclusion.before_step <= n:
                raise FunnelSpecError(
                    f"exclusion {exclusion.label or exclusion.type!r}: its steps must satisfy "
                    f"1 <= A < B <= {n}, got {exclusion.after_step}-{exclusion.before_step}"
                )
        if self.order is FunnelOrder.any:
            if self.exclusions:
                raise FunnelSpecError(
                    "exclusions need an order between steps: use --order ordered or strict"
                )
            if any(step.within_seconds is not None for step in self.steps):
                raise FunnelSpecError(
                    "per-step windows need an order between steps: use --order ordered or strict"
                )
        if not before(self.since, self.until):
            raise FunnelSpecError("--since must be before --until")

    @property
    def required(self) -> tuple[bool, ...]:
        return tuple(not step.optional for step in self.steps)

    def previous_required(self, step: int) -> int:
        """The nearest required step before `step` (1-based); conversions count from it."""
        for number in range(step - 1, 0, -1):
            if not self.steps[number - 1].optional:
                return number
        raise FunnelSpecError(f"step {step} has no step before it")


# ---- the parser ------------------------------------------------------------------------


class _Scanner:
    """A cursor over one step's text that reports errors against that text."""

    def __init__(self, text: str, where: str) -> None:
        self.text = text
        self.where = where
        self.pos = 0

    def fail(self, message: str) -> NoReturn:
        raise FunnelSpecError(f"{self.where} {self.text!r}: {message}")

    def spaces(self) -> None:
        while self.pos < len(self.text) and self.text[self.pos].isspace():
            self.pos += 1

    def take(self, literal: str) -> bool:
        if self.text.startswith(literal, self.pos):
            self.pos += len(literal)
            return True
        return False

    def peek(self, literal: str) -> bool:
        return self.text.startswith(literal, self.pos)

    def match(self, pattern: re.Pattern[str]) -> str | None:
        found = pattern.match(self.text, self.pos)
        if found is None:
            return None
        self.pos = found.end()
        return found.group()

    def rest(self) -> str:
        return self.text[self.pos :]

    def quoted(self) -> str:
        """A "..." string at the cursor; backslash escapes the next character."""
        assert self.take('"')
        out: list[str] = []
        while self.pos < len(self.text):
            ch = self.text[self.pos]
            self.pos += 1
            if ch == "\\" and self.pos < len(self.text):
                out.append(self.text[self.pos])
                self.pos += 1
            elif ch == '"':
                return "".join(out)
            else:
                out.append(ch)
        self.fail('a quoted string is not closed with "')


def parse_duration(text: str, what: str = "window") -> int:
    """Whole seconds of a window such as `30s`, `15m`, `2h`, `14d` or `2w`, in the one
    duration grammar (projections/durations.py)."""
    try:
        return parse_window(text, what)
    except DurationError as exc:
        raise FunnelSpecError(str(exc)) from None


def _field(scanner: _Scanner) -> Field:
    explicit = scanner.take(PROPERTY_PREFIX)
    name = scanner.quoted() if scanner.peek('"') else scanner.match(_BARE_FIELD)
    if not name:
        scanner.fail("a filter needs a field name before its operator")
    return Field(name, envelope=not explicit and name in ENVELOPE_FIELDS)


def _filter(scanner: _Scanner) -> StepFilter:
    scanner.spaces()
    field = _field(scanner)
    scanner.spaces()
    operator = next((op for op in OPERATORS if scanner.take(op)), None)
    if operator is None:
        scanner.fail(f"expected one of {' '.join(OPERATORS)} after {str(field)!r}")
    scanner.spaces()
    quoted = scanner.peek('"')
    value = scanner.quoted() if quoted else (scanner.match(_BARE_VALUE) or "").strip()
    if not value and not quoted:
        scanner.fail(
            f"the filter on {str(field)!r} has no value "
            f'(write {field}{operator}"" to compare with an empty or missing value)'
        )
    number: float | None = None
    if operator in NUMERIC_OPERATORS:
        if not _NUMBER.fullmatch(value.strip()):
            scanner.fail(f"{operator} compares numbers, but {value!r} is not a number")
        number = float(value)
    elif operator in ("=", "!=") and not quoted and _NUMBER.fullmatch(value):
        # an unquoted number compares as a number ("revenue=50" matches 50.0 and "50");
        # quote it to compare text ("case_id=\"007\"")
        number = float(value)
    elif operator == "~" and not value:
        scanner.fail(f"~ on {str(field)!r} needs some text to look for")
    if number is not None and not math.isfinite(number):
        scanner.fail(f"{value!r} is not a finite number")
    return StepFilter(field, operator, value, number)


def _filters(scanner: _Scanner) -> tuple[StepFilter, ...]:
    if not scanner.take("["):
        return ()
    found: list[StepFilter] = []
    while True:
        found.append(_filter(scanner))
        scanner.spaces()
        if scanner.take("]"):
            return tuple(found)
        if not scanner.take(","):
            if scanner.pos >= len(scanner.text):
                scanner.fail("the filter list is not closed with ]")
            scanner.fail(f"expected , or ] before {scanner.rest()!r}")


def _touchpoint_type(scanner: _Scanner) -> str:
    scanner.spaces()
    name = scanner.match(_TYPE)
    if name is None:
        scanner.fail("expected a touchpoint type, such as purchase")
    if name not in TOUCHPOINT_TYPES:
        close = difflib.get_close_matches(name, TOUCHPOINT_TYPES, n=1)
        hint = f" (did you mean {close[0]}?)" if close else " (see journey schema list)"
        scanner.fail(f"unknown touchpoint type {name!r}{hint}")
    return name


def _end(scanner: _Scanner) -> None:
    scanner.spaces()
    if scanner.pos < len(scanner.text):
        scanner.fail(f"unexpected {scanner.rest()!r}")


@dataclass(frozen=True, slots=True)
class _ParsedStep:
    step: FunnelStep
    excluded: bool


def _parse_step_text(text: str, number: int) -> _ParsedStep:
    scanner = _Scanner(text, f"step {number}")
    scanner.spaces()
    optional = scanner.take("?")
    excluded = not optional and scanner.take("!")
    type_ = _touchpoint_type(scanner)
    filters = _filters(scanner)
    scanner.spaces()
    within: int | None = None
    if scanner.take("<="):
        if excluded:
            scanner.fail("an exclusion has no per-step window")
        within = parse_duration(scanner.rest(), f"{scanner.where} {text!r}: per-step window")
        scanner.pos = len(scanner.text)
    _end(scanner)
    label = text.strip()
    return _ParsedStep(FunnelStep(type_, filters, optional, within, label), excluded)


def parse_step(text: str, number: int = 1) -> FunnelStep:
    """One step: `[?]type[field op value, ...][<=duration]`."""
    parsed = _parse_step_text(text, number)
    if parsed.excluded:
        raise FunnelSpecError(
            f"step {number} {text!r}: an exclusion (!) must stand between two steps"
        )
    return parsed.step


def parse_exclusion(text: str, n_steps: int) -> FunnelExclusion:
    """`type[filters]@A-B` (between steps A and B) or `type[filters]` (first to last step)."""
    scanner = _Scanner(text, "exclusion")
    scanner.spaces()
    scanner.take("!")
    type_ = _touchpoint_type(scanner)
    filters = _filters(scanner)
    scanner.spaces()
    after, before = 1, n_steps
    if scanner.peek("@"):
        found = scanner.match(_EXCLUDED_RANGE)
        if found is None:
            scanner.fail("write the steps it separates as @A-B, such as @2-3")
        bounds = _EXCLUDED_RANGE.fullmatch(found)
        assert bounds is not None
        after, before = int(bounds.group(1)), int(bounds.group(2))
    elif scanner.peek("<="):
        scanner.fail("an exclusion has no per-step window")
    _end(scanner)
    if n_steps < 2:
        scanner.fail("an exclusion needs a funnel of at least two steps")
    if not 1 <= after < before <= n_steps:
        scanner.fail(f"the steps must satisfy 1 <= A < B <= {n_steps}, got {after}-{before}")
    return FunnelExclusion(type_, filters, after, before, text.strip())


def parse_breakdown(text: str, attribution: Attribution | str = Attribution.start) -> Breakdown:
    """An envelope field (`channel`, ...) or a property (`utm_campaign`, `properties.x`)."""
    scanner = _Scanner(text.strip(), "breakdown")
    field = _field(scanner)
    _end(scanner)
    try:
        model = Attribution(attribution)
    except ValueError:
        choices = ", ".join(a.value for a in Attribution)
        raise FunnelSpecError(f"attribution {attribution!r}: choose {choices}") from None
    return Breakdown(field, model)


def parse_funnel(
    steps: Sequence[str],
    *,
    exclude: Sequence[str] = (),
    order: FunnelOrder | str = FunnelOrder.ordered,
    window: str = DEFAULT_WINDOW,
    breakdown: str | None = None,
    attribution: Attribution | str = Attribution.start,
    since: datetime | None = None,
    until: datetime | None = None,
) -> FunnelSpec:
    """A FunnelSpec from the CLI's strings; FunnelSpecError names the part that is wrong.

    `steps` may interleave exclusions (`!type[...]`): each one ends an attempt between the
    steps around it. `exclude` takes `type[...]@A-B` for any pair of steps.
    """
    try:
        mode = FunnelOrder(order)
    except ValueError:
        choices = ", ".join(o.value for o in FunnelOrder)
        raise FunnelSpecError(f"order {order!r}: choose {choices}") from None
    parsed_steps: list[FunnelStep] = []
    inline: list[tuple[FunnelStep, int]] = []  # an exclusion and the steps before it
    for text in steps:
        parsed = _parse_step_text(text, len(parsed_steps) + 1)
        if parsed.excluded:
            if not parsed_steps:
                raise FunnelSpecError(
                    f"exclusion {text!r}: it must stand between two steps, not before the first"
                )
            inline.append((parsed.step, len(parsed_steps)))
        else:
            parsed_steps.append(parsed.step)
    if not parsed_steps:
        raise FunnelSpecError("a funnel needs at least one step")
    n = len(parsed_steps)
    exclusions: list[FunnelExclusion] = []
    for step, after in inline:
        if after >= n:
            raise FunnelSpecError(
                f"exclusion {step.label!r}: it must stand between two steps, not after the last"
            )
        exclusions.append(FunnelExclusion(step.type, step.filters, after, after + 1, step.label))
    exclusions.extend(parse_exclusion(text, n) for text in exclude)
    return FunnelSpec(
        steps=tuple(parsed_steps),
        exclusions=tuple(exclusions),
        order=mode,
        window_seconds=parse_duration(window),
        breakdown=parse_breakdown(breakdown, attribution) if breakdown is not None else None,
        since=since,
        until=until,
    )


# ---- the result ------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class FunnelStepResult:
    """One step of one group. Seconds are None where nobody has a time."""

    step: int
    label: str
    optional: bool
    people: int
    # people / people at the previous required step (step 1: None)
    conversion_from_previous: float | None
    # people / people at step 1 (None when nobody started)
    conversion_from_first: float | None
    # people at the previous required step who did not reach this one (step 1: None)
    dropped: int | None
    median_seconds_from_previous: float | None
    p90_seconds_from_previous: float | None
    median_seconds_from_first: float | None
    p90_seconds_from_first: float | None


@dataclass(frozen=True, slots=True)
class FunnelGroup:
    """The funnel of everybody (breakdown None) or of one breakdown value."""

    breakdown: str | None
    steps: tuple[FunnelStepResult, ...]


def _seconds(values: Any, index: int) -> float | None:
    # NaN from the engine (or null after a JSON hop) means nobody had a time
    if not isinstance(values, Sequence) or len(values) <= index or values[index] is None:
        return None
    number = float(values[index])
    return None if math.isnan(number) else number


def _ratio(part: int, whole: int) -> float | None:
    return part / whole if whole else None


def _group(spec: FunnelSpec, breakdown: str | None, rows: dict[int, Sequence[Any]]) -> FunnelGroup:
    people = {n: int(rows[n][3]) if n in rows else 0 for n in range(1, len(spec.steps) + 1)}
    results: list[FunnelStepResult] = []
    for n, step in enumerate(spec.steps, 1):
        row = rows.get(n)
        previous = spec.previous_required(n) if n > 1 else None
        results.append(
            FunnelStepResult(
                step=n,
                label=step.label or step.type,
                optional=step.optional,
                people=people[n],
                conversion_from_previous=(
                    None if previous is None else _ratio(people[n], people[previous])
                ),
                conversion_from_first=_ratio(people[n], people[1]),
                dropped=None if previous is None else people[previous] - people[n],
                median_seconds_from_previous=_seconds(row[4], 0) if row and n > 1 else None,
                p90_seconds_from_previous=_seconds(row[4], 1) if row and n > 1 else None,
                median_seconds_from_first=_seconds(row[5], 0) if row else None,
                p90_seconds_from_first=_seconds(row[5], 1) if row else None,
            )
        )
    return FunnelGroup(breakdown, tuple(results))


def shape_funnel(spec: FunnelSpec, rows: Sequence[Sequence[Any]]) -> list[FunnelGroup]:
    """Groups from `funnel_query` rows: everybody first, then breakdown values by the
    people at step 1 (most first, then by value). Steps nobody reached get zeros."""
    everybody: dict[int, Sequence[Any]] = {}
    by_value: dict[str, dict[int, Sequence[Any]]] = {}
    for row in rows:
        breakdown, all_people, step = str(row[0]), int(row[1]), int(row[2])
        if all_people:
            everybody[step] = row
        else:
            by_value.setdefault(breakdown, {})[step] = row
    groups = [_group(spec, None, everybody)]
    ranked = sorted(by_value.items(), key=lambda item: (-_first(item[1]), item[0]))
    groups += [_group(spec, value, steps) for value, steps in ranked]
    return groups


def _first(rows: dict[int, Sequence[Any]]) -> int:
    return int(rows[1][3]) if 1 in rows else 0


# The order of FunnelStepResult's numbers in flat output.
RESULT_FIELDS: tuple[str, ...] = (
    "people",
    "conversion_from_previous",
    "conversion_from_first",
    "dropped",
    "median_seconds_from_previous",
    "p90_seconds_from_previous",
    "median_seconds_from_first",
    "p90_seconds_from_first",
)


def step_values(result: FunnelStepResult) -> list[Any]:
    """The numbers of a step in RESULT_FIELDS order."""
    return [getattr(result, name) for name in RESULT_FIELDS]


def funnel_rows(
    spec: FunnelSpec, groups: Sequence[FunnelGroup]
) -> tuple[list[str], list[list[Any]]]:
    """Flat columns and rows of a funnel result, raw numbers (JSON and CSV output)."""
    columns = ["step", "label", *RESULT_FIELDS]
    if spec.breakdown is not None:
        columns.insert(0, "breakdown")
    rows: list[list[Any]] = []
    for group in groups:
        if spec.breakdown is None and group.breakdown is not None:
            continue
        for result in group.steps:
            row: list[Any] = [result.step, result.label, *step_values(result)]
            if spec.breakdown is not None:
                row.insert(0, group.breakdown)
            rows.append(row)
    return columns, rows


def step_people(groups: Sequence[FunnelGroup]) -> list[tuple[int, str, int]]:
    """(step, label, people) of everybody's funnel: the short form the demo prints."""
    return [(r.step, r.label, r.people) for r in groups[0].steps]


def split_steps(text: str) -> list[str]:
    """`a,b[x=1,y=2],c` -> ['a', 'b[x=1,y=2]', 'c']: commas inside [...] or "..." stay."""
    steps: list[str] = []
    current: list[str] = []
    depth, quoted, escaped = 0, False, False
    for ch in text:
        if escaped:
            escaped = False
        elif ch == "\\" and quoted:
            escaped = True
        elif ch == '"':
            quoted = not quoted
        elif not quoted and ch == "[":
            depth += 1
        elif not quoted and ch == "]":
            depth = max(0, depth - 1)
        elif not quoted and depth == 0 and ch == ",":
            steps.append("".join(current).strip())
            current = []
            continue
        current.append(ch)
    steps.append("".join(current).strip())
    return [step for step in steps if step]
