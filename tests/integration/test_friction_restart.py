"""The friction detector across restarts: each friction exactly once on the topic."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any

import orjson
import pytest

from journey.friction_plan import PUSH_AFTER_DAYS, PlantedFriction, plant_friction
from journey.settings import Settings
from projections.friction import FrictionConfig
from streams.friction import FrictionDetector, friction_group
from streams.kafka import create_topics, group_lag, make_producer
from streams.metrics import Metrics
from streams.topics import topics
from tests.integration.helpers import read_topic

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


class StopAt(Metrics):
    """Counters that call `then` as soon as the detector has committed `at` touchpoints:
    from inside the detector's own task, so the stop lands mid-stream, not after it."""

    def __init__(self, at: int) -> None:
        super().__init__()
        self.at = at
        self.then: Callable[[], None] | None = None

    def __setattr__(self, name: str, value: Any) -> None:
        super().__setattr__(name, value)
        then = getattr(self, "then", None)
        if name == "friction_read" and then is not None and value >= self.at:
            self.then = None
            then()


async def run_until(settings: Settings, done: int, *, crash: bool) -> int:
    """Run a detector until it has committed `done` touchpoints; then stop it gracefully
    or cancel it as a crash would (its next transaction is never committed)."""
    metrics = StopAt(done)
    detector = FrictionDetector(settings, topics(settings), metrics, FrictionConfig())
    task = asyncio.create_task(detector.run())

    def crash_now() -> None:
        task.cancel()

    metrics.then = crash_now if crash else detector.stop
    if crash:
        with pytest.raises(asyncio.CancelledError):
            await asyncio.wait_for(task, 60)
    else:
        await asyncio.wait_for(task, 60)
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

    records = [orjson.loads(r.value) for r in await read_topic(own, own.topic_friction)]
    # Friction a partition's watermark fired before its customer's answer arrived is
    # retracted later: a friction id may appear more than once, but never twice in a row
    # with the same content (that would be a repeat the restart caused).
    last: dict[str, dict[str, Any]] = {}
    for record in records:
        content = {k: v for k, v in record.items() if k != "detected_at"}
        assert last.get(record["friction_id"]) != content, f"published twice: {content}"
        last[record["friction_id"]] = content
    standing = {fid for fid, r in last.items() if r["status"] == "detected"}
    assert standing == planted.ids()
