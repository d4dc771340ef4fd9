"""Validation and dedup on a real broker: any key, restarts, crashes, rebalances.

Each test runs a validator and a dedup stage in this process on topics and an app id of
its own, so the session's worker (and its topics) is left alone.
"""

from __future__ import annotations

import asyncio
import random
import uuid
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import orjson
import pytest

from journey.settings import Settings
from streams.batch import TransactionalService
from streams.dedup import DedupStage
from streams.kafka import create_topics, make_producer
from streams.metrics import Metrics
from streams.topics import topics
from streams.validator import Validator
from tests.integration.helpers import encode, read_topic, touchpoint, wait_for

pytestmark = pytest.mark.integration


@pytest.fixture
async def own(kafka: str, settings: Settings, tmp_path: Path) -> Settings:
    """Settings with an app id, topics and a home no other test uses."""
    app_id = f"{settings.app_id}-dd-{uuid.uuid4().hex[:6]}"
    mine = settings.model_copy(update={
        "home": tmp_path,
        "app_id": app_id,
        "topic_ingest": f"{app_id}.ingest",
        "topic_touchpoints": f"{app_id}.touchpoints",
        "topic_dlq": f"{app_id}.dlq",
        "topic_partitions": 3,
        "validator_batch_size": 25,  # many small transactions
    })
    spec = topics(mine)
    await create_topics(kafka, [spec.ingest, spec.touchpoints, spec.dlq, spec.validated,
                                spec.dedup_state])
    return mine


_RUNNING: set[asyncio.Task[None]] = set()  # services of the test, watched by until()


@asynccontextmanager
async def running(service: TransactionalService) -> AsyncIterator[Any]:
    """Run `service` for the block; stopped (gracefully, or cancelled after 30 s) at its end."""
    task = asyncio.create_task(service.run())
    _RUNNING.add(task)
    try:
        yield service
    finally:
        _RUNNING.discard(task)
        service.stop()
        if not await service.wait_stopped(30):
            task.cancel()
        await asyncio.gather(task, return_exceptions=True)


@asynccontextmanager
async def pipeline(settings: Settings, port: int = 0) -> AsyncIterator[Metrics]:
    """A validator and a dedup stage, as one worker runs them (`port` tells workers apart)."""
    mine = settings.model_copy(update={"worker_port": settings.worker_port + port,
                                       "home": settings.home / f"worker-{port}"})
    metrics = Metrics()
    async with running(Validator(mine, topics(mine), metrics)), \
            running(DedupStage(mine, topics(mine), metrics)):
        yield metrics


async def produce(settings: Settings, messages: list[tuple[bytes | None, bytes]]) -> None:
    producer = make_producer(settings.bootstrap)
    await producer.start()
    try:
        for key, value in messages:
            await producer.send(settings.topic_ingest, value, key=key)
        await producer.flush()
    finally:
        await producer.stop()


async def stored_ids(settings: Settings) -> list[str]:
    return [orjson.loads(r.value)["event_id"]
            for r in await read_topic(settings, settings.topic_touchpoints)]


async def until(predicate: Callable[[], bool], what: str, timeout: float = 60) -> None:
    def done() -> bool:
        for task in _RUNNING:
            if task.done() and not task.cancelled() and task.exception() is not None:
                raise AssertionError(f"a service crashed while waiting for {what}") \
                    from task.exception()
        return predicate()

    await wait_for(done, timeout, what)


async def test_repeats_under_another_key_or_none_are_dropped_and_counted(own: Settings) -> None:
    events = [touchpoint("page_view", customer_id=f"any-{i}") for i in range(20)]
    # the first copy keyed by customer, a repeat unkeyed, another under a random key
    messages: list[tuple[bytes | None, bytes]] = [(e["customer_id"].encode(), encode(e))
                                                  for e in events]
    messages += [(None, encode(e)) for e in events]
    messages += [(uuid.uuid4().hex.encode(), encode(e)) for e in events]
    async with pipeline(own) as metrics:
        await produce(own, messages)
        await until(lambda: metrics.valid + metrics.duplicates == 60, "every copy routed")
        assert (metrics.read, metrics.validated, metrics.valid, metrics.duplicates) == (
            60, 60, 20, 40)
    assert sorted(await stored_ids(own)) == sorted(e["event_id"] for e in events)


async def test_the_dedup_window_survives_a_restart(own: Settings) -> None:
    event = touchpoint("page_view", customer_id="dedup-1")
    async with pipeline(own) as first:
        await produce(own, [(b"dedup-1", encode(event))])
        await until(lambda: first.valid == 1, "the first pipeline to pass the event")
    async with pipeline(own) as second:
        await produce(own, [(None, encode(event))])
        await until(lambda: second.duplicates == 1, "the second pipeline to drop it")
        assert second.valid == 0
    assert await stored_ids(own) == [event["event_id"]]


async def test_crashes_at_random_moments_store_each_event_exactly_once(own: Settings) -> None:
    rng = random.Random(7)
    events = [touchpoint("page_view", customer_id=f"crash-{i % 37}") for i in range(600)]
    copies = [(rng.choice([None, e["customer_id"].encode()]), encode(e))
              for e in events for _ in range(rng.choice([1, 1, 2]))]
    rng.shuffle(copies)
    await produce(own, copies)
    for _ in range(4):
        # cancelled as a kill would: no graceful end, a transaction possibly open
        metrics = Metrics()
        validator = Validator(own, topics(own), metrics)
        dedup = DedupStage(own, topics(own), metrics)
        tasks = [asyncio.create_task(validator.run()), asyncio.create_task(dedup.run())]
        await until(lambda m=metrics: m.read > 0 or m.valid > 0, "some progress")  # type: ignore[misc]
        await asyncio.sleep(rng.uniform(0.0, 1.5))
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
    async with pipeline(own) as last:
        async def caught_up() -> bool:
            return len(set(await stored_ids(own))) == len(events)

        for _ in range(300):
            if await caught_up():
                break
            await asyncio.sleep(0.2)
        await asyncio.sleep(1.0)
        assert last is not None
    ids = await stored_ids(own)
    assert len(ids) == len(set(ids)), "an event id reached touchpoints twice"
    assert sorted(ids) == sorted(e["event_id"] for e in events)


async def test_two_workers_share_the_partitions_and_still_drop_every_repeat(
        own: Settings) -> None:
    events = [touchpoint("page_view", customer_id=f"move-{i}") for i in range(30)]
    async with pipeline(own, port=1) as first:
        await produce(own, [(None, encode(e)) for e in events])
        await until(lambda: first.valid == 30, "the first worker to pass all")
        async with pipeline(own, port=2) as second:
            await asyncio.sleep(3.0)  # the group rebalances over both workers
            await produce(own, [(uuid.uuid4().hex.encode(), encode(e)) for e in events])
            await until(lambda: first.duplicates + second.duplicates == 30,
                        "the repeats to be dropped by whichever worker owns them")
        await produce(own, [(None, encode(e)) for e in events])
        await until(lambda: first.duplicates + second.duplicates == 60,
                    "the first worker, alone again, to drop the third copies")
        assert first.valid + second.valid == 30
    assert sorted(await stored_ids(own)) == sorted(e["event_id"] for e in events)
