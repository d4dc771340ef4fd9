"""The Faust app: topics, tables, the validator, the ClickHouse sink and the HTTP API."""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass, field
from typing import Any

import faust
from faust.app.base import BootStrategy

from projections.friction import FrictionConfig
from streams.dedup import dedup_group, install_dedup
from streams.friction import FrictionDetector, friction_group, install_friction
from streams.health import ConsumerGroup, GroupProgress, HealthMonitor, worker_checks
from streams.journeys import install_journeys, journey_group
from streams.kafka import OffsetProbe, create_topics
from streams.metrics import Metrics
from streams.settings import Settings
from streams.sink import ClickHouseSink
from streams.topics import Topics, topics
from streams.validator import install_validator, validator_group
from streams.web import install_web

log = logging.getLogger(__name__)


@dataclass
class Engine:
    """The app and what its agents share, for the worker and the tests."""

    app: faust.App
    settings: Settings
    topics: Topics
    metrics: Metrics
    warehouse: Any = None
    sinks: list[ClickHouseSink] = field(default_factory=list)
    friction: FrictionDetector | None = None
    friction_config: FrictionConfig = field(default_factory=FrictionConfig)
    # the consumer groups this worker runs, and the checks behind /health
    groups: list[ConsumerGroup] = field(default_factory=list)
    health: HealthMonitor = field(
        default_factory=lambda: HealthMonitor([], interval=5.0, timeout=5.0))


class _WebAndTasks(BootStrategy):
    """Faust starts the web server and the app's tasks, no Kafka client of its own: every
    stage runs its own consumer and transactional producer (streams/batch.py)."""

    enable_kafka = False


class EngineApp(faust.App):
    BootStrategy = _WebAndTasks


def faust_broker(bootstrap: str) -> str:
    return ";".join(f"kafka://{host.strip()}" for host in bootstrap.split(",") if host.strip())


def create_engine(settings: Settings, friction: FrictionConfig) -> Engine:
    """The worker's app; `friction` is the rules configuration its detectors and its
    KPI endpoint use."""
    from projections.clickhouse.client import connect
    from projections.clickhouse.tables import (
        FRICTION,
        IDENTITIES,
        JOURNEYS,
        TOUCHPOINTS,
        TRANSITIONS,
        migrate,
    )
    from projections.clickhouse.writer import (
        insert_friction_json,
        insert_records_json,
        insert_touchpoints_json,
    )

    settings.worker_dir.mkdir(parents=True, exist_ok=True)
    app = EngineApp(
        settings.projection_id,
        broker=faust_broker(settings.bootstrap),
        # Faust hosts the web server and the tasks; the stages keep their own state
        # (streams/store.py), so Faust has no tables and needs no store of its own.
        datadir=str(settings.worker_dir / settings.projection_id),
        key_serializer="raw",
        value_serializer="raw",
        topic_partitions=settings.topic_partitions,
        topic_disable_leader=True,
        web_enabled=True,
        web_bind=settings.worker_host,
        web_host=settings.worker_host,
        web_port=settings.worker_port,
        producer_acks=-1,
    )
    spec = topics(settings)
    engine = Engine(app=app, settings=settings, topics=spec, metrics=Metrics(),
                    friction_config=friction)

    install_validator(app, settings, spec, engine.metrics)
    install_dedup(app, settings, spec, engine.metrics)
    if settings.journeys_enabled:
        install_journeys(app, settings, spec, engine.metrics)
    if settings.friction_enabled:
        engine.friction = install_friction(app, settings, spec, engine.metrics, friction)

    sinks = [
        (spec.touchpoints.name, TOUCHPOINTS), (spec.journey_states.name, JOURNEYS),
        (spec.journey_transitions.name, TRANSITIONS), (spec.identity_links.name, IDENTITIES),
        (spec.friction.name, FRICTION),
    ]
    engine.groups = [
        ConsumerGroup(validator_group(settings), (spec.ingest.name,)),
        ConsumerGroup(dedup_group(settings), (spec.validated.name,)),
    ]
    if settings.journeys_enabled:
        engine.groups.append(ConsumerGroup(
            journey_group(settings), (spec.touchpoints.name, spec.journey_inbox.name)))
    if settings.friction_enabled:
        engine.groups.append(ConsumerGroup(friction_group(settings), (spec.touchpoints.name,)))
    if settings.sink_enabled:
        engine.groups += [ConsumerGroup(sink_group(settings, table), (topic,))
                          for topic, table in sinks]

    def sink_for(topic: str, table: str) -> ClickHouseSink:
        def insert(values: Any) -> int:
            if table == TOUCHPOINTS:
                return insert_touchpoints_json(engine.warehouse, values)
            if table == FRICTION:
                return insert_friction_json(engine.warehouse, values)
            return insert_records_json(engine.warehouse, table, values)

        return ClickHouseSink(
            settings.bootstrap, topic, sink_group(settings, table), insert,
            engine.metrics, batch_size=settings.sink_batch_size,
            batch_seconds=settings.sink_batch_seconds, table=table,
        )

    @app.task  # type: ignore[untyped-decorator]
    async def start_sinks() -> None:
        warehouse = await asyncio.to_thread(connect, settings.warehouse_dsn)
        await asyncio.to_thread(migrate, warehouse)
        # Published only once migrated: /health reports ready from this moment on.
        engine.warehouse = warehouse
        if not settings.sink_enabled:
            return
        engine.sinks = [sink_for(topic, table) for topic, table in sinks]
        await asyncio.gather(*(sink.run() for sink in engine.sinks))

    # Health: each check bounded by the same timeout as the probe's calls.
    timeout = min(10.0, max(1.0, 2 * settings.health_interval_seconds))
    probe = OffsetProbe(settings.bootstrap, timeout=timeout)

    async def ping(warehouse: Any) -> None:
        await asyncio.to_thread(warehouse.query, "SELECT 1")

    engine.health = HealthMonitor(
        worker_checks(warehouse=lambda: engine.warehouse, ping=ping, kafka=probe,
                      bootstrap=settings.bootstrap, groups=engine.groups,
                      progress=GroupProgress(settings.health_stuck_seconds)),
        interval=settings.health_interval_seconds, timeout=timeout)

    @app.task  # type: ignore[untyped-decorator]
    async def check_health() -> None:
        try:
            await engine.health.run()
        finally:
            await probe.stop()

    @app.on_before_shutdown.connect
    async def stop_sinks(*_: Any, **__: Any) -> None:
        engine.health.stop()
        for sink in engine.sinks:
            sink.stop()

    install_web(app, engine)
    return engine


def sink_group(settings: Settings, table: str) -> str:
    """The consumer group of the ClickHouse sink of `table`, per generation."""
    return f"{settings.projection_id}-sink-{table}"


async def prepare_topics(settings: Settings) -> list[str]:
    """Create the declared topics before any agent can auto-create them with defaults."""
    return await create_topics(settings.bootstrap, topics(settings).all())
