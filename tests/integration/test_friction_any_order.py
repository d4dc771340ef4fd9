"""Friction on the real broker is a function of the touchpoints, not of how they arrived.

Touchpoints are sent without keys (so every customer's touchpoints spread over the ingest
partitions), each customer's in a random order that stays within `max_lateness`; the
friction table then equals the in-order replay of every customer's touchpoints. And an
older data set loaded into a stack that already holds newer data gives the same friction
as loading it first.
"""

from __future__ import annotations

import asyncio
import random
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import orjson
import pytest

from journey.replay import projection_lags
from journey.settings import Settings
from journey.worker import WorkerProcess, settings_env
from projections.clickhouse.runner import run_query
from projections.friction import FrictionConfig
from projections.friction.signal import signal_of
from projections.friction.timeline import evaluate
from schemas.codec import validate_touchpoint
from streams.friction import friction_event
from streams.kafka import DefaultPartitioner, make_producer
from tests.integration.helpers import wait_for
from tests.ports import free_port
from tests.unit.streams.test_friction_any_order import journey_of

pytestmark = pytest.mark.integration

CONFIG = FrictionConfig()
COLUMNS = "friction_id, rule, kind, severity, customer_key, occurred_at, stage, case_id, " \
          "channel, evidence, message"


@pytest.fixture
def stacks(kafka: str, settings: Settings, tmp_path: Path) -> Iterator[list[Settings]]:
    """Two stacks of their own (topics, homes, workers) on the session's broker."""
    made = []
    for name in ("a", "b"):
        run = f"fao-{name}-{uuid.uuid4().hex[:6]}"
        home = tmp_path / name
        made.append(settings.model_copy(update={
            "home": home, "clickhouse_dsn": f"chdb://{home / 'warehouse'}", "app_id": run,
            "worker_port": free_port(), "topic_ingest": f"{run}.ingest",
            "topic_touchpoints": f"{run}.touchpoints", "topic_dlq": f"{run}.dlq",
            "topic_friction": f"{run}.friction", "topic_alerts_dlq": f"{run}.adlq",
            "validator_batch_size": 100}))
    yield made


def stored(raw: bytes) -> dict[str, Any]:
    """The wire form of a test touchpoint (the generator's carry the stored fields)."""
    event = orjson.loads(raw)
    event.pop("customer_key", None)
    event.pop("received_at", None)
    return dict(event)


def customers(rng: random.Random, n: int, shift: timedelta, tag: str) -> dict[str, list[bytes]]:
    out = {}
    for i in range(n):
        key = f"{tag}-{i}"
        events = journey_of(key, rng, clean=i % 4 == 0)
        out[key] = [orjson.dumps(_shifted(stored(e), shift)) for e in events]
    return out


def _shifted(event: dict[str, Any], shift: timedelta) -> dict[str, Any]:
    event["occurred_at"] = (datetime.fromisoformat(event["occurred_at"]) + shift).isoformat()
    return event


def arrival(by_customer: dict[str, list[bytes]], rng: random.Random) -> list[bytes]:
    """Customers interleaved at random; each one's touchpoints late by less than
    max_lateness (sorted by event time plus a random delay below the bound)."""
    def at(raw: bytes) -> int:
        return signal_of(validate_touchpoint(orjson.loads(raw))).at

    delayed = [(at(e) + rng.randrange(0, CONFIG.max_lateness), rng.random(), e)
               for events in by_customer.values() for e in events]
    return [e for _, _, e in sorted(delayed)]


async def produce(settings: Settings, values: list[bytes]) -> None:
    producer = make_producer(settings.bootstrap)
    await producer.start()
    try:
        for value in values:
            await producer.send(settings.topic_ingest, value)  # no key
        await producer.flush()
    finally:
        await producer.stop()


