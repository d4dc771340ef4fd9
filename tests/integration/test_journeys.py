"""The journey projection on a real broker and worker: identity merges, late events, tables."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from journey.sdk import TouchpointProducer
from journey.settings import Settings
from journey.worker import WorkerProcess
from projections.clickhouse.runner import run_query
from tests.integration.helpers import touchpoint, wait_for

pytestmark = pytest.mark.integration

T0 = datetime.now(UTC).replace(microsecond=0) - timedelta(days=3)


def at(minutes: int) -> datetime:
    return T0 + timedelta(minutes=minutes)


def rows(settings: Settings, sql: str, **params: Any) -> list[list[Any]]:
    return [list(r) for r in run_query(settings, sql, params)[1]]


def journey_of(settings: Settings, key: str) -> list[list[Any]]:
    return rows(
        settings,
        "SELECT stage, touchpoints, purchases, anonymous_ids, by_channel "
        "FROM journeys FINAL WHERE customer_key = {k:String}",
        k=key,
    )


def transitions_of(settings: Settings, key: str) -> list[tuple[str, str, str]]:
    found = rows(
        settings,
        "SELECT from_stage, to_stage, to_type FROM journey_transitions FINAL "
        "WHERE customer_key = {k:String} ORDER BY occurred_at",
        k=key,
    )
    return [(r[0], r[1], r[2]) for r in found]


async def test_an_anonymous_journey_becomes_the_customers_after_identify(
    settings: Settings, worker: WorkerProcess
) -> None:
    run = uuid.uuid4().hex[:8]
    anon, customer = f"cookie-{run}", f"cust-{run}"
    async with TouchpointProducer(settings) as producer:
        await producer.send_many(
            [
                touchpoint(
                    "ad_impression",
                    anonymous_id=anon,
                    channel="advertising",
                    properties={"campaign": "spring"},
                    occurred_at=at(0),
                ),
                touchpoint(
                    "site_visit", anonymous_id=anon, properties={"url": "/"}, occurred_at=at(5)
                ),
                touchpoint(
                    "add_to_cart",
                    anonymous_id=anon,
                    properties={"product_id": "p1", "quantity": 1},
                    occurred_at=at(6),
                ),
            ]
        )
        await producer.flush()
        await producer.send_many(
            [
                touchpoint(
                    "identify",
                    customer_id=customer,
                    anonymous_id=anon,
                    occurred_at=at(7),
                    properties={},
                ),
                touchpoint(
                    "purchase",
                    customer_id=customer,
                    occurred_at=at(9),
                    properties={"order_id": "o1", "revenue": 80.0, "currency": "EUR"},
                ),
            ]
        )
        await producer.flush()
        # after the link: an anonymous event of the same visitor is the customer's
        await producer.send(
            touchpoint(
                "page_view", anonymous_id=anon, occurred_at=at(30), properties={"url": "/orders"}
            )
        )

    def merged() -> bool:
        found = journey_of(settings, customer)
        return bool(found) and found[0][1] == 6

    await wait_for(merged, 90, "the merged journey")
    stage, count, purchases, anonymous_ids, by_channel = journey_of(settings, customer)[0]
    assert (stage, count, purchases) == ("retention", 6, 1)
    assert anonymous_ids == [anon]
    assert by_channel == {"advertising": 1, "web": 5}
    # folded into the customer's, not kept twice (its deletion may come in a later batch)
    await wait_for(lambda: journey_of(settings, anon) == [], 90, "the anonymous journey gone")
    expected = [
        ("", "awareness", "ad_impression"),
        ("awareness", "consideration", "site_visit"),
        ("consideration", "purchase", "purchase"),
        ("purchase", "retention", "page_view"),
    ]
    # Transitions and identities reach ClickHouse through sinks of their own.
    await wait_for(lambda: transitions_of(settings, customer) == expected, 90, "transitions")
    await wait_for(lambda: transitions_of(settings, anon) == [], 90, "anonymous retractions")

    def linked() -> bool:
        sql = "SELECT customer_id FROM identities FINAL WHERE anonymous_id = {a:String}"
        return rows(settings, sql, a=anon) == [[customer]]

    await wait_for(linked, 90, "the identity link")


async def test_a_late_event_takes_its_place_in_event_time(
    settings: Settings, worker: WorkerProcess
) -> None:
    customer = f"late-{uuid.uuid4().hex[:8]}"
    async with TouchpointProducer(settings) as producer:
        await producer.send(
            touchpoint(
                "purchase",
                customer_id=customer,
                occurred_at=at(60),
                properties={"order_id": "o2", "revenue": 10.0, "currency": "EUR"},
            )
        )
        await producer.flush()

        def first_seen() -> bool:
            return transitions_of(settings, customer) == [("", "purchase", "purchase")]

        await wait_for(first_seen, 90, "the purchase transition")
        # the visit happened before the purchase but arrives after it
        await producer.send(
            touchpoint(
                "site_visit", customer_id=customer, occurred_at=at(50), properties={"url": "/"}
            )
        )

    expected = [("", "consideration", "site_visit"), ("consideration", "purchase", "purchase")]

    def placed() -> bool:
        # Transitions and journey states reach ClickHouse through separate sinks.
        state = journey_of(settings, customer)
        return (
            transitions_of(settings, customer) == expected
            and bool(state)
            and (state[0][:3] == ["purchase", 2, 1])
        )

    await wait_for(placed, 90, "the late visit to be placed before the purchase")


async def test_a_conflicting_claim_keeps_the_first_link(
    settings: Settings, worker: WorkerProcess
) -> None:
    run = uuid.uuid4().hex[:8]
    anon, first, second = f"shared-device-{run}", f"first-{run}", f"second-{run}"
    async with TouchpointProducer(settings) as producer:
        await producer.send(
            touchpoint(
                "identify", customer_id=first, anonymous_id=anon, occurred_at=at(100), properties={}
            )
        )
        await producer.flush()
        await producer.send(
            touchpoint(
                "identify",
                customer_id=second,
                anonymous_id=anon,
                occurred_at=at(200),
                properties={},
            )
        )

    def conflict_counted() -> bool:
        found = rows(
            settings,
            "SELECT customer_id, conflicts FROM identities FINAL WHERE anonymous_id = {a:String}",
            a=anon,
        )
        return found == [[first, 1]]

    await wait_for(conflict_counted, 90, "the conflicting claim to be counted")


def test_the_stage_map_counts_the_merged_journey(settings: Settings, worker: WorkerProcess) -> None:
    # Runs after the merge test: its customer's transitions lie in [at(0), at(40)).
    from projections.analysis.paths import StageMapSpec
    from projections.clickhouse.builders.paths import stage_map_query

    columns, found = run_query(settings, stage_map_query(StageMapSpec(since=at(0), until=at(40))))
    flows = {(r[0], r[1]): r[2:] for r in found}
    assert columns[:3] == ["source", "target", "transitions"]
    assert flows == {
        ("start", "awareness"): [1, 1, 1, 1],
        ("awareness", "consideration"): [1, 1, 1, 1],
        ("consideration", "purchase"): [1, 1, 1, 1],
        ("purchase", "retention"): [1, 1, 1, 1],
    }


def test_the_http_api_serves_the_analyses(settings: Settings, worker: WorkerProcess) -> None:
    import urllib.error
    import urllib.parse
    import urllib.request

    import orjson

    def get(path: str, **query: str) -> tuple[int, Any]:
        url = f"{settings.worker_url}{path}?{urllib.parse.urlencode(query)}"
        try:
            with urllib.request.urlopen(url, timeout=30) as answer:
                return answer.status, orjson.loads(answer.read())
        except urllib.error.HTTPError as exc:
            return exc.code, orjson.loads(exc.read())

    status, body = get("/analysis/map", since=at(0).isoformat(), until=at(40).isoformat())
    assert status == 200
    assert sorted((r[0], r[1], r[2]) for r in body["rows"]) == sorted([
        ("start", "awareness", 1), ("awareness", "consideration", 1),
        ("consideration", "purchase", 1), ("purchase", "retention", 1),
    ])  # fmt: skip
    status, body = get("/analysis/paths", end_at="purchase", top="5")
    assert status == 200 and body["columns"][:2] == ["path", "path_text"]
    status, body = get("/analysis/nope")
    assert status == 400 and "no analysis 'nope'" in body["error"]
    status, body = get("/analysis/paths", top="many")
    assert status == 400 and "paths" in body["error"]


def test_the_http_api_serves_a_funnel(settings: Settings, worker: WorkerProcess) -> None:
    import urllib.error
    import urllib.parse
    import urllib.request

    import orjson

    query = urllib.parse.urlencode(
        [
            ("step", "ad_impression"),
            ("step", "site_visit"),
            ("step", "purchase[revenue>50]"),
            ("since", at(0).isoformat()),
            ("until", at(40).isoformat()),
            ("window", "1d"),
        ]
    )
    with urllib.request.urlopen(f"{settings.worker_url}/analysis/funnel?{query}", timeout=30) as r:
        body = orjson.loads(r.read())
    people = [row[body["columns"].index("people")] for row in body["rows"]]
    assert people == [1, 1, 1]  # the anonymous ad and visit, then the identified purchase
    try:
        urllib.request.urlopen(f"{settings.worker_url}/analysis/funnel?step=purchse", timeout=30)
    except urllib.error.HTTPError as exc:
        assert exc.code == 400
        assert "purchse" in orjson.loads(exc.read())["error"]
    else:
        raise AssertionError("an unknown step type must be refused")


def test_the_timeline_shows_stage_changes_between_touchpoints(
    settings: Settings, worker: WorkerProcess
) -> None:
    # The merge test's customer: anonymous events, identify, purchase, a later visit.
    from projections.analysis.timeline import CustomerSpec
    from projections.clickhouse.builders.timeline import timeline_query

    customer = rows(
        settings,
        "SELECT customer_key FROM journey_transitions FINAL WHERE occurred_at >= {a:DateTime64(3)}"
        " AND occurred_at < {b:DateTime64(3)} AND to_type = 'ad_impression' LIMIT 1",
        a=at(0).replace(tzinfo=None),
        b=at(1).replace(tzinfo=None),
    )[0][0]
    columns, found = run_query(settings, timeline_query(CustomerSpec(customer)))
    entry, type_ = columns.index("entry"), columns.index("type")
    assert [(r[entry], r[type_]) for r in found] == [
        ("touchpoint", "ad_impression"),
        ("stage_change", "start > awareness"),
        ("touchpoint", "site_visit"),
        ("stage_change", "awareness > consideration"),
        ("touchpoint", "add_to_cart"),
        ("touchpoint", "identify"),
        ("touchpoint", "purchase"),
        ("stage_change", "consideration > purchase"),
        ("touchpoint", "page_view"),
        ("stage_change", "purchase > retention"),
    ]
