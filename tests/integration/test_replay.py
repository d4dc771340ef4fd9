"""Replay: rebuilding every projection from offset 0 gives the tables live processing gave."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from journey.replay import projection_lags
from journey.sdk import TouchpointProducer
from journey.settings import Settings
from journey.worker import WorkerProcess, settings_env
from journey.workload import generate
from projections.clickhouse.runner import run_query
from tests.integration.helpers import wait_for

pytestmark = pytest.mark.integration

# Every column but the ones that record *when* or *in which order* a row was written.
SNAPSHOTS = {
    "touchpoints": "SELECT * EXCEPT (inserted_at) FROM touchpoints FINAL ORDER BY event_id",
    "journeys": "SELECT * EXCEPT (updated_at, version) FROM journeys FINAL ORDER BY customer_key",
    "journey_transitions": "SELECT * EXCEPT (version) FROM journey_transitions FINAL "
    "ORDER BY customer_key, occurred_at, transition_id",
    "identities": "SELECT * EXCEPT (version) FROM identities FINAL ORDER BY anonymous_id",
    "friction": "SELECT * EXCEPT (detected_at, inserted_at, version) FROM friction FINAL "
    "ORDER BY customer_key, friction_id",
}


@pytest.fixture(scope="module")
def own(kafka: str, settings: Settings, tmp_path_factory: pytest.TempPathFactory) -> Settings:
    """A stack of its own on the shared broker: the replay stops and starts workers."""
    home: Path = tmp_path_factory.mktemp("replay-home")
    run = uuid.uuid4().hex[:8]
    return settings.model_copy(
        update={
            "home": home,
            "clickhouse_dsn": f"chdb://{home / 'warehouse'}",
            "app_id": f"replay-{run}",
            "worker_port": settings.worker_port + 1,
            "topic_ingest": f"replay-{run}.ingest",
            "topic_touchpoints": f"replay-{run}.touchpoints",
            "topic_dlq": f"replay-{run}.dlq",
            "topic_friction": f"replay-{run}.friction",
        }
    )


@pytest.fixture(scope="module")
def live_worker(own: Settings) -> Iterator[WorkerProcess]:
    worker = WorkerProcess(own, env=settings_env(own))
    worker.start()
    yield worker
    worker.stop()


def snapshot(settings: Settings) -> dict[str, list[Any]]:
    return {name: run_query(settings, sql)[1] for name, sql in SNAPSHOTS.items()}


async def caught_up(settings: Settings) -> None:
    """Until every projection consumer group has committed everything, twice in a row."""
    quiet = 0
    while quiet < 2:
        lags = await projection_lags(settings.model_copy(update={"generation": 0}))
        quiet = quiet + 1 if not any(lags.values()) else 0
        await asyncio.sleep(1.0)


async def test_replay_rebuilds_the_same_tables(own: Settings, live_worker: WorkerProcess) -> None:
    workload = generate(150, 3, start=datetime.now(UTC) - timedelta(days=30))
    async with TouchpointProducer(own) as producer:
        for message in workload.messages:
            await producer.send_raw(message.value, key=message.key)
    expected_rows = workload.expectation.valid

    def stored() -> bool:
        rows = run_query(own, "SELECT count() FROM touchpoints FINAL")[1]
        return int(rows[0][0]) == expected_rows

    await wait_for(stored, 120, "the live touchpoints")
    await asyncio.wait_for(caught_up(own), 120)
    live = snapshot(own)
    assert len(live["journeys"]) > 50
    assert len(live["journey_transitions"]) > 50
    assert live["identities"], "the workload links some anonymous ids"
    assert len(live["friction"]) > 20, "the workload's service cases and checkouts hold friction"
    live_worker.stop()

    env = {k: v for k, v in os.environ.items() if not k.startswith("JOURNEY_")}
    cli = subprocess.run(
        [sys.executable, "-m", "journey", "replay"],
        env=env | settings_env(own),
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert cli.returncode == 0, cli.stderr + cli.stdout
    assert "generation 1" in cli.stdout

    replayed = snapshot(own)  # no worker runs now: read directly
    for name in SNAPSHOTS:
        assert len(replayed[name]) == len(live[name]), (name, len(replayed[name]), len(live[name]))
        assert replayed[name] == live[name], f"{name} differs after the replay"
    assert (own.home / "generation").read_text().strip() == "1"
    assert not (own.worker_dir / own.app_id).exists(), "generation 0's state is removed"
    assert (own.worker_dir / f"{own.app_id}-g1").is_dir()
