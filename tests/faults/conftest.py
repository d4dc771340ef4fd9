"""The fault suite's broker (it gets killed, so not the integration tests' one) and the
clean reference run every fault is compared with. Nothing here skips."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator

import pytest

from journey.settings import Settings
from journey.worker import WorkerProcess, settings_env
from tests.faults.harness import (
    Reference,
    caught_up,
    dead_letters,
    produce,
    snapshot,
    stack_settings,
    workload,
)
from tests.integration.helpers import own_broker

pytestmark = pytest.mark.integration


@pytest.fixture(scope="session")
def broker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Settings]:
    yield from own_broker(tmp_path_factory.mktemp("fault-broker"))


@pytest.fixture(scope="session")
async def reference(broker: Settings, tmp_path_factory: pytest.TempPathFactory
                    ) -> AsyncIterator[Reference]:
    """The workload through an undisturbed worker, in send order."""
    work = workload()
    clean = stack_settings(broker, tmp_path_factory.mktemp("fault-clean"), "clean")
    worker = WorkerProcess(clean, env=settings_env(clean))
    worker.start()
    try:
        await produce(clean, [m.value for m in work.messages])
        assert await caught_up(clean, work.expectation.valid) is not None, \
            "the clean run did not catch up"
        tables = snapshot(clean)
        dlq = await dead_letters(clean)
    finally:
        worker.stop()
    assert sum(dlq.values()) == work.expectation.dlq
    yield Reference(work, tables, dlq)
