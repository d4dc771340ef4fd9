"""One real Kafka broker and one worker per test session, started by the project's stack manager.

Nothing here skips: without Java, Maven or a broker that starts, the session fails.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from journey.settings import Settings
from journey.stack import KafkaStack, ensure_kafka
from journey.worker import WorkerProcess, settings_env
from projections.clickhouse.client import Warehouse, connect
from projections.clickhouse.tables import FRICTION, TOUCHPOINTS, migrate
from tests.ports import free_port

pytestmark = pytest.mark.integration



@pytest.fixture(scope="session")
def stack_home(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("journey-home")


@pytest.fixture(scope="session")
def settings(stack_home: Path) -> Settings:
    external = os.environ.get("JOURNEY_TEST_KAFKA_BOOTSTRAP")
    run = uuid.uuid4().hex[:8]
    return Settings(
        home=stack_home,
        kafka_bootstrap=external,
        clickhouse_dsn=f"chdb://{stack_home / 'warehouse'}",
        app_id=f"journey-it-{run}",
        topic_ingest=f"it-{run}.touchpoints.ingest",
        topic_touchpoints=f"it-{run}.touchpoints",
        topic_dlq=f"it-{run}.touchpoints.dlq",
        topic_friction=f"it-{run}.friction",
        topic_alerts_dlq=f"it-{run}.friction.alerts.dlq",
        sink_batch_seconds=0.3,
        # from the OS: a developer's own stack and other test sessions keep running
        kafka_port=free_port(),
        kafka_controller_port=free_port(),
        worker_port=free_port(),
    )


@pytest.fixture(scope="session")
def kafka(settings: Settings) -> Iterator[str]:
    bootstrap = ensure_kafka(settings)
    yield bootstrap
    if settings.uses_local_stack:
        KafkaStack(settings).down()


@pytest.fixture(scope="session")
def worker(kafka: str, settings: Settings) -> Iterator[WorkerProcess]:
    proc = WorkerProcess(settings, env=settings_env(settings))
    proc.start()
    yield proc
    proc.stop()


@pytest.fixture(scope="module")
def warehouse_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("warehouse")


@pytest.fixture(scope="module")
def opened(warehouse_dir: Path) -> Iterator[Warehouse]:
    # chDB hosts one folder per process: each module opens its own and closes it at the
    # end, before the next module opens another.
    warehouse = connect(f"chdb://{warehouse_dir}")
    try:
        migrate(warehouse)
        yield warehouse
    finally:
        warehouse.close()


@pytest.fixture
def warehouse(opened: Warehouse) -> Warehouse:
    """The module's warehouse with empty touchpoints and friction tables."""
    opened.command(f"TRUNCATE TABLE {TOUCHPOINTS}")
    opened.command(f"TRUNCATE TABLE {FRICTION}")
    return opened
