"""Touchpoint funnels: step grammar and parser, ClickHouse builders, result shaper."""

from __future__ import annotations

import difflib
import math
import re
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from enum import StrEnum
from typing import Any, NoReturn

from projections.clickhouse.queries import (
    IDENTIFY_TYPE,
    Params,
    _identities,
    _people,
    _time_range,
)
from projections.clickhouse.tables import TOUCHPOINT_INSERT_COLUMNS
from projections.durations import MAX_WINDOW_SECONDS, DurationError, parse_window
from schemas.catalogue import TOUCHPOINT_TYPES

# One bit per step (and per exclusion) in a UInt64 mask.
MAX_STEPS = 64
MAX_EXCLUSIONS = 64
DEFAULT_WINDOW = "14d"
PERCENTILES = (0.5, 0.9)
DEFAULT_DROPPED_LIMIT = 100

# Envelope fields a filter or a breakdown may name; any other name is a property. They
# are identifiers in the SQL, so they must be columns of the registry's table.
ENVELOPE_FIELDS = frozenset(
    {"channel", "source", "session_id", "case_id", "customer_id", "anonymous_id"}
)
if not {name for name, _ in TOUCHPOINT_INSERT_COLUMNS} >= ENVELOPE_FIELDS:  # pragma: no cover
    raise AssertionError("ENVELOPE_FIELDS must be columns of the touchpoints table")
PROPERTY_PREFIX = "properties."

# The only operator spellings that reach SQL text. Longest first for the scanner.
OPERATORS = ("!=", ">=", "<=", "=", ">", "<", "~")
NUMERIC_OPERATORS = frozenset({">", ">=", "<", "<="})
_SQL_COMPARISON = {"=": "=", "!=": "!=", ">": ">", ">=": ">=", "<": "<", "<=": "<="}

_TYPE = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_BARE_FIELD = re.compile(r"[^\s=!<>~,\[\]\"]+")
_BARE_VALUE = re.compile(r"[^,\]\"]*")
_NUMBER = re.compile(r"[+-]?(?:\d+(?:\.\d*)?|\.\d+)(?:[eE][+-]?\d+)?")
_EXCLUDED_RANGE = re.compile(r"@\s*(\d+)\s*-\s*(\d+)")


class FunnelSpecError(ValueError):
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
        if (
            self.since is not None
            and self.until is not None
            and _utc(self.since) >= _utc(self.until)
        ):
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


def _utc(moment: datetime) -> datetime:
    return moment if moment.tzinfo else moment.replace(tzinfo=UTC)


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


# ---- SQL helpers -----------------------------------------------------------------------

# A per-step window of "none": the conversion window bounds the walk anyway.
_NO_STEP_WINDOW_MS = MAX_WINDOW_SECONDS * 1000


class _Binder:
    """Binds a value as a {name:Type} parameter, once per distinct value and type."""

    def __init__(self, params: Params) -> None:
        self.params = params
        self._names: dict[tuple[str, str], str] = {}

    def __call__(self, value: Any, type_: str) -> str:
        key = (type_, repr(value))
        name = self._names.get(key)
        if name is None:
            name = f"funnel_{len(self._names)}"
            self.params[name] = value
            self._names[key] = name
        return f"{{{name}:{type_}}}"


def _text_of(field: Field, bind: _Binder) -> str:
    # a property's text: its string, or the JSON text of a number/bool, '' when missing
    if field.envelope:
        return field.name
    return f"JSONExtractString(properties, {bind(field.name, 'String')})"


def _filter_sql(item: StepFilter, bind: _Binder) -> str:
    text = _text_of(item.field, bind)
    if item.operator == "~":
        return f"position({text}, {bind(item.value, 'String')}) > 0"
    if item.number is not None:
        number = bind(item.number, "Float64")
        # missing or non-numeric text is NULL: no match, and `!=` is the negation of `=`
        if item.operator == "!=":
            return f"NOT ifNull(toFloat64OrNull({text}) = {number}, 0)"
        return f"ifNull(toFloat64OrNull({text}) {_SQL_COMPARISON[item.operator]} {number}, 0)"
    return f"{text} {_SQL_COMPARISON[item.operator]} {bind(item.value, 'String')}"


