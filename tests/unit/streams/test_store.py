"""The partition store on a real RocksDB folder: overlay, commit, abort, restore from a tail."""

from __future__ import annotations

from pathlib import Path

import pytest

from streams.store import TRUST_SECONDS, PartitionStore, restore_stores
from tests.unit.streams.fakes import FakeReader

TOPIC = "app.some-state"


def opened(tmp_path: Path, partition: int = 0, changelog: str = TOPIC) -> PartitionStore:
    store = PartitionStore(tmp_path / f"s{partition}", changelog, partition)
    store.open()
    return store


def test_changes_are_visible_at_once_and_durable_only_after_commit(tmp_path: Path) -> None:
    store = opened(tmp_path)
    store.put(b"a", b"1")
    assert store.get(b"a") == b"1"
    records = store.changelog_records()
    assert [(r.topic, r.key, r.value, r.partition) for r in records] == [(TOPIC, b"a", b"1", 0)]
    store.commit(41)
    assert store.next_offset == 42
    store.put(b"a", None)
    store.put(b"b", b"2")
    store.changelog_records()
    store.abort()  # the transaction failed: nothing of it happened
    assert (store.get(b"a"), store.get(b"b")) == (b"1", None)
    store.close()
    again = opened(tmp_path)
    assert again.get(b"a") == b"1"
    assert again.checkpoint() is not None and again.checkpoint()["offset"] == 42  # type: ignore[index]


def test_scan_and_ranges_see_the_batch_s_changes(tmp_path: Path) -> None:
    store = opened(tmp_path)
    for key in (b"e1", b"e2", b"e3", b"f1"):
        store.put(key, b"x")
    store.changelog_records()
    store.commit(3)
    store.put(b"e2", None)
    store.put(b"e4", b"y")
    assert [k for k, _ in store.scan(b"e")] == [b"e1", b"e3", b"e4"]
    assert store.keys_between(b"e", b"e4", limit=10) == [b"e1", b"e3"]
    assert store.keys_between(b"e", b"z", limit=2) == [b"e1", b"e3"]


async def test_a_restore_reads_only_the_tail_past_the_local_copy(tmp_path: Path) -> None:
    store = opened(tmp_path)
    store.put(b"a", b"1")
    store.changelog_records()
    store.commit(0)  # the local copy holds offset 0
    log = [(0, b"a", b"1"), (1, b"b", b"2"), (2, b"a", None), (3, b"c", b"3")]
    reader = FakeReader({0: log}, ends={0: 5})  # offset 4: a commit marker
    counts = await restore_stores(reader, [store])
    assert counts == {0: 3}, "offsets 1 to 3 only"
    assert dict(store.items()) == {b"b": b"2", b"c": b"3"}
    assert store.next_offset == 5


@pytest.mark.parametrize("why", ["no checkpoint", "behind the log start", "stale",
                                 "another changelog", "ahead of the log"])
async def test_an_untrusted_local_copy_is_rebuilt_from_the_start(tmp_path: Path,
                                                                 why: str) -> None:
    store = opened(tmp_path, changelog="other" if why == "another changelog" else TOPIC)
    store.put(b"stale", b"!")
    store.changelog_records()
    store.commit(9 if why == "ahead of the log" else 0)
    if why == "no checkpoint":
        store.wipe()
        store.put(b"stale", b"!")
        store._write([(b"stale", b"!")], 0)
        store._db.delete(b"\x00\x00checkpoint")
    store.close()
    store = opened(tmp_path)
    log = [(2, b"a", b"1"), (3, b"b", b"2")]
    reader = FakeReader({0: log}, ends={0: 4}, starts={0: 2 if why != "stale" else 0})
    if why == "stale":
        import time

        mark = store.checkpoint()
        assert mark is not None
        assert store.trusted_offset(0, now=time.time() + TRUST_SECONDS + 1) is None
        store._write([], mark["offset"])  # rewrite with a time long past
        import orjson
        store._db.put(b"\x00\x00checkpoint", orjson.dumps(
            {**mark, "written_at": mark["written_at"] - TRUST_SECONDS - 1}))
    await restore_stores(reader, [store])
    assert dict(store.items()) == {b"a": b"1", b"b": b"2"}, why
