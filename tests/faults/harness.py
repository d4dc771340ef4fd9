"""The fault suite's harness: stacks on a broker of the suite's own, the workload, a clean
reference run, and the comparison that every fault test ends with.

A fault test feeds the workload to a stack of its own while it does harm (kills, an
outage), waits until the stack has caught up, and compares every table and the DLQ with
the clean run of the same workload. It prints one summary line:

    fault worker-kill: lost 0, doubled 0, differing 0, stuck 0, dlq ok, recovered in 8.5s

Sizes come from the environment, so that CI runs a short version and `./dev faults` the
full one: JOURNEY_FAULT_ROUNDS (kills, default 3), JOURNEY_FAULT_CUSTOMERS (workload
size, default 150), JOURNEY_FAULT_OUTAGE_SECONDS (the warehouse outage, default 60).
"""

from __future__ import annotations

import asyncio
import os
import signal
import time
import uuid
from collections import Counter
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import orjson

from journey.replay import projection_lags
from journey.settings import Settings
from journey.worker import WorkerProcess, worker_status
from journey.workload import Workload, generate
from projections.clickhouse.runner import run_query
from schemas.dead_letter import DeadLetter
from streams.kafka import make_producer
from tests.integration.helpers import read_topic
from tests.ports import free_port

ROUNDS = int(os.environ.get("JOURNEY_FAULT_ROUNDS", os.environ.get("JOURNEY_CRASH_ROUNDS", "3")))
CUSTOMERS = int(os.environ.get("JOURNEY_FAULT_CUSTOMERS",
                               os.environ.get("JOURNEY_CRASH_CUSTOMERS", "150")))
OUTAGE_SECONDS = float(os.environ.get("JOURNEY_FAULT_OUTAGE_SECONDS", "60"))
CATCH_UP_SECONDS = 300.0

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


def workload() -> Workload:
    return generate(CUSTOMERS, 31, start=datetime.now(UTC) - timedelta(days=30))


def stack_settings(broker: Settings, root: Path, name: str, *,
                   warehouse: Path | None = None) -> Settings:
    """A stack of its own (home, warehouse, topics, groups, port) on the suite's broker."""
    home = root / name
    run = f"{name}-{uuid.uuid4().hex[:6]}"
    store = warehouse if warehouse is not None else home / "warehouse"
    return broker.model_copy(update={
        "home": home, "kafka_bootstrap": broker.bootstrap,
        "clickhouse_dsn": f"chdb://{store}", "app_id": run,
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


def chunks(values: list[bytes], parts: int) -> list[list[bytes]]:
    """The workload in send order, cut into `parts` contiguous pieces."""
    size = -(-len(values) // parts)
    return [values[i:i + size] for i in range(0, len(values), size)]


def count(settings: Settings, table: str) -> int:
    return int(run_query(settings, f"SELECT count() FROM {table} FINAL")[1][0][0])


async def caught_up(settings: Settings, stored: int, timeout: float = CATCH_UP_SECONDS
                    ) -> float | None:
    """Seconds until the store holds `stored` touchpoints and every group's lag is 0 (twice
    in a row); None if that did not happen within `timeout`."""
    began = time.monotonic()
    quiet = 0
    while quiet < 2:
        if time.monotonic() - began > timeout:
            return None
        try:
            done = worker_status(settings) is not None and not any(
                (await projection_lags(settings)).values()) and count(
                settings, "touchpoints") == stored
        except Exception:  # the stack is still recovering: ask again
            done = False
        quiet = quiet + 1 if done else 0
        await asyncio.sleep(1.0)
    return time.monotonic() - began


def snapshot(settings: Settings) -> dict[str, list[Any]]:
    return {name: run_query(settings, sql)[1] for name, sql in SNAPSHOTS.items()}


async def dead_letters(settings: Settings) -> Counter[tuple[str, bytes]]:
    """The DLQ as (reason, original bytes), each as often as it is there."""
    out: Counter[tuple[str, bytes]] = Counter()
    for record in await read_topic(settings, settings.topic_dlq):
        letter = DeadLetter.model_validate_json(record.value)
        out[(letter.error.reason, letter.raw_bytes())] += 1
    return out


async def event_store_copies(settings: Settings) -> int:
    """Records on `touchpoints` beyond one per event id: what dedup let through twice."""
    ids = Counter(orjson.loads(r.value)["event_id"]
                  for r in await read_topic(settings, settings.topic_touchpoints))
    return sum(n - 1 for n in ids.values())


@dataclass(frozen=True, slots=True)
class Reference:
    """The clean run: the tables and the DLQ a fault must not change."""

    work: Workload
    tables: dict[str, list[Any]]
    dlq: Counter[tuple[str, bytes]]


@dataclass(frozen=True, slots=True)
class Verdict:
    fault: str
    lost: int
    doubled: int
    differing: dict[str, int]
    stuck: int
    dlq_same: bool
    recovered: float | None

    def line(self) -> str:
        recovered = "never" if self.recovered is None else f"in {self.recovered:.1f}s"
        tables = ", ".join(f"{t} {n}" for t, n in self.differing.items() if n) or "none"
        return (f"fault {self.fault}: lost {self.lost}, doubled {self.doubled}, differing "
                f"rows {sum(self.differing.values())} ({tables}), stuck {self.stuck}, dlq "
                f"{'same' if self.dlq_same else 'DIFFERENT'}, recovered {recovered}")

    def check(self) -> None:
        print(f"\n{self.line()}")
        assert self.recovered is not None, self.line()
        assert (self.lost, self.doubled, self.stuck) == (0, 0, 0), self.line()
        assert not any(self.differing.values()), self.line()
        assert self.dlq_same, self.line()


async def judge(fault: str, settings: Settings, reference: Reference,
                recovered: float | None) -> Verdict:
    """Compare a stack that went through a fault with the clean run."""
    got = snapshot(settings)
    stored, want = _rows(got["touchpoints"]), _rows(reference.tables["touchpoints"])
    lost = sum((want - stored).values())
    doubled = await event_store_copies(settings)
    differing = {}
    for name, rows_want in reference.tables.items():
        a, b = _rows(got[name]), _rows(rows_want)
        differing[name] = sum(((a - b) + (b - a)).values())
    lags = await projection_lags(settings)
    stuck = sum(1 for lag in lags.values() if lag)
    return Verdict(fault, lost, doubled, differing, stuck,
                   await dead_letters(settings) == reference.dlq, recovered)


def _rows(rows: list[Any]) -> Counter[bytes]:
    # Rows hold maps and arrays: compare them as canonical JSON.
    return Counter(orjson.dumps(list(r), default=str, option=orjson.OPT_SORT_KEYS
                                | orjson.OPT_NON_STR_KEYS) for r in rows)


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
