"""The ClickHouse sink commits Kafka offsets only for rows ClickHouse accepted."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import pytest

from journey.settings import Settings
from projections.clickhouse.client import Warehouse, connect
from projections.clickhouse.tables import TOUCHPOINTS, migrate
from projections.clickhouse.writer import insert_touchpoints_json
from projections.ingest import Admitted, admit
from streams.kafka import TopicPartition, create_topics, make_consumer, make_producer
from streams.metrics import Metrics
from streams.sink import ClickHouseSink
from streams.topics import TopicSpec
from tests.integration.helpers import encode, touchpoint, wait_for

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def warehouse(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Warehouse]:
    folder: Path = tmp_path_factory.mktemp("sink-warehouse")
    wh = connect(f"chdb://{folder}")
    yield wh
    wh.close()


async def committed(settings: Settings, group: str, topic: str, partitions: int) -> int:
    consumer = make_consumer(settings.bootstrap, group_id=group)
    await consumer.start()
    try:
        total = 0
        for p in range(partitions):
            total += await consumer.committed(TopicPartition(topic, p)) or 0
        return total
    finally:
        await consumer.stop()


async def test_offsets_wait_for_a_successful_insert(
    kafka: str, settings: Settings, warehouse: Warehouse
) -> None:
    topic = f"{settings.topic_touchpoints}.sink-{uuid.uuid4().hex[:6]}"
    group = f"sink-test-{uuid.uuid4().hex[:6]}"
    await create_topics(kafka, [TopicSpec(topic, "customer key", "touchpoint", 2)])
    now = datetime.now(UTC)
    stored = [admit(encode(touchpoint(customer_id=f"s-{i}")), now=now) for i in range(40)]
    assert all(isinstance(s, Admitted) for s in stored)
    producer = make_producer(kafka)
    await producer.start()
    for s in stored:
        assert isinstance(s, Admitted)
        await producer.send(topic, s.value, key=s.key)
    await producer.flush()
    await producer.stop()

    # The table does not exist yet: every insert fails with a real ClickHouse error.
    metrics = Metrics()
    sink = ClickHouseSink(
        kafka,
        topic,
        group,
        lambda values: insert_touchpoints_json(warehouse, values),
        metrics,
        batch_size=1000,
        batch_seconds=0.2,
        max_backoff=0.5,
    )
    task = asyncio.create_task(sink.run())
    try:
        await wait_for(lambda: metrics.sink_failures >= 3, 60, "failed inserts")
        assert await committed(settings, group, topic, 2) == 0
        assert metrics.written == 0
        assert "touchpoints" in (metrics.last_insert_error or "").lower()

        migrate(warehouse)  # ClickHouse "comes back": the retry must now succeed
        await wait_for(lambda: metrics.written == len(stored), 60, "rows written after recovery")
        assert await committed(settings, group, topic, 2) == len(stored)
    finally:
        sink.stop()
        await asyncio.wait_for(task, 30)

    ids = [s.event_id for s in stored if isinstance(s, Admitted)]
    count = warehouse.query(
        f"SELECT count() FROM {TOUCHPOINTS} FINAL WHERE event_id IN {{ids:Array(String)}}",
        {"ids": ids},
    ).scalar()
    assert count == len(stored)


async def test_a_sink_stopped_mid_retry_commits_nothing(
    kafka: str, settings: Settings, warehouse: Warehouse
) -> None:
    topic = f"{settings.topic_touchpoints}.stop-{uuid.uuid4().hex[:6]}"
    group = f"sink-test-{uuid.uuid4().hex[:6]}"
    await create_topics(kafka, [TopicSpec(topic, "customer key", "touchpoint", 1)])
    s = admit(encode(touchpoint()), now=datetime.now(UTC))
    assert isinstance(s, Admitted)
    producer = make_producer(kafka)
    await producer.start()
    await producer.send_and_wait(topic, s.value, key=s.key)
    await producer.stop()

    def broken(values: object) -> int:
        raise ConnectionError("ClickHouse is down")

    metrics = Metrics()
    sink = ClickHouseSink(
        kafka, topic, group, broken, metrics, batch_size=100, batch_seconds=0.2, max_backoff=0.5
    )
    task = asyncio.create_task(sink.run())
    await wait_for(lambda: metrics.sink_failures >= 2, 60, "failed inserts")
    sink.stop()
    await asyncio.wait_for(task, 30)
    assert await committed(settings, group, topic, 1) == 0


async def test_poison_is_skipped_loudly_and_the_rest_written(
    kafka: str, settings: Settings, warehouse: Warehouse
) -> None:
    migrate(warehouse)
    topic = f"{settings.topic_touchpoints}.poison-{uuid.uuid4().hex[:6]}"
    group = f"sink-test-{uuid.uuid4().hex[:6]}"
    await create_topics(kafka, [TopicSpec(topic, "customer key", "touchpoint", 1)])
    now = datetime.now(UTC)
    stored = [admit(encode(touchpoint(customer_id=f"p-{i}")), now=now) for i in range(10)]
    good = [s for s in stored if isinstance(s, Admitted)]
    assert len(good) == 10
    # Nothing but the validator writes the topic; these would come from someone else.
    poison: list[bytes | None] = [b"not json", b"[1, 2]", b"", None, b'{"event_id": "cut']
    values = [*(s.value for s in good[:5]), *poison, *(s.value for s in good[5:])]
    producer = make_producer(kafka)
    await producer.start()
    for value in values:
        await producer.send(topic, value, key=b"k")
    await producer.flush()
    await producer.stop()

    metrics = Metrics()
    sink = ClickHouseSink(
        kafka,
        topic,
        group,
        lambda batch: insert_touchpoints_json(warehouse, batch),
        metrics,
        batch_size=1000,
        batch_seconds=0.5,
        max_backoff=0.5,
    )
    task = asyncio.create_task(sink.run())
    try:
        await wait_for(lambda: metrics.written == len(good), 60, "rows written around the poison")
        assert await committed(settings, group, topic, 1) == len(values)
    finally:
        sink.stop()
        await asyncio.wait_for(task, 30)
    # each poison record counted once, plus the insert(s) it failed
    assert metrics.sink_failures >= len(poison) + 1
    assert metrics.last_insert_error is None
    count = warehouse.query(
        f"SELECT count() FROM {TOUCHPOINTS} FINAL WHERE event_id IN {{ids:Array(String)}}",
        {"ids": [s.event_id for s in good]},
    ).scalar()
    assert count == len(good)
