"""The retention builder: the SQL that answers a RetentionSpec
(projections/analysis/retention.py)."""

from __future__ import annotations

from dataclasses import dataclass

from projections.analysis.retention import Period, RetentionSpec
from projections.clickhouse.sql import (
    Params,
    Statement,
    deduplicated,
    identities,
    people,
    time_range,
    where,
)
from projections.clickhouse.tables import TOUCHPOINTS, columns


@dataclass(frozen=True, slots=True)
class _Calendar:
    start: str  # the period's first day of a timestamp
    add: str  # that day plus k periods
    unit: str  # dateDiff's unit; exact here because both ends are period starts


# ISO weeks (Monday first) and calendar months, in UTC like occurred_at. The only
# function names a period writes into SQL.
_CALENDARS = {
    Period.week: _Calendar("toMonday", "addWeeks", "week"),
    Period.month: _Calendar("toStartOfMonth", "addMonths", "month"),
}


def retention_query(spec: RetentionSpec) -> Statement:
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
    calendar = _CALENDARS[spec.period]
    params: Params = {"cohort_event": spec.cohort_event, "periods": spec.periods}
    source = time_range(None, spec.until, params)
    # The horizon is the latest touchpoint of any type, so it is taken before the type filter.
    horizon = f"SELECT toDate(max(occurred_at)) FROM {deduplicated(TOUCHPOINTS)} {where(source)}"
    if spec.return_event is None:
        returning = "groupArray(occurred_at)"
    else:
        params["return_event"] = spec.return_event
        returning = "groupArrayIf(occurred_at, type = {return_event:String})"
        # Only the two types matter, so read only them.
        source.append("type IN ({cohort_event:String}, {return_event:String})")
    entered = time_range(spec.since, None, params)
    period_numbers = "range(toUInt32({periods:UInt16}) + 1)"
    sql = f"""
WITH
{identities(params)},
({horizon}) AS horizon,
entrants AS (
    SELECT
        person,
        minIf(occurred_at, type = {{cohort_event:String}}) AS entered_at,
        {returning} AS returns
    FROM {people(columns(TOUCHPOINTS, "type", "occurred_at"), source)}
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
    {where(entered)}
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
    return Statement(sql, params)


