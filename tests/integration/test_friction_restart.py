"""The friction detector across restarts: each friction exactly once on the topic."""

from __future__ import annotations

import asyncio
import uuid
from datetime import UTC, datetime, timedelta

import orjson
import pytest

from journey.friction_plan import PUSH_AFTER_DAYS, PlantedFriction, plant_friction
from journey.settings import Settings
from projections.friction import FrictionConfig
from streams.friction import FrictionDetector, friction_group
from streams.kafka import create_topics, group_lag, make_producer
from streams.metrics import Metrics
from streams.topics import topics
from tests.integration.helpers import read_topic, wait_for

pytestmark = pytest.mark.integration


@pytest.fixture
def own(kafka: str, settings: Settings) -> Settings:
    run = uuid.uuid4().hex[:8]
    return settings.model_copy(update={
        "app_id": f"fr-restart-{run}",
        "topic_touchpoints": f"fr-restart-{run}.touchpoints",
        "topic_friction": f"fr-restart-{run}.friction",
        "validator_batch_size": 40,  # many small transactions to stop between
    })


async def fill(settings: Settings, planted: PlantedFriction) -> None:
    spec = topics(settings)
    await create_topics(settings.bootstrap, [spec.touchpoints, spec.friction,
                                             spec.friction_state])
    producer = make_producer(settings.bootstrap)
    await producer.start()
    try:
        for event in planted.events:
            await producer.send(settings.topic_touchpoints, value=orjson.dumps(event),
                                key=event["customer_id"].encode())
        await producer.flush()
    finally:
        await producer.stop()


async def run_until(settings: Settings, done: int, *, crash: bool) -> int:
    """Run a detector until it has committed `done` touchpoints; then stop it gracefully
    or cancel it as a crash would (its open transaction is never committed)."""
    metrics = Metrics()
    detector = FrictionDetector(settings, topics(settings), metrics, FrictionConfig())
    task = asyncio.create_task(detector.run())
    await wait_for(lambda: metrics.friction_read >= done or task.done(), 60,
                   f"{done} touchpoints through the detector")
    if crash:
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
    else:
        detector.stop()
        assert await detector.wait_stopped()
        await task
    return metrics.friction_read


@pytest.mark.parametrize("crash", [False, True], ids=["graceful", "crash"])
async def test_a_restarted_detector_publishes_each_friction_once(own: Settings,
                                                                  crash: bool) -> None:
    start = datetime.now(UTC).replace(microsecond=0) - timedelta(days=PUSH_AFTER_DAYS + 2)
    planted = plant_friction(start, rounds=3, partitions=own.topic_partitions, seed=5)
    await fill(own, planted)
    total = len(planted.events)

    first = await run_until(own, total // 3, crash=crash)
    assert 0 < first < total, "stopped mid-stream"
    second = await run_until(own, total - first if not crash else 1, crash=False)
    group = friction_group(own)

    async def lag() -> int:
        return await group_lag(own.bootstrap, group, own.topic_touchpoints,
                               own.topic_partitions)

    if await lag():
        # a crashed first run left its batch uncommitted: one more run picks it up
        metrics = Metrics()
        detector = FrictionDetector(own, topics(own), metrics, FrictionConfig())
        task = asyncio.create_task(detector.run())
        for _ in range(300):
            if not await lag():
                break
            await asyncio.sleep(0.2)
        detector.stop()
        assert await detector.wait_stopped()
        await task
    assert await lag() == 0
    assert second > 0

    records = await read_topic(own, own.topic_friction)
    ids = [orjson.loads(r.value)["friction_id"] for r in records]
    assert len(ids) == len(set(ids)), "no friction published twice"
    assert set(ids) == planted.ids()
