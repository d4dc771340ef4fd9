"""Per-partition state of the batch services: RocksDB on local disk, a compacted changelog as truth.

The changelog partition in Kafka is the state's truth; the local RocksDB folder is a
cache of it. A batch service reads and changes a partition's state through
`PartitionStore` while it handles a batch: changes go to an overlay, and
`changelog_records()` turns them into the changelog records that travel in the
batch's Kafka transaction, next to its outputs and its consumed offsets. Only when
that transaction has committed does `commit()` write the overlay to RocksDB, in one
atomic write batch together with the changelog offset it has reached. A crash at any
point therefore leaves RocksDB at a prefix of the committed changelog, and
`restore()` reads only the changelog's tail past that offset (committed records only,
read_committed): after a kill -9 a worker is back within seconds however large the
state, instead of reading the whole changelog again.

The local copy is thrown away and the changelog read from its start when it cannot be
trusted as a prefix: no checkpoint, a checkpoint of another changelog, a checkpoint
behind the log's start offset (records deleted), or one older than the changelog's
tombstone retention (compaction may have removed a deletion the copy never saw).
"""

from __future__ import annotations

import logging
import shutil
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, Final

import orjson
from rocksdict import Options, Rdict, WriteBatch

from streams.kafka import Record, TopicPartition

log = logging.getLogger(__name__)

_CHECKPOINT: Final = b"\x00\x00checkpoint"
# A local copy older than this may have missed a tombstone that compaction removed
# (the engine's changelogs keep tombstones for delete.retention.ms = 24 h).
TRUST_SECONDS: Final = 12 * 3600.0
_DELETED: Final = object()

Restorer = Callable[[list[Any], Callable[[Any], None], dict[int, int]], Any]


class PartitionStore:
    """The state of one source partition; see the module docstring."""

    def __init__(self, path: Path, changelog: str, partition: int) -> None:
        self.path = path
        self.changelog = changelog
        self.partition = partition
        self._db: Any = None
        self._overlay: dict[bytes, bytes | None] = {}
        self._sent: dict[bytes, bytes | None] = {}  # in the transaction in flight
        self.next_offset = 0  # the changelog offset the local copy has reached

    # ---- opening and closing ------------------------------------------------------

    def open(self) -> None:
        self.path.mkdir(parents=True, exist_ok=True)
        options = Options(raw_mode=True)
        options.create_if_missing(True)
        self._db = Rdict(str(self.path), options=options)

    def close(self) -> None:
        if self._db is not None:
            self._db.close()
            self._db = None

    def wipe(self) -> None:
        """Forget the local copy: the next restore reads the changelog from its start."""
        self.close()
        shutil.rmtree(self.path, ignore_errors=True)
        self.open()
        self.next_offset = 0

    def checkpoint(self) -> dict[str, Any] | None:
        raw = self._db.get(_CHECKPOINT)
        return None if raw is None else dict(orjson.loads(raw))

    def trusted_offset(self, log_start: int, now: float | None = None) -> int | None:
        """Where a restore may resume reading the changelog, or None to read it all."""
        mark = self.checkpoint()
        now = time.time() if now is None else now
        if mark is None or mark.get("changelog") != self.changelog:
            return None
        if mark["offset"] < log_start or now - mark["written_at"] > TRUST_SECONDS:
            return None
        return int(mark["offset"])

    # ---- reading and changing state within a batch --------------------------------

    def get(self, key: bytes) -> bytes | None:
        if key in self._overlay:
            return self._overlay[key]
        value: bytes | None = self._db.get(key)
        return value

    def put(self, key: bytes, value: bytes | None) -> None:
        """Change `key` (None deletes it); visible to get() at once, durable after commit()."""
        self._overlay[key] = value

    def scan(self, prefix: bytes) -> Iterator[tuple[bytes, bytes]]:
        """Every (key, value) whose key starts with `prefix`, the batch's changes included,
        in key order."""
        merged: dict[bytes, bytes | None] = {}
        it = self._db.iter()
        it.seek(prefix)
        while it.valid():
            key = it.key()
            if not key.startswith(prefix):
                break
            merged[key] = it.value()
            it.next()
        for key, value in self._overlay.items():
            if key.startswith(prefix):
                merged[key] = value
        for key in sorted(merged):
            value = merged[key]
            if value is not None:
                yield key, value

    def keys_between(self, start: bytes, bound: bytes, *, limit: int) -> list[bytes]:
        """Up to `limit` live keys k with start <= k < bound, in key order, the batch's
        changes included."""
        found: list[bytes] = []
        it = self._db.iter()
        it.seek(start)
        exhausted = True
        while it.valid():
            key = it.key()
            if key >= bound:
                break
            if len(found) == limit:
                exhausted = False  # more keys follow: overlay keys past the last one wait
                break
            if key not in self._overlay or self._overlay[key] is not None:
                found.append(key)
            it.next()
        last = found[-1] if found and not exhausted else bound
        added = [key for key, value in self._overlay.items()
                 if value is not None and start <= key < bound
                 and (exhausted or key <= last)]
        return sorted(set(found) | set(added))[:limit]

    def items(self) -> Iterator[tuple[bytes, bytes]]:
        """Every committed (key, value) of the local copy (a restore's result)."""
        for key, value in self._db.items():
            if key != _CHECKPOINT:
                yield key, value

    @property
    def dirty(self) -> bool:
        return bool(self._overlay)

    def changelog_records(self) -> list[Record]:
        """The batch's changes as changelog records; they now belong to the transaction."""
        self._sent = self._overlay
        self._overlay = {}
        return [Record(self.changelog, key, value, self.partition)
                for key, value in self._sent.items()]

    def commit(self, last_offset: int | None) -> None:
        """The transaction carrying the sent records committed: make them local too.

        `last_offset` is the changelog offset of the last record sent (None if none was).
        """
        if last_offset is not None:
            self.next_offset = max(self.next_offset, last_offset + 1)
        self._write(self._sent.items(), self.next_offset)
        self._sent = {}

    def abort(self) -> None:
        """The batch failed: its changes never happened."""
        self._overlay = {}
        self._sent = {}

    # ---- restoring ----------------------------------------------------------------

    def apply_record(self, batch: WriteBatch, record: Any) -> None:
        if record.key is None:
            return
        if record.value is None:
            batch.delete(record.key)
        else:
            batch.put(record.key, record.value)

    def _write(self, changes: Any, offset: int) -> None:
        batch = WriteBatch(raw_mode=True)
        for key, value in changes:
            if value is None:
                batch.delete(key)
            else:
                batch.put(key, value)
        batch.put(_CHECKPOINT, orjson.dumps(
            {"changelog": self.changelog, "offset": offset, "written_at": time.time()}))
        self._db.write(batch)

    def restored(self, batch: WriteBatch, offset: int) -> None:
        """Write a chunk of restored records and the offset they reach."""
        self.next_offset = offset
        batch.put(_CHECKPOINT, orjson.dumps(
            {"changelog": self.changelog, "offset": offset, "written_at": time.time()}))
        self._db.write(batch)