def _matcher_sql(type_: str, filters: Sequence[StepFilter], bind: _Binder) -> str:
    parts = [f"type = {bind(type_, 'String')}", *(_filter_sql(f, bind) for f in filters)]
    return " AND ".join(parts)


def _mask_sql(conditions: Sequence[str]) -> str:
    # bit k set when the event matches condition k
    if not conditions:
        return "toUInt64(0)"
    return " + ".join(
        f"bitShiftLeft(toUInt64({condition}), {bit})" for bit, condition in enumerate(conditions)
    )


def _columns(spec: FunnelSpec) -> list[str]:
    """The touchpoint columns the events CTE reads: the fields named, and `properties`
    only when a property is."""
    filters = [f for s in spec.steps for f in s.filters]
    filters += [f for e in spec.exclusions for f in e.filters]
    fields = [f.field for f in filters]
    if spec.breakdown is not None:
        fields.append(spec.breakdown.field)
    names = ["type", "occurred_at", "event_id", *(f.name for f in fields if f.envelope)]
    if any(not f.envelope for f in fields):
        names.append("properties")
    return list(dict.fromkeys(names))


def _touch_attribution(spec: FunnelSpec) -> bool:
    return spec.breakdown is not None and spec.breakdown.attribution is not Attribution.start


def _events_cte(spec: FunnelSpec, bind: _Binder, params: Params) -> str:
    """CTE `funnel_events`: one row per event that the walk needs, with its step and
    exclusion masks, its breakdown text and whether it breaks a strict sequence."""
    clauses = _time_range(spec.since, spec.until, params)
    strict = spec.order is FunnelOrder.strict
    # Strict order and touch attribution look at every event; otherwise only the
    # step and exclusion types are read at all.
    if not strict and not _touch_attribution(spec):
        types = [s.type for s in spec.steps] + [e.type for e in spec.exclusions]
        clauses.insert(0, f"type IN {bind(sorted(set(types)), 'Array(String)')}")
    steps = _mask_sql([_matcher_sql(s.type, s.filters, bind) for s in spec.steps])
    exclusions = _mask_sql([_matcher_sql(e.type, e.filters, bind) for e in spec.exclusions])
    value = "''" if spec.breakdown is None else _text_of(spec.breakdown.field, bind)
    keep = ["steps != 0", "exclusions != 0"]
    if strict:
        keep.append("interrupts")
    if _touch_attribution(spec):
        keep.append("touch != ''")
    return f"""funnel_events AS (
    SELECT
        person,
        toUnixTimestamp64Milli(occurred_at) AS ts,
        event_id,
        {steps} AS steps,
        {exclusions} AS exclusions,
        toString({value}) AS touch,
        type != {bind(IDENTIFY_TYPE, "String")} AS interrupts
    FROM {_people(_columns(spec), clauses)}
    WHERE {" OR ".join(keep)}
)"""


def _timelines_cte() -> str:
    """CTE `funnel_timelines`: per person who has a step-1 event, the events in timeline
    order (occurred_at, then event_id, so ties are deterministic)."""
    return """funnel_timelines AS (
    SELECT person, arraySort(e -> (e.1, e.2), groupArray(
        (ts, event_id, steps, exclusions, touch, interrupts))) AS timeline
    FROM funnel_events
    GROUP BY person
    HAVING max(bitTest(steps, 0)) = 1
)"""


