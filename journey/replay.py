"""`journey replay`: rebuild every projection from the event store, offset 0 on."""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass
from pathlib import Path

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from journey.errors import ConfigurationError, ServiceUnavailableError
from journey.output import make_console
from journey.settings import Settings
from journey.worker import WorkerProcess, settings_env, worker_status


def generation_file(settings: Settings) -> Path:
    return settings.home / "generation"


def with_generation(settings: Settings) -> Settings:
    """The settings with the projection generation the last replay recorded (0 if none)."""
    if settings.generation is not None:
        return settings
    path = generation_file(settings)
    generation = int(path.read_text().strip()) if path.exists() else 0
    return settings.model_copy(update={"generation": generation})


@dataclass(frozen=True)
class ReplayReport:
    generation: int
    events: int
    seconds: float
    rows: dict[str, int]

    @property
    def rate(self) -> float:
        return self.events / self.seconds if self.seconds else 0.0


async def projection_lags(settings: Settings) -> dict[str, int]:
    """How far each projection consumer group this worker runs is behind its input."""
    from streams.friction import friction_group
    from streams.journeys import journey_group
    from streams.kafka import group_lag
    from streams.topics import topics

    spec = topics(settings)
    n = settings.topic_partitions
    prefix = settings.projection_id
    pairs: dict[str, tuple[str, str]] = {}
    if settings.journeys_enabled:
        pairs["journeys"] = (journey_group(settings), spec.touchpoints.name)
        pairs["journey inbox"] = (journey_group(settings), spec.journey_inbox.name)
    if settings.friction_enabled:
        pairs["friction"] = (friction_group(settings), spec.touchpoints.name)
    if settings.sink_enabled:
        pairs["touchpoints sink"] = (f"{prefix}-sink-touchpoints", spec.touchpoints.name)
        pairs["journeys sink"] = (f"{prefix}-sink-journeys", spec.journey_states.name)
        pairs["transitions sink"] = (f"{prefix}-sink-journey_transitions",
                                     spec.journey_transitions.name)
        pairs["identities sink"] = (f"{prefix}-sink-identities", spec.identity_links.name)
        pairs["friction sink"] = (f"{prefix}-sink-friction", spec.friction.name)
    return {name: await group_lag(settings.bootstrap, group, topic, n)
            for name, (group, topic) in pairs.items()}


async def _store_size(settings: Settings) -> int:
    from streams.kafka import group_lag
    from streams.topics import topics

    # a group that never committed lags by the whole topic
    return await group_lag(settings.bootstrap, f"{settings.app_id}-size-probe",
                           topics(settings).touchpoints.name, settings.topic_partitions)


def _truncate(settings: Settings) -> None:
    from projections.clickhouse.client import connect
    from projections.clickhouse.tables import REBUILT_TABLES, migrate

    warehouse = connect(settings.warehouse_dsn)
    try:
        migrate(warehouse)
        for table in REBUILT_TABLES:
            warehouse.command(f"TRUNCATE TABLE IF EXISTS {table}")
    finally:
        warehouse.close()


def replay(settings: Settings, *, keep_running: bool = False, timeout: float = 3600.0,
           console: Console | None = None) -> ReplayReport:
    """Start a new projection generation and wait until it has caught up with the store."""
    console = console or make_console()
    if worker_status(settings, timeout=0.5) is not None:
        raise ConfigurationError(
            f"a worker runs at {settings.worker_url}: stop it first, a replay starts its own")
    current = with_generation(settings).generation or 0
    fresh = settings.model_copy(update={"generation": current + 1})
    total = asyncio.run(_store_size(fresh))
    with console.status("emptying the warehouse tables"):
        _truncate(fresh)
    generation_file(fresh).parent.mkdir(parents=True, exist_ok=True)
    generation_file(fresh).write_text(f"{fresh.generation}\n")
    console.print(f"generation {fresh.generation}: replaying {total:,} touchpoints")

    worker = WorkerProcess(fresh, env=settings_env(fresh))
    started = time.perf_counter()
    worker.start()
    try:
        done_polls = 0
        deadline = time.monotonic() + timeout
        columns = (TextColumn("{task.description:<18}"), BarColumn(), MofNCompleteColumn(),
                   TimeElapsedColumn())
        with Progress(*columns, console=console) as progress:
            task = progress.add_task("replaying", total=total)
            while done_polls < 2:
                lags = asyncio.run(projection_lags(fresh))
                progress.update(task, completed=max(0, total - lags["touchpoints sink"]))
                done_polls = done_polls + 1 if not any(lags.values()) else 0
                if time.monotonic() > deadline:
                    raise ServiceUnavailableError(
                        f"the replay did not catch up within {timeout:.0f}s (lags {lags}): "
                        f"see {worker.log_path}")
                time.sleep(1.0)
        seconds = time.perf_counter() - started
        rows = _row_counts(fresh)
        _forget_generations_before(fresh, console)
    finally:
        if not keep_running:
            worker.stop()
    return ReplayReport(fresh.generation or 0, total, seconds, rows)


def _forget_generations_before(settings: Settings, console: Console) -> None:
    """Delete the local state (RocksDB) of the generations the caught-up one replaces."""
    import shutil

    current = settings.generation or 0
    for generation in range(current):
        old = settings.model_copy(update={"generation": generation})
        folder = settings.worker_dir / old.projection_id
        if folder.is_dir():
            shutil.rmtree(folder, ignore_errors=True)
            console.print(f"removed the state of generation {generation} ({folder})")


def _row_counts(settings: Settings) -> dict[str, int]:
    from projections.clickhouse.runner import Runner
    from projections.clickhouse.sql import deduplicated
    from projections.clickhouse.tables import REBUILT_TABLES

    runner = Runner.for_settings(settings)
    counts = {}
    for table in REBUILT_TABLES:
        _, found = runner.run(f"SELECT count() FROM {deduplicated(table)}")
        counts[table] = int(found[0][0])
    return counts
