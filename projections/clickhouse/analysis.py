"""Journey analysis builders: paths, touchpoint flows, retention cohorts, a customer's timeline."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from enum import StrEnum

from projections.clickhouse.queries import (
    Params,
    _deduplicated,
    _identities,
    _people,
    _time_range,
    _where,
)
from projections.clickhouse.tables import FRICTION, JOURNEYS, TOUCHPOINTS, TRANSITIONS

DEFAULT_CONVERSION = "purchase"
# Longer paths rarely repeat across people, and every extra step multiplies the groups.
MAX_PATH_LENGTH = 50
MAX_RETENTION_PERIODS = 120
# A timeline entry that comes from the touchpoints table (see `_timeline_entries`).
TOUCHPOINT_ENTRY = "touchpoint"


class Period(StrEnum):
    week = "week"
    month = "month"


@dataclass(frozen=True, slots=True)
class _Calendar:
    start: str  # the period's first day of a timestamp
    add: str  # that day plus k periods
    unit: str  # dateDiff's unit; exact here because both ends are period starts


# ISO weeks (Monday first) and calendar months, in UTC like occurred_at.
_CALENDARS = {
    Period.week: _Calendar("toMonday", "addWeeks", "week"),
    Period.month: _Calendar("toStartOfMonth", "addMonths", "month"),
}


def _check_range(name: str, value: int, low: int, high: int | None = None) -> None:
    if value < low or (high is not None and value > high):
        bound = f"between {low} and {high}" if high is not None else f"at least {low}"
        raise ValueError(f"{name} must be {bound}, got {value}")


def _check_type(name: str, value: str) -> None:
    if not value:
        raise ValueError(f"{name} needs a touchpoint type")


def _journeys(clauses: Sequence[str]) -> str:
    """CTE `journeys`: per person, every touchpoint type in time order as `types`.

    Ties in time are broken by event_id, so the order (and every path) is deterministic.
    Needs the `identities` CTE.
    """
    people = _people(["occurred_at", "event_id", "type"], clauses)
    return f"""journeys AS (
    SELECT person, arrayMap(e -> e.3, arraySort(groupArray((occurred_at, event_id, type)))) AS types
    FROM {people}
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


def paths_sql(
    *,
    start_at: str | None = None,
    end_at: str | None = None,
    top: int = 20,
    max_length: int = 6,
    collapse_repeats: bool = True,
    exclude: Sequence[str] = (),
    since: datetime | None = None,
    until: datetime | None = None,
) -> tuple[str, Params]:
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
    if start_at is not None and end_at is not None:
        raise ValueError("a path either starts at a type or ends at one, not both")
    for name, anchor in (("start_at", start_at), ("end_at", end_at)):
        if anchor is not None:
            _check_type(name, anchor)
            if anchor in exclude:
                raise ValueError(f"{anchor!r} is excluded, so no path can reach it")
    _check_range("top", top, 1)
    _check_range("max_length", max_length, 1, MAX_PATH_LENGTH)
    params: Params = {"top": top, "max_length": max_length}
    clauses = _time_range(since, until, params)
    steps = _steps(collapse_repeats, exclude, params)
    anchor_at, path = _anchored_path(start_at, end_at, params)
    sql = f"""
WITH
{_identities(params)},
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
    return sql, params


def touchpoint_flows_sql(
    *,
    conversion: str = DEFAULT_CONVERSION,
    top: int | None = None,
    collapse_repeats: bool = True,
    exclude: Sequence[str] = (),
    since: datetime | None = None,
    until: datetime | None = None,
) -> tuple[str, Params]:
    """Touchpoint-to-touchpoint flows: consecutive pairs of types in people's journeys.

    Strategy: the same per-person ordered type array as `paths_sql` (after the optional
    exclusion and collapsing), zipped with itself shifted by one (arrayPopBack and
    arrayPopFront) and ARRAY JOINed into one row per step from source to target. A person
    is converted when the journey in the time range holds the `conversion` type, checked
    before any exclusion. Sankey data, but type to type: a journey that loops (a > b > a)
    gives a cycle, which some Sankey layouts refuse.

    Rows, most transitions first: source, target, transitions (pairs counted), people
    (distinct people with the pair), converted_transitions, converted_people.
    """
    _check_type("conversion", conversion)
    if top is not None:
        _check_range("top", top, 1)
    params: Params = {"conversion": conversion}
    clauses = _time_range(since, until, params)
    steps = _steps(collapse_repeats, exclude, params)
    limit = ""
    if top is not None:
        params["top"] = top
        limit = "LIMIT {top:UInt32}"
    sql = f"""
WITH
{_identities(params)},
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
    return sql, params


def retention_sql(
    *,
    cohort_event: str = DEFAULT_CONVERSION,
    return_event: str | None = None,
    period: Period = Period.week,
    periods: int = 8,
    since: datetime | None = None,
    until: datetime | None = None,
) -> tuple[str, Params]:
    """Retention cohorts: people by the period of their first `cohort_event`, and how many
    come back in each later period.

    Strategy: one pass per stitched person: minIf gives the first cohort event (entry) and
    groupArrayIf every return event's time (`return_event`, or any touchpoint when None).
    The cohort is the entry's period start (ISO week from Monday, or calendar month, UTC).
    A person returns in period k (0..periods) when a return event at or after the entry
    falls in [cohort + k periods, cohort + k+1 periods); dateDiff between period starts
    gives k. So period 0 holds the entry itself whenever the return event may be the
    cohort event (any, or the same type). sumForEach adds each member's 0/1 array.

    The first cohort event is taken over all stored history up to `until`: a person whose
    first one is before `since` belongs to no cohort in the range. Return events are read
    up to `until`. A period that starts after the latest touchpoint read (the data's
    horizon) cannot be seen yet: its count and rate are NULL rather than a false 0.

    Rows, oldest cohort first: cohort (Date), size, returned (Array(Nullable(UInt64))),
    retention (Array(Nullable(Float64)), returned / size), periods + 1 entries each.
    """
    _check_type("cohort_event", cohort_event)
    if return_event is not None:
        _check_type("return_event", return_event)
    _check_range("periods", periods, 0, MAX_RETENTION_PERIODS)
    calendar = _CALENDARS[Period(period)]
    params: Params = {"cohort_event": cohort_event, "periods": periods}
    source = _time_range(None, until, params)
    # The horizon is the latest touchpoint of any type, so it is taken before the type filter.
    horizon = f"SELECT toDate(max(occurred_at)) FROM {_deduplicated(TOUCHPOINTS)} {_where(source)}"
    if return_event is None:
        returning = "groupArray(occurred_at)"
    else:
        params["return_event"] = return_event
        returning = "groupArrayIf(occurred_at, type = {return_event:String})"
        # Only the two types matter, so read only them.
        source.append("type IN ({cohort_event:String}, {return_event:String})")
    entered = _time_range(since, None, params)
    period_numbers = "range(toUInt32({periods:UInt16}) + 1)"
    sql = f"""
WITH
{_identities(params)},
({horizon}) AS horizon,
entrants AS (
    SELECT
        person,
        minIf(occurred_at, type = {{cohort_event:String}}) AS entered_at,
        {returning} AS returns
    FROM {_people(["type", "occurred_at"], source)}
    GROUP BY person
    HAVING countIf(type = {{cohort_event:String}}) > 0
),
members AS (
    SELECT
        person,
        {calendar.start}(occurred_at) AS cohort,
        arrayDistinct(arrayMap(
            t -> dateDiff('{calendar.unit}', cohort, {calendar.start}(t)),
            arrayFilter(t -> t >= occurred_at, returns)
        )) AS periods_returned
    -- the entry is named occurred_at here so that the shared range clause applies to it
    FROM (SELECT person, entered_at AS occurred_at, returns FROM entrants)
    {_where(entered)}
),
cohorts AS (
    SELECT
        cohort,
        count() AS size,
        sumForEach(arrayMap(k -> toUInt64(has(periods_returned, k)), {period_numbers})) AS counts
    FROM members
    GROUP BY cohort
)
SELECT
    cohort,
    size,
    arrayMap(
        k -> if({calendar.add}(cohort, k) <= horizon, toNullable(counts[k + 1]), NULL),
        {period_numbers}
    ) AS returned,
    arrayMap(
        k -> if({calendar.add}(cohort, k) <= horizon, toNullable(counts[k + 1] / size), NULL),
        {period_numbers}
    ) AS retention
FROM cohorts
ORDER BY cohort
"""
    return sql, params


def _subject(customer: str, params: Params) -> str:
    """CTE `subject`: the person an id names, and whether it got there through a link.

    An anonymous id that an identify linked to a customer names that customer; any other
    id (a customer id, an unlinked anonymous id) names itself. Needs `identities`.
    """
    params["customer"] = customer
    return """subject AS (
    SELECT if(linked != '', linked, {customer:String}) AS person, toBool(linked != '') AS via_link
    FROM (
        SELECT any(linked_customer_id) AS linked
        FROM identities
        WHERE anonymous_id = {customer:String}
    )
)"""


def _touchpoint_entries() -> str:
    """The subject's touchpoints as timeline entries. Needs `identities` and `subject`."""
    person = "(SELECT person FROM subject)"
    # Only the rows that can be the person's are read before the stitching decides.
    candidates = (
        f"(customer_id = {person} OR anonymous_id = {person} OR customer_key = {person}"
        f" OR anonymous_id IN (SELECT anonymous_id FROM identities"
        f" WHERE linked_customer_id = {person}))"
    )
    columns = ["occurred_at", "channel", "type", "case_id", "properties", "event_id"]
    return f"""SELECT occurred_at, '{TOUCHPOINT_ENTRY}' AS entry, channel, type, case_id,
        properties, event_id
    FROM {_people(columns, [candidates])}
    WHERE person = {person}"""


STAGE_CHANGE_ENTRY = "stage_change"


def _stage_change_entries() -> str:
    """The subject's stage changes from the stream-fed transitions table. Needs `subject`.

    `type` reads 'from > to' and `properties` holds the stages and the touchpoint type
    that moved the customer, so the timeline shows them between the touchpoints.
    """
    person = "(SELECT person FROM subject)"
    return f"""SELECT occurred_at, '{STAGE_CHANGE_ENTRY}' AS entry, '' AS channel,
        concat(if(from_stage = '', 'start', from_stage), ' > ', to_stage) AS type,
        '' AS case_id,
        toJSONString(map('from_stage', from_stage, 'to_stage', to_stage,
                         'touchpoint', to_type)) AS properties,
        concat(event_id, ':stage') AS event_id
    FROM {_deduplicated(TRANSITIONS)}
    WHERE customer_key = {person}"""


FRICTION_ENTRY = "friction"


def _friction_entries() -> str:
    """The subject's friction from the friction table, its linked anonymous ids' included.
    Needs `identities` and `subject`.

    `type` reads 'friction: rule (kind)' and `properties` holds the severity and the
    message, so a timeline shows where the journey got harder next to its causes.
    """
    person = "(SELECT person FROM subject)"
    return f"""SELECT occurred_at, '{FRICTION_ENTRY}' AS entry, channel,
        concat('friction: ', rule, if(kind = '', '', concat(' (', kind, ')'))) AS type,
        case_id,
        toJSONString(map('severity', toString(severity), 'message', message)) AS properties,
        concat(friction_id, ':friction') AS event_id
    FROM {_deduplicated(FRICTION)}
    WHERE customer_key = {person}
       OR customer_key IN (SELECT anonymous_id FROM identities
                           WHERE linked_customer_id = {person})"""


# The sources of a timeline, each a SELECT of the same columns (occurred_at, entry,
# channel, type, case_id, properties, event_id) for the `subject` person, interleaved
# by time.
_TIMELINE_SOURCES = (_touchpoint_entries, _stage_change_entries, _friction_entries)


def customer_timeline_sql(customer: str, *, limit: int = 200) -> tuple[str, Params]:
    """One person's cross-channel timeline, the latest `limit` entries in time order.

    Strategy: resolve the id to a person (`_subject`: a linked anonymous id means its
    customer), then read the touchpoints that may be that person's (own customer id,
    the id itself, or an anonymous id linked to the person) and keep those the query-time
    stitching assigns to the person, so the timeline agrees with every other query: a
    customer's timeline holds the events of its anonymous ids before and after the
    identify, and not those of an id another customer claimed first. Entries of every
    source in `_TIMELINE_SOURCES` are merged; the newest `limit` are kept (ORDER BY ...
    DESC LIMIT) and returned oldest first, ties by event_id. `total` is the number of
    entries before the limit (a window count).

    Rows: occurred_at, entry, channel, type, case_id, properties (JSON text), event_id,
    total.
    """
    if not customer:
        raise ValueError("give a customer id or an anonymous id")
    _check_range("limit", limit, 1)
    params: Params = {"limit": limit}
    entries = "\n    UNION ALL\n    ".join(source() for source in _TIMELINE_SOURCES)
    sql = f"""
WITH
{_identities(params)},
{_subject(customer, params)},
entries AS (
    {entries}
)
SELECT *
FROM (
    SELECT
        occurred_at, entry, channel, type, case_id, properties, event_id,
        count() OVER () AS total
    FROM entries
    ORDER BY occurred_at DESC, event_id DESC
    LIMIT {{limit:UInt32}}
)
ORDER BY occurred_at, event_id
"""
    return sql, params


def customer_identity_sql(customer: str) -> tuple[str, Params]:
    """Who an id is: the person it resolves to and the anonymous ids linked to that person.

    Strategy: `_subject` resolves the id as the timeline does; the linked anonymous ids
    come from `identities` (first claim wins). `ignored_claims` lists anonymous ids the
    person claimed with an identify although another customer had claimed them first:
    their events are in that other customer's timeline. One row: requested, person,
    via_link (the id is an anonymous id linked to `person`), anonymous_ids,
    ignored_claims (both sorted).
    """
    if not customer:
        raise ValueError("give a customer id or an anonymous id")
    params: Params = {}
    identities = _identities(params)
    subject = _subject(customer, params)
    person = "(SELECT person FROM subject)"
    sql = f"""
WITH
{identities},
{subject},
linked AS (
    SELECT arraySort(groupArray(anonymous_id)) AS ids
    FROM identities
    WHERE linked_customer_id = {person}
),
claimed AS (
    SELECT arraySort(groupUniqArray(anonymous_id)) AS ids
    FROM {_deduplicated(TOUCHPOINTS)}
    WHERE type = {{identify_type:String}} AND customer_id = {person} AND anonymous_id != ''
)
SELECT
    {{customer:String}} AS requested,
    {person} AS person,
    (SELECT via_link FROM subject) AS via_link,
    (SELECT ids FROM linked) AS anonymous_ids,
    arrayFilter(a -> NOT has((SELECT ids FROM linked), a), (SELECT ids FROM claimed))
        AS ignored_claims
"""
    return sql, params


def stage_map_sql(
    *, since: datetime | None = None, until: datetime | None = None
) -> tuple[str, Params]:
    """Stage-to-stage flows of the journey map, split by customers who have bought.

    Strategy: the stream-fed `journey_transitions` table already holds each customer's
    stage changes in event time (retracted ones hidden by FINAL); a journey's first
    stage comes from '' (the start). Converted = the customer's journey in `journeys`
    counts a purchase. Rows have the columns of `touchpoint_flows_sql`: source, target,
    transitions, people, converted_transitions, converted_people.
    """
    params: Params = {}
    clauses = _time_range(since, until, params)
    sql = f"""
WITH buyers AS (
    SELECT customer_key FROM {_deduplicated(JOURNEYS)} WHERE purchases > 0
)
SELECT
    if(from_stage = '', 'start', from_stage) AS source,
    to_stage AS target,
    count() AS transitions,
    uniqExact(customer_key) AS people,
    countIf(customer_key IN buyers) AS converted_transitions,
    uniqExactIf(customer_key, customer_key IN buyers) AS converted_people
FROM {_deduplicated(TRANSITIONS)}
{_where(clauses)}
GROUP BY source, target
ORDER BY transitions DESC, source, target
"""
    return sql, params