@dataclass(frozen=True, slots=True)
class _Structure:
    """The spec's shape as bound arrays the walk indexes (all 1-based in SQL)."""

    n: str  # number of steps
    steps_range: str  # [1..n]
    window_ms: str
    candidates: str  # [k] -> mask of the steps that may come after last matched step k
    step_window_ms: str  # [q] -> most ms from the previous matched step to step q
    kills: str  # [k][j+1] -> mask of the exclusions that end an attempt at k moving to j
    required: str  # [q] -> 1 if step q is required


def _candidates(spec: FunnelSpec) -> list[int]:
    """For each last matched step k, the steps k+1 .. the next required step."""
    masks: list[int] = []
    for k in range(1, len(spec.steps) + 1):
        mask = 0
        for q in range(k + 1, len(spec.steps) + 1):
            mask |= 1 << (q - 1)
            if not spec.steps[q - 1].optional:
                break
        masks.append(mask)
    return masks


def _kills(spec: FunnelSpec) -> list[list[int]]:
    """[k][j]: exclusions open after step k (A <= k) and still open after moving to step
    j (B > max(k, j)); j = 0 when the event moves nothing."""
    n = len(spec.steps)
    table: list[list[int]] = []
    for k in range(1, n + 1):
        row = []
        for j in range(n + 1):
            mask = 0
            for bit, e in enumerate(spec.exclusions):
                if e.after_step <= k and e.before_step > max(k, j):
                    mask |= 1 << bit
            row.append(mask)
        table.append(row)
    return table


def _structure(spec: FunnelSpec, bind: _Binder, chain: bool) -> _Structure:
    n = bind(len(spec.steps), "UInt8")
    windows = [
        _NO_STEP_WINDOW_MS if s.within_seconds is None else s.within_seconds * 1000
        for s in spec.steps
    ]
    # the chain path reads n and the window only; of the walks, only the ordered one
    # reads the rest
    ordered = spec.order is not FunnelOrder.any and not chain
    return _Structure(
        n=n,
        steps_range=f"range(1, {n} + 1)",
        # a one-step chain has no later step to hold to the window
        window_ms=""
        if chain and len(spec.steps) == 1
        else bind(spec.window_seconds * 1000, "Int64"),
        candidates=bind(_candidates(spec), "Array(UInt64)") if ordered else "",
        step_window_ms=bind(windows, "Array(Int64)") if ordered else "",
        kills=bind(_kills(spec), "Array(Array(UInt64))") if ordered else "",
        required="" if chain else bind([int(r) for r in spec.required], "Array(UInt8)"),
    )


def _ordered_walk(spec: FunnelSpec, s: _Structure) -> str:
    """Lambda body over (i, e): the greedy attempt from start i over events i+1..e.

    State (k, tk, at, stopped): the last matched step, its time, the event index that
    matched each step (0: none) and whether the attempt has ended.
    """
    # the step event `t` moves the attempt to: the first candidate it matches, strictly
    # later than the last matched step and within that step's own window
    hit = f"bitAnd(m, {s.candidates}[acc.1])"
    next_step = (
        f"if(t > acc.2 AND {hit} != 0, arrayFirst(q -> bitTest({hit}, q - 1)"
        f" AND t - acc.2 <= {s.step_window_ms}[q], {s.steps_range}), 0)"
    )
    ends = f"bitAnd(x, {s.kills}[acc.1][{next_step} + 1]) != 0"
    if spec.order is FunnelOrder.strict:
        # any other event right after the last matched step ends a strict attempt
        ends = f"{ends} OR (r AND {next_step} = 0)"
    moved = (
        f"(toUInt8({next_step}), t, "
        f"arrayMap((a, q) -> if(q = {next_step}, toUInt32(p), a), acc.3, {s.steps_range}), "
        f"toUInt8({next_step} = {s.n}))"
    )
    return f"""arrayFold(
            (acc, t, m, x, r, p) -> multiIf(
                acc.4 = 1, acc,
                {ends}, (acc.1, acc.2, acc.3, toUInt8(1)),
                {next_step} > 0, {moved},
                acc),
            arraySlice(ts, i + 1, e - i), arraySlice(steps, i + 1, e - i),
            arraySlice(exclusions, i + 1, e - i), arraySlice(interrupts, i + 1, e - i),
            arraySlice(positions, i + 1, e - i),
            (toUInt8(1), ts[i], arrayMap(q -> toUInt32(if(q = 1, i, 0)), {s.steps_range}),
             toUInt8({s.n} = 1))
        ).3"""


