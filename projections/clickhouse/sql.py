"""The SQL fragments every analyst query is built from: statements with bound values,
deduplicated reads, the time range, identity stitching and people.

Values always travel as bound parameters (`{name:Type}`); the only identifiers written
into SQL text are Columns of the table registry (projections/clickhouse/tables.py) and
the table names declared there.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from typing import Any, NamedTuple

from projections.clickhouse.tables import TOUCHPOINTS, Column, columns
from projections.friction import signal as friction_signal
from projections.identity import IDENTIFY_TYPE

Params = dict[str, Any]


class Statement(NamedTuple):
    """SQL text and the values bound to its placeholders; unpacks as (sql, params)."""

    sql: str
    params: Params


class Binder:
    """Binds a value as a {name:Type} parameter, once per distinct value and type; the
    names are `prefix_0`, `prefix_1`, ... so builders that share params never collide."""

    def __init__(self, params: Params, prefix: str = "p") -> None:
        self.params = params
        self.prefix = prefix
        self._names: dict[tuple[str, str], str] = {}

    def __call__(self, value: Any, type_: str) -> str:
        key = (type_, repr(value))
        name = self._names.get(key)
        if name is None:
            name = f"{self.prefix}_{len(self._names)}"
            self.params[name] = value
            self._names[key] = name
        return f"{{{name}:{type_}}}"


def deduplicated(table: str) -> str:
    """A registry table read with FINAL: not-yet-merged copies of a row (a retried insert,
    a replay) are merged at read time, so a count is right straight after an insert."""
    return f"{table} FINAL"


def _moment(moment: datetime) -> str:
    return moment.isoformat() if moment.tzinfo else f"{moment.isoformat()}+00:00"


def time_range(since: datetime | None, until: datetime | None, params: Params) -> list[str]:
    """Conditions on `occurred_at`: at or after `since`, before `until` (naive = UTC);
    binds `since` and `until`."""
    clauses: list[str] = []
    if since is not None:
        params["since"] = _moment(since)
        clauses.append("occurred_at >= parseDateTime64BestEffort({since:String}, 3, 'UTC')")
    if until is not None:
        params["until"] = _moment(until)
        clauses.append("occurred_at < parseDateTime64BestEffort({until:String}, 3, 'UTC')")
    return clauses


def in_range(since: datetime | None, until: datetime | None, params: Params) -> str:
    """One condition on `occurred_at`: inside the range (true when the range is open)."""
    return " AND ".join(time_range(since, until, params)) or "1"


def where(clauses: Sequence[str]) -> str:
    """A WHERE clause of all `clauses`, or nothing."""
    return f"WHERE {' AND '.join(clauses)}" if clauses else ""


def identities(params: Params) -> str:
    """CTE `identities`: anonymous_id -> linked_customer_id, the customer of its first identify.

    First link wins: the earliest occurred_at, ties broken by the smaller event_id, so a
    later claim of the same anonymous id by another customer is ignored (the rule of
    projections/identity.py). Read from the whole store, not the query's time range: an
    identify before the range still links.
    """
    params["identify_type"] = IDENTIFY_TYPE
    return f"""identities AS (
    SELECT anonymous_id, argMin(customer_id, (occurred_at, event_id)) AS linked_customer_id
    FROM {deduplicated(TOUCHPOINTS)}
    WHERE type = {{identify_type:String}} AND anonymous_id != '' AND customer_id != ''
    GROUP BY anonymous_id
)"""


# Who an event belongs to: its own customer_id, else the customer its anonymous id was
# linked to (for events before and after the identify alike), else the anonymous id, else
# the stored key. ifNull: a server profile with join_use_nulls gives NULL for no match.
PERSON = """multiIf(
        e.customer_id != '', e.customer_id,
        ifNull(i.linked_customer_id, '') != '', assumeNotNull(i.linked_customer_id),
        e.anonymous_id != '', e.anonymous_id,
        e.customer_key
    )"""
_STITCHED_BY = columns(TOUCHPOINTS, "customer_id", "anonymous_id", "customer_key")


def people(read: Sequence[Column], clauses: Sequence[str]) -> str:
    """Subquery: the `read` columns of the deduplicated touchpoints matching `clauses`,
    plus `person` (PERSON). Needs the `identities` CTE."""
    for item in read:
        if not isinstance(item, Column) or item.table != TOUCHPOINTS:
            raise TypeError(f"people() reads columns of {TOUCHPOINTS}, not {item!r}")
    inner = ", ".join(dict.fromkeys(str(c) for c in (*read, *_STITCHED_BY)))
    outer = "".join(f"e.{c} AS {c}, " for c in read)
    # The filter sits in the inner read so that FINAL and the range prune before the join;
    # ANY: identities holds one row per anonymous id, so no event is ever counted twice.
    return f"""(
    SELECT {outer}{PERSON} AS person
    FROM (SELECT {inner} FROM {deduplicated(TOUCHPOINTS)} {where(clauses)}) AS e
    LEFT ANY JOIN identities AS i ON e.anonymous_id = i.anonymous_id
)"""


def horizon() -> str:
    """A WITH item `horizon`: the latest stored touchpoint. A deadline or an outcome window
    that ends after it has not been seen yet."""
    return f"(SELECT max(occurred_at) FROM {deduplicated(TOUCHPOINTS)}) AS horizon"


# ---- service cases ---------------------------------------------------------------------

SUPPORT_CONTACT = friction_signal.SUPPORT_CONTACT
BILLING_INQUIRY = "billing_inquiry"
AGENT_RESPONSE = "agent_response"


def inbound_contact(params: Params) -> str:
    """Condition on (type, properties): the customer reached out about a case, as the
    friction rules read it (FrictionSignal.is_contact)."""
    params.update(contact_types=sorted(friction_signal.CONTACT_TYPES),
                  support_contact=SUPPORT_CONTACT, outbound=friction_signal.OUTBOUND)
    return (
        "(has({contact_types:Array(String)}, type) OR (type = {support_contact:String}"
        " AND JSONExtractString(properties, 'direction') != {outbound:String}))"
    )


def company_answer(params: Params) -> str:
    """Condition on (type, properties): the company's first response to a case, as the
    sla_breach rule reads it (FrictionSignal.is_first_response): an agent response, an
    outbound contact or a resolution."""
    params.update(first_response_types=sorted(friction_signal.FIRST_RESPONSE_TYPES),
                  support_contact=SUPPORT_CONTACT, outbound=friction_signal.OUTBOUND)
    return (
        "(has({first_response_types:Array(String)}, type) OR (type = {support_contact:String}"
        " AND JSONExtractString(properties, 'direction') = {outbound:String}))"
    )

ESCALATION = "escalation"
CASE_RESOLVED = "case_resolved"
CASE_REOPENED = "case_reopened"
SURVEY_RESPONSE = "survey_response"
PURCHASE = "purchase"
# The touchpoint types of a service case.
SERVICE_TYPES = (
    SUPPORT_CONTACT, BILLING_INQUIRY, AGENT_RESPONSE, ESCALATION, CASE_RESOLVED, CASE_REOPENED,
)  # fmt: skip
