"""The ingest path on a real broker and worker: validator, DLQ, dedup, ClickHouse sink."""

from __future__ import annotations

import subprocess
import sys
import uuid
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import orjson
import pytest

from journey.sdk import TouchpointProducer
from journey.settings import Settings
from journey.worker import WorkerProcess, settings_env
from projections.clickhouse.runner import run_query
from schemas.dead_letter import DeadLetter
from streams.kafka import make_producer
from tests.integration.helpers import counters, encode, read_topic, touchpoint, wait_for

pytestmark = pytest.mark.integration


def stored_counts(settings: Settings, event_ids: list[str]) -> dict[str, int]:
    _, rows = run_query(
        settings,
        "SELECT event_id, count() FROM touchpoints FINAL WHERE event_id IN {ids:Array(String)} "
        "GROUP BY event_id",
        {"ids": event_ids},
    )
    return {str(r[0]): int(r[1]) for r in rows}


async def produce_raw(settings: Settings, messages: list[tuple[bytes | None, bytes]]) -> None:
    """Like any outside Kafka client: plain aiokafka, no SDK, no validation."""
    producer = make_producer(settings.bootstrap)
    await producer.start()
    try:
        for key, value in messages:
            await producer.send(settings.topic_ingest, value, key=key)
        await producer.flush()
    finally:
        await producer.stop()


async def settle(
    settings: Settings, before: dict[str, Any], read: int, written: int
) -> dict[str, Any]:
    """Wait until `read` more messages were routed and `written` more rows inserted."""

    def done() -> bool:
        now = counters(settings)
        return (
            now["read"] - before["read"] >= read and now["written"] - before["written"] >= written
        )

    await wait_for(done, 90, f"{read} messages routed and {written} rows written")
    return counters(settings)


async def test_valid_events_reach_the_store_and_clickhouse_exactly_once(
    settings: Settings, worker: WorkerProcess
) -> None:
    before = counters(settings)
    events = [touchpoint("page_view", customer_id=f"cust-{i % 7}") for i in range(60)]
    events += [
        touchpoint(
            "purchase",
            customer_id="cust-1",
            channel="mobile_app",
            properties={"order_id": "o-1", "revenue": 19.9, "currency": "EUR", "coupon": "X1"},
        )
    ]
    async with TouchpointProducer(settings) as producer:
        assert await producer.send_many(events) == len(events)

    after = await settle(settings, before, len(events), len(events))
    assert after["valid"] - before["valid"] == len(events)
    assert after["invalid"] == before["invalid"]

    ids = {e["event_id"] for e in events}
    stored = [
        r
        for r in await read_topic(settings, settings.topic_touchpoints)
        if orjson.loads(r.value)["event_id"] in ids
    ]
    assert len(stored) == len(events)
    for record in stored:
        body = orjson.loads(record.value)
        assert record.key == body["customer_key"].encode() == body["customer_id"].encode()
        assert datetime.fromisoformat(body["received_at"]).tzinfo is not None
    purchase = next(
        orjson.loads(r.value) for r in stored if orjson.loads(r.value)["type"] == "purchase"
    )
    assert purchase["properties"]["coupon"] == "X1"  # unknown extra properties are kept

    assert stored_counts(settings, sorted(ids)) == dict.fromkeys(ids, 1)


BAD_INPUT: list[tuple[str, bytes]] = [
    ("invalid_json", b'{"event_id": "x", '),
    ("invalid_json", b"\xff\xfe not utf-8"),
    ("not_an_object", b"[1, 2, 3]"),
    ("payload_too_large", encode(touchpoint(properties={"url": "u", "pad": "x" * 70_000}))),
    ("unknown_type", encode(touchpoint("teleport"))),
    (
        "missing_field",
        encode(touchpoint("purchase", properties={"order_id": "o", "currency": "EUR"})),
    ),
    ("invalid_field", encode(touchpoint(channel="carrier_pigeon"))),
    ("naive_timestamp", encode(touchpoint(occurred_at=datetime(2026, 1, 1)))),
    ("future_timestamp", encode(touchpoint(occurred_at=datetime.now(UTC) + timedelta(days=3)))),
    ("missing_identity", encode({k: v for k, v in touchpoint().items() if k != "customer_id"})),
    (
        "missing_case_id",
        encode(touchpoint("support_contact", channel="phone", properties={"topic": "billing"})),
    ),
    ("unsupported_schema_version", encode(touchpoint(schema_version=2))),
]