def _any_order_walk(s: _Structure) -> str:
    """Lambda body over (i, e): events i..e each fill the lowest-numbered open step they
    match. State: the event index that filled each step (0: none)."""
    free = f"arrayFirst(q -> bitTest(m, q - 1) AND acc[q] = 0, {s.steps_range})"
    return f"""arrayFold(
            (acc, m, p) -> if({free} = 0, acc,
                arrayMap((a, q) -> if(q = {free}, toUInt32(p), a), acc, {s.steps_range})),
            arraySlice(steps, i, e - i + 1), arraySlice(positions, i, e - i + 1),
            arrayMap(q -> toUInt32(0), {s.steps_range}))"""


def _reached(at: str, s: _Structure) -> str:
    # a step is reached when it was matched and every required step before it was too
    first_missing = f"arrayFirstIndex((a, req) -> a = 0 AND req = 1, {at}, {s.required})"
    return (
        f"arrayMap((a, q) -> a > 0 AND ({first_missing} = 0 OR q < {first_missing}), "
        f"{at}, {s.steps_range})"
    )


def _starts_sql(spec: FunnelSpec, s: _Structure) -> str:
    """Columns `starts` and `ends`: each attempt's start event and the last event of its
    window (ts <= start + window), as positions in the timeline.

    The ends come from one sort of the events merged with the window ends (ties put
    events first, so the end is inclusive): a count of the events before each end, with
    no lambda that captures the timeline (ClickHouse would copy it for every start).
    """
    if spec.order is FunnelOrder.any:
        return f"""arrayFilter((p, m) -> m != 0, positions, steps) AS starts,
        arraySort(arrayConcat(
            arrayMap(t -> (t, 0), ts),
            arrayMap(t -> (t + {s.window_ms}, 1), arrayFilter((t, m) -> m != 0, ts, steps))
        )) AS bounds,
        arrayFilter((c, b) -> b.2 = 1, arrayCumSum(arrayMap(b -> b.2 = 0, bounds)), bounds)
            AS ends,"""
    # Ordered modes also drop a start whose window holds no event that could move an
    # attempt off step 1: it stays at step 1, so (ties going to the earliest start) it
    # can never be the one counted, unless it is the first. This keeps a crawler's
    # thousands of page views from costing a walk each.
    movable = f"toUInt32(bitAnd(m, {s.candidates}[1]) != 0)"
    return f"""arrayFilter((p, m) -> bitTest(m, 0), positions, steps) AS all_starts,
        arraySort(arrayConcat(
            arrayMap((t, m) -> (t, 0, {movable}), ts, steps),
            arrayMap(t -> (t + {s.window_ms}, 1, toUInt32(0)),
                arrayFilter((t, m) -> bitTest(m, 0), ts, steps))
        )) AS bounds,
        arrayFilter((c, b) -> b.2 = 1, arrayCumSum(arrayMap(b -> b.2 = 0, bounds)), bounds)
            AS all_ends,
        arrayFilter((c, b) -> b.2 = 1, arrayCumSum(arrayMap(b -> b.3, bounds)), bounds)
            AS movers_to_end,
        arrayFilter((c, m) -> bitTest(m, 0), arrayCumSum(arrayMap(m -> {movable}, steps)), steps)
            AS movers_to_start,
        arrayMap((n, a, b) -> n = 1 OR b > a,
            arrayEnumerate(all_starts), movers_to_start, movers_to_end) AS worth_walking,
        arrayFilter((i, w) -> w, all_starts, worth_walking) AS starts,
        arrayFilter((e, w) -> w, all_ends, worth_walking) AS ends,"""


