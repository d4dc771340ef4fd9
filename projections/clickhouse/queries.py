"""Analyst queries: named builders with bound values, and query results as JSON data."""

from __future__ import annotations

import base64
from collections.abc import Mapping, Sequence
from datetime import date, datetime, time
from decimal import Decimal
from enum import Enum
from ipaddress import IPv4Address, IPv6Address
from typing import Any
from uuid import UUID

from projections.clickhouse.client import QueryResult
from projections.clickhouse.tables import TOUCHPOINTS

Params = dict[str, Any]

def jsonable(value: Any) -> Any:
    """A query value as JSON data: timestamps in ISO 8601, decimals as strings (exact)."""
    if value is None or isinstance(value, bool | int | float | str):
        return value
    if isinstance(value, datetime | date | time):
        return value.isoformat()
    if isinstance(value, Decimal | UUID | IPv4Address | IPv6Address):
        return str(value)
    if isinstance(value, Enum):
        return jsonable(value.value)
    if isinstance(value, bytes | bytearray):
        try:
            return bytes(value).decode()
        except UnicodeDecodeError:
            return base64.b64encode(bytes(value)).decode()
    if isinstance(value, Mapping):
        return {str(k): jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple | set | frozenset):
        return [jsonable(v) for v in value]
    return str(value)


def jsonable_rows(result: QueryResult) -> list[list[Any]]:
    """The rows of a result as JSON data, for the HTTP query API and the CLI."""
    return [[jsonable(v) for v in row] for row in result.rows]


# ---- builders -------------------------------------------------------------------------

# The touchpoint type that links an anonymous id to a customer (EVENTS.md, Identity).
IDENTIFY_TYPE = "identify"


def _deduplicated(table: str) -> str:
    # FINAL merges not-yet-merged copies of an event at read time, so a count is right
    # straight after an insert.
    return f"{table} FINAL"


def _time_range(since: datetime | None, until: datetime | None, params: Params) -> list[str]:
    clauses: list[str] = []
    if since is not None:
        params["since"] = since.isoformat() if since.tzinfo else f"{since.isoformat()}+00:00"
        clauses.append("occurred_at >= parseDateTime64BestEffort({since:String}, 3, 'UTC')")
    if until is not None:
        params["until"] = until.isoformat() if until.tzinfo else f"{until.isoformat()}+00:00"
        clauses.append("occurred_at < parseDateTime64BestEffort({until:String}, 3, 'UTC')")
    return clauses


def _where(clauses: Sequence[str]) -> str:
    return f"WHERE {' AND '.join(clauses)}" if clauses else ""


def _identities(params: Params) -> str:
    """CTE `identities`: anonymous_id -> linked_customer_id, the customer of its first identify.

    First link wins: the earliest occurred_at, ties broken by the smaller event_id, so a
    later claim of the same anonymous id by another customer is ignored. Read from the
    whole store, not the query's time range: an identify before the range still links.
    """
    params["identify_type"] = IDENTIFY_TYPE
    return f"""identities AS (
    SELECT anonymous_id, argMin(customer_id, (occurred_at, event_id)) AS linked_customer_id
    FROM {_deduplicated(TOUCHPOINTS)}
    WHERE type = {{identify_type:String}} AND anonymous_id != '' AND customer_id != ''
    GROUP BY anonymous_id
)"""


# Who an event belongs to: its own customer_id, else the customer its anonymous id was
# linked to (for events before and after the identify alike), else the anonymous id, else
# the stored key. ifNull: a server profile with join_use_nulls gives NULL for no match.
_PERSON = """multiIf(
        e.customer_id != '', e.customer_id,
        ifNull(i.linked_customer_id, '') != '', assumeNotNull(i.linked_customer_id),
        e.anonymous_id != '', e.anonymous_id,
        e.customer_key
    )"""


