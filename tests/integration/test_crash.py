"""Exactly once under crashes: kill -9 of the worker at random moments and of the broker.

A workload is produced without keys (so every customer's events spread over the ingest
partitions and repeats arrive in other partitions) into two stacks on one broker of this
test's own: a clean one whose worker runs undisturbed, and one whose worker is killed
with SIGKILL several times while the workload arrives, with the broker killed and
restarted once in between. Afterwards every table of both stacks is the same, row for
row, and every consumer group has caught up.

`JOURNEY_CRASH_ROUNDS` (default 3) sets how many kills; `JOURNEY_CRASH_CUSTOMERS`
(default 150) the workload's size; the fault suite runs it bigger.
"""

from __future__ import annotations

import asyncio
import os
import random
import signal
import time
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from journey.replay import projection_lags
from journey.settings import Settings
from journey.stack import KafkaStack
from journey.worker import WorkerProcess, settings_env, worker_status
from journey.workload import Workload, generate
from projections.clickhouse.runner import run_query
from streams.kafka import make_producer
from tests.ports import free_port

pytestmark = pytest.mark.integration

ROUNDS = int(os.environ.get("JOURNEY_CRASH_ROUNDS", "3"))
CUSTOMERS = int(os.environ.get("JOURNEY_CRASH_CUSTOMERS", "150"))

# Every column but the ones that record *when* or *in which order* a row was written.
SNAPSHOTS = {
    "touchpoints": "SELECT * EXCEPT (inserted_at, received_at) FROM touchpoints FINAL "
    "ORDER BY event_id",
    "journeys": "SELECT * EXCEPT (updated_at) FROM journeys FINAL ORDER BY customer_key",
    "journey_transitions": "SELECT * EXCEPT (version) FROM journey_transitions FINAL "
    "ORDER BY customer_key, occurred_at, transition_id",
    "identities": "SELECT * FROM identities FINAL ORDER BY anonymous_id",
    "friction": "SELECT * EXCEPT (detected_at, inserted_at, version) FROM friction FINAL "
    "ORDER BY customer_key, friction_id",
}


@pytest.fixture(scope="module")
def broker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Settings]:
    """A broker of this module's own: it is killed mid-test, the session's is not."""
    home = tmp_path_factory.mktemp("crash-broker")
    settings = Settings(home=home, kafka_port=free_port(), kafka_controller_port=free_port())
    stack = KafkaStack(settings)
    stack.up()
    yield settings
    stack.down()


def stack_settings(broker: Settings, root: Path, name: str) -> Settings:
    home = root / name
    run = f"{name}-{uuid.uuid4().hex[:6]}"
    return broker.model_copy(update={
        "home": home, "kafka_bootstrap": broker.bootstrap,
        "clickhouse_dsn": f"chdb://{home / 'warehouse'}", "app_id": run,
        "worker_port": free_port(), "topic_ingest": f"{run}.ingest",
        "topic_touchpoints": f"{run}.touchpoints", "topic_dlq": f"{run}.dlq",
        "topic_friction": f"{run}.friction", "topic_alerts_dlq": f"{run}.alerts-dlq",
        "validator_batch_size": 200, "sink_batch_seconds": 0.3,
    })


async def produce(settings: Settings, values: list[bytes]) -> None:
    producer = make_producer(settings.bootstrap)
    await producer.start()
    try:
        for value in values:
            await producer.send(settings.topic_ingest, value)  # no key, as kcat sends
        await producer.flush()
    finally:
        await producer.stop()


async def caught_up(settings: Settings, stored: int, timeout: float) -> float:
    """Seconds until the store holds `stored` touchpoints and every group's lag is 0."""
    began = time.monotonic()
    quiet = 0
    while quiet < 2:
        if time.monotonic() - began > timeout:
            lags = await projection_lags(settings)
            raise AssertionError(f"not caught up within {timeout:.0f}s: lags {lags}")
        status = worker_status(settings)
        lags = await projection_lags(settings)
        done = status is not None and status["counters"]["valid"] >= 0 and not any(
            lags.values()) and count(settings, "touchpoints") == stored
        quiet = quiet + 1 if done else 0
        await asyncio.sleep(1.0)
    return time.monotonic() - began