def _walks_cte(spec: FunnelSpec, s: _Structure) -> str:
    """CTE `funnel_walks`: per person, every attempt's matched events and the best one."""
    walk = _any_order_walk(s) if spec.order is FunnelOrder.any else _ordered_walk(spec, s)
    return f"""funnel_walks AS (
    SELECT
        person,
        timeline.1 AS ts,
        timeline.3 AS steps,
        timeline.4 AS exclusions,
        timeline.5 AS touches,
        timeline.6 AS interrupts,
        arrayEnumerate(ts) AS positions,
        {_starts_sql(spec, s)}
        arrayMap((i, e) -> {walk},
            starts, ends) AS attempts,
        arrayMap(attempt -> arrayMax(arrayMap((r, q) -> if(r, q, 0), {_reached("attempt", s)},
            {s.steps_range})), attempts) AS levels,
        -- the deepest attempt; among equals the earliest start (attempts follow starts)
        attempts[indexOf(levels, arrayMax(levels))] AS best
    FROM funnel_timelines
)"""


def takes_chain_path(spec: FunnelSpec) -> bool:
    """Whether `funnel_query` answers the spec on the chain path (`_chains_cte`) rather
    than the general walk: ordered steps (at most CHAIN_MAX_STEPS), none optional, no
    per-step windows, no exclusions, and no breakdown or one attributed to the start or
    the first touch."""
    return (
        spec.order is FunnelOrder.ordered
        and len(spec.steps) <= CHAIN_MAX_STEPS
        and not spec.exclusions
        and all(not step.optional and step.within_seconds is None for step in spec.steps)
        and (spec.breakdown is None or spec.breakdown.attribution is not Attribution.last_touch)
    )


# The chain path's SQL grows with the steps and the engine's planning time with its
# square: at 32 steps the plan alone takes about a second, and the walk (whose SQL does
# not grow with the steps) is as fast.
CHAIN_MAX_STEPS = 16
# Later than any DateTime64(3) in milliseconds, with room to double it in an Int64: the
# time of a step that an attempt never reaches.
_NEVER_MS = "toInt64(2305843009213693952)"


def _next_times(previous: str, times: str) -> str:
    """Per element of the sorted array `previous`, the earliest element of `times`
    strictly later (_NEVER_MS when there is none).

    One sort of both arrays merged, each time doubled so that its lowest bit says which
    array it came from (a step time sorts before an equal previous time: strictly later),
    then a split after every step time: each previous time in a piece takes the step time
    that ends it. No lambda captures an array of the person's, and `previous` appears
    once, so a chain of these grows the query by a constant per step.
    """
    merged = (
        f"arraySort(arrayConcat(arrayMap(t -> t * 2, {times}), "
        f"arrayMap(t -> t * 2 + 1, {previous})))"
    )
    return (
        f"arrayFlatten(arrayMap(piece -> arrayMap(\n"
        f"                x -> if(bitAnd(piece[-1], 1) = 0, intDiv(piece[-1], 2), {_NEVER_MS}),\n"
        f"                arrayFilter(x -> bitAnd(x, 1) = 1, piece)),\n"
        f"            arrayReverseSplit(x -> bitAnd(x, 1) = 0, {merged})))"
    )