def store_path(root: Path, changelog: str, partition: int) -> Path:
    """Where partition `partition` of `changelog` keeps its local copy."""
    return root / f"{changelog}-{partition}"


RESTORE_CHUNK = 20_000  # changelog records per RocksDB write batch while restoring


async def restore_stores(reader: Any, stores: list[PartitionStore]) -> dict[int, int]:
    """Bring each store up to its changelog's end as of now; returns records read per
    partition. Raises KafkaError when the broker does not answer (retried by the caller).

    `reader` is a group-less read_committed consumer: records of aborted transactions
    are never seen, and the end offsets are the last stable ones.
    """
    if not stores:
        return {}
    by_tp = {TopicPartition(s.changelog, s.partition): s for s in stores}
    tps = sorted(by_tp)
    starts = await reader.beginning_offsets(tps)
    ends = await reader.end_offsets(tps)
    reader.assign(tps)
    counts: dict[int, int] = {}
    pending: dict[Any, WriteBatch] = {}
    for tp, store in by_tp.items():
        resume = store.trusted_offset(starts[tp])
        if resume is None or resume > ends[tp]:
            # No trustworthy local copy (or one ahead of a recreated changelog): read it all.
            store.wipe()
            resume = starts[tp]
        reader.seek(tp, resume)
        counts[store.partition] = 0
        pending[tp] = WriteBatch(raw_mode=True)
        if resume >= ends[tp]:
            store.next_offset = resume
    remaining = [tp for tp in tps if await reader.position(tp) < ends[tp]]
    while remaining:
        got = await reader.getmany(*remaining, timeout_ms=500, max_records=RESTORE_CHUNK)
        for tp, records in got.items():
            store, batch = by_tp[tp], pending[tp]
            for record in records:
                if record.offset >= ends[tp]:
                    break  # written after the restore began: not ours to read
                store.apply_record(batch, record)
                counts[store.partition] += 1
            store.restored(batch, min(await reader.position(tp), ends[tp]))
            pending[tp] = WriteBatch(raw_mode=True)
        # Positions also move over transaction markers and compacted-away offsets.
        remaining = [tp for tp in remaining if await reader.position(tp) < ends[tp]]
    for tp, store in by_tp.items():
        if store.next_offset < ends[tp]:
            store.restored(pending[tp], ends[tp])
    return counts
