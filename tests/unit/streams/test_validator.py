"""The validator's batch path on fake clients: routing, dedup, delivery, commits, rebalances."""

from __future__ import annotations

import asyncio
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson
import pytest
from aiokafka.partitioner import DefaultPartitioner
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from journey.settings import Settings
from projections.ingest import Sighting
from schemas.dead_letter import DeadLetter
from streams.kafka import KafkaError, TopicPartition
from streams.metrics import Metrics
from streams.topics import topics
from streams.validator import Validator, ValidatorStateError
from tests.unit.schemas.examples import example


@dataclass
class Message:
    """What aiokafka's getmany hands over, as far as the validator reads it."""

    topic: str
    partition: int
    offset: int
    key: bytes | None
    value: bytes | None


class FakeBatch:
    """A record batch that holds `capacity` records."""

    def __init__(self, capacity: int) -> None:
        self.capacity = capacity
        self.records: list[tuple[bytes | None, bytes | None]] = []
        self.closed = False

    def append(self, *, key: bytes | None, value: bytes | None, timestamp: None) -> object:
        if self.closed or len(self.records) >= self.capacity:
            self.closed = True
            return None
        self.records.append((key, value))
        return object()

    def close(self) -> None:
        self.closed = True


class FakeProducer:
    """Acknowledges every batch except the first `fail` batches holding a key in `flaky`."""

    def __init__(self, flaky: set[bytes] | None = None, fail: int = 0,
                 capacity: int = 1000, partitions: int = 4) -> None:
        self.flaky = flaky or set()
        self.fail = fail
        self.capacity = capacity
        self.partitions = partitions
        self.sent: list[tuple[str, bytes | None, bytes | None, int]] = []
        self.batches = 0

    async def partitions_for(self, topic: str) -> set[int]:
        return set(range(self.partitions))

    def create_batch(self) -> FakeBatch:
        return FakeBatch(self.capacity)

    async def send_batch(self, batch: FakeBatch, topic: str, *,
                         partition: int) -> asyncio.Future[None]:
        assert batch.closed and batch.records
        self.batches += 1
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        if self.fail > 0 and any(key in self.flaky for key, _ in batch.records):
            self.fail -= 1
            future.set_exception(KafkaError("broker unavailable"))
        else:
            self.sent.extend((topic, key, value, partition) for key, value in batch.records)
            future.set_result(None)
        return future


class FakeConsumer:
    def __init__(self, committed: dict[int, int | None] | None = None) -> None:
        self.commits: list[dict[Any, int]] = []
        self._committed = committed or {}

    async def commit(self, offsets: dict[Any, int]) -> None:
        self.commits.append(dict(offsets))

    async def committed(self, tp: Any) -> int | None:
        return self._committed.get(tp.partition)

    async def beginning_offsets(self, tps: list[Any]) -> dict[Any, int]:
        return dict.fromkeys(tps, 0)


@pytest.fixture
def validator(tmp_path: Path) -> Validator:
    v = Validator(Settings(home=tmp_path), topics(Settings(home=tmp_path)), Metrics())
    v.dedup.partitions = {0: {}, 1: {}}  # as if both partitions were assigned and restored
    return v


def raw(event_id: str | None = None, customer: str = "cust-42") -> bytes:
    return orjson.dumps(example("page_view", event_id=event_id or str(uuid.uuid4()),
                                customer_id=customer))


def batch(v: Validator, partition: int, values: list[bytes | None], first_offset: int = 0,
          key: bytes | None = b"k") -> dict[Any, list[Message]]:
    tp = TopicPartition(v.ingest, partition)
    return {tp: [Message(v.ingest, partition, first_offset + i, key, value)
                 for i, value in enumerate(values)]}


def test_valid_events_go_to_the_store_with_a_changelog_record_and_repeats_are_counted(
    validator: Validator,
) -> None:
    event_id = str(uuid.uuid4())
    out: list[Any] = []
    offsets = validator._route(batch(validator, 1, [raw(event_id), raw(event_id)], 10), out)
    assert offsets == {TopicPartition(validator.ingest, 1): 12}
    assert [(topic, key, partition) for topic, key, _, partition in out] == [
        (validator.store_topic, b"cust-42", None),
        (validator.dedup.changelog, event_id.encode(), 1),
    ]
    assert orjson.loads(out[0][2])["event_id"] == event_id
    sighting = Sighting.decode(out[1][2])
    assert sighting.offset == 10
    m = validator.metrics
    assert (m.read, m.valid, m.duplicates, sum(m.invalid.values())) == (2, 1, 1, 0)


def test_a_repeat_counts_only_in_its_own_partition_and_within_the_window(
    validator: Validator,
) -> None:
    event_id = str(uuid.uuid4())
    validator._route(batch(validator, 0, [raw(event_id)]), [])
    validator._route(batch(validator, 1, [raw(event_id)]), [])  # another partition: new
    assert validator.metrics.valid == 2
    validator.dedup.partitions[0][event_id] -= validator.dedup.window.window_seconds
    validator._route(batch(validator, 0, [raw(event_id)], 1), [])  # its window is over
    assert (validator.metrics.valid, validator.metrics.duplicates) == (3, 0)


def test_refused_input_becomes_a_dead_letter_with_its_key_and_source(
    validator: Validator,
) -> None:
    out: list[Any] = []
    validator._route(batch(validator, 1, [b"{nope", None], 7, key=b"their-key"), out)
    assert [(topic, key, partition) for topic, key, _, partition in out] == [
        (validator.dlq_topic, b"their-key", None)] * 2
    letter = DeadLetter.model_validate_json(out[0][2])
    assert (letter.error.reason, letter.topic, letter.partition, letter.offset) == (
        "invalid_json", validator.ingest, 1, 7)
    assert letter.raw_bytes() == b"{nope"
    assert validator.metrics.invalid["invalid_json"] >= 1
    assert validator.metrics.read == 2 and validator.metrics.valid == 0