def _chains_cte(spec: FunnelSpec, s: _Structure) -> str:
    """CTEs `funnel_chains`, `funnel_levels` and `funnel_walks` of the chain path: per
    person with a step-1 event, the attempt the general walk would count, found without
    walking.

    In a plain ordered funnel the greedy attempt from a start is a chain: its step q is
    the person's earliest step-q event strictly later than its step q-1 (an ASOF match).
    So the person's events go into one array of times per step (numbers only: no sort of
    the whole timeline), and `at_q` holds, for every start in time order, the time of
    step q of its attempt (`_next_times`, for all starts at once). An attempt reaches
    step q while that time is within the window of its start. The deepest attempt counts,
    ties to the earliest start; starts at one time make the same attempt, so among them
    the one first in timeline order (the smallest event_id) gives the breakdown.
    """
    n = len(spec.steps)
    # parallel arrays (every aggregate of a group sees its rows in the same order) are
    # much cheaper to collect than one array of tuples
    chains = ["groupArrayIf(ts, bitTest(steps, 0)) AS start_ms"]
    chains += [f"groupArrayIf(ts, bitTest(steps, {q - 1})) AS times_{q}" for q in range(2, n + 1)]
    carried: list[str] = []
    if spec.breakdown is not None and spec.breakdown.attribution is Attribution.start:
        chains += [
            "groupArrayIf(event_id, bitTest(steps, 0)) AS start_ids",
            "groupArrayIf(touch, bitTest(steps, 0)) AS start_touches",
        ]
        carried = ["start_ms", "start_ids", "start_touches"]
    elif spec.breakdown is not None:  # first touch: the earliest non-empty value
        chains.append("minIf((ts, event_id, touch), touch != '').3 AS first_touch")
        carried = ["first_touch"]
    at = [f"at_{q}" for q in range(1, n + 1)]
    names = [f"at{q}" for q in range(1, n + 1)]  # the lambda's
    within = "".join(f" + (at{q} - at1 <= {s.window_ms})" for q in range(2, n + 1))
    sep = ",\n        "
    nexts = "".join(
        f"{sep}{_next_times(f'at_{q - 1}', f'times_{q}')} AS at_{q}" for q in range(2, n + 1)
    )
    return f"""funnel_chains AS (
    SELECT
        person,
        {sep.join(chains)}
    FROM funnel_events
    GROUP BY person
    HAVING length(start_ms) > 0
),
funnel_levels AS (
    SELECT
        person{"".join(f"{sep}{c}" for c in carried)},
        arraySort(start_ms) AS at_1{nexts},
        arrayMap(({", ".join(names)}) -> toUInt8(1{within}),
            {", ".join(at)}) AS levels
    FROM funnel_chains
),
funnel_walks AS (
    SELECT
        person,
        {"".join(f"{c}{sep}" for c in carried)}levels,
        -- the deepest attempt; among equals the earliest start (at_1 is sorted)
        indexOf(levels, arrayMax(levels)) AS best,
        levels[best] AS level,
        [{", ".join(f"{a}[best]" for a in at)}] AS attempt_ms
    FROM funnel_levels
)"""


def _breakdown_sql(spec: FunnelSpec, chain: bool) -> str:
    if spec.breakdown is None:
        return "''"
    if chain:
        if spec.breakdown.attribution is Attribution.first_touch:
            return "first_touch"
        # of the starts at the attempt's time, the first in timeline order (no lambda
        # here captures a whole array of the person's)
        first_id = "arrayMin(arrayFilter((id, t) -> t = attempt_ms[1], start_ids, start_ms))"
        return f"start_touches[indexOf(arrayZip(start_ms, start_ids), (attempt_ms[1], {first_id}))]"
    if spec.breakdown.attribution is Attribution.first_touch:
        return "arrayFirst(v -> v != '', touches)"
    if spec.breakdown.attribution is Attribution.last_touch:
        furthest = "arrayMax(arrayMap((a, r) -> if(r, a, 0), best, reached))"
        return f"arrayLast(v -> v != '', arraySlice(touches, 1, {furthest}))"
    return "touches[arrayMin(arrayFilter(a -> a > 0, best))]"