async def settle(settings: Settings, total: int) -> None:
    def stored_all() -> bool:
        rows = run_query(settings, "SELECT count() FROM touchpoints FINAL")[1]
        return int(rows[0][0]) == total

    await wait_for(stored_all, 180, f"{total} touchpoints stored")
    for _ in range(300):
        if not any((await projection_lags(settings)).values()):
            return
        await asyncio.sleep(0.5)
    raise AssertionError(f"groups did not catch up: {await projection_lags(settings)}")


def friction_rows(settings: Settings) -> list[list[Any]]:
    return [list(r) for r in run_query(
        settings, f"SELECT {COLUMNS} FROM friction FINAL ORDER BY friction_id")[1]]


def reference(settings: Settings, everything: dict[str, list[bytes]]) -> list[list[Any]]:
    """The in-order replay of each customer, with its partition's final watermark."""
    partitions = list(range(settings.topic_partitions))
    partitioner = DefaultPartitioner()
    signals = {c: [signal_of(validate_touchpoint(orjson.loads(e))) for e in es]
               for c, es in everything.items()}
    newest: dict[int, int] = {}
    for customer, sigs in signals.items():
        p = partitioner(customer.encode(), partitions, partitions)
        newest[p] = max([newest.get(p, -(2**62)), *(s.at for s in sigs)])
    rows = []
    for customer, sigs in signals.items():
        p = partitioner(customer.encode(), partitions, partitions)
        found = evaluate(sigs, newest[p] - CONFIG.allowed_lateness, CONFIG, customer)
        for finding in found.values():
            # detected_at is not compared, so any time serves
            rows.append(friction_event(finding, customer, datetime.now(UTC)).model_dump(
                mode="json"))
    return sorted(rows, key=lambda r: r["friction_id"])


def same(rows: list[list[Any]], expected: list[dict[str, Any]]) -> None:
    """The table's rows equal the expected friction events, field by field."""
    def at(value: Any) -> datetime:
        return datetime.fromisoformat(value) if isinstance(value, str) else value

    got = [(r[0], r[1], r[2], r[3], r[4], at(r[5]), r[6] or "", r[7] or None, r[8] or None,
            sorted(r[9]), r[10]) for r in rows]
    want = [(e["friction_id"], e["rule"], e["kind"], e["severity"], e["customer_key"],
             at(e["occurred_at"]), e["stage"], e["case_id"], e["channel"],
             sorted(e["evidence"]), e["message"]) for e in expected]
    assert len(got) == len(want)
    assert got == want


async def test_an_unkeyed_producer_in_any_allowed_order_gets_the_in_order_friction(
        stacks: list[Settings]) -> None:
    settings = stacks[0]
    rng = random.Random(41)
    everything = customers(rng, 40, timedelta(days=-3), "any")
    values = arrival(everything, rng)
    worker = WorkerProcess(settings, env=settings_env(settings))
    worker.start()
    try:
        await produce(settings, values)
        await settle(settings, len(values))
        rows = friction_rows(settings)
    finally:
        worker.stop()
    assert len(rows) > 40, "the workload holds friction of several kinds"
    same(rows, reference(settings, everything))


async def test_older_data_into_a_stack_with_newer_data_gives_the_same_friction(
        stacks: list[Settings]) -> None:
    rng = random.Random(43)
    newer = customers(rng, 25, timedelta(days=-3), "new")
    older = customers(rng, 25, timedelta(days=-60), "old")
    results = []
    for settings, order in zip(stacks, ((older, newer), (newer, older)), strict=True):
        worker = WorkerProcess(settings, env=settings_env(settings))
        worker.start()
        try:
            sent = 0
            for data in order:
                values = [e for es in data.values() for e in es]
                await produce(settings, values)
                sent += len(values)
                await settle(settings, sent)
            results.append(friction_rows(settings))
        finally:
            worker.stop()
    fresh_first, newer_first = results
    assert len(fresh_first) > 20
    assert newer_first == fresh_first
    same(fresh_first, reference(stacks[0], {**older, **newer}))
