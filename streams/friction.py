"""The friction detectors: touchpoints -> friction, exactly once, deadlines by event time.

Wiring only (the rules are `projections.friction`): the detector reads `touchpoints`
in its own consumer group (`<projection id>-friction`), keeps each customer key's
`FrictionState` in memory per partition, and per batch writes, in ONE Kafka
transaction, the friction found, the changed states and the partition's watermark
to the compacted `friction-state` changelog, and the batch's offsets. A restart, a
rebalance or a failed batch therefore resumes from a state that matches the committed
offsets exactly, and re-detects nothing twice; friction ids are deterministic anyway,
so even a replay (a new generation) yields the same ids.

Deadlines run on event time: each partition's watermark is the newest `occurred_at`
it has seen minus the allowed lateness. After every touchpoint that moves the
watermark, every customer of that partition with a deadline at or before it is
expired (a heap keyed by each customer's next deadline), so a breach is reported
even if that customer never sends another event - as soon as any event of the
partition is `allowed_lateness` past the deadline. Live processing and a replay see
the same touchpoints in the same per-partition order, hence the same watermarks and
the same friction.

Identity: the state is keyed by the touchpoint's customer key (its customer_id, or the
anonymous id before identification). Friction of a not-yet-identified visitor carries
the anonymous id; queries stitch it to the customer through the identities table.
"""

from __future__ import annotations

import asyncio
import heapq
import logging
import socket
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Final

import faust
import orjson

from journey.settings import Settings
from projections.friction import (
    Finding,
    FrictionConfig,
    FrictionState,
    detect,
    expire,
    next_deadline,
)
from projections.friction.rules import KIND_IN_ID, epoch_ms
from schemas.codec import InvalidTouchpointError, decode_stored_touchpoint, encode_json
from schemas.friction import FrictionEvent, friction_id_for
from schemas.touchpoint import identity_key
from streams.batch import (
    FIRST_RETRY_SECONDS,
    MAX_RETRY_SECONDS,
    BatchService,
    Rebalance,
    run_in_worker,
)
from streams.kafka import (
    KafkaError,
    TopicPartition,
    make_consumer,
    make_producer,
    read_partitions_to_end,
)
from streams.metrics import Metrics
from streams.topics import Topics

log = logging.getLogger(__name__)

POLL_MS = 200
WATERMARK_KEY: Final = b"\x00watermark"
NO_TIME: Final = -(2**62)


def friction_group(settings: Settings) -> str:
    """The detector's consumer group: per generation, so a replay detects afresh."""
    return f"{settings.projection_id}-friction"


def friction_event(finding: Finding, customer_key: str, stage: str | None,
                   detected_at: datetime) -> FrictionEvent:
    """The EVENTS.md friction event of a finding, with its deterministic id."""
    kind = finding.kind if finding.rule in KIND_IN_ID else None
    return FrictionEvent(
        friction_id=friction_id_for(finding.rule, customer_key, finding.evidence, kind),
        rule=finding.rule,
        kind=finding.kind,
        severity=finding.severity,
        customer_key=customer_key,
        occurred_at=datetime.fromtimestamp(finding.occurred_at / 1000, UTC),
        detected_at=detected_at,
        stage=stage or "",
        case_id=finding.case_id,
        channel=finding.channel,
        evidence=sorted(finding.evidence),
        message=finding.message,
    )


@dataclass
class PartitionState:
    """One source partition's customers, watermark and deadline schedule."""

    states: dict[str, FrictionState] = field(default_factory=dict)
    max_seen: int = NO_TIME
    watermark: int = NO_TIME
    # (deadline, key) entries; `scheduled` holds each key's live one, the rest are stale
    heap: list[tuple[int, str]] = field(default_factory=list)
    scheduled: dict[str, int] = field(default_factory=dict)

    def schedule(self, key: str, state: FrictionState | None, config: FrictionConfig) -> None:
        if state is None:
            self.scheduled.pop(key, None)
            return
        due = next_deadline(state, config)
        current = self.scheduled.get(key)
        if current is None or due < current:
            self.scheduled[key] = due
            heapq.heappush(self.heap, (due, key))

    def watermark_record(self) -> bytes:
        return orjson.dumps({"max_seen": self.max_seen, "watermark": self.watermark})


