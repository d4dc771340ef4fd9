"""The skeleton shared by the engine's batch services on their own aiokafka consumer group.

A batch service (the validator, the friction detector) reads a topic in batches,
keeps per-partition state in memory (restored from a changelog on assignment) and
commits a batch only once its outputs are safe. This class owns the parts that do
not depend on what a batch does: stopping, the rebalance protocol and waiting for a
restored assignment.

Rebalances: the batch in flight holds `_lock`; a revocation waits for it (so its
offsets are committed while the partitions are still ours), then drops the revoked
partitions' state and starts a new generation. An assignment restores the state of
the assigned partitions, under the lock, before any batch is handled. A batch fetched
before a rebalance is discarded: the new assignment resumes from the committed
offsets, so it comes again.
"""

from __future__ import annotations

import asyncio
import logging
from abc import ABC, abstractmethod
from collections.abc import Iterable
from typing import Any

from streams.kafka import ConsumerRebalanceListener, KafkaError, TopicPartition

log = logging.getLogger(__name__)

FIRST_RETRY_SECONDS = 0.2
MAX_RETRY_SECONDS = 10.0
SHUTDOWN_SECONDS = 20.0  # the batch in flight may finish; past this it is cancelled


class BatchService(ABC):
    """Stop handling, rebalance callbacks and the restore loop; subclasses fill in
    `run`, `_drop_state` and `_restore_state` and run their loop under `_lock`."""

    name = "batch service"

    def __init__(self) -> None:
        self.restore_failures = 0
        self._consumer: Any = None
        self._lock = asyncio.Lock()
        self._generation = 0
        self._ready = asyncio.Event()  # the current assignment's state is restored
        self._stopping = asyncio.Event()
        self._done = asyncio.Event()
        self._running = False

    def stop(self) -> None:
        """Finish the batch in flight (unless its sends are failing), then stop."""
        self._stopping.set()

    async def wait_stopped(self, timeout: float = SHUTDOWN_SECONDS) -> bool:
        """True once run() has returned; False if it is still busy after `timeout`."""
        if not self._running:
            return True
        try:
            await asyncio.wait_for(self._done.wait(), timeout)
        except TimeoutError:
            return False
        return True

    async def _pause(self, delay: float) -> bool:
        """Sleep `delay` seconds unless asked to stop; True when stopping."""
        try:
            await asyncio.wait_for(self._stopping.wait(), delay)
        except TimeoutError:
            return False
        return True

    async def _wait_ready(self) -> bool:
        """Wait until the assignment's state is restored; False when stopping."""
        if self._ready.is_set():
            return True
        stop = asyncio.ensure_future(self._stopping.wait())
        ready = asyncio.ensure_future(self._ready.wait())
        try:
            await asyncio.wait({stop, ready}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            stop.cancel()
            ready.cancel()
        return self._ready.is_set() and not self._stopping.is_set()

    @abstractmethod
    async def run(self) -> None:
        """Consume, handle and commit batches until stop()."""

    @abstractmethod
    def _drop_state(self, partitions: Iterable[int]) -> None:
        """Forget the state of these partitions (revoked, or about to be restored)."""

    @abstractmethod
    async def _restore_state(self, assigned: list[Any]) -> None:
        """Rebuild the state of the assigned partitions; raise KafkaError to be retried."""

    @abstractmethod
    def _all_partitions(self) -> list[int]:
        """The partitions whose state is held now."""

    async def on_revoked(self, revoked: Iterable[Any]) -> None:
        self._ready.clear()
        async with self._lock:  # the batch in flight commits while the partitions are ours
            self._generation += 1
            self._drop_state(tp.partition for tp in revoked)

    async def on_assigned(self, assigned: Iterable[Any]) -> None:
        # No new generation here: records fetched since the assignment took effect are
        # this assignment's, and wait for the restore below rather than being dropped.
        tps = sorted(assigned)
        async with self._lock:
            # Every assignment starts from scratch (aiokafka revokes all before it).
            self._drop_state(self._all_partitions())
            delay = FIRST_RETRY_SECONDS
            while not self._stopping.is_set():
                try:
                    await self._restore_state(tps)
                except KafkaError as exc:
                    self.restore_failures += 1
                    log.warning("%s: restoring the state of %s failed (%s: %s); retrying in "
                                "%.1fs", self.name, [tp.partition for tp in tps],
                                type(exc).__name__, exc, delay)
                    if not await self._pause(delay):
                        delay = min(delay * 2, MAX_RETRY_SECONDS)
                    continue
                self._ready.set()
                return

    async def _resume_offsets(self, assigned: Iterable[Any]) -> dict[int, int]:
        """Where each assigned partition resumes: the committed offset, else its start."""
        consumer = self._consumer
        tps = sorted(assigned)
        resume: dict[int, int] = {}
        never = []
        for tp in tps:
            committed = await consumer.committed(tp)
            if committed is None:
                never.append(tp)
            else:
                resume[tp.partition] = committed
        if never:
            # Not yet committed: the group reads these partitions from their first offset.
            starts = await consumer.beginning_offsets(never)
            resume.update({tp.partition: starts[tp] for tp in never})
        return resume


class Rebalance(ConsumerRebalanceListener):  # type: ignore[misc]
    """aiokafka's group callbacks, handed to a batch service."""

    def __init__(self, service: BatchService) -> None:
        self.service = service

    async def on_partitions_revoked(self, revoked: set[TopicPartition]) -> None:
        await self.service.on_revoked(revoked)

    async def on_partitions_assigned(self, assigned: set[TopicPartition]) -> None:
        await self.service.on_assigned(assigned)


def run_in_worker(app: Any, service: BatchService) -> None:
    """Start `service` with the Faust app and drain it on shutdown. If it stops on an
    error the worker crashes: it would otherwise look healthy and do nothing."""

    @app.task  # type: ignore[untyped-decorator]
    async def run_service() -> None:
        try:
            await service.run()
        except Exception as exc:
            log.exception("the %s stopped", service.name)
            await app.crash(exc)

    @app.on_before_shutdown.connect  # type: ignore[untyped-decorator]
    async def stop_service(*_: Any, **__: Any) -> None:
        service.stop()
        if not await service.wait_stopped():
            log.warning("the %s did not finish its batch within %.0fs; it is cancelled "
                        "uncommitted and that batch is handled again", service.name,
                        SHUTDOWN_SECONDS)
