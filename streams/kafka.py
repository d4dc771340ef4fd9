"""The one aiokafka wrapper: producers, consumers and topic administration."""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
from collections.abc import Awaitable, Callable, Iterable, Sequence
from typing import Any, NamedTuple, TypeVar

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.abc import ConsumerRebalanceListener
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.coordinator.assignors.range import RangePartitionAssignor
from aiokafka.errors import KafkaConnectionError, KafkaError, TopicAlreadyExistsError
from aiokafka.partitioner import DefaultPartitioner, murmur2

from projections.errors import ServiceUnavailableError
from streams.topics import TopicSpec

log = logging.getLogger(__name__)
_T = TypeVar("_T")

# Re-exported so callers never import aiokafka themselves.
__all__ = [
    "CachedKeyPartitioner",
    "ConsumerRebalanceListener",
    "DefaultPartitioner",
    "KafkaError",
    "OffsetProbe",
    "RangePartitionAssignor",
    "Record",
    "TopicPartition",
    "create_topics",
    "make_consumer",
    "make_producer",
    "unavailable",
]


# How long the broker lets a transaction stay open before aborting it. A worker killed
# mid-transaction blocks read_committed readers of those partitions until its successor
# (same transactional id) aborts it at start, or until this passes.
TRANSACTION_TIMEOUT_MS = 30_000


class Record(NamedTuple):
    """One record to send: `partition` None = by key (the default partitioner)."""

    topic: str
    key: bytes | None
    value: bytes | None
    partition: int | None = None
    headers: Sequence[tuple[str, bytes]] | None = None


class CachedKeyPartitioner:
    """DefaultPartitioner's choice, with the murmur2 hash of recent keys remembered.

    aiokafka's murmur2 is pure Python and cost a tenth of the collector's time; one
    customer's events keep coming under the same key, so most keys are hashed once.
    """

    def __init__(self, size: int = 1 << 16) -> None:
        self._hash = functools.lru_cache(maxsize=size)(murmur2)
        self._default = DefaultPartitioner()

    def __call__(self, key: bytes | None, all_partitions: list[int],
                 available: list[int]) -> int:
        if key is None:
            return int(self._default(key, all_partitions, available))
        index = (int(self._hash(key)) & 0x7FFFFFFF) % len(all_partitions)
        return all_partitions[index]


def make_producer(bootstrap: str, *, linger_ms: int = 10, batch_bytes: int = 512 * 1024,
                  client_id: str = "journey", transactional_id: str | None = None,
                  request_timeout_ms: int = 30000) -> AIOKafkaProducer:
    """A producer that neither loses nor duplicates: acks=all and idempotence on.

    With a `transactional_id` its sends and a group's offsets can be committed as one
    transaction (readers use isolation_level=read_committed, as make_consumer's do).
    """
    return AIOKafkaProducer(
        transactional_id=transactional_id,
        transaction_timeout_ms=TRANSACTION_TIMEOUT_MS,
        bootstrap_servers=bootstrap,
        client_id=client_id,
        acks="all",
        enable_idempotence=True,
        linger_ms=linger_ms,
        max_batch_size=batch_bytes,
        max_request_size=2 * 1024 * 1024,
        compression_type=None,
        request_timeout_ms=request_timeout_ms,
    )


def make_consumer(bootstrap: str, *topics: str, group_id: str | None,
                  max_poll_records: int = 5000, auto_offset_reset: str = "earliest",
                  **extra: Any) -> AIOKafkaConsumer:
    """A consumer that commits only when told to (commit after the work is safe)."""
    return AIOKafkaConsumer(
        *topics,
        bootstrap_servers=bootstrap,
        group_id=group_id,
        enable_auto_commit=False,
        auto_offset_reset=auto_offset_reset,
        max_poll_records=max_poll_records,
        fetch_max_bytes=32 * 1024 * 1024,
        max_partition_fetch_bytes=8 * 1024 * 1024,
        isolation_level="read_committed",
        **extra,
    )


def unavailable(bootstrap: str, exc: BaseException) -> ServiceUnavailableError:
    return ServiceUnavailableError(
        f"Kafka at {bootstrap} is not reachable ({type(exc).__name__}): start it with "
        "'journey stack up' or set JOURNEY_KAFKA_BOOTSTRAP"
    )


async def create_topics(bootstrap: str, specs: Iterable[TopicSpec],
                        timeout: float = 30.0) -> list[str]:
    """Create the missing topics with their partitions and config; returns those created."""
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap, request_timeout_ms=int(timeout * 1000))
    try:
        await asyncio.wait_for(admin.start(), timeout)
    except (TimeoutError, KafkaConnectionError, OSError) as exc:
        await admin.close()
        raise unavailable(bootstrap, exc) from exc
    created: list[str] = []
    try:
        existing = set(await admin.list_topics())
        wanted = [s for s in specs if s.name not in existing]
        if wanted:
            brokers = len((await admin.describe_cluster())["brokers"])
            replicas = min(3, brokers)
            # another worker may win the race; the topic is there either way
            with contextlib.suppress(TopicAlreadyExistsError):
                await admin.create_topics(
                    [NewTopic(s.name, s.partitions, replicas, topic_configs=s.config)
                     for s in wanted]
                )
            created = [s.name for s in wanted]
    finally:
        await admin.close()
    return created



