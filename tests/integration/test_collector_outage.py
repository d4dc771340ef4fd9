"""The broker dies under the collector: requests in flight answer 503 with Retry-After, and
a client that sends them again once it is back loses nothing."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import Iterator

import aiohttp
import orjson
import pytest

from journey.collector.run import CollectorProcess
from journey.settings import Settings
from journey.stack import KafkaStack
from journey.worker import settings_env
from tests.integration.helpers import kill_broker, own_broker, read_topic, touchpoint
from tests.ports import free_port

pytestmark = pytest.mark.integration

BATCHES = 40
BATCH = 25


@pytest.fixture(scope="module")
def broker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Settings]:
    """A broker of this module's own: it is killed mid-test, the session's is not."""
    run = uuid.uuid4().hex[:6]
    yield from own_broker(
        tmp_path_factory.mktemp("outage-broker"), topic_ingest=f"outage-{run}.ingest",
        topic_dlq=f"outage-{run}.dlq", collector_port=free_port(), collector_send_timeout=3.0,
        collector_retry_after=1)


async def send_until_acknowledged(http: aiohttp.ClientSession, url: str, body: bytes,
                                  statuses: list[int], deadline: float) -> None:
    """What a well-behaved client does: on 503, wait Retry-After and send the same again."""
    while True:
        try:
            async with http.post(url, data=body) as r:
                statuses.append(r.status)
                if r.status == 200:
                    assert (await r.json())["accepted"] == BATCH
                    return
                assert r.status == 503, r.status
                assert (await r.json())["reason"] == "broker_unavailable"
                wait = int(r.headers["Retry-After"])
        except aiohttp.ClientError:
            statuses.append(0)
            wait = 1
        if time.monotonic() > deadline:
            raise AssertionError(f"not acknowledged before the deadline: {statuses[-5:]}")
        await asyncio.sleep(wait)


async def test_broker_killed_during_requests_gives_503_and_loses_nothing(
        broker: Settings) -> None:
    proc = CollectorProcess(broker, settings_env(broker))
    proc.start()
    try:
        url = f"{proc.url}/v1/touchpoints"
        batches = [[touchpoint(customer_id=f"c-{i % 13}") for _ in range(BATCH)]
                   for i in range(BATCHES)]
        statuses: list[int] = []
        deadline = time.monotonic() + 240
        timeout = aiohttp.ClientTimeout(total=30)
        async with aiohttp.ClientSession(timeout=timeout) as http:

            async def client() -> None:
                for n, batch in enumerate(batches):
                    await send_until_acknowledged(http, url, orjson.dumps(batch), statuses,
                                                  deadline)
                    if n == BATCHES // 4:
                        killed.set()

            killed = asyncio.Event()
            sending = asyncio.create_task(client())
            await killed.wait()
            await asyncio.to_thread(kill_broker, broker)
            await asyncio.sleep(4)  # requests keep coming while it is down
            await asyncio.to_thread(KafkaStack(broker).up)
            await sending
        assert 503 in statuses, statuses
        sent = {e["event_id"] for batch in batches for e in batch}
        got = [orjson.loads(r.value)["event_id"]
               for r in await read_topic(broker, broker.topic_ingest, timeout=30)]
        assert set(got) == sent  # nothing lost; repeats are the dedup stage's to drop
        print(f"\noutage: {statuses.count(503)} answers 503, {len(got) - len(sent)} records "
              "sent twice")
    finally:
        proc.stop()
