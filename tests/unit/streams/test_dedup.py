"""The dedup stage's decisions on real partition stores (RocksDB), without a broker."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from journey.settings import Settings
from streams.dedup import DedupLayoutError, DedupStage, event_id_of
from streams.kafka import TopicPartition
from streams.metrics import Metrics
from streams.store import PartitionStore
from streams.topics import topics
from streams.validator import EVENT_ID_HEADER
from tests.unit.streams.fakes import Message

HOUR = 3600.0


@pytest.fixture
def stage(tmp_path: Path) -> Iterator[DedupStage]:
    settings = Settings(home=tmp_path, dedup_window_hours=1.0)
    s = DedupStage(settings, topics(settings), Metrics())
    for p in (0, 1):
        store = PartitionStore(tmp_path / f"p{p}", s.changelog or "", p)
        store.open()
        s.stores[p] = store
    yield s
    for store in s.stores.values():
        store.close()


def messages(stage: DedupStage, partition: int, ids: list[str],
             first_offset: int = 0) -> dict[Any, list[Message]]:
    tp = TopicPartition(stage.sources[0], partition)
    return {tp: [Message(tp.topic, partition, first_offset + i, b"cust-1",
                         f'{{"event_id": "{e}"}}'.encode(), [(EVENT_ID_HEADER, e.encode())])
                 for i, e in enumerate(ids)]}


def commit(stage: DedupStage) -> None:
    for store in stage.stores.values():
        store.changelog_records()
        store.commit(None)


def test_a_repeat_is_dropped_in_the_batch_and_in_later_batches(stage: DedupStage) -> None:
    a, b = str(uuid.uuid4()), str(uuid.uuid4())
    out, tally = stage.handle(messages(stage, 0, [a, b, a]))
    assert [(r.topic, r.partition) for r in out] == [(stage.spec.touchpoints.name, 0)] * 2
    assert (tally["valid"], tally["duplicates"]) == (2, 1)
    commit(stage)
    out, tally = stage.handle(messages(stage, 0, [b], 3))
    assert out == [] and tally["duplicates"] == 1
    stage.committed(tally)
    assert stage.metrics.duplicates == 1, "counted once committed"


def test_an_id_is_new_again_once_its_window_has_passed(stage: DedupStage) -> None:
    a = str(uuid.uuid4())
    store = stage.stores[0]
    assert stage.remember(store, a, 1_000.0)
    assert not stage.remember(store, a, 1_000.0 + HOUR - 1)
    assert stage.remember(store, a, 1_000.0 + HOUR)
    # the renewed id has one time index entry, at its new first sighting
    assert len(store.keys_between(b"t", b"u", limit=10)) == 1


def test_the_sweep_forgets_exactly_the_ids_past_the_window(stage: DedupStage) -> None:
    store = stage.stores[1]
    old, young = str(uuid.uuid4()), str(uuid.uuid4())
    stage.remember(store, old, 1_000.0)
    stage.remember(store, young, 1_000.0 + HOUR / 2)
    commit(stage)
    assert stage.forget_expired(store, 1_000.0 + HOUR) == 1
    records = store.changelog_records()
    assert sorted(r.value is None for r in records) == [True, True], "id and index tombstones"
    store.commit(None)
    assert stage.remember(store, old, 1_000.0 + HOUR)
    assert not stage.remember(store, young, 1_000.0 + HOUR)


def test_the_event_id_comes_from_the_header_or_else_the_value() -> None:
    assert event_id_of(Message("t", 0, 0, None, b'{"event_id": "x"}', [])) == "x"
    assert event_id_of(Message("t", 0, 0, None, b"{}", [(EVENT_ID_HEADER, b"y")])) == "y"


class Producer:
    def __init__(self, counts: dict[str, int]) -> None:
        self.counts = counts

    async def partitions_for(self, topic: str) -> set[int]:
        return set(range(self.counts[topic]))


async def test_a_layout_without_equal_partition_counts_is_refused(stage: DedupStage) -> None:
    spec = stage.spec
    await stage.check(Producer({spec.validated.name: 4, spec.touchpoints.name: 4,
                                spec.dedup_state.name: 4}))
    with pytest.raises(DedupLayoutError, match="same number of partitions"):
        await stage.check(Producer({spec.validated.name: 4, spec.touchpoints.name: 8,
                                    spec.dedup_state.name: 4}))