async def group_lag(bootstrap: str, group_id: str, topic: str, partitions: int) -> int:
    """Records of `topic` the consumer group has not committed yet (all if it never did)."""
    consumer = make_consumer(bootstrap, group_id=group_id)
    await consumer.start()
    try:
        tps = [TopicPartition(topic, p) for p in range(partitions)]
        ends = await consumer.end_offsets(tps)
        lag = 0
        for tp in tps:
            committed = await consumer.committed(tp)
            lag += ends[tp] - (committed or 0)
        return lag
    finally:
        await consumer.stop()


class OffsetProbe:
    """The broker's answer and consumer groups' offsets, for the worker's health checks.

    Keeps one admin client and one group-less read_committed consumer open between
    calls; a failed call drops them, so the next one connects afresh (a broker that was
    restarted). Every call is bounded by `timeout` seconds; calls take turns, since they
    share the clients.
    """

    def __init__(self, bootstrap: str, *, timeout: float) -> None:
        self.bootstrap = bootstrap
        self.timeout = timeout
        self._admin: AIOKafkaAdminClient | None = None
        self._consumer: AIOKafkaConsumer | None = None
        self._turn = asyncio.Lock()

    async def brokers(self) -> int:
        """How many brokers the cluster reports; raises when it does not answer in time."""
        return await self._bounded(self._brokers())

    async def positions(self, group_id: str, topics: Sequence[str]
                        ) -> dict[TopicPartition, tuple[int, int]]:
        """Per partition of `topics`: the group's committed offset (its start when it never
        committed there) and the end a read_committed reader sees."""
        return await self._bounded(self._positions(group_id, topics))

    async def stop(self) -> None:
        admin, consumer = self._admin, self._consumer
        self._admin = self._consumer = None
        if admin is not None:
            with contextlib.suppress(Exception):
                await admin.close()
        if consumer is not None:
            with contextlib.suppress(Exception):
                await consumer.stop()

    async def _bounded(self, work: Awaitable[_T]) -> _T:
        async with self._turn:
            try:
                return await asyncio.wait_for(work, self.timeout)
            except BaseException:
                await self.stop()
                raise

    async def _clients(self) -> tuple[AIOKafkaAdminClient, AIOKafkaConsumer]:
        if self._admin is None or self._consumer is None:
            await self.stop()
            admin = AIOKafkaAdminClient(bootstrap_servers=self.bootstrap,
                                        request_timeout_ms=int(self.timeout * 1000))
            consumer = make_consumer(self.bootstrap, group_id=None,
                                     request_timeout_ms=int(self.timeout * 1000))
            self._admin, self._consumer = admin, consumer
            await admin.start()
            await consumer.start()
        return self._admin, self._consumer

    async def _brokers(self) -> int:
        admin, _ = await self._clients()
        return len((await admin.describe_cluster())["brokers"])

    async def _positions(self, group_id: str, topics: Sequence[str]
                         ) -> dict[TopicPartition, tuple[int, int]]:
        admin, consumer = await self._clients()
        described = await admin.describe_topics(list(topics))
        tps = [TopicPartition(t["topic"], p["partition"]) for t in described
               for p in sorted(t["partitions"], key=lambda p: p["partition"])]
        if not tps:
            return {}
        committed = await admin.list_consumer_group_offsets(group_id, partitions=tps)
        offsets = {tp: meta.offset for tp, meta in committed.items() if meta.offset >= 0}
        ends = await consumer.end_offsets(tps)
        never = [tp for tp in tps if tp not in offsets]
        if never:
            offsets.update(await consumer.beginning_offsets(never))
        return {tp: (int(offsets[tp]), int(ends[tp])) for tp in tps}


class Chunk(NamedTuple):
    """Records of one topic partition handed to the producer as one record batch."""

    topic: str
    partition: int
    records: list[Record]
    builder: Any


