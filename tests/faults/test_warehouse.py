"""The warehouse unavailable for a minute while the workload arrives: with the embedded
engine, every insert fails because its disk is full (a tmpfs of the test's own, filled
up and freed again). The sinks retry with backoff, nothing is committed past what is
stored, and once the disk has room again every table equals the clean run."""

from __future__ import annotations

import asyncio
import contextlib
import os
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from journey.settings import Settings
from journey.worker import WorkerProcess, settings_env, worker_status
from tests.faults.harness import (
    OUTAGE_SECONDS,
    Reference,
    caught_up,
    chunks,
    judge,
    produce,
    stack_settings,
)

pytestmark = pytest.mark.integration

DISK_BYTES = 256 * 1024 * 1024


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    """A filesystem of its own for the warehouse, so that filling it harms nothing else.
    Needs the right to mount (root, as in CI): fails, never skips, without it."""
    mount = tmp_path / "disk"
    mount.mkdir()
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={DISK_BYTES}", "tmpfs",
                           str(mount)], capture_output=True, text=True)
    assert done.returncode == 0, f"cannot mount a tmpfs for the outage: {done.stderr}"
    try:
        yield mount
    finally:
        subprocess.run(["umount", "-l", str(mount)], check=False)


def fill(disk: Path) -> Path:
    """Take every free byte of the disk; the file is the outage."""
    filler = disk / "filler"
    chunk = b"\0" * (1 << 20)
    with open(filler, "wb") as out, contextlib.suppress(OSError):
        while True:
            out.write(chunk)
            out.flush()
    return filler


async def test_the_warehouse_failing_for_a_minute(
        broker: Settings, reference: Reference, tmp_path: Path, small_disk: Path) -> None:
    hit = stack_settings(broker, tmp_path, "warehouse-down", warehouse=small_disk / "wh")
    first, second = chunks([m.value for m in reference.work.messages], 2)
    worker = WorkerProcess(hit, env=settings_env(hit))
    worker.start()
    try:
        await produce(hit, first)
        await asyncio.sleep(2.0)
        filler = fill(small_disk)
        began = time.monotonic()
        await produce(hit, second)  # arrives while nothing can be stored
        await asyncio.sleep(max(0.0, OUTAGE_SECONDS - (time.monotonic() - began)))
        assert worker.proc.poll() is None, "the worker died during the outage"
        status = worker_status(hit)
        assert status is not None and status["counters"]["sink_failures"] > 0, \
            "no insert failed: the outage did not happen"
        print(f"\n{status['counters']['sink_failures']} inserts failed during the outage; "
              f"last error: {status['counters']['last_insert_error']}")
        os.remove(filler)
        verdict = await judge("warehouse-down", hit, reference,
                              await caught_up(hit, reference.work.expectation.valid))
    finally:
        worker.stop()
    verdict.check()