class FrictionDetector(BatchService):
    """Runs every enabled rule over `touchpoints`; see the module docstring."""

    name = "friction detector"

    def __init__(self, settings: Settings, spec: Topics, metrics: Metrics,
                 config: FrictionConfig) -> None:
        super().__init__()
        self.settings = settings
        self.metrics = metrics
        self.config = config
        self.source = spec.touchpoints.name
        self.friction_topic = spec.friction.name
        self.changelog = spec.friction_state.name
        self.group_id = friction_group(settings)
        self.batch_size = settings.validator_batch_size
        self.partitions: dict[int, PartitionState] = {}
        self._reader: Any = None

    # ---- the loop -------------------------------------------------------------------

    async def run(self) -> None:
        self._running = True
        self._done.clear()
        consumer = make_consumer(self.settings.bootstrap, group_id=self.group_id,
                                 max_poll_records=self.batch_size)
        consumer.subscribe([self.source], listener=Rebalance(self))
        # One transactional id per worker: a restarted worker fences its former self.
        producer = make_producer(
            self.settings.bootstrap, client_id=f"{self.settings.app_id}-friction",
            transactional_id=f"{self.group_id}-{socket.gethostname()}-"
                             f"{self.settings.worker_port}")
        self._reader = make_consumer(self.settings.bootstrap, group_id=None)
        self._consumer = consumer
        try:
            await self._reader.start()
            await producer.start()
            await consumer.start()
            while not self._stopping.is_set():
                got = await consumer.getmany(timeout_ms=POLL_MS, max_records=self.batch_size)
                generation = self._generation
                if not await self._wait_ready():
                    break
                async with self._lock:
                    if generation != self._generation:
                        continue  # fetched before a rebalance: it comes again
                    if got:
                        await self._handle(got, producer, consumer)
        finally:
            self._ready.clear()
            self._consumer = None
            try:
                await consumer.stop()
                await producer.stop()
            finally:
                await self._reader.stop()
                self._running = False
                self._done.set()

    async def _handle(self, got: dict[Any, list[Any]], producer: Any, consumer: Any) -> None:
        """Detect over one batch and commit it in one transaction; on failure, rewind."""
        events, changed, offsets = self._detect(got)
        try:
            await self._commit(producer, events, changed, offsets)
        except KafkaError as exc:
            self.metrics.send_failures += 1
            log.warning("friction batch transaction failed (%s: %s): rewinding to the "
                        "committed state", type(exc).__name__, exc)
            delay = FIRST_RETRY_SECONDS
            while not await self._pause(delay):
                try:
                    await self._rewind(consumer)
                    return  # the batch comes again from the committed offsets
                except KafkaError as again:
                    log.warning("rewind failed (%s: %s); retrying in %.1fs",
                                type(again).__name__, again, delay)
                    delay = min(delay * 2, MAX_RETRY_SECONDS)
            return
        for _, _, rule in events:
            self.metrics.friction[rule] += 1
        self.metrics.friction_read += sum(len(m) for m in got.values())

    def _detect(self, got: dict[Any, list[Any]]) -> tuple[
            list[tuple[bytes, bytes, str]], dict[int, set[str]], dict[Any, int]]:
        config = self.config
        lateness = config.allowed_lateness
        now = datetime.now(UTC)
        events: list[tuple[bytes, bytes, str]] = []
        changed: dict[int, set[str]] = {}
        offsets: dict[Any, int] = {}

        def emit(found: Iterable[Finding], key: str, state: FrictionState | None) -> None:
            stage = state.stage if state is not None else None
            for finding in found:
                event = friction_event(finding, key, stage, now)
                events.append((key.encode(), encode_json(event.model_dump(mode="json")),
                               finding.rule))

        for tp, messages in got.items():
            if not messages:
                continue
            part = self.partitions[tp.partition]
            touched = changed.setdefault(tp.partition, set())
            for msg in messages:
                try:
                    touchpoint = decode_stored_touchpoint(msg.value or b"")
                except InvalidTouchpointError as exc:
                    self.metrics.friction_skipped += 1
                    log.error("%s[%d]@%d is not a touchpoint, skipped: %s", msg.topic,
                              msg.partition, msg.offset, exc)
                    continue
                key = touchpoint.customer_key or identity_key(touchpoint)
                state, found = detect(part.states.get(key), touchpoint, config)
                part.states[key] = state
                part.schedule(key, state, config)
                touched.add(key)
                if found:
                    emit(found, key, state)
                part.max_seen = max(part.max_seen, epoch_ms(touchpoint))
                if part.max_seen - lateness > part.watermark:
                    part.watermark = part.max_seen - lateness
                    self._expire(part, touched, emit)
            offsets[tp] = messages[-1].offset + 1
        return events, changed, offsets

    def _expire(self, part: PartitionState, touched: set[str], emit: Any) -> None:
        """Expire every customer of the partition whose deadline the watermark passed."""
        heap, watermark = part.heap, part.watermark
        while heap and heap[0][0] <= watermark:
            due, key = heapq.heappop(heap)
            if part.scheduled.get(key) != due:
                continue  # superseded by an earlier deadline that already ran
            del part.scheduled[key]
            state = part.states.get(key)
            if state is None:
                continue
            after, found = expire(state, watermark, self.config)
            if after is None:
                del part.states[key]
            else:
                part.states[key] = after
                part.schedule(key, after, self.config)
            touched.add(key)
            if found:
                emit(found, key, after or state)

    async def _commit(self, producer: Any, events: list[tuple[bytes, bytes, str]],
                      changed: dict[int, set[str]], offsets: dict[Any, int]) -> None:
        async with producer.transaction():
            futures = [await producer.send(self.friction_topic, value=value, key=key)
                       for key, value, _ in events]
            for partition, keys in changed.items():
                part = self.partitions[partition]
                for key in keys:
                    state = part.states.get(key)
                    value = None if state is None else orjson.dumps(state.to_dict())
                    futures.append(await producer.send(
                        self.changelog, key=key.encode(), value=value, partition=partition))
                futures.append(await producer.send(
                    self.changelog, key=WATERMARK_KEY, value=part.watermark_record(),
                    partition=partition))
            if offsets:
                await producer.send_offsets_to_transaction(offsets, self.group_id)
            await asyncio.gather(*futures)

    async def _rewind(self, consumer: Any) -> None:
        """Back to the last committed transaction: its state and its offsets."""
        assigned = sorted(consumer.assignment())
        self._drop_state(self._all_partitions())
        await self._restore_state(assigned)
        for tp, offset in (await self._resume_offsets(assigned)).items():
            consumer.seek(TopicPartition(self.source, tp), offset)

    # ---- state per partition ------------------------------------------------------------

    def _drop_state(self, partitions: Iterable[int]) -> None:
        for partition in partitions:
            self.partitions.pop(partition, None)

    def _all_partitions(self) -> list[int]:
        return list(self.partitions)

    async def _restore_state(self, assigned: list[Any]) -> None:
        """Read each assigned partition's changelog to its end (committed records only)."""
        if not assigned:
            return
        tps = [TopicPartition(self.changelog, tp.partition) for tp in assigned]
        restored = {tp.partition: PartitionState() for tp in tps}
        await read_partitions_to_end(
            self._reader, tps, lambda record: self._replay(restored[record.partition], record))
        for part in restored.values():
            for key, state in part.states.items():
                part.schedule(key, state, self.config)
        self.partitions.update(restored)
        log.info("friction state restored for partitions %s: %s customers",
                 sorted(restored), {p: len(s.states) for p, s in sorted(restored.items())})

    def _replay(self, part: PartitionState, record: Any) -> None:
        if record.key == WATERMARK_KEY:
            data = orjson.loads(record.value)
            part.max_seen, part.watermark = data["max_seen"], data["watermark"]
            return
        key = record.key.decode()
        if record.value is None:
            part.states.pop(key, None)
        else:
            part.states[key] = FrictionState.from_dict(orjson.loads(record.value))


def install_friction(app: faust.App, settings: Settings, spec: Topics, metrics: Metrics,
                     config: FrictionConfig) -> FrictionDetector:
    """Run the detector in the worker: started with the app, drained on shutdown."""
    detector = FrictionDetector(settings, spec, metrics, config)
    run_in_worker(app, detector)
    return detector