async def record_batches(producer: AIOKafkaProducer, records: Iterable[Record],
                         partitioner: Any) -> list[Chunk]:
    """The records grouped by topic partition, each group in full record batches.

    Handing aiokafka whole batches instead of one record at a time halves the cost per
    record (one future per batch, not per record). Records keep their order within a
    partition, and keyed records land where producer.send() would put them (the same
    partitioner), which the consumers partitioned by key rely on.
    """
    partitions: dict[str, list[int]] = {}
    groups: dict[tuple[str, int], list[Record]] = {}
    for record in records:
        partition = record.partition
        if partition is None:
            known = partitions.get(record.topic)
            if known is None:
                known = partitions[record.topic] = sorted(
                    await producer.partitions_for(record.topic))
            partition = partitioner(record.key, known, known)
        groups.setdefault((record.topic, partition), []).append(record)
    chunks: list[Chunk] = []
    for (topic, partition), group in groups.items():
        builder = producer.create_batch()
        chunk: list[Record] = []
        for record in group:
            if builder.append(key=record.key, value=record.value, timestamp=None,
                              headers=list(record.headers or ())) is None:
                chunks.append(Chunk(topic, partition, chunk, builder))  # full (and closed)
                builder, chunk = producer.create_batch(), []
                # An empty builder takes any record; if it ever did not, the record
                # would be counted as sent without being in a batch.
                if builder.append(key=record.key, value=record.value, timestamp=None,
                                  headers=list(record.headers or ())) is None:
                    raise RuntimeError(f"{topic}[{partition}]: an empty record batch "
                                       "refused a record")
            chunk.append(record)
        builder.close()  # closed: sent at once, and producer.send() cannot add to it
        chunks.append(Chunk(topic, partition, chunk, builder))
    return chunks


RESTORE_POLL_MS = 500  # one fetch's wait while reading partitions to their end


async def read_partitions_to_end(reader: AIOKafkaConsumer, tps: list[TopicPartition],
                                 on_record: Callable[[Any], None]) -> None:
    """Hand each record of `tps`, from their start to their end offsets as of now, to
    `on_record`; a changelog restore. The loop ends on positions, not on an empty fetch,
    because compaction and transaction markers leave offsets that carry no record."""
    reader.assign(tps)
    await reader.seek_to_beginning(*tps)
    ends: dict[TopicPartition, int] = await reader.end_offsets(tps)
    remaining = [tp for tp in tps if await reader.position(tp) < ends[tp]]
    while remaining:
        got = await reader.getmany(*remaining, timeout_ms=RESTORE_POLL_MS)
        for tp, records in got.items():
            for record in records:
                if record.offset >= ends[tp]:
                    break  # written after the read began: not ours to read
                on_record(record)
        remaining = [tp for tp in remaining if await reader.position(tp) < ends[tp]]


CONNECT_TIMEOUT = 15.0  # seconds for a one-off reader to reach the broker


async def read_topic_to_end(bootstrap: str, topic: str,
                            on_record: Callable[[Any], Awaitable[None] | None], *,
                            stall_timeout: float = 30.0) -> bool:
    """Hand every record of `topic`, from its start to its end offsets as of now, to
    `on_record`. No group: nothing is committed and no group's position moves; records
    arriving meanwhile are left out, so the read ends. False when the topic does not exist.
    """
    consumer = make_consumer(bootstrap, group_id=None, request_timeout_ms=20000)
    try:
        await asyncio.wait_for(consumer.start(), CONNECT_TIMEOUT)
    except (TimeoutError, KafkaError, OSError) as exc:
        await consumer.stop()
        raise unavailable(bootstrap, exc) from exc
    try:
        # Listing first: asking for an unknown topic by name may auto-create it.
        if topic not in await consumer.topics():
            return False
        # Without a group a subscription gets every partition once the metadata arrives.
        consumer.subscribe([topic])
        loop = asyncio.get_running_loop()
        deadline = loop.time() + CONNECT_TIMEOUT
        while not consumer.assignment():
            if loop.time() > deadline:
                raise ServiceUnavailableError(
                    f"Kafka at {bootstrap} sent no partitions of {topic} in "
                    f"{CONNECT_TIMEOUT:.0f}s: check 'journey stack status'")
            await asyncio.sleep(0.05)
        partitions = sorted(consumer.assignment())
        ends = await consumer.end_offsets(partitions)
        await consumer.seek_to_beginning(*partitions)
        pending = {tp for tp in partitions if await consumer.position(tp) < ends[tp]}
        last_progress = loop.time()
        while pending:
            batches = await consumer.getmany(*pending, timeout_ms=500)
            for tp, records in batches.items():
                for record in records:
                    if record.offset < ends[tp]:
                        result = on_record(record)
                        if result is not None:
                            await result
            # Positions also move over transaction markers, which carry no record.
            done = {tp for tp in pending if await consumer.position(tp) >= ends[tp]}
            if batches or done:
                last_progress = loop.time()
            elif loop.time() - last_progress > stall_timeout:
                stuck = min(pending)
                raise ServiceUnavailableError(
                    f"Kafka at {bootstrap} stopped delivering {topic} (partition "
                    f"{stuck.partition} at offset {await consumer.position(stuck)} of "
                    f"{ends[stuck]}) for {stall_timeout:.0f}s: check 'journey stack status'")
            pending -= done
    except KafkaError as exc:
        what = " ".join(f"{type(exc).__name__}: {exc}".split())
        raise ServiceUnavailableError(
            f"Kafka at {bootstrap} failed while reading {topic} ({what}): is it still up? "
            "See 'journey stack status', start it with 'journey stack up'") from exc
    finally:
        await consumer.stop()
    return True
