"""The validator's routing and the transactional batch loop, on fake clients."""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import orjson
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from journey.settings import Settings
from schemas.dead_letter import DeadLetter
from streams.kafka import KafkaError, TopicPartition
from streams.metrics import Metrics
from streams.topics import topics
from streams.validator import EVENT_ID_HEADER, Validator, route
from tests.unit.schemas.examples import example
from tests.unit.streams.fakes import Message

NOW = datetime(2026, 1, 2, tzinfo=UTC)
VALIDATED, DLQ = "app.touchpoints.validated", "touchpoints.dlq"


def raw(event_id: str | None = None, customer: str = "cust-42") -> bytes:
    return orjson.dumps(example("page_view", event_id=event_id or str(uuid.uuid4()),
                                customer_id=customer))


def batch(partition: int, values: list[bytes | None], first_offset: int = 0,
          key: bytes | None = b"k") -> dict[Any, list[Message]]:
    tp = TopicPartition("touchpoints.ingest", partition)
    return {tp: [Message("touchpoints.ingest", partition, first_offset + i, key, value)
                 for i, value in enumerate(values)]}


def test_valid_events_go_to_the_validated_topic_keyed_by_customer_with_their_id() -> None:
    event_id = str(uuid.uuid4())
    # the producer's key does not matter: the customer key does
    out, tally = route(batch(1, [raw(event_id), raw(event_id)], 10, key=None), VALIDATED,
                       DLQ, NOW)
    assert [(r.topic, r.key, r.partition) for r in out] == [(VALIDATED, b"cust-42", None)] * 2
    assert out[0].headers == ((EVENT_ID_HEADER, event_id.encode()),)
    stored = orjson.loads(out[0].value or b"")
    assert (stored["event_id"], stored["customer_key"]) == (event_id, "cust-42")
    assert tally == {"read": 2, "validated": 2}, "repeats are the dedup stage's to drop"


def test_refused_input_becomes_a_dead_letter_with_its_key_and_source() -> None:
    out, tally = route(batch(1, [b"{nope", None], 7, key=b"their-key"), VALIDATED, DLQ, NOW)
    assert [(r.topic, r.key) for r in out] == [(DLQ, b"their-key")] * 2
    letter = DeadLetter.model_validate_json(out[0].value or b"")
    assert (letter.error.reason, letter.topic, letter.partition, letter.offset) == (
        "invalid_json", "touchpoints.ingest", 1, 7)
    assert letter.raw_bytes() == b"{nope"
    assert tally["read"] == 2 and tally["invalid_json"] >= 1 and "validated" not in tally


@settings(max_examples=200, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.lists(st.one_of(st.binary(max_size=300), st.none()), max_size=20))
def test_whatever_bytes_come_in_each_message_is_routed_once(values: list[bytes | None]) -> None:
    out, tally = route(batch(0, values), VALIDATED, DLQ, NOW)
    assert tally["read"] == len(values) == len(out)
    invalid = sum(n for k, n in tally.items() if k not in ("read", "validated"))
    assert tally["validated"] + invalid == len(values)


class FakeBatch:
    def __init__(self) -> None:
        self.records: list[tuple[bytes | None, bytes | None]] = []

    def append(self, *, key: bytes | None, value: bytes | None, timestamp: None,
               headers: list[Any]) -> object:
        self.records.append((key, value))
        return object()

    def close(self) -> None:
        pass


class FakeTransactionalProducer:
    """Commits a transaction unless the next `fail` transactions are to fail."""

    def __init__(self, fail: int = 0) -> None:
        self.fail = fail
        self.committed: list[tuple[list[tuple[str, int, Any]], dict[Any, int]]] = []
        self._sent: list[tuple[str, int, Any]] = []
        self._offsets: dict[Any, int] = {}

    async def partitions_for(self, topic: str) -> set[int]:
        return {0, 1, 2, 3}

    def create_batch(self) -> FakeBatch:
        return FakeBatch()

    async def send_batch(self, batch: FakeBatch, topic: str, *,
                         partition: int) -> asyncio.Future[Any]:
        self._sent.append((topic, partition, batch.records))
        future: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        future.set_result(type("Meta", (), {"offset": 0})())
        return future

    async def send_offsets_to_transaction(self, offsets: dict[Any, int], group: str) -> None:
        self._offsets = dict(offsets)

    @contextlib.asynccontextmanager
    async def transaction(self) -> AsyncIterator[None]:
        self._sent, self._offsets = [], {}
        yield
        if self.fail:
            self.fail -= 1
            raise KafkaError("the transaction was aborted")
        self.committed.append((self._sent, self._offsets))


class FakeConsumer:
    def __init__(self) -> None:
        self.seeks: list[tuple[Any, int]] = []

    def assignment(self) -> set[Any]:
        return {TopicPartition("touchpoints.ingest", 0)}

    async def committed(self, tp: Any) -> int | None:
        return 3

    async def beginning_offsets(self, tps: list[Any]) -> dict[Any, int]:
        return dict.fromkeys(tps, 0)

    def seek(self, tp: Any, offset: int) -> None:
        self.seeks.append((tp, offset))


@pytest.fixture
def validator(tmp_path: Path) -> Validator:
    return Validator(Settings(home=tmp_path), topics(Settings(home=tmp_path)), Metrics())


async def test_outputs_and_offsets_are_one_transaction_counted_only_once_committed(
    validator: Validator,
) -> None:
    producer, consumer = FakeTransactionalProducer(), FakeConsumer()
    validator._consumer = consumer
    await validator._process(batch(0, [raw(), b"{nope"], 3), producer, consumer)
    [(sent, offsets)] = producer.committed
    assert sorted(topic for topic, _, _ in sent) == sorted(
        [validator.validated_topic, validator.dlq_topic])
    assert offsets == {TopicPartition("touchpoints.ingest", 0): 5}
    m = validator.metrics
    assert (m.read, m.validated, sum(m.invalid.values())) == (2, 1, 1)


async def test_a_failed_transaction_counts_nothing_and_rewinds_to_the_committed_offsets(
    validator: Validator, monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr("streams.batch.FIRST_RETRY_SECONDS", 0.01)
    producer, consumer = FakeTransactionalProducer(fail=1), FakeConsumer()
    validator._consumer = consumer
    await validator._process(batch(0, [raw()], 3), producer, consumer)
    assert producer.committed == []
    assert validator.transaction_failures == 1
    assert (validator.metrics.read, validator.metrics.validated) == (0, 0)
    assert consumer.seeks == [(TopicPartition("touchpoints.ingest", 0), 3)]


async def test_a_revocation_waits_for_the_batch_in_flight(validator: Validator) -> None:
    validator._ready.set()
    await validator._lock.acquire()  # a batch in flight
    revoking = asyncio.create_task(validator.on_revoked([TopicPartition("x", 0)]))
    await asyncio.sleep(0.05)
    assert not revoking.done()
    assert not validator._ready.is_set()  # no new batch starts meanwhile
    validator._lock.release()
    await asyncio.wait_for(revoking, 5)
    assert validator._generation == 1
