"""The validator: touchpoints.ingest -> touchpoints (valid) or touchpoints.dlq, batch by batch.

It runs in the worker on its own aiokafka consumer (group `<app id>-validator`) rather
than as a Faust agent: Faust hands each message over in its own asyncio task, which
cost five times the validation itself (docs/adr/0001-validator-outside-faust-streams.md).
Per batch it routes every message, sends the outputs and the dedup changelog records,
waits for every acknowledgement (acks=all) and only then commits the batch's offsets.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Iterable
from datetime import UTC, datetime
from typing import Any

import faust

from journey.settings import Settings
from projections.ingest import Admitted, DedupWindow, admit
from schemas.codec import encode_json
from schemas.dead_letter import DeadLetter
from streams.batch import (
    FIRST_RETRY_SECONDS,
    MAX_RETRY_SECONDS,
    BatchService,
    Rebalance,
    run_in_worker,
)
from streams.dedup import DedupState
from streams.kafka import DefaultPartitioner, KafkaError, make_consumer, make_producer
from streams.metrics import Metrics
from streams.tables import Record
from streams.topics import Topics

log = logging.getLogger(__name__)

SWEEP_EVERY_SECONDS = 600.0
POLL_MS = 200  # how long an idle validator waits for input before it looks at stop/sweep


class ValidatorStateError(RuntimeError):
    """A message arrived for a partition whose dedup window was never restored."""


def validator_group(settings: Settings) -> str:
    """The validator's consumer group: stable, so a restart resumes where it committed."""
    return f"{settings.app_id}-validator"


