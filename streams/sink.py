"""The ClickHouse sink: a topic -> its ClickHouse table, offsets committed only after the insert.

Each sink runs its own aiokafka consumer (group `<app id>-sink-<table>`) rather than
a Faust stream: Faust's take_events() acks a batch even when the body fails or is
cancelled, which would commit offsets of rows that never reached ClickHouse.

The sink hands the insert function the records' bytes as they came: for touchpoints,
ClickHouse parses the JSON itself, which is faster than decoding it here. Poison is
therefore looked for only when an insert fails.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Sequence
from typing import Any, Protocol

from schemas.codec import decode_json
from streams.kafka import TopicPartition, make_consumer
from streams.metrics import Metrics

log = logging.getLogger(__name__)

InsertFn = Callable[[Sequence[bytes]], int]
"""Writes one batch of record values (JSON objects, one row each); raises to retry it."""


class _Record(Protocol):
    """What the sink reads of a consumed record (aiokafka's ConsumerRecord)."""

    topic: str
    partition: int
    offset: int
    value: bytes | None


class ClickHouseSink:
    """Batches by size and time; retries an insert with backoff until it succeeds."""

    def __init__(self, bootstrap: str, topic: str, group_id: str, insert: InsertFn,
                 metrics: Metrics, *, batch_size: int, batch_seconds: float,
                 max_backoff: float = 30.0, table: str = "touchpoints") -> None:
        self.table = table
        self.bootstrap = bootstrap
        self.topic = topic
        self.group_id = group_id
        self.insert = insert
        self.metrics = metrics
        self.batch_size = batch_size
        self.batch_seconds = batch_seconds
        self.max_backoff = max_backoff
        self._stopping = asyncio.Event()
        self._committed: dict[TopicPartition, int] = {}

    def stop(self) -> None:
        self._stopping.set()

    async def run(self) -> None:
        consumer = make_consumer(self.bootstrap, self.topic, group_id=self.group_id,
                                 max_poll_records=self.batch_size)
        await consumer.start()
        try:
            while not self._stopping.is_set():
                records, offsets = await self._collect(consumer)
                if not offsets:
                    await self._commit_skipped(consumer)
                    continue
                written = await self._insert_until_done(records)
                if written is None:
                    return  # stopping: leave the offsets uncommitted, the rows come again
                await consumer.commit(offsets)
                self._committed.update(offsets)
                self.metrics.written_by_table[self.table] += written
                if self.table == "touchpoints":
                    self.metrics.written += written
        finally:
            await consumer.stop()

    async def _commit_skipped(self, consumer: Any) -> None:
        """When idle, commit positions that moved past records-free batches only (the
        commit markers ending a transaction), so an idle sink shows no lag."""
        moved = {}
        for tp in consumer.assignment():
            position = await consumer.position(tp)
            if position > self._committed.get(tp, -1):
                moved[tp] = position
        if moved:
            await consumer.commit(moved)
            self._committed.update(moved)

    async def _collect(self, consumer: Any) -> tuple[list[_Record], dict[TopicPartition, int]]:
        """Up to batch_size records, waiting at most batch_seconds for more to arrive."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.batch_seconds
        records: list[_Record] = []
        offsets: dict[TopicPartition, int] = {}
        while len(records) < self.batch_size and not self._stopping.is_set():
            left = deadline - loop.time()
            if left <= 0:
                break
            got = await consumer.getmany(timeout_ms=int(left * 1000),
                                         max_records=self.batch_size - len(records))
            for tp, messages in got.items():
                records.extend(messages)
                # The position, not last offset + 1: on a transactional topic (friction)
                # it has also stepped over the commit markers, which no record reports.
                offsets[tp] = max(messages[-1].offset + 1, await consumer.position(tp))
        return records, offsets

    async def _insert_until_done(self, records: list[_Record]) -> int | None:
        """Rows written (poison left out), or None if stopped before an insert succeeded."""
        delay = 0.5
        while records:
            # a None value (a tombstone) fails the insert and is then dropped as poison
            values: list[Any] = [r.value for r in records]
            try:
                await asyncio.to_thread(self.insert, values)
                self.metrics.sink_batches += 1
                self.metrics.last_insert_error = None
                return len(values)
            except Exception as exc:  # any ClickHouse failure: retry, never drop
                self.metrics.sink_failures += 1
                self.metrics.last_insert_error = f"{type(exc).__name__}: {exc}"[:500]
                kept = self._without_poison(records)
                if len(kept) < len(records):
                    # The poison may be what failed the insert: retry the rest at once.
                    log.warning("ClickHouse insert of %d rows failed (%s); retrying without "
                                "%d skipped", len(values), self.metrics.last_insert_error,
                                len(records) - len(kept))
                    records = kept
                    continue
                log.warning("ClickHouse insert of %d rows failed (%s); retrying in %.1fs",
                            len(values), self.metrics.last_insert_error, delay)
            try:
                await asyncio.wait_for(self._stopping.wait(), delay)
                return None
            except TimeoutError:
                delay = min(delay * 2, self.max_backoff)
        return 0  # every record was poison: nothing to write, the offsets may move on

    def _without_poison(self, records: list[_Record]) -> list[_Record]:
        """The records that are JSON objects; each other one is logged and counted.

        Only the projections write these topics; a record that is no JSON object means
        someone else did, and it can never become a row. Skip it loudly rather than
        stall the partition.
        """
        kept: list[_Record] = []
        for r in records:
            try:
                is_object = r.value is not None and isinstance(decode_json(r.value), dict)
            except ValueError:
                is_object = False
            if is_object:
                kept.append(r)
                continue
            log.error("skipping a record that is no JSON object: %s[%d]@%d",
                      r.topic, r.partition, r.offset)
            self.metrics.sink_failures += 1
        return kept
