"""The timeline builders: who an id is and what happened to that person, the SQL that
answers a CustomerSpec (projections/analysis/timeline.py)."""

from __future__ import annotations

from projections.analysis.timeline import (
    FRICTION_ENTRY,
    STAGE_CHANGE_ENTRY,
    TOUCHPOINT_ENTRY,
    CustomerSpec,
)
from projections.clickhouse.sql import Params, Statement, deduplicated, identities, people
from projections.clickhouse.tables import FRICTION, TOUCHPOINTS, TRANSITIONS, columns


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
    read = columns(TOUCHPOINTS, "occurred_at", "channel", "type", "case_id", "properties",
                   "event_id")
    return f"""SELECT occurred_at, '{TOUCHPOINT_ENTRY}' AS entry, channel, type, case_id,
        properties, event_id
    FROM {people(read, [candidates])}
    WHERE person = {person}"""


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
    FROM {deduplicated(TRANSITIONS)}
    WHERE customer_key = {person}"""


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
    FROM {deduplicated(FRICTION)}
    WHERE customer_key = {person}
       OR customer_key IN (SELECT anonymous_id FROM identities
                           WHERE linked_customer_id = {person})"""


# The sources of a timeline, each a SELECT of the same columns (occurred_at, entry,
# channel, type, case_id, properties, event_id) for the `subject` person, interleaved
# by time.
_TIMELINE_SOURCES = (_touchpoint_entries, _stage_change_entries, _friction_entries)


def timeline_query(spec: CustomerSpec) -> Statement:
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
    params: Params = {"limit": spec.limit}
    entries = "\n    UNION ALL\n    ".join(source() for source in _TIMELINE_SOURCES)
    sql = f"""
WITH
{identities(params)},
{_subject(spec.customer, params)},
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
    return Statement(sql, params)


def identity_query(spec: CustomerSpec) -> Statement:
    """Who an id is: the person it resolves to and the anonymous ids linked to that person.

    Strategy: `_subject` resolves the id as the timeline does; the linked anonymous ids
    come from `identities` (first claim wins). `ignored_claims` lists anonymous ids the
    person claimed with an identify although another customer had claimed them first:
    their events are in that other customer's timeline. One row: requested, person,
    via_link (the id is an anonymous id linked to `person`), anonymous_ids,
    ignored_claims (both sorted).
    """
    params: Params = {}
    linked_ids = identities(params)
    subject = _subject(spec.customer, params)
    person = "(SELECT person FROM subject)"
    sql = f"""
WITH
{linked_ids},
{subject},
linked AS (
    SELECT arraySort(groupArray(anonymous_id)) AS ids
    FROM identities
    WHERE linked_customer_id = {person}
),
claimed AS (
    SELECT arraySort(groupUniqArray(anonymous_id)) AS ids
    FROM {deduplicated(TOUCHPOINTS)}
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
    return Statement(sql, params)


