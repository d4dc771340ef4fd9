"""The validator service on a real broker: its dedup window and its offsets across restarts.

Each test runs validators in this process on topics and an app id of its own, so the
session's worker (and its topics) is left alone.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Any

import orjson
import pytest

from journey.settings import Settings
from streams.kafka import KafkaError, TopicPartition, create_topics, make_consumer, make_producer
from streams.metrics import Metrics
from streams.topics import topics
from streams.validator import Validator, validator_group
from tests.integration.helpers import encode, read_topic, touchpoint, wait_for

pytestmark = pytest.mark.integration


@pytest.fixture
async def own(kafka: str, settings: Settings) -> Settings:
    """Settings with an app id and topics no other test uses."""
    app_id = f"{settings.app_id}-val-{uuid.uuid4().hex[:6]}"
    mine = settings.model_copy(update={
        "app_id": app_id,
        "topic_ingest": f"{app_id}.ingest",
        "topic_touchpoints": f"{app_id}.touchpoints",
        "topic_dlq": f"{app_id}.dlq",
        "topic_partitions": 2,
    })
    spec = topics(mine)
    await create_topics(kafka, [spec.ingest, spec.touchpoints, spec.dlq, spec.dedup_window])
    return mine


@asynccontextmanager
async def running(settings: Settings) -> AsyncIterator[Validator]:
    """A validator for the block, stopped (gracefully, or cancelled after 30 s) at its end."""
    validator = Validator(settings, topics(settings), Metrics())
    task = asyncio.create_task(validator.run())
    _RUNNING.add(task)
    try:
        yield validator
    finally:
        _RUNNING.discard(task)
        validator.stop()
        if not await validator.wait_stopped(30):
            task.cancel()
        await asyncio.gather(task, return_exceptions=True)


_RUNNING: set[asyncio.Task[None]] = set()  # validators of the test, watched by until()


async def produce(settings: Settings, messages: list[tuple[bytes, bytes]]) -> None:
    producer = make_producer(settings.bootstrap)
    await producer.start()
    try:
        for key, value in messages:
            await producer.send(settings.topic_ingest, value, key=key)
        await producer.flush()
    finally:
        await producer.stop()


async def committed(settings: Settings) -> dict[int, int | None]:
    consumer = make_consumer(settings.bootstrap, group_id=validator_group(settings))
    await consumer.start()
    try:
        return {p: await consumer.committed(TopicPartition(settings.topic_ingest, p))
                for p in range(settings.topic_partitions)}
    finally:
        await consumer.stop()


async def stored_ids(settings: Settings) -> list[str]:
    return [orjson.loads(r.value)["event_id"]
            for r in await read_topic(settings, settings.topic_touchpoints)]


async def until(predicate: Callable[[], bool], what: str) -> None:
    def done() -> bool:
        for task in _RUNNING:
            if task.done() and task.exception() is not None:
                raise AssertionError(f"a validator crashed while waiting for {what}") \
                    from task.exception()
        return predicate()

    await wait_for(done, 60, what)


async def test_the_dedup_window_survives_a_restart(own: Settings) -> None:
    event = touchpoint("page_view", customer_id="dedup-1")
    async with running(own) as first:
        await produce(own, [(b"dedup-1", encode(event))])
        await until(lambda: first.metrics.valid == 1, "the first validator to pass the event")

    async with running(own) as second:
        await produce(own, [(b"dedup-1", encode(event))])
        await until(lambda: second.metrics.read >= 1, "the second validator to read it")
        await asyncio.sleep(1.0)  # anything else it would (wrongly) read arrives by now
        m = second.metrics
        assert (m.read, m.duplicates, m.valid) == (1, 1, 0)

    assert await stored_ids(own) == [event["event_id"]]
    assert sum(o or 0 for o in (await committed(own)).values()) == 2


class UnreachableProducer:
    """A real producer whose sends all fail, as while the broker is unreachable."""

    def __init__(self, real: Any) -> None:
        self.real = real

    def __getattr__(self, name: str) -> Any:
        return getattr(self.real, name)

    async def send(self, *_: Any, **__: Any) -> Any:
        raise KafkaError("broker unavailable (simulated)")

    async def send_batch(self, *_: Any, **__: Any) -> Any:
        raise KafkaError("broker unavailable (simulated)")


async def test_a_validator_stopped_before_its_flush_commits_nothing(
    own: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    events = [touchpoint("page_view", customer_id="flush-1") for _ in range(3)]
    messages = [(b"flush-1", encode(e)) for e in events] + [(b"flush-1", b"not json")]
    monkeypatch.setattr("streams.validator.FIRST_RETRY_SECONDS", 0.05)
    with monkeypatch.context() as patch:
        patch.setattr("streams.validator.make_producer",
                      lambda *a, **kw: UnreachableProducer(make_producer(*a, **kw)))
        await produce(own, messages)  # before the start: one fetch takes them all
        async with running(own) as cut_off:
            await until(lambda: cut_off.metrics.send_failures >= 2, "failed sends")
            assert cut_off.metrics.read == 4
    assert await committed(own) == {0: None, 1: None}
    assert await stored_ids(own) == []

    async with running(own) as again:
        await until(lambda: again.metrics.read >= 4, "the messages to be routed again")
        m = again.metrics
        assert (m.valid, sum(m.invalid.values()), m.duplicates) == (3, 1, 0)
    assert sorted(await stored_ids(own)) == sorted(e["event_id"] for e in events)
    assert len(await read_topic(own, own.topic_dlq)) == 1
    assert sum(o or 0 for o in (await committed(own)).values()) == 4


async def test_delivered_but_uncommitted_ids_are_not_taken_for_repeats(
    own: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The outputs and their dedup records reach the broker, the commit never happens:
    # on restart the batch is routed again and passes again (at least once), because
    # the restore ignores sightings at or past the committed offset. Otherwise an id
    # whose touchpoint was lost in a half-delivered batch would be dropped as a repeat.
    event = touchpoint("page_view", customer_id="commit-1")
    hang = asyncio.Event()

    def hanging_commit_consumer(*a: Any, **kw: Any) -> Any:
        consumer = make_consumer(*a, **kw)

        async def commit(*_: Any, **__: Any) -> None:
            await hang.wait()  # never set: the worker dies before its commit

        consumer.commit = commit
        return consumer

    with monkeypatch.context() as patch:
        patch.setattr("streams.validator.make_consumer", hanging_commit_consumer)
        validator = Validator(own, topics(own), Metrics())
        task = asyncio.create_task(validator.run())
        await produce(own, [(b"commit-1", encode(event))])
        await until(lambda: validator.metrics.valid == 1, "the event to be routed")
        await wait_for_records(own, own.topic_touchpoints, 1)
        await wait_for_records(own, topics(own).dedup_window.name, 1)
        task.cancel()  # as a crash would: no graceful end
        await asyncio.gather(task, return_exceptions=True)
    assert await committed(own) == {0: None, 1: None}

    async with running(own) as again:
        await until(lambda: again.metrics.read >= 1, "the event to be routed again")
        assert (again.metrics.valid, again.metrics.duplicates) == (1, 0)
    assert await stored_ids(own) == [event["event_id"]] * 2


async def wait_for_records(settings: Settings, topic: str, n: int) -> None:
    for _ in range(100):
        if len(await read_topic(settings, topic)) >= n:
            return
        await asyncio.sleep(0.2)
    raise AssertionError(f"{topic} never held {n} records")


async def test_partitions_handed_over_in_a_rebalance_keep_their_windows(own: Settings) -> None:
    events = [touchpoint("page_view", customer_id=f"move-{i}") for i in range(10)]
    messages = [(f"move-{i}".encode(), encode(e)) for i, e in enumerate(events)]
    async with running(own) as first:
        await produce(own, messages)
        await until(lambda: first.metrics.valid == 10, "the first validator to pass all")
        assert all(first.dedup.partitions.values()), "keys of both partitions expected"

        async with running(own) as second:
            # The group splits the two partitions; each restores the window it takes.
            await until(lambda: len(first.dedup.partitions) == len(second.dedup.partitions) == 1
                        and first._ready.is_set() and second._ready.is_set(),
                        "the rebalance to split the partitions")
            await produce(own, messages)
            await until(lambda: first.metrics.read + second.metrics.read >= 20,
                        "the repeats to be read")
            assert second.metrics.duplicates >= 1
            assert first.metrics.duplicates + second.metrics.duplicates == 10

        # The second leaves: the first takes both partitions back, windows restored.
        await until(lambda: len(first.dedup.partitions) == 2 and first._ready.is_set(),
                    "the first validator to take both partitions back")
        await produce(own, messages)
        await until(lambda: first.metrics.read + second.metrics.read >= 30,
                    "the second repeats to be read")
        assert first.metrics.duplicates + second.metrics.duplicates == 20
        assert first.metrics.valid + second.metrics.valid == 10

    assert sorted(await stored_ids(own)) == sorted(e["event_id"] for e in events)