def _people(columns: Sequence[str], clauses: Sequence[str]) -> str:
    """Subquery: `columns` of the deduplicated touchpoints matching `clauses`, plus `person`.

    Needs the `identities` CTE. `columns` are names from the table's DDL, never input.
    """
    inner = ", ".join(dict.fromkeys([*columns, "customer_id", "anonymous_id", "customer_key"]))
    outer = "".join(f"e.{name} AS {name}, " for name in columns)
    # The filter sits in the inner read so that FINAL and the range prune before the join;
    # ANY: identities holds one row per anonymous id, so no event is ever counted twice.
    return f"""(
    SELECT {outer}{_PERSON} AS person
    FROM (SELECT {inner} FROM {_deduplicated(TOUCHPOINTS)} {_where(clauses)}) AS e
    LEFT ANY JOIN identities AS i ON e.anonymous_id = i.anonymous_id
)"""


def funnel_sql(
    steps: Sequence[str],
    window_seconds: int,
    *,
    since: datetime | None = None,
    until: datetime | None = None,
) -> tuple[str, Params]:
    """People reaching each step of an ordered funnel over touchpoint types.

    Strategy: one pass per person with windowFunnel in 'strict_increase' mode. A person
    reaches step k when events of types steps[0..k-1] occur in that order with strictly
    increasing occurred_at, other events in between allowed, and the k-th no more than
    `window_seconds` after the first (inclusive). Ties in time do not count as an order.
    Timestamps go in as UInt64 milliseconds (windowFunnel takes no DateTime64), so the
    window is `window_seconds * 1000`. Only events of the step types are read.

    A person is stitched at query time (until a streaming identity projection exists):
    an anonymous id's events, before and after its first `identify`, belong to the
    customer that identify names; see `_identities` and `_PERSON`. Rows: step
    (1-based), step_type, customers, one per step.
    """
    if not steps:
        raise ValueError("a funnel needs at least one step")
    if window_seconds <= 0:
        raise ValueError("the funnel window must be positive")
    params: Params = {"steps": list(steps), "window_ms": int(window_seconds) * 1000}
    conditions = []
    for index, step in enumerate(steps):
        params[f"step_{index}"] = step
        conditions.append(f"type = {{step_{index}:String}}")
    clauses = ["type IN {steps:Array(String)}", *_time_range(since, until, params)]
    # An aggregate without GROUP BY yields one row even for no people, so every step
    # gets a row (0 if nobody reached it).
    reached = ", ".join(f"countIf(level >= {k})" for k in range(1, len(steps) + 1))
    sql = f"""
WITH
{_identities(params)},
per_person AS (
    SELECT
        person,
        windowFunnel({{window_ms:UInt64}}, 'strict_increase')(
            toUInt64(toUnixTimestamp64Milli(occurred_at)),
            {", ".join(conditions)}
        ) AS level
    FROM {_people(["type", "occurred_at"], clauses)}
    GROUP BY person
)
SELECT step, {{steps:Array(String)}}[step] AS step_type, reached[step] AS customers
FROM (SELECT [{reached}] AS reached FROM per_person)
ARRAY JOIN arrayEnumerate(reached) AS step
ORDER BY step
"""
    return sql, params


def touchpoint_counts_sql(
    *, since: datetime | None = None, until: datetime | None = None
) -> tuple[str, Params]:
    """Touchpoints and distinct customers per type, most frequent first.

    Customers are people stitched as in `funnel_sql`: an anonymous id that identified
    counts as its customer, so one person is never two customers of a type.
    """
    params: Params = {}
    people = _people(["type"], _time_range(since, until, params))
    sql = f"""
WITH
{_identities(params)}
SELECT type, count() AS touchpoints, uniqExact(person) AS customers
FROM {people}
GROUP BY type
ORDER BY touchpoints DESC, type
"""
    return sql, params


def touchpoint_total_sql() -> tuple[str, Params]:
    """Stored touchpoints after deduplication: one row, one column."""
    return f"SELECT count() AS touchpoints FROM {_deduplicated(TOUCHPOINTS)}", {}
