"""The ClickHouse sink: touchpoints -> ClickHouse, offsets committed only after the insert.

Each sink runs its own aiokafka consumer (group `<app id>-sink-<table>`) rather than
a Faust stream: Faust's take_events() acks a batch even when the body fails or is
cancelled, which would commit offsets of rows that never reached ClickHouse.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Sequence
from typing import Any

import orjson

from streams.kafka import TopicPartition, make_consumer
from streams.metrics import Metrics

log = logging.getLogger(__name__)

InsertFn = Callable[[Sequence[dict[str, Any]]], int]


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

    def stop(self) -> None:
        self._stopping.set()

    async def run(self) -> None:
        consumer = make_consumer(self.bootstrap, self.topic, group_id=self.group_id,
                                 max_poll_records=self.batch_size)
        await consumer.start()
        try:
            while not self._stopping.is_set():
                rows, offsets = await self._collect(consumer)
                if not offsets:
                    continue
                if rows and not await self._insert_until_done(rows):
                    return  # stopping: leave the offsets uncommitted, the rows come again
                await consumer.commit(offsets)
                self.metrics.written_by_table[self.table] += len(rows)
                if self.table == "touchpoints":
                    self.metrics.written += len(rows)
        finally:
            await consumer.stop()

    async def _collect(self, consumer: Any) -> tuple[list[dict[str, Any]], dict[Any, int]]:
        """Up to batch_size records, waiting at most batch_seconds for more to arrive."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.batch_seconds
        rows: list[dict[str, Any]] = []
        offsets: dict[TopicPartition, int] = {}
        while len(rows) < self.batch_size and not self._stopping.is_set():
            left = deadline - loop.time()
            if left <= 0:
                break
            got = await consumer.getmany(timeout_ms=int(left * 1000),
                                         max_records=self.batch_size - len(rows))
            for tp, messages in got.items():
                for m in messages:
                    try:
                        rows.append(orjson.loads(m.value))
                    except orjson.JSONDecodeError:
                        # Only the validator writes this topic; an undecodable record
                        # means someone else did. Skip it loudly rather than stall.
                        log.error("skipping undecodable record %s[%d]@%d", tp.topic,
                                  tp.partition, m.offset)
                        self.metrics.sink_failures += 1
                offsets[tp] = messages[-1].offset + 1
        return rows, offsets

    async def _insert_until_done(self, rows: list[dict[str, Any]]) -> bool:
        delay = 0.5
        while True:
            try:
                await asyncio.to_thread(self.insert, rows)
                self.metrics.sink_batches += 1
                self.metrics.last_insert_error = None
                return True
            except Exception as exc:  # any ClickHouse failure: retry, never drop
                self.metrics.sink_failures += 1
                self.metrics.last_insert_error = f"{type(exc).__name__}: {exc}"[:500]
                log.warning("ClickHouse insert of %d rows failed (%s); retrying in %.1fs",
                            len(rows), self.metrics.last_insert_error, delay)
            try:
                await asyncio.wait_for(self._stopping.wait(), delay)
                return False
            except TimeoutError:
                delay = min(delay * 2, self.max_backoff)