@settings(max_examples=200, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.lists(st.one_of(st.binary(max_size=300), st.none()), max_size=20))
def test_whatever_bytes_come_in_each_message_is_routed_once(
    validator: Validator, values: list[bytes | None]
) -> None:
    before = validator.metrics.snapshot()
    out: list[Any] = []
    validator._route(batch(validator, 0, values), out)
    after = validator.metrics.snapshot()
    routed = {k: after[k] - before[k] for k in ("read", "valid", "invalid", "duplicates")}
    assert routed["read"] == len(values)
    assert routed["valid"] + routed["invalid"] + routed["duplicates"] == len(values)
    assert len(out) == 2 * routed["valid"] + routed["invalid"]


def test_a_partition_without_a_restored_window_is_an_error_not_a_guess(
    validator: Validator,
) -> None:
    with pytest.raises(ValidatorStateError):
        validator._route(batch(validator, 3, [raw()]), [])
    assert validator.metrics.valid == 0


async def test_only_the_failed_batches_are_resent_and_the_batch_is_committed_after(
    validator: Validator, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr("streams.validator.FIRST_RETRY_SECONDS", 0.01)
    ids = [str(uuid.uuid4()) for _ in range(5)]
    # Record batches of two: the changelog's five records travel in three batches, the
    # one holding ids[2] fails twice and only it is sent again.
    producer = FakeProducer(flaky={ids[2].encode()}, fail=2, capacity=2)
    consumer = FakeConsumer()
    got = batch(validator, 0, [raw(i) for i in ids], 5)
    assert await validator._handle(got, producer, consumer)
    assert validator.metrics.send_failures == 2
    assert producer.batches == 3 + 3 + 2  # touchpoints, changelog, two resends
    changelog = [key for topic, key, _, _ in producer.sent if topic == validator.dedup.changelog]
    assert sorted(k or b"" for k in changelog) == sorted(i.encode() for i in ids)
    # keyed records land where producer.send() would put them, in their order
    touchpoints = [(key, p, orjson.loads(value or b"{}")["event_id"])
                   for topic, key, value, p in producer.sent if topic == validator.store_topic]
    expected = DefaultPartitioner()(b"cust-42", [0, 1, 2, 3], [0, 1, 2, 3])
    assert touchpoints == [(b"cust-42", expected, i) for i in ids]
    assert consumer.commits == [{TopicPartition(validator.ingest, 0): 10}]


async def test_stopped_while_the_broker_is_away_it_commits_nothing(
    validator: Validator, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr("streams.validator.FIRST_RETRY_SECONDS", 0.01)
    event_id = str(uuid.uuid4())
    producer = FakeProducer(flaky={event_id.encode()}, fail=10**6)
    consumer = FakeConsumer()
    task = asyncio.create_task(
        validator._handle(batch(validator, 0, [raw(event_id)]), producer, consumer))
    while validator.metrics.send_failures < 3:
        await asyncio.sleep(0.01)
    validator.stop()
    assert await asyncio.wait_for(task, 5) is False
    assert consumer.commits == []


async def test_expired_ids_are_forgotten_with_tombstones_in_the_next_send(
    validator: Validator,
) -> None:
    window = validator.dedup.window.window_seconds
    validator.dedup.partitions[1] = {"old": 0.0, "young": 4e9}  # 1970 and 2096
    validator._next_sweep = 0.0
    producer, consumer = FakeProducer(), FakeConsumer()
    assert await validator._handle({}, producer, consumer)
    assert producer.sent == [(validator.dedup.changelog, b"old", None, 1)]
    assert validator.dedup.partitions[1] == {"young": 4e9}
    assert consumer.commits == []  # nothing was consumed
    assert validator._next_sweep > 0 and window > 0


async def test_a_revocation_waits_for_the_batch_in_flight_then_drops_the_windows(
    validator: Validator,
) -> None:
    validator._ready.set()
    await validator._lock.acquire()  # a batch in flight
    revoking = asyncio.create_task(validator.on_revoked(
        [TopicPartition(validator.ingest, 0), TopicPartition(validator.ingest, 1)]))
    await asyncio.sleep(0.05)
    assert not revoking.done() and validator.dedup.partitions == {0: {}, 1: {}}
    assert not validator._ready.is_set()  # no new batch starts meanwhile
    validator._lock.release()
    await asyncio.wait_for(revoking, 5)
    assert validator.dedup.partitions == {} and validator._generation == 1


async def test_an_assignment_restores_from_the_committed_offsets_retrying_until_it_can(
    validator: Validator, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr("streams.validator.FIRST_RETRY_SECONDS", 0.01)
    validator._consumer = FakeConsumer(committed={0: 40, 1: None})
    calls: list[dict[int, int]] = []

    async def restore(resume: dict[int, int], now: float | None = None) -> None:
        calls.append(resume)
        if len(calls) == 1:
            raise KafkaError("broker unavailable")
        validator.dedup.partitions.update({p: {} for p in resume})

    monkeypatch.setattr(validator.dedup, "restore", restore)
    await validator.on_assigned({TopicPartition(validator.ingest, 0),
                                 TopicPartition(validator.ingest, 1)})
    assert calls == [{0: 40, 1: 0}, {0: 40, 1: 0}]  # never committed: from the start
    assert validator.restore_failures == 1
    assert validator._ready.is_set() and set(validator.dedup.partitions) == {0, 1}