def _people_cte(spec: FunnelSpec, s: _Structure, chain: bool) -> str:
    """CTE `funnel_people`: per person, the steps reached, the times to reach them and
    the breakdown value; the same columns on both paths.

    A step's completion time is the latest matched time among the steps up to it (in
    order modes that is its own time); "from previous" is the difference between
    consecutive completion times, "from first" the completion minus the earliest
    matched time up to the step.
    """
    if chain:
        # an attempt's steps are reached in order and their times increase
        steps = f"""arrayMap(q -> q <= level, {s.steps_range}) AS reached,
        level,
        arrayMap((t, q) -> if(q <= level, t, 0), attempt_ms, {s.steps_range}) AS step_ms,
        arrayMap((t, q) -> if(q <= level, t, attempt_ms[level]), attempt_ms, {s.steps_range})
            AS completed_ms,
        arrayWithConstant({s.n}, attempt_ms[1]) AS began_ms,"""
    else:
        up_to = f"arrayFilter((t, a, q) -> a > 0 AND q <= step, step_ms, best, {s.steps_range})"
        steps = f"""{_reached("best", s)} AS reached,
        arrayMax(arrayMap((r, q) -> if(r, q, 0), reached, {s.steps_range})) AS level,
        arrayMap(a -> if(a > 0, ts[a], 0), best) AS step_ms,
        arrayMap(step -> arrayMax({up_to}), {s.steps_range}) AS completed_ms,
        arrayMap(step -> arrayMin({up_to}), {s.steps_range}) AS began_ms,"""
    return f"""funnel_people AS (
    SELECT
        person,
        {steps}
        arrayMap((c, q) -> if(q = 1, 0, (c - completed_ms[q - 1]) / 1000),
            completed_ms, {s.steps_range}) AS seconds_since_previous,
        arrayMap((c, b) -> (c - b) / 1000, completed_ms, began_ms) AS seconds_since_first,
        {_breakdown_sql(spec, chain)} AS breakdown
    FROM funnel_walks
)"""


def _with(
    spec: FunnelSpec, params: Params, *, general: bool = False
) -> tuple[str, _Structure, _Binder]:
    """The CTEs up to `funnel_people` (with `identities`, which other builders reuse):
    the chain path when the spec allows it and `general` is not set, else the walk."""
    bind = _Binder(params)
    chain = not general and takes_chain_path(spec)
    structure = _structure(spec, bind, chain)
    person_ctes = (
        [_chains_cte(spec, structure)] if chain else [_timelines_cte(), _walks_cte(spec, structure)]
    )
    ctes = [
        _identities(params),
        _events_cte(spec, bind, params),
        *person_ctes,
        _people_cte(spec, structure, chain),
    ]
    return "WITH\n" + ",\n".join(ctes), structure, bind


