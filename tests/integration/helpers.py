"""Small tools the integration tests share: hand-made events, topic reads, waits."""

from __future__ import annotations

import asyncio
import os
import signal
import time
import uuid
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import orjson

from journey.settings import Settings
from journey.stack import KafkaStack
from journey.worker import worker_status
from streams.kafka import TopicPartition, make_consumer
from tests.ports import free_port


def touchpoint(
    type_: str = "page_view",
    *,
    customer_id: str | None = None,
    anonymous_id: str | None = None,
    properties: dict[str, Any] | None = None,
    occurred_at: datetime | None = None,
    **extra: Any,
) -> dict[str, Any]:
    """An EVENTS.md touchpoint as an outside producer would write it."""
    event: dict[str, Any] = {
        "event_id": str(uuid.uuid4()),
        "schema_version": 1,
        "type": type_,
        "occurred_at": (occurred_at or datetime.now(UTC) - timedelta(minutes=5))
        .isoformat()
        .replace("+00:00", "Z"),
        "channel": "web",
        "properties": properties if properties is not None else {"url": "https://shop.test/"},
    }
    if customer_id is None and anonymous_id is None:
        customer_id = f"c-{uuid.uuid4().hex[:10]}"
    if customer_id is not None:
        event["customer_id"] = customer_id
    if anonymous_id is not None:
        event["anonymous_id"] = anonymous_id
    event.update(extra)
    return event


async def read_topic(settings: Settings, topic: str, timeout: float = 10.0) -> list[Any]:
    """Every record of a topic from offset 0 to its end as of now (no group, no commits)."""
    consumer = make_consumer(settings.bootstrap, group_id=None)
    await consumer.start()
    try:
        deadline = time.monotonic() + timeout
        # Every topic of the engine has settings.topic_partitions partitions.
        partitions = range(settings.topic_partitions)
        tps = [TopicPartition(topic, p) for p in sorted(partitions)]
        consumer.assign(tps)
        await consumer.seek_to_beginning(*tps)
        ends = await consumer.end_offsets(tps)
        records: list[Any] = []
        while [tp for tp in tps if await consumer.position(tp) < ends[tp]]:
            got = await consumer.getmany(timeout_ms=1000)
            for messages in got.values():
                records.extend(messages)
            if time.monotonic() > deadline + timeout:
                raise TimeoutError(f"reading {topic} did not reach its end")
        return records
    finally:
        await consumer.stop()


async def wait_for(
    predicate: Callable[[], bool], timeout: float = 60.0, what: str = "condition"
) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:.0f}s waiting for {what}")
        await asyncio.sleep(0.2)


def counters(settings: Settings) -> dict[str, Any]:
    status = worker_status(settings)
    assert status is not None, "the worker stopped answering"
    return dict(status["counters"])


def encode(event: dict[str, Any]) -> bytes:
    return orjson.dumps(event)


def own_broker(home: Path, **settings: Any) -> Iterator[Settings]:
    """A broker of a module's own on free ports (one the module may kill; the session's
    broker stays untouched), with these settings; stopped at the end."""
    own = Settings(home=home, kafka_port=free_port(), kafka_controller_port=free_port(),
                   **settings)
    stack = KafkaStack(own)
    stack.up()
    yield own
    stack.down()


def kill_broker(settings: Settings) -> None:
    """SIGKILL the broker and wait until it is gone (reaped, when it is our child)."""
    record = KafkaStack(settings).status().record
    assert record is not None, "the broker is not running"
    os.kill(record.pid, signal.SIGKILL)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        try:
            if os.waitpid(record.pid, os.WNOHANG)[0] == record.pid:
                return
        except ChildProcessError:  # not our child: gone once /proc forgets it
            if not Path(f"/proc/{record.pid}").exists():
                return
        time.sleep(0.1)
    raise AssertionError(f"the broker (pid {record.pid}) did not die within 30s")
