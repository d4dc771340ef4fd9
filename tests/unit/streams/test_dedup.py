"""Restoring the dedup window from its changelog, against a fake reader."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import pytest

from projections.ingest import DedupWindow, Sighting
from streams.dedup import DedupLayoutError, DedupState

HOUR = 3600.0
NOW = 1_700_000_000.0
TOPIC = "app.dedup-window"


@dataclass
class Record:
    topic: str
    partition: int
    offset: int
    key: bytes | None
    value: bytes | None


class FakeReader:
    """A changelog as lists of (offset, key, value) per partition, read a few at a time."""

    def __init__(self, logs: dict[int, list[tuple[int, bytes | None, bytes | None]]],
                 ends: dict[int, int]) -> None:
        self.logs = logs
        self.ends = ends
        self.positions: dict[Any, int] = {}

    async def topics(self) -> set[str]:
        return {TOPIC}

    def assign(self, tps: list[Any]) -> None:
        self.positions = dict.fromkeys(tps, 0)

    async def seek_to_beginning(self, *tps: Any) -> None:
        for tp in tps:
            self.positions[tp] = 0

    async def end_offsets(self, tps: list[Any]) -> dict[Any, int]:
        return {tp: self.ends[tp.partition] for tp in tps}

    async def position(self, tp: Any) -> int:
        return self.positions[tp]

    async def getmany(self, *tps: Any, timeout_ms: int = 0) -> dict[Any, list[Record]]:
        got: dict[Any, list[Record]] = {}
        for tp in tps:
            ahead = [r for r in self.logs.get(tp.partition, []) if r[0] >= self.positions[tp]]
            if ahead:
                chunk = ahead[:2]
                got[tp] = [Record(tp.topic, tp.partition, *r) for r in chunk]
                self.positions[tp] = chunk[-1][0] + 1
            else:
                # Past the last record (a compacted tail): the fetch moves to the end.
                self.positions[tp] = self.ends[tp.partition]
        return got


def sighting(first_seen: float, offset: int) -> bytes:
    return Sighting(first_seen, offset).encode()


def state(reader: FakeReader) -> DedupState:
    s = DedupState("unused:9092", TOPIC, DedupWindow(HOUR))
    s._reader = reader
    return s


async def test_restore_rebuilds_each_partition_up_to_its_committed_offset() -> None:
    reader = FakeReader({
        0: [(0, b"a", sighting(NOW - 60, 0)),
            (1, b"old", sighting(NOW - 2 * HOUR, 1)),
            (2, b"b", sighting(NOW - 50, 3)),
            (3, b"b", None),  # forgotten
            (4, b"c", sighting(NOW - 40, 5)),
            (6, b"late", sighting(NOW - 30, 9))],  # offset 5 compacted away
        1: [(0, b"z", sighting(NOW - 10, 2))],
    }, ends={0: 7, 1: 3, 2: 0})
    s = state(reader)
    s.partitions[3] = {"stale": NOW}
    await s.restore({0: 9, 1: 5, 2: 0}, now=NOW)
    # "late" was first seen at ingest offset 9: that batch was not committed.
    assert s.partitions == {0: {"a": NOW - 60, "c": NOW - 40}, 1: {"z": NOW - 10}, 2: {},
                            3: {"stale": NOW}}
    assert s.malformed == 0


async def test_malformed_records_are_skipped_and_counted() -> None:
    reader = FakeReader({0: [(0, None, sighting(NOW, 0)), (1, b"\xff", sighting(NOW, 1)),
                             (2, b"x", b"[oops"), (3, b"ok", sighting(NOW - 1, 2))]},
                        ends={0: 4})
    s = state(reader)
    await s.restore({0: 10}, now=NOW)
    assert s.partitions == {0: {"ok": NOW - 1}}
    assert s.malformed == 3


def test_sightings_and_tombstones_go_to_the_ingest_partitions_changelog_partition() -> None:
    s = DedupState("unused:9092", TOPIC, DedupWindow(HOUR))
    assert s.sighting(2, "e-1", NOW, 17) == (TOPIC, b"e-1", sighting(NOW, 17), 2)
    s.partitions = {0: {"a": NOW - 2 * HOUR, "b": NOW}, 2: {"c": NOW - HOUR}}
    assert s.forget_expired(NOW) == [(TOPIC, b"a", None, 0), (TOPIC, b"c", None, 2)]
    s.drop([0, 5])
    assert s.partitions == {2: {}}
    assert s.ids(0) is None and s.ids(2) == {}



class Partitions:
    def __init__(self, n: int) -> None:
        self.n = n

    async def partitions_for(self, topic: str) -> set[int]:
        return set(range(self.n))


async def test_a_changelog_missing_or_with_fewer_partitions_than_ingest_is_refused() -> None:
    s = state(FakeReader({}, ends={}))
    await s.check_layout({0, 1}, Partitions(2))
    await s.check_layout({0, 1}, Partitions(4))
    with pytest.raises(DedupLayoutError, match=r"\[2, 3\]"):
        await s.check_layout({0, 1, 2, 3}, Partitions(2))
    s.changelog = "elsewhere"
    with pytest.raises(DedupLayoutError, match="does not exist"):
        await s.check_layout({0}, Partitions(2))
