"""Stand-ins for aiokafka's records and a group-less changelog reader, for unit tests."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


@dataclass
class Message:
    """What aiokafka's getmany hands over, as far as the stages read it."""

    topic: str
    partition: int
    offset: int
    key: bytes | None
    value: bytes | None
    headers: list[tuple[str, bytes]] = field(default_factory=list)


class FakeReader:
    """A changelog as lists of (offset, key, value) per partition, read a few at a time."""

    def __init__(self, logs: dict[int, list[tuple[int, bytes | None, bytes | None]]],
                 ends: dict[int, int], starts: dict[int, int] | None = None) -> None:
        self.logs = logs
        self.ends = ends
        self.starts = starts or {}
        self.positions: dict[Any, int] = {}
        self.read = 0

    def assign(self, tps: list[Any]) -> None:
        self.positions = dict.fromkeys(tps, 0)

    def seek(self, tp: Any, offset: int) -> None:
        self.positions[tp] = offset

    async def beginning_offsets(self, tps: list[Any]) -> dict[Any, int]:
        return {tp: self.starts.get(tp.partition, 0) for tp in tps}

    async def end_offsets(self, tps: list[Any]) -> dict[Any, int]:
        return {tp: self.ends[tp.partition] for tp in tps}

    async def position(self, tp: Any) -> int:
        return self.positions[tp]

    async def getmany(self, *tps: Any, timeout_ms: int = 0,
                      max_records: int | None = None) -> dict[Any, list[Message]]:
        got: dict[Any, list[Message]] = {}
        for tp in tps:
            ahead = [r for r in self.logs.get(tp.partition, []) if r[0] >= self.positions[tp]]
            if ahead:
                chunk = ahead[:2]
                got[tp] = [Message(tp.topic, tp.partition, *r) for r in chunk]
                self.read += len(chunk)
                self.positions[tp] = chunk[-1][0] + 1
            else:
                # Past the last record (a compacted tail, a marker): the fetch moves to the end.
                self.positions[tp] = self.ends[tp.partition]
        return got
