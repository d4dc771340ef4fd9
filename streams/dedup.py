"""The validator's dedup window per ingest partition: in memory, kept on a compacted changelog."""

from __future__ import annotations

import logging
import time
from collections.abc import Iterable
from typing import Any

from projections.ingest import DedupWindow, SeenIds, Sighting, SightingFormatError
from streams.kafka import TopicPartition, make_consumer, read_partitions_to_end
from streams.tables import Record

log = logging.getLogger(__name__)


class DedupLayoutError(RuntimeError):
    """The changelog topic is missing, or has fewer partitions than the ingest topic."""


class DedupState:
    """The event ids each assigned ingest partition has seen within the window.

    Changelog partition p holds the sightings of ingest partition p, keyed by event id
    (value `[first seen, ingest offset]`, a tombstone once forgotten), so compaction
    keeps one record per id and a restore reads each id's latest sighting. The caller
    sends the records this class hands out in the same flushed send as the batch's
    outputs, and restores only while nothing is being sent (the validator's lock).
    """

    def __init__(self, bootstrap: str, changelog: str, window: DedupWindow) -> None:
        self.bootstrap = bootstrap
        self.changelog = changelog
        self.window = window
        self.partitions: dict[int, SeenIds] = {}
        self.malformed = 0  # changelog records skipped on restore: not written by a validator
        self._reader: Any = None

    async def start(self) -> None:
        # No group: the reader assigns itself the partitions to restore and commits nothing.
        self._reader = make_consumer(self.bootstrap, group_id=None)
        await self._reader.start()

    async def stop(self) -> None:
        if self._reader is not None:
            await self._reader.stop()
            self._reader = None

    async def check_layout(self, ingest_partitions: set[int], producer: Any) -> None:
        """Refuse to start unless changelog partition p exists for each ingest partition p.

        Otherwise the restore of a partition without one would fail over and over as
        if the broker were away.
        """
        # Asked of the reader first: a metadata request from the producer could make
        # a broker that auto-creates topics create the changelog without compaction.
        if self.changelog not in await self._reader.topics():
            raise DedupLayoutError(f"{self.changelog} does not exist: the worker creates it "
                                   "with the other topics (streams.app.prepare_topics)")
        have = set(await producer.partitions_for(self.changelog))
        missing = sorted(ingest_partitions - have)
        if missing:
            raise DedupLayoutError(
                f"{self.changelog} lacks partition(s) {missing} of the ingest topic: it "
                "needs at least as many partitions as the ingest topic")

    def ids(self, partition: int) -> SeenIds | None:
        """The window of an assigned, restored partition; None for any other."""
        return self.partitions.get(partition)

    def sighting(self, partition: int, event_id: str, first_seen: float, offset: int) -> Record:
        """The changelog record of an id first seen at `offset` of ingest `partition`."""
        return (self.changelog, event_id.encode(), Sighting(first_seen, offset).encode(),
                partition)

    def forget_expired(self, now: float) -> list[Record]:
        """Drop the ids whose window has passed; returns their tombstones."""
        tombstones: list[Record] = []
        for partition, seen in self.partitions.items():
            tombstones.extend((self.changelog, event_id.encode(), None, partition)
                              for event_id in self.window.forget_expired(seen, now))
        return tombstones

    def drop(self, partitions: Iterable[int]) -> None:
        for partition in partitions:
            self.partitions.pop(partition, None)

    async def restore(self, resume: dict[int, int], now: float | None = None) -> None:
        """Rebuild the window of each partition from its changelog.

        `resume` maps each ingest partition to the offset its consumption resumes from
        (the group's committed offset): sightings at or past it belong to batches that
        are routed again, and are ignored. Raises KafkaError when the broker does not
        answer; nothing is kept then.
        """
        if not resume:
            return
        now = time.time() if now is None else now
        tps = [TopicPartition(self.changelog, p) for p in sorted(resume)]
        restored: dict[int, SeenIds] = {p: {} for p in resume}
        outcomes: dict[str, int] = {}
        began = time.monotonic()

        def replay(record: Any) -> None:
            outcome = self._replay(restored[record.partition], record, now,
                                   resume[record.partition])
            outcomes[outcome] = outcomes.get(outcome, 0) + 1

        await read_partitions_to_end(self._reader, tps, replay)
        self.partitions.update(restored)
        log.info("dedup window restored for partitions %s of %s in %.2fs: %s ids kept (%s)",
                 sorted(resume), self.changelog, time.monotonic() - began,
                 {p: len(restored[p]) for p in sorted(restored)}, outcomes)

    def _replay(self, seen: SeenIds, record: Any, now: float, resume_offset: int) -> str:
        try:
            if record.key is None:
                raise SightingFormatError("no key (event id)")
            event_id = record.key.decode()
            sighting = None if record.value is None else Sighting.decode(record.value)
        except (UnicodeDecodeError, SightingFormatError) as exc:
            # Someone else wrote to the changelog; skipping the record forgets at most
            # one id, which only lets a repeat of it through to ClickHouse's own dedup.
            self.malformed += 1
            log.error("skipping malformed dedup changelog record %s[%d]@%d: %s",
                      record.topic, record.partition, record.offset, exc)
            return "malformed"
        return self.window.replay(seen, event_id, sighting, now, resume_offset)