def count(settings: Settings, table: str) -> int:
    return int(run_query(settings, f"SELECT count() FROM {table} FINAL")[1][0][0])


def snapshot(settings: Settings) -> dict[str, list[Any]]:
    return {name: run_query(settings, sql)[1] for name, sql in SNAPSHOTS.items()}


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


def kill(worker: WorkerProcess) -> None:
    worker.proc.send_signal(signal.SIGKILL)
    worker.proc.wait(10)


async def restart_and_feed(worker: WorkerProcess, settings: Settings, chunk: list[bytes],
                           timeout: float) -> float:
    """Restart the worker and send it `chunk`: seconds from the restart until its stages
    handle input again (the backlog the kill left, or the new chunk)."""
    began = time.monotonic()
    worker.start()
    await produce(settings, chunk)
    while time.monotonic() - began < timeout:
        status = worker_status(settings)
        if status is not None and status["counters"]["read"] > 0:
            return time.monotonic() - began
        await asyncio.sleep(0.2)
    raise AssertionError(f"the restarted worker read nothing within {timeout:.0f}s")


def workload() -> Workload:
    return generate(CUSTOMERS, 31, start=datetime.now(UTC) - timedelta(days=30))


async def test_kill_9_of_worker_and_broker_changes_no_table(
        broker: Settings, tmp_path: Path) -> None:
    work = workload()
    values = [m.value for m in work.messages]
    expected = work.expectation.valid
    clean, crashed = stack_settings(broker, tmp_path, "clean"), stack_settings(
        broker, tmp_path, "crashed")

    reference = WorkerProcess(clean, env=settings_env(clean))
    reference.start()
    try:
        await produce(clean, values)
        await caught_up(clean, expected, 300)
    finally:
        reference.stop()
    want = snapshot(clean)

    rng = random.Random(ROUNDS)
    # in send order, as the clean stack got them: the same touchpoints in the same order,
    # only with kills in between
    size = -(-len(values) // (ROUNDS + 1))
    chunks = [values[i:i + size] for i in range(0, len(values), size)]
    worker = WorkerProcess(crashed, env=settings_env(crashed))
    worker.start()
    restarts: list[float] = []
    try:
        await produce(crashed, chunks[0])
        for n in range(ROUNDS):
            await asyncio.sleep(rng.uniform(0.5, 4.0))  # mid-stream, at a random moment
            kill(worker)
            if n == ROUNDS // 2:
                kill_broker(broker)
                KafkaStack(broker).up()
            restarts.append(await restart_and_feed(worker, crashed, chunks[n + 1], 120))
        recovered = await caught_up(crashed, expected, 300)
        got = snapshot(crashed)
    finally:
        worker.stop()
    print(f"\ncrash test: {ROUNDS} kill -9 of the worker, one of the broker; restarts read "
          f"again after {', '.join(f'{s:.1f}s' for s in restarts)}; caught up "
          f"{recovered:.1f}s after the last input")
    for name in SNAPSHOTS:
        if got[name] != want[name]:
            extra = [r for r in got[name] if r not in want[name]]
            missing = [r for r in want[name] if r not in got[name]]
            print(f"{name}: {len(extra)} extra, {len(missing)} missing")
            for r in extra[:8]:
                print("  extra  ", r[:6])
            for r in missing[:8]:
                print("  missing", r[:6])
        assert len(got[name]) == len(want[name]), (name, len(got[name]), len(want[name]))
        assert got[name] == want[name], f"{name} differs from the clean run"
    assert max(restarts) < 45, f"a restarted worker took {max(restarts):.1f}s to read again"