class Validator(BatchService):
    """Routes the ingest topic in batches; commits a batch only once its outputs are safe.

    The per-partition state is the dedup window, restored from its changelog on each
    assignment (the rebalance protocol is BatchService's).
    """

    name = "validator"

    def __init__(self, settings: Settings, spec: Topics, metrics: Metrics, *,
                 sweep_seconds: float = SWEEP_EVERY_SECONDS) -> None:
        super().__init__()
        self.settings = settings
        self.metrics = metrics
        self.ingest = spec.ingest.name
        self.store_topic = spec.touchpoints.name
        self.dlq_topic = spec.dlq.name
        self.group_id = validator_group(settings)
        self.batch_size = settings.validator_batch_size
        self.sweep_seconds = sweep_seconds
        self.dedup = DedupState(settings.bootstrap, spec.dedup_window.name,
                                DedupWindow(settings.dedup_window_hours * 3600.0))
        self.commit_failures = 0  # batches routed again by the partitions' next owner
        self._next_sweep = 0.0
        self._partitioner = DefaultPartitioner()

    async def run(self) -> None:
        self._running = True
        self._done.clear()
        consumer = make_consumer(self.settings.bootstrap, group_id=self.group_id,
                                 max_poll_records=self.batch_size)
        consumer.subscribe([self.ingest], listener=Rebalance(self))
        producer = make_producer(self.settings.bootstrap,
                                 client_id=f"{self.settings.app_id}-validator")
        self._consumer = consumer
        self._next_sweep = time.monotonic() + self.sweep_seconds
        try:
            await self.dedup.start()
            await producer.start()
            await self.dedup.check_layout(set(await producer.partitions_for(self.ingest)),
                                          producer)
            await consumer.start()
            while not self._stopping.is_set():
                got = await consumer.getmany(timeout_ms=POLL_MS, max_records=self.batch_size)
                # Read right after getmany returns (no await in between): the records
                # belong to the assignment of this generation.
                generation = self._generation
                if not await self._wait_ready():
                    break
                async with self._lock:
                    if generation != self._generation:
                        log.info("discarding a batch fetched before a rebalance: "
                                 "its records come again from the committed offsets")
                        continue
                    if not await self._handle(got, producer, consumer):
                        break
        finally:
            self._ready.clear()
            self._consumer = None
            try:
                await consumer.stop()
                await producer.stop()
            finally:
                await self.dedup.stop()
                self._running = False
                self._done.set()

    async def _handle(self, got: dict[Any, list[Any]], producer: Any, consumer: Any) -> bool:
        """Route, deliver and commit one batch; False when stopped before it was delivered."""
        out = self._sweep_if_due()
        if not got and not out:
            return True
        offsets = self._route(got, out)
        if not await self._deliver(producer, out):
            return False  # stopping: the batch is not committed and is routed again
        if offsets:
            await self._commit(consumer, offsets)
        return True

    def _route(self, got: dict[Any, list[Any]], out: list[Record]) -> dict[Any, int]:
        """Append each message's output (and new ids' changelog records) to `out`."""
        now = datetime.now(UTC)
        now_s = now.timestamp()
        metrics, dedup, window = self.metrics, self.dedup, self.dedup.window
        store_topic, dlq_topic = self.store_topic, self.dlq_topic
        offsets: dict[Any, int] = {}
        for tp, messages in got.items():
            if not messages:
                continue
            seen = dedup.ids(tp.partition)
            if seen is None:
                raise ValidatorStateError(
                    f"{tp.topic}[{tp.partition}]@{messages[0].offset}: no dedup window "
                    "restored for this partition")
            for msg in messages:
                raw = msg.value if msg.value is not None else b""
                metrics.read += 1
                outcome = admit(raw, now=now)
                if isinstance(outcome, Admitted):
                    if not window.remember(seen, outcome.event_id, now_s):
                        metrics.duplicates += 1
                        continue
                    metrics.valid += 1
                    out.append((store_topic, outcome.key, outcome.value, None))
                    out.append(dedup.sighting(tp.partition, outcome.event_id, now_s, msg.offset))
                else:
                    metrics.invalid[str(outcome.error.reason)] += 1
                    record = DeadLetter.from_error(
                        raw, outcome.error, topic=msg.topic, partition=msg.partition,
                        offset=msg.offset, received_at=now,
                    )
                    out.append((dlq_topic, msg.key, encode_json(record.model_dump(mode="json")),
                                None))
            offsets[tp] = messages[-1].offset + 1
        return offsets

    def _sweep_if_due(self) -> list[Record]:
        if time.monotonic() < self._next_sweep:
            return []
        self._next_sweep = time.monotonic() + self.sweep_seconds
        tombstones = self.dedup.forget_expired(time.time())
        if tombstones:
            log.info("dedup window: forgot %d event ids", len(tombstones))
        return tombstones

    async def _deliver(self, producer: Any, records: list[Record]) -> bool:
        """Send and wait for every acknowledgement, retrying what failed with backoff.

        False only when asked to stop while sends were failing: nothing is dropped, the
        caller just must not commit.
        """
        pending = records
        delay = FIRST_RETRY_SECONDS
        while True:
            failed, error = await self._send_once(producer, pending)
            if not failed:
                return True
            self.metrics.send_failures += 1
            log.warning("send of %d of %d records failed (%s: %s); retrying in %.1fs",
                        len(failed), len(pending), type(error).__name__, error, delay)
            pending = failed
            if await self._pause(delay):
                log.warning("stopping with %d records unsent: their batch stays uncommitted",
                            len(pending))
                return False
            delay = min(delay * 2, MAX_RETRY_SECONDS)

    async def _send_once(self, producer: Any,
                         records: list[Record]) -> tuple[list[Record], BaseException | None]:
        """Send `records` as one record batch per topic partition; returns what failed.

        Handing aiokafka whole batches instead of one record at a time halves the
        validator's cost per event (one future per batch, not per record). Records
        keep their order within a partition, and keyed records land where
        producer.send() would put them (the same partitioner), which the journey
        projection relies on.
        """
        chunks: list[tuple[str, int, list[Record], Any]] = []
        futures: list[asyncio.Future[Any]] = []
        error: BaseException | None = None
        try:
            chunks = await self._chunks(producer, records)
            for topic, partition, _, builder in chunks:
                futures.append(await producer.send_batch(builder, topic, partition=partition))
        except KafkaError as exc:  # e.g. no metadata while the broker is away
            error = exc
        if not chunks:
            return (records, error) if error is not None else ([], None)
        # Settle every batch handed over, so only the ones that failed are resent: a
        # resent record is a duplicate downstream deduplicates, a lost one is lost.
        results = await asyncio.gather(*futures, return_exceptions=True)
        failed: list[Record] = []
        for (_, _, chunk, _), result in zip(chunks, results, strict=False):
            if isinstance(result, BaseException):
                if not isinstance(result, KafkaError):
                    raise result  # not the broker's doing: a bug, do not retry it forever
                error = error or result
                failed.extend(chunk)
        for _, _, chunk, _ in chunks[len(futures):]:
            failed.extend(chunk)
        return failed, error

    async def _chunks(self, producer: Any,
                      records: list[Record]) -> list[tuple[str, int, list[Record], Any]]:
        """The records grouped by topic partition, each group in full record batches."""
        partitions: dict[str, list[int]] = {}
        groups: dict[tuple[str, int], list[Record]] = {}
        for record in records:
            topic, key, _, partition = record
            if partition is None:
                known = partitions.get(topic)
                if known is None:
                    known = partitions[topic] = sorted(await producer.partitions_for(topic))
                partition = self._partitioner(key, known, known)
            groups.setdefault((topic, partition), []).append(record)
        chunks: list[tuple[str, int, list[Record], Any]] = []
        for (topic, partition), group in groups.items():
            builder = producer.create_batch()
            chunk: list[Record] = []
            for record in group:
                if builder.append(key=record[1], value=record[2], timestamp=None) is None:
                    chunks.append((topic, partition, chunk, builder))  # full (and closed)
                    builder, chunk = producer.create_batch(), []
                    # An empty builder takes any record; if it ever did not, the record
                    # would be counted as sent without being in a batch.
                    if builder.append(key=record[1], value=record[2], timestamp=None) is None:
                        raise RuntimeError(f"{topic}[{partition}]: an empty record batch "
                                           "refused a record")
                chunk.append(record)
            builder.close()  # closed: sent at once, and producer.send() cannot add to it
            chunks.append((topic, partition, chunk, builder))
        return chunks

    async def _commit(self, consumer: Any, offsets: dict[Any, int]) -> None:
        try:
            await consumer.commit(offsets)
        except KafkaError as exc:
            # Retriable errors are retried inside commit(); this one means the group
            # moved on (a rebalance took the partitions). The outputs are delivered, so
            # the next owner routes these messages again: duplicates, never a loss.
            self.commit_failures += 1
            log.warning("commit failed (%s: %s) for %s", type(exc).__name__, exc,
                        ", ".join(f"{tp.topic}[{tp.partition}]@{o}"
                                  for tp, o in sorted(offsets.items())))

    def _drop_state(self, partitions: Iterable[int]) -> None:
        self.dedup.drop(partitions)

    def _all_partitions(self) -> list[int]:
        return list(self.dedup.partitions)

    async def _restore_state(self, assigned: list[Any]) -> None:
        await self.dedup.restore(await self._resume_offsets(assigned))


def install_validator(app: faust.App, settings: Settings, spec: Topics,
                      metrics: Metrics) -> Validator:
    """Run the validator in the worker: started with the app, drained on shutdown."""
    validator = Validator(settings, spec, metrics)
    run_in_worker(app, validator)
    return validator
