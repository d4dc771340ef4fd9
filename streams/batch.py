"""The skeleton shared by the engine's batch services on their own aiokafka consumer group.

A batch service (the validator, the dedup stage, the journey projection, the friction
detector) reads its topics in batches, keeps per-partition state (restored from a
changelog on assignment) and commits a batch only once its outputs are safe.
`BatchService` owns the parts that do not depend on what a batch does: stopping, the
rebalance protocol and waiting for a restored assignment. `TransactionalService` adds
the loop every stream stage of the engine shares: per batch, ONE Kafka transaction
carries the outputs, the changelog records of the state the batch changed and the
consumed offsets, so a crash between any two lines leaves either all of a batch or
none of it; the local copy of the state (`streams.store`) follows only once the
transaction has committed.

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
import socket
import time
from abc import ABC, abstractmethod
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from streams.kafka import (
    ConsumerRebalanceListener,
    DefaultPartitioner,
    KafkaError,
    Record,
    TopicPartition,
    make_consumer,
    make_producer,
    record_batches,
)
from streams.store import PartitionStore, restore_stores, store_path

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


def transactional_id(group_id: str, worker_port: int) -> str:
    """One transactional id per stage (consumer group) and worker: a restarted worker
    fences its former self (host name and HTTP port tell workers apart)."""
    return f"{group_id}-{socket.gethostname()}-{worker_port}"


POLL_MS = 200  # how long an idle service waits for input before it looks at stop/due work


class RepeatedWarning:
    """A warning that repeats while a fault lasts, logged with backoff instead of per batch:
    at once, then after 1, 2, 4 ... up to 60 seconds, with how often it happened between."""

    def __init__(self, logger: logging.Logger) -> None:
        self.logger = logger
        self._next = 0.0
        self._delay = 1.0
        self._suppressed = 0

    def warn(self, message: str, *args: Any) -> None:
        now = time.monotonic()
        if now < self._next:
            self._suppressed += 1
            return
        if self._suppressed:
            message += f" ({self._suppressed} more like it since the last report)"
        self.logger.warning(message, *args)
        self._suppressed = 0
        self._next = now + self._delay
        self._delay = min(self._delay * 2, 60.0)

    def clear(self) -> None:
        self._delay = 1.0
        self._next = 0.0
        self._suppressed = 0


class TransactionalService(BatchService):
    """consume -> `handle` -> one transaction (outputs, changelog, offsets) -> local state.

    Subclasses implement `handle` (route a batch, changing `self.stores[p]` and
    returning the records to send) and may implement `committed` (count what a
    committed batch did), `restored` (rebuild in-memory indexes of a partition from its
    store) and `due` (True when there is work without input, e.g. an expiry sweep).
    Several source topics are read as co-partitioned: partition p of each source shares
    `stores[p]` (the range assignor gives one consumer partition p of every source).
    """

    def __init__(self, bootstrap: str, *, sources: list[str], group_id: str,
                 transactional_id: str, client_id: str, batch_size: int,
                 changelog: str | None = None, store_root: Path | None = None) -> None:
        super().__init__()
        self.bootstrap = bootstrap
        self.sources = sources
        self.group_id = group_id
        self.transactional_id = transactional_id
        self.client_id = client_id
        self.batch_size = batch_size
        self.changelog = changelog
        self.store_root = store_root
        self.stores: dict[int, PartitionStore] = {}
        self.assigned: set[int] = set()
        self.transaction_failures = 0
        self._committed: dict[Any, int] = {}  # per topic partition: the offset committed last
        self._reader: Any = None
        self._partitioner = DefaultPartitioner()
        self._failing = RepeatedWarning(log)

    # ---- what a subclass does ------------------------------------------------------

    @abstractmethod
    def handle(self, got: dict[Any, list[Any]]) -> tuple[list[Record], Any]:
        """Route one batch (possibly empty, when `due()`); returns the records to send and
        a tally for `committed`. State changes go through `self.stores` only."""

    def committed(self, tally: Any) -> None:
        """The batch's transaction committed: count what it did."""

    def restored(self, partition: int, store: PartitionStore | None) -> None:
        """Partition `partition`'s store was restored (None: the service keeps no store)."""

    def forgotten(self, partition: int) -> None:
        """Partition `partition` is no longer ours: drop what memory holds of it."""

    def due(self) -> bool:
        """True when `handle` has work to do even without input."""
        return False

    def consumer_options(self) -> dict[str, Any]:
        return {}

    # ---- the loop --------------------------------------------------------------------

    async def run(self) -> None:
        self._running = True
        self._done.clear()
        consumer = make_consumer(self.bootstrap, group_id=self.group_id,
                                 max_poll_records=self.batch_size, **self.consumer_options())
        consumer.subscribe(self.sources, listener=Rebalance(self))
        # One transactional id per worker and stage: a restarted worker fences its former
        # self, and its start aborts a transaction the former self left open.
        producer = make_producer(self.bootstrap, client_id=self.client_id,
                                 transactional_id=self.transactional_id)
        self._reader = make_consumer(self.bootstrap, group_id=None) if self.changelog else None
        self._consumer = consumer
        try:
            await producer.start()
            if self._reader is not None:
                await self._reader.start()
            await self.check(producer)
            await consumer.start()
            while not self._stopping.is_set():
                # Records fetched while a rebalance happened belong to the old assignment.
                generation = self._generation
                got = await self._fetch(consumer)
                if not await self._wait_ready():
                    break
                async with self._lock:
                    if generation != self._generation:
                        log.info("%s: discarding a batch fetched before a rebalance: its "
                                 "records come again from the committed offsets", self.name)
                        continue
                    if got or self.due():
                        await self._process(got, producer, consumer)
                    else:
                        await self._skip_markers(producer, consumer)
        finally:
            self._ready.clear()
            self._consumer = None
            try:
                await consumer.stop()
                await producer.stop()
            finally:
                if self._reader is not None:
                    await self._reader.stop()
                for partition in list(self.stores):
                    self._close_store(partition)
                self._running = False
                self._done.set()

    async def check(self, producer: Any) -> None:
        """Refuse to start on a topic layout the service cannot work with."""

    async def _fetch(self, consumer: Any) -> dict[Any, list[Any]]:
        """One batch, an equal share from each assigned partition that has records.

        aiokafka's getmany drains one partition's fetched records before the next one's,
        so a backlog would be read partition after partition. Producers that send without
        a key spread each customer's touchpoints over the ingest partitions, and reading
        those one after the other would put a customer's touchpoints days out of event-time
        order; equal shares keep the partitions, and so the event times, together.
        """
        partitions = sorted(consumer.assignment())
        if len(partitions) <= 1:
            got: dict[Any, list[Any]] = await consumer.getmany(
                timeout_ms=POLL_MS, max_records=self.batch_size)
            return got
        share = max(1, self.batch_size // len(partitions))
        got = {}
        for tp in partitions:
            got.update(await consumer.getmany(tp, timeout_ms=0, max_records=share))
        if not got:  # nothing fetched yet: wait for whatever comes first
            got = await consumer.getmany(timeout_ms=POLL_MS, max_records=share)
        return got

    async def _skip_markers(self, producer: Any, consumer: Any) -> None:
        """When idle, commit positions that moved past record-free offsets only (the commit
        markers ending the transactions of a transactional input), so an idle stage shows
        no lag."""
        moved = {}
        for tp in consumer.assignment():
            position = await consumer.position(tp)
            if position > self._committed.get(tp, position):
                moved[tp] = position
        if moved:
            try:
                await self._transact(producer, [], moved)
            except KafkaError as exc:
                self._failing.warn("%s: committing idle positions failed (%s: %s)", self.name,
                                   type(exc).__name__, exc)
                return
            self._committed.update(moved)

    async def _process(self, got: dict[Any, list[Any]], producer: Any, consumer: Any) -> None:
        # In a thread: a batch may take a while, and the event loop meanwhile serves the
        # HTTP API and the other stages. Only this stage touches its stores and state,
        # one batch at a time (the lock), so the thread needs no locking of its own.
        work = asyncio.ensure_future(asyncio.to_thread(self.handle, got))
        try:
            records, tally = await asyncio.shield(work)
        except asyncio.CancelledError:
            # The thread cannot be stopped: let it finish before the stores close.
            await asyncio.wait({work})
            raise
        offsets = {tp: messages[-1].offset + 1 for tp, messages in got.items() if messages}
        stores = [store for store in self.stores.values() if store.dirty]
        for store in stores:
            records.extend(store.changelog_records())
        try:
            reached = await self._transact(producer, records, offsets)
        except KafkaError as exc:
            self.transaction_failures += 1
            for store in self.stores.values():
                store.abort()
            self._failing.warn("%s: batch transaction failed (%s: %s); rewinding to the "
                               "committed state", self.name, type(exc).__name__, exc)
            await self._rewind_until_done(consumer)
            return
        self._failing.clear()
        self._committed.update(offsets)
        for store in stores:
            store.commit(reached.get(store.partition))
        self.committed(tally)

    async def _transact(self, producer: Any, records: list[Record],
                        offsets: dict[Any, int]) -> dict[int, int]:
        """Send `records` and commit `offsets` in one transaction; returns, per partition,
        the changelog offset of the last changelog record sent."""
        if not records and not offsets:
            return {}
        reached: dict[int, int] = {}
        async with producer.transaction():
            chunks = await record_batches(producer, records, self._partitioner)
            futures = [await producer.send_batch(c.builder, c.topic, partition=c.partition)
                       for c in chunks]
            if offsets:
                await producer.send_offsets_to_transaction(offsets, self.group_id)
            results = await asyncio.gather(*futures)
        for chunk, meta in zip(chunks, results, strict=True):
            if chunk.topic == self.changelog:
                last = meta.offset + len(chunk.records) - 1
                reached[chunk.partition] = max(reached.get(chunk.partition, -1), last)
        return reached

    async def _rewind_until_done(self, consumer: Any) -> None:
        delay = FIRST_RETRY_SECONDS
        while not await self._pause(delay):
            try:
                await self._rewind(consumer)
                return  # the batch comes again from the committed offsets
            except KafkaError as again:
                self._failing.warn("%s: rewind failed (%s: %s); retrying in %.1fs",
                                   self.name, type(again).__name__, again, delay)
                delay = min(delay * 2, MAX_RETRY_SECONDS)

    async def _rewind(self, consumer: Any) -> None:
        """Back to the last committed transaction: its state and its offsets."""
        assigned = sorted(consumer.assignment())
        self._drop_state(self._all_partitions())
        await self._restore_state(assigned)
        for tp, offset in (await self._resume_offsets(assigned)).items():
            consumer.seek(tp, offset)

    # ---- state per partition -----------------------------------------------------------

    def _close_store(self, partition: int) -> None:
        store = self.stores.pop(partition, None)
        if store is not None:
            store.close()

    def _drop_state(self, partitions: Iterable[int]) -> None:
        for partition in list(partitions):
            self.assigned.discard(partition)
            self._close_store(partition)
            self.forgotten(partition)

    def _all_partitions(self) -> list[int]:
        return sorted(self.assigned)

    async def _restore_state(self, assigned: list[Any]) -> None:
        self._committed = await self._resume_offsets(assigned)
        partitions = sorted({tp.partition for tp in assigned})
        if self.changelog is None or self.store_root is None:
            for partition in partitions:
                self.assigned.add(partition)
                self.restored(partition, None)
            return
        stores = []
        for partition in partitions:
            store = PartitionStore(store_path(self.store_root, self.changelog, partition),
                                   self.changelog, partition)
            store.open()
            stores.append(store)
        try:
            began = time.monotonic()
            counts = await restore_stores(self._reader, stores)
        except BaseException:
            for store in stores:
                store.close()
            raise
        for store in stores:
            self.stores[store.partition] = store
            self.assigned.add(store.partition)
            self.restored(store.partition, store)
        log.info("%s: state of partitions %s restored in %.2fs (changelog records read: %s)",
                 self.name, partitions, time.monotonic() - began, counts)

    async def _resume_offsets(self, assigned: Iterable[Any]) -> dict[Any, int]:
        """Where each assigned topic partition resumes: the committed offset, else its start."""
        consumer = self._consumer
        tps = sorted(assigned)
        resume: dict[Any, int] = {}
        never = []
        for tp in tps:
            committed = await consumer.committed(tp)
            if committed is None:
                never.append(tp)
            else:
                resume[tp] = committed
        if never:
            starts = await consumer.beginning_offsets(never)
            resume.update({tp: starts[tp] for tp in never})
        return resume
