"""The paths, flows and stage-map builders: the SQL that answers the specs of
projections/analysis/paths.py."""

from __future__ import annotations

from collections.abc import Sequence

from projections.analysis.paths import FlowsSpec, PathsSpec, StageMapSpec
from projections.clickhouse.sql import (
    Params,
    Statement,
    deduplicated,
    identities,
    people,
    time_range,
    where,
)
from projections.clickhouse.tables import JOURNEYS, TOUCHPOINTS, TRANSITIONS, columns


def _journeys(clauses: Sequence[str]) -> str:
    """CTE `journeys`: per person, every touchpoint type in time order as `types`.

    Ties in time are broken by event_id, so the order (and every path) is deterministic.
    Needs the `identities` CTE.
    """
    read = people(columns(TOUCHPOINTS, "occurred_at", "event_id", "type"), clauses)
    return f"""journeys AS (
    SELECT person, arrayMap(e -> e.3, arraySort(groupArray((occurred_at, event_id, type)))) AS types
    FROM {read}
    GROUP BY person
)"""


def _steps(collapse_repeats: bool, exclude: Sequence[str], params: Params) -> str:
    """Expression over `types`: the steps a path walks, without excluded types and,
    if asked, with runs of one type collapsed to one step (a,a,b,b,a -> a,b,a)."""
    steps = "types"
    if exclude:
        params["exclude"] = list(exclude)
        steps = f"arrayFilter(t -> NOT has({{exclude:Array(String)}}, t), {steps})"
    if collapse_repeats:
        # after the exclusion, so a,x,a with x excluded is one step a
        steps = f"arrayCompact({steps})"
    return steps


def _anchored_path(start_at: str | None, end_at: str | None, params: Params) -> tuple[str, str]:
    """(position of the anchor in `steps`, the path slice around it): 0 drops the person."""
    if start_at is not None:
        params["anchor"] = start_at
        return (
            "indexOf(steps, {anchor:String})",
            "arraySlice(steps, anchor_at, {max_length:UInt16})",
        )
    if end_at is not None:
        params["anchor"] = end_at
        # Int64: anchor_at - max_length would wrap around as an unsigned number
        return (
            "indexOf(steps, {anchor:String})",
            "arraySlice(steps, greatest(1, toInt64(anchor_at) - {max_length:UInt16} + 1),"
            " least(anchor_at, {max_length:UInt16}))",
        )
    return "if(empty(steps), 0, 1)", "arraySlice(steps, 1, {max_length:UInt16})"


def paths_query(spec: PathsSpec) -> Statement:
    """The most common sequences of touchpoint types, per person.

    Strategy: one groupArray of (occurred_at, event_id, type) per stitched person, sorted
    into the person's journey; array functions then shape each person's one path:
    arrayFilter drops excluded types, arrayCompact collapses repeats, and arraySlice cuts
    at most `max_length` steps starting at the first `start_at` (the path goes on with
    the next steps), or ending at the first `end_at` (the steps leading up to it), or from
    the journey's start. People whose journey lacks the anchor have no path. GROUP BY the
    path array counts people per path; share is of all people with a path (a window sum,
    taken before LIMIT). Ties in people are ordered by the path array, element by element.

    Events outside the time range are not read: a path starts at the first anchor inside
    it. Rows: path (Array(String)), path_text ('a > b > c'), people, share.
    """
    params: Params = {"top": spec.top, "max_length": spec.max_length}
    clauses = time_range(spec.since, spec.until, params)
    steps = _steps(spec.collapse_repeats, spec.exclude, params)
    anchor_at, path = _anchored_path(spec.start_at, spec.end_at, params)
    sql = f"""
WITH
{identities(params)},
{_journeys(clauses)},
paths AS (
    SELECT person, {path} AS path
    FROM (SELECT person, {steps} AS steps, {anchor_at} AS anchor_at FROM journeys)
    WHERE anchor_at > 0
)
SELECT
    path,
    arrayStringConcat(path, ' > ') AS path_text,
    count() AS people,
    count() / sum(count()) OVER () AS share
FROM paths
GROUP BY path
ORDER BY people DESC, path
LIMIT {{top:UInt32}}
"""
    return Statement(sql, params)


def flows_query(spec: FlowsSpec) -> Statement:
    """Touchpoint-to-touchpoint flows: consecutive pairs of types in people's journeys.

    Strategy: the same per-person ordered type array as `paths_query` (after the optional
    exclusion and collapsing), zipped with itself shifted by one (arrayPopBack and
    arrayPopFront) and ARRAY JOINed into one row per step from source to target. A person
    is converted when the journey in the time range holds the `conversion` type, checked
    before any exclusion. Sankey data, but type to type: a journey that loops (a > b > a)
    gives a cycle, which some Sankey layouts refuse.

    Rows, most transitions first: source, target, transitions (pairs counted), people
    (distinct people with the pair), converted_transitions, converted_people.
    """
    params: Params = {"conversion": spec.conversion}
    clauses = time_range(spec.since, spec.until, params)
    steps = _steps(spec.collapse_repeats, spec.exclude, params)
    limit = ""
    if spec.top is not None:
        params["top"] = spec.top
        limit = "LIMIT {top:UInt32}"
    sql = f"""
WITH
{identities(params)},
{_journeys(clauses)},
flows AS (
    SELECT person, has(types, {{conversion:String}}) AS converted, {steps} AS steps
    FROM journeys
)
SELECT
    pair.1 AS source,
    pair.2 AS target,
    count() AS transitions,
    uniqExact(person) AS people,
    countIf(converted) AS converted_transitions,
    uniqExactIf(person, converted) AS converted_people
FROM flows
ARRAY JOIN arrayZip(arrayPopBack(steps), arrayPopFront(steps)) AS pair
GROUP BY source, target
ORDER BY transitions DESC, source, target
{limit}
"""
    return Statement(sql, params)


def stage_map_query(spec: StageMapSpec) -> Statement:
    """Stage-to-stage flows of the journey map, split by customers who have bought.

    Strategy: the stream-fed `journey_transitions` table already holds each customer's
    stage changes in event time (retracted ones hidden by FINAL); a journey's first
    stage comes from '' (the start). Converted = the customer's journey in `journeys`
    counts a purchase. Rows have the columns of `flows_query`: source, target,
    transitions, people, converted_transitions, converted_people.
    """
    params: Params = {}
    clauses = time_range(spec.since, spec.until, params)
    sql = f"""
WITH buyers AS (
    SELECT customer_key FROM {deduplicated(JOURNEYS)} WHERE purchases > 0
)
SELECT
    if(from_stage = '', 'start', from_stage) AS source,
    to_stage AS target,
    count() AS transitions,
    uniqExact(customer_key) AS people,
    countIf(customer_key IN buyers) AS converted_transitions,
    uniqExactIf(customer_key, customer_key IN buyers) AS converted_people
FROM {deduplicated(TRANSITIONS)}
{where(clauses)}
GROUP BY source, target
ORDER BY transitions DESC, source, target
"""
    return Statement(sql, params)