async def test_each_kind_of_bad_input_reaches_the_dlq_with_its_reason(
    settings: Settings, worker: WorkerProcess
) -> None:
    before = counters(settings)
    marker = uuid.uuid4().hex.encode()
    keyed = [(marker + b"-%d" % i, raw) for i, (_, raw) in enumerate(BAD_INPUT)]
    await produce_raw(settings, keyed)
    after = await settle(settings, before, len(BAD_INPUT), 0)
    assert after["valid"] == before["valid"]

    dead = {
        r.key: r
        for r in await read_topic(settings, settings.topic_dlq)
        if r.key and r.key.startswith(marker)
    }
    assert len(dead) == len(BAD_INPUT)
    for (key, raw), (reason, _) in zip(keyed, BAD_INPUT, strict=True):
        record = DeadLetter.model_validate_json(dead[key].value)
        assert record.error.reason == reason, (reason, record.error)
        assert record.raw_bytes() == raw  # the original bytes, exactly
        assert record.topic == settings.topic_ingest
        assert record.offset >= 0
    by_reason = {
        r: after["invalid_by_reason"].get(r, 0) - before["invalid_by_reason"].get(r, 0)
        for r, _ in BAD_INPUT
    }
    assert by_reason == {r: sum(1 for x, _ in BAD_INPUT if x == r) for r, _ in BAD_INPUT}

    # operators see them with `journey dlq`
    cli = subprocess.run(
        [sys.executable, "-m", "journey", "dlq", "--format", "json", "--limit", "100"],
        env=_base_env() | settings_env(settings),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert cli.returncode == 0, cli.stderr
    listed = orjson.loads(cli.stdout)
    for reason, _ in BAD_INPUT:
        assert listed["by_reason"][reason] >= sum(1 for x, _ in BAD_INPUT if x == reason)


async def test_a_repeated_event_id_is_counted_not_stored_twice(
    settings: Settings, worker: WorkerProcess
) -> None:
    before = counters(settings)
    event = touchpoint(
        "add_to_cart", customer_id="dup-cust", properties={"product_id": "p-1", "quantity": 2}
    )
    raw = encode(event)
    await produce_raw(settings, [(b"dup-cust", raw), (b"dup-cust", raw)])
    after = await settle(settings, before, 2, 1)
    assert after["duplicates"] - before["duplicates"] == 1
    assert after["valid"] - before["valid"] == 1
    stored = [
        r
        for r in await read_topic(settings, settings.topic_touchpoints)
        if orjson.loads(r.value)["event_id"] == event["event_id"]
    ]
    assert len(stored) == 1
    assert stored_counts(settings, [event["event_id"]]) == {event["event_id"]: 1}


async def test_outside_producers_in_the_wire_format_are_accepted(
    settings: Settings, worker: WorkerProcess, tmp_path: Path
) -> None:
    # Written as an outside tool would (kcat, another language): literal JSON text,
    # an offset instead of Z, no key.
    event_id = str(uuid.uuid4())
    at = (datetime.now(UTC) - timedelta(hours=1)).astimezone(timezone(timedelta(hours=2)))
    text = (
        f'{{"event_id": "{event_id}", "schema_version": 1, "type": "support_contact", '
        f'"occurred_at": "{at.isoformat()}", "channel": "phone", '
        '"anonymous_id": "caller-+4930123", "case_id": "T-77", '
        '"properties": {"topic": "delivery", "direction": "inbound", "wait_seconds": 95}}'
    )
    before = counters(settings)
    await produce_raw(settings, [(None, text.encode())])

    # and `journey produce` from a JSON-lines file, with one bad line among them
    lines = [
        encode(touchpoint("site_visit", anonymous_id="cookie-1")),
        b"not json at all",
        encode(touchpoint("search", customer_id="c-9", properties={"query": "boots"})),
    ]
    path = tmp_path / "events.jsonl"
    path.write_bytes(b"\n".join(lines) + b"\n")
    cli = subprocess.run(
        [sys.executable, "-m", "journey", "produce", str(path)],
        env=_base_env() | settings_env(settings),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert cli.returncode == 0, cli.stderr
    assert "sent 3 messages" in cli.stdout

    after = await settle(settings, before, 4, 3)
    assert after["valid"] - before["valid"] == 3
    assert (
        after["invalid_by_reason"]["invalid_json"]
        - before["invalid_by_reason"].get("invalid_json", 0)
        == 1
    )
    stored = stored_counts(settings, [event_id])
    assert stored == {event_id: 1}


def _base_env() -> dict[str, str]:
    import os

    return {k: v for k, v in os.environ.items() if not k.startswith("JOURNEY_")}


def test_journey_sql_answers_through_the_running_worker(
    settings: Settings, worker: WorkerProcess
) -> None:
    cli = subprocess.run(
        [
            sys.executable,
            "-m",
            "journey",
            "sql",
            "SELECT count() AS n FROM touchpoints",
            "--format",
            "json",
        ],
        env=_base_env() | settings_env(settings),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert cli.returncode == 0, cli.stderr
    body = orjson.loads(cli.stdout)
    assert body[0]["n"] >= 1 if isinstance(body, list) else body["rows"][0][0] >= 1

    refused = subprocess.run(
        [sys.executable, "-m", "journey", "sql", "DROP TABLE touchpoints"],
        env=_base_env() | settings_env(settings),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert refused.returncode != 0
    assert len(refused.stderr.strip().splitlines()) == 1
    assert "Traceback" not in refused.stderr
