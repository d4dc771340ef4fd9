"""The funnel builder: the SQL that answers a FunnelSpec (projections/analysis/funnel.py).

This is the one funnel engine: the CLI, the HTTP API, the demo and friction impact all
count conversions with it.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from projections.analysis.funnel import (
    DEFAULT_DROPPED_LIMIT,
    PERCENTILES,
    Attribution,
    Field,
    FunnelOrder,
    FunnelSpec,
    FunnelSpecError,
    StepFilter,
)
from projections.clickhouse.sql import Binder, Params, Statement, identities, people, time_range
from projections.clickhouse.tables import TOUCHPOINTS, Column, column
from projections.durations import MAX_WINDOW_SECONDS
from projections.identity import IDENTIFY_TYPE

_SQL_COMPARISON = {"=": "=", "!=": "!=", ">": ">", ">=": ">=", "<": "<", "<=": "<="}

# A per-step window of "none": the conversion window bounds the walk anyway.
_NO_STEP_WINDOW_MS = MAX_WINDOW_SECONDS * 1000


def _text_of(field: Field, bind: Binder) -> str:
    # a property's text: its string, or the JSON text of a number/bool, '' when missing
    if field.envelope:
        return str(column(TOUCHPOINTS, field.name))
    return f"JSONExtractString(properties, {bind(field.name, 'String')})"


def _filter_sql(item: StepFilter, bind: Binder) -> str:
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


def _matcher_sql(type_: str, filters: Sequence[StepFilter], bind: Binder) -> str:
    parts = [f"type = {bind(type_, 'String')}", *(_filter_sql(f, bind) for f in filters)]
    return " AND ".join(parts)


def _mask_sql(conditions: Sequence[str]) -> str:
    # bit k set when the event matches condition k
    if not conditions:
        return "toUInt64(0)"
    return " + ".join(
        f"bitShiftLeft(toUInt64({condition}), {bit})" for bit, condition in enumerate(conditions)
    )


def _columns(spec: FunnelSpec) -> list[Column]:
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
    return [column(TOUCHPOINTS, name) for name in dict.fromkeys(names)]


def _touch_attribution(spec: FunnelSpec) -> bool:
    return spec.breakdown is not None and spec.breakdown.attribution is not Attribution.start


def _events_cte(spec: FunnelSpec, bind: Binder, params: Params) -> str:
    """CTE `funnel_events`: one row per event that the walk needs, with its step and
    exclusion masks, its breakdown text and whether it breaks a strict sequence."""
    clauses = time_range(spec.since, spec.until, params)
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
    FROM {people(_columns(spec), clauses)}
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


def _structure(spec: FunnelSpec, bind: Binder, chain: bool) -> _Structure:
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


def _with(spec: FunnelSpec, params: Params, *, general: bool = False) -> tuple[str, Binder]:
    """The CTEs up to `funnel_people` (with `identities`), and the binder of their values:
    the chain path when the spec allows it and `general` is not set, else the walk."""
    bind = Binder(params, "funnel")
    chain = not general and takes_chain_path(spec)
    structure = _structure(spec, bind, chain)
    person_ctes = (
        [_chains_cte(spec, structure)] if chain else [_timelines_cte(), _walks_cte(spec, structure)]
    )
    ctes = [
        identities(params),
        _events_cte(spec, bind, params),
        *person_ctes,
        _people_cte(spec, structure, chain),
    ]
    return "WITH\n" + ",\n".join(ctes), bind


def funnel_ctes(spec: FunnelSpec, params: Params) -> str:
    """`WITH identities, funnel_events, ..., funnel_people`: per stitched person, the
    steps reached (`reached`, `level`), their times and the breakdown value, as
    `funnel_query` counts them. For builders that ask who converted (friction impact)."""
    return _with(spec, params)[0]


def funnel_query(spec: FunnelSpec, *, general: bool = False) -> Statement:
    """People reaching each step, and the times between steps, per breakdown value.

    Strategy: per person (stitched as in `sql.people`), the events of the step
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
    with_sql, _ = _with(spec, params, general=general)
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
    return Statement(sql, params)


def dropped_query(
    spec: FunnelSpec,
    step: int,
    *,
    limit: int | None = DEFAULT_DROPPED_LIMIT,
    general: bool = False,
) -> Statement:
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
    with_sql, bind = _with(spec, params, general=general)
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
    return Statement(sql, params)

