"""kill -9 of the worker at random moments, several times, and of the broker once, while
the workload arrives without keys: nothing lost, nothing doubled, every table as in the
clean run, every group caught up."""

from __future__ import annotations

import asyncio
import random
import time
from pathlib import Path

import pytest

from journey.settings import Settings
from journey.stack import KafkaStack
from journey.worker import WorkerProcess, settings_env
from tests.faults.harness import (
    ROUNDS,
    Reference,
    caught_up,
    chunks,
    judge,
    kill,
    produce,
    restart_and_feed,
    stack_settings,
)
from tests.integration.helpers import kill_broker

pytestmark = pytest.mark.integration


async def test_kill_9_of_the_worker_several_times(
        broker: Settings, reference: Reference, tmp_path: Path) -> None:
    crashed = stack_settings(broker, tmp_path, "worker-kill")
    pieces = chunks([m.value for m in reference.work.messages], ROUNDS + 1)
    rng = random.Random(ROUNDS)
    worker = WorkerProcess(crashed, env=settings_env(crashed))
    worker.start()
    restarts = []
    try:
        await produce(crashed, pieces[0])
        for piece in pieces[1:]:
            await asyncio.sleep(rng.uniform(0.5, 4.0))  # mid-stream, at a random moment
            kill(worker)
            restarts.append(await restart_and_feed(worker, crashed, piece, 120))
        verdict = await judge("worker-kill", crashed, reference,
                              await caught_up(crashed, reference.work.expectation.valid))
    finally:
        worker.stop()
    print(f"\nrestarted workers read again after {', '.join(f'{s:.1f}s' for s in restarts)}")
    verdict.check()


async def test_kill_9_of_the_broker_and_a_restart(
        broker: Settings, reference: Reference, tmp_path: Path) -> None:
    hit = stack_settings(broker, tmp_path, "broker-kill")
    first, second = chunks([m.value for m in reference.work.messages], 2)
    worker = WorkerProcess(hit, env=settings_env(hit))
    worker.start()
    try:
        await produce(hit, first)
        await asyncio.sleep(2.0)  # the worker is busy with the first half
        kill_broker(broker)
        down = time.monotonic()
        await asyncio.sleep(5.0)  # the worker meets a dead broker
        KafkaStack(broker).up()
        print(f"\nbroker back after {time.monotonic() - down:.1f}s")
        await produce(hit, second)
        verdict = await judge("broker-kill", hit, reference,
                              await caught_up(hit, reference.work.expectation.valid))
    finally:
        worker.stop()
    verdict.check()