def funnel_query(spec: FunnelSpec, *, general: bool = False) -> tuple[str, Params]:
    """People reaching each step, and the times between steps, per breakdown value.

    Strategy: per person (stitched as in `queries.funnel_sql`), the events of the step
    and exclusion types are put in timeline order (occurred_at, then event_id) with a
    bitmask of the steps and of the exclusions each one matches (filters evaluated once
    per event, every user value bound). Strict order and touch attribution also keep the
    person's other events. The timeline is then walked with arrayFold, once from every
    possible start event, over only the events inside that start's window.

    A plain ordered funnel (`takes_chain_path`) skips the walk: the same attempts are
    found as chains of earliest later steps over per-step arrays of times, for all starts
    at once (`_chains_cte`); `general=True` forces the walk (tests compare both paths).

    `windowFunnel` is not used: it gives only the deepest step, not which attempt reached
    it (the breakdown's start) nor when each step happened, and it cannot skip optional
    steps, honour per-step windows or exclusions, or count one event for one step only.

    Semantics of one attempt from a start event (a step-1 event; any step's event for
    `any` order), over the events within `window` after it (inclusive):
    - ordered: each later event moves the attempt from its last matched step k to the
      first step q it matches among k+1 .. the next required step (optional steps in
      between may be skipped), if it is strictly later than step k's event and no more
      than step q's own window after it. Other events are passed over.
    - strict: as ordered, but the first event after step k's (in timeline order) that
      does not move the attempt ends it; `identify` events never do.
    - exclusion (E, A, B): an E event after the attempt reached step A (or beyond) and
      before it reaches step B (or beyond) ends the attempt where it is. An event that
      moves the attempt into the range but not past B counts too.
    - any: each event, the start included, fills the lowest-numbered step it matches
      that is still empty; there are no per-step windows or exclusions.
    A step is reached when it is matched and every required step before it is. The
    person counts with the attempt that reaches the deepest step; ties go to the
    earliest start. Greedy: an attempt keeps the first event that fits each step, so
    with a per-step window or an exclusion a later repeat of a step is not tried in its
    place (a later start is), and in `any` order overlapping steps (purchase, then
    purchase[revenue>50]) are filled first come, not in the best assignment. For a
    plain ordered funnel, greedy from every start finds the deepest chain there is.

    Cost of the walk: per person, for each start whose window holds an event that could
    move it, the events in that window (ClickHouse also copies the person's arrays per
    start): linear for ordinary journeys, quadratic for someone with thousands of step-1
    events in one window that do lead on. The chain path: one sort per step of the
    person's starts and that step's events, whatever the window holds.

    Rows: breakdown, all_people (1 on the rows over everybody), step, people,
    seconds_from_previous and seconds_from_first as [median, p90] (exact, linearly
    interpolated; NaN when nobody reached the step); see `shape_funnel`.
    """
    params: Params = {}
    with_sql, _, _ = _with(spec, params, general=general)
    quantiles = ", ".join(str(p) for p in PERCENTILES)
    if spec.breakdown is None:
        group = "GROUP BY step"
        label = "'' AS breakdown, toUInt8(1) AS all_people"
    else:
        group = "GROUP BY GROUPING SETS ((breakdown, step), (step))"
        label = "breakdown, grouping(breakdown) AS all_people"
    sql = f"""
{with_sql}
SELECT
    {label},
    step,
    countIf(step_reached) AS people,
    quantilesExactInclusiveIf({quantiles})(from_previous, step_reached AND step > 1)
        AS seconds_from_previous,
    quantilesExactInclusiveIf({quantiles})(from_first, step_reached) AS seconds_from_first
FROM funnel_people
ARRAY JOIN
    arrayEnumerate(reached) AS step,
    reached AS step_reached,
    seconds_since_previous AS from_previous,
    seconds_since_first AS from_first
{group}
ORDER BY all_people DESC, breakdown, step
"""
    return sql, params


def dropped_query(
    spec: FunnelSpec,
    step: int,
    *,
    limit: int | None = DEFAULT_DROPPED_LIMIT,
    general: bool = False,
) -> tuple[str, Params]:
    """The people who reached the required step before `step` but not `step` itself.

    Same path as `funnel_query` (`general` likewise). Rows: person, breakdown,
    furthest_step (the deepest step reached) and furthest_step_at (when it was reached),
    by person; at most `limit` rows (None: all).
    """
    if not 2 <= step <= len(spec.steps):
        raise FunnelSpecError(f"--dropped-at takes a step from 2 to {len(spec.steps)}, got {step}")
    if limit is not None and limit < 1:
        raise FunnelSpecError(f"the limit must be positive, got {limit}")
    params: Params = {}
    with_sql, _, bind = _with(spec, params, general=general)
    before = bind(spec.previous_required(step), "UInt8")
    at = bind(step, "UInt8")
    limit_sql = f"\nLIMIT {bind(limit, 'UInt64')}" if limit is not None else ""
    sql = f"""
{with_sql}
SELECT
    person,
    breakdown,
    level AS furthest_step,
    fromUnixTimestamp64Milli(completed_ms[level], 'UTC') AS furthest_step_at
FROM funnel_people
WHERE reached[{before}] AND NOT reached[{at}]
ORDER BY person{limit_sql}
"""
    return sql, params


# ---- results ---------------------------------------------------------------------------


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
