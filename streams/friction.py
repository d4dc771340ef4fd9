"""The friction detectors: touchpoints -> friction, exactly once, whatever the arrival order.

Wiring only: the rules are `projections.friction`, and `projections.friction.timeline`
makes each customer's friction a function of their touchpoints (an in-order replay of
them), not of the order they arrive in. The detector reads `touchpoints` in its own
consumer group (`<projection id>-friction`) as a `TransactionalService`: per batch ONE
Kafka transaction carries the friction published and retracted, the changed timelines
(compacted `<projection id>.friction-timeline`) and the consumed offsets.

Per batch and partition: the touchpoints are grouped by customer key and each
customer's timeline advances once with all of them; then the partition's watermark
(its newest event time minus the allowed lateness) is moved, and every customer whose
next deadline it passed is evaluated again, so a breach is reported even if that
customer never sends another event. Late evidence that disproves published friction
retracts it (a `status: retracted` record with the same friction id); late evidence
that proves a passed deadline publishes it at once, dated at the deadline.

Store keys of a partition: `w` -> the watermark; `c<customer key>` -> the timeline
without its touchpoints; `e<customer key>\\0<event id>` -> one unsealed touchpoint
(a `FrictionSignal`); `d<moment, 8 bytes big-endian><customer key>` -> the schedule of
next deadlines. Nothing is kept in memory but a bounded cache of recent timelines.

Identity: the state is keyed by the touchpoint's customer key (its customer_id, or the
anonymous id before identification). Friction of a not-yet-identified visitor carries
the anonymous id; queries stitch it to the customer through the identities table.
"""

from __future__ import annotations

import logging
from collections import Counter, OrderedDict
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Final

import faust
import orjson

from projections.friction import Finding, FrictionConfig
from projections.friction.signal import FrictionSignal, signal_of
from projections.friction.timeline import (
    NO_TIME,
    Advanced,
    Timeline,
    advance,
    friction_id_of,
    next_moment,
)
from schemas.codec import InvalidTouchpointError, decode_stored_touchpoint, encode_json
from schemas.friction import FrictionEvent
from schemas.touchpoint import identity_key
from streams.batch import RepeatedWarning, TransactionalService, run_in_worker, transactional_id
from streams.kafka import Record
from streams.metrics import Metrics
from streams.settings import Settings
from streams.store import PartitionStore
from streams.topics import Topics

log = logging.getLogger(__name__)

WATERMARK_KEY: Final = b"w"
CACHE_SIZE: Final = 20_000  # timelines kept decoded in memory, least recently used first out
_MOMENT_BYTES: Final = 8
_MOMENT_BIAS: Final = 2**63  # moments may be negative (NO_TIME): biased to sort as unsigned


def friction_group(settings: Settings) -> str:
    """The detector's consumer group: per generation, so a replay detects afresh."""
    return f"{settings.projection_id}-friction"


def friction_event(finding: Finding, customer_key: str, detected_at: datetime, *,
                   retracted: bool = False) -> FrictionEvent:
    """The EVENTS.md friction event of a finding, with its deterministic id."""
    return FrictionEvent(
        friction_id=friction_id_of(finding, customer_key),
        rule=finding.rule,
        kind=finding.kind,
        severity=finding.severity,
        customer_key=customer_key,
        occurred_at=datetime.fromtimestamp(finding.occurred_at / 1000, UTC),
        detected_at=detected_at,
        stage=finding.stage or "",
        case_id=finding.case_id,
        channel=finding.channel,
        evidence=sorted(finding.evidence),
        message=finding.message,
        status="retracted" if retracted else "detected",
    )


def meta_key(key: str) -> bytes:
    return b"c" + key.encode()


def event_key(key: str, event_id: str) -> bytes:
    return b"e" + key.encode() + b"\x00" + event_id.encode()


def moment_key(moment: int, key: str) -> bytes:
    return b"d" + (moment + _MOMENT_BIAS).to_bytes(_MOMENT_BYTES, "big") + key.encode()


@dataclass
class _Watermark:
    max_seen: int = NO_TIME
    watermark: int = NO_TIME

    def encode(self) -> bytes:
        return orjson.dumps({"max_seen": self.max_seen, "watermark": self.watermark})


@dataclass
class _Batch:
    now: datetime
    out: list[Record] = field(default_factory=list)
    tally: Counter[str] = field(default_factory=Counter)


class FrictionDetector(TransactionalService):
    """Runs every enabled rule over `touchpoints`; see the module docstring."""

    name = "friction detector"

    def __init__(self, settings: Settings, spec: Topics, metrics: Metrics,
                 config: FrictionConfig) -> None:
        group = friction_group(settings)
        super().__init__(
            settings.bootstrap, sources=[spec.touchpoints.name], group_id=group,
            transactional_id=transactional_id(group, settings.worker_port),
            client_id=f"{settings.projection_id}-friction",
            batch_size=settings.validator_batch_size, changelog=spec.friction_state.name,
            store_root=settings.worker_dir / settings.projection_id / "friction")
        self.metrics = metrics
        self.config = config
        self.friction_topic = spec.friction.name
        self._cache: OrderedDict[tuple[int, str], tuple[Timeline, int | None]] = OrderedDict()
        self._late = RepeatedWarning(log)

    # ---- a batch ----------------------------------------------------------------------

    def handle(self, got: dict[Any, list[Any]]) -> tuple[list[Record], Counter[str]]:
        batch = _Batch(now=datetime.now(UTC))
        for tp, messages in got.items():
            store = self.stores[tp.partition]
            mark = self._watermark(store)
            by_key: dict[str, list[tuple[FrictionSignal, Any]]] = {}
            for msg in messages:
                batch.tally["read"] += 1
                try:
                    touchpoint = decode_stored_touchpoint(msg.value or b"")
                except InvalidTouchpointError as exc:
                    batch.tally["skipped"] += 1
                    log.error("%s[%d]@%d is not a touchpoint, skipped: %s", msg.topic,
                              msg.partition, msg.offset, exc)
                    continue
                signal = signal_of(touchpoint)
                key = touchpoint.customer_key or identity_key(touchpoint)
                by_key.setdefault(key, []).append((signal, msg))
                mark.max_seen = max(mark.max_seen, signal.at)
            if mark.max_seen - self.config.allowed_lateness > mark.watermark:
                mark.watermark = mark.max_seen - self.config.allowed_lateness
            for key, arrived in by_key.items():
                self._advance(batch, store, key, arrived, mark.watermark)
            self._expire_due(batch, store, mark.watermark, set(by_key))
            store.put(WATERMARK_KEY, mark.encode())
        return batch.out, batch.tally

    def _advance(self, batch: _Batch, store: PartitionStore, key: str,
                 arrived: list[tuple[FrictionSignal, Any]], watermark: int) -> None:
        timeline, before = self._timeline(store, key)
        result = advance(timeline, [s for s, _ in arrived], watermark, self.config, key)
        if result.too_late:
            late = {s.event_id for s in result.too_late}
            for signal, msg in arrived:
                if signal.event_id in late:
                    batch.tally["too_late"] += 1
                    self._late.warn(
                        "%s[%d]@%d: touchpoint %s of %s is more than max_lateness behind the "
                        "customer's newest event time: counted for journeys and tables, not "
                        "for friction", msg.topic, msg.partition, msg.offset, signal.event_id,
                        key)
        batch.tally["repeated"] += result.repeated
        self._save(batch, store, key, result, before, watermark)

    def _expire_due(self, batch: _Batch, store: PartitionStore, watermark: int,
                    done: set[str]) -> None:
        """Evaluate again every customer whose scheduled moment the watermark passed."""
        if watermark == NO_TIME:
            return
        bound = moment_key(watermark + 1, "")
        for entry in store.keys_between(b"d", bound, limit=1_000_000):
            key = entry[1 + _MOMENT_BYTES:].decode()
            if key in done:
                continue  # advanced in this batch, with this watermark: rescheduled there
            done.add(key)
            timeline, moment = self._timeline(store, key)
            result = advance(timeline, [], watermark, self.config, key)
            self._save(batch, store, key, result, moment, watermark)

    def _save(self, batch: _Batch, store: PartitionStore, key: str, result: Advanced,
              scheduled: int | None, watermark: int) -> None:
        timeline = result.timeline
        for signal in result.added:
            store.put(event_key(key, signal.event_id), orjson.dumps(signal.to_dict()))
        for signal in result.sealed:
            store.put(event_key(key, signal.event_id), None)
        for _, finding in result.published:
            self._emit(batch, key, finding, retracted=False)
        for _, finding in result.retracted:
            self._emit(batch, key, finding, retracted=True)
        moment = next_moment(timeline, watermark, self.config)
        if scheduled is not None and scheduled != moment:
            store.put(moment_key(scheduled, key), None)
        if moment is None:
            # Nothing pending and quiet for customer_ttl: forget the customer.
            for signal in timeline.events:
                store.put(event_key(key, signal.event_id), None)
            store.put(meta_key(key), None)
            self._cache.pop((store.partition, key), None)
            batch.tally["forgotten"] += 1
            return
        if moment != scheduled:
            store.put(moment_key(moment, key), b"")
        meta = timeline.meta_dict()
        meta["due"] = moment
        store.put(meta_key(key), orjson.dumps(meta))
        self._remember(store.partition, key, timeline, moment)

    def _emit(self, batch: _Batch, key: str, finding: Finding, *, retracted: bool) -> None:
        event = friction_event(finding, key, batch.now, retracted=retracted)
        batch.out.append(Record(self.friction_topic, key.encode(),
                                encode_json(event.model_dump(mode="json"))))
        batch.tally[("retracted:" if retracted else "rule:") + finding.rule] += 1

    # ---- state ------------------------------------------------------------------------

    def _watermark(self, store: PartitionStore) -> _Watermark:
        raw = store.get(WATERMARK_KEY)
        if raw is None:
            return _Watermark()
        data = orjson.loads(raw)
        return _Watermark(data["max_seen"], data["watermark"])

    def _timeline(self, store: PartitionStore, key: str) -> tuple[Timeline, int | None]:
        """The customer's timeline and its scheduled moment (None: nothing scheduled)."""
        cached = self._cache.get((store.partition, key))
        if cached is not None:
            self._cache.move_to_end((store.partition, key))
            return cached
        raw = store.get(meta_key(key))
        if raw is None:
            return Timeline(), None
        prefix = b"e" + key.encode() + b"\x00"
        events = [FrictionSignal.from_dict(orjson.loads(v)) for _, v in store.scan(prefix)]
        meta = orjson.loads(raw)
        return Timeline.from_meta(meta, events), meta.get("due")

    def _remember(self, partition: int, key: str, timeline: Timeline, due: int) -> None:
        self._cache[(partition, key)] = (timeline, due)
        self._cache.move_to_end((partition, key))
        while len(self._cache) > CACHE_SIZE:
            self._cache.popitem(last=False)

    def forgotten(self, partition: int) -> None:
        # Whatever the cache holds of the partition may be ahead of its committed state.
        for cached in [k for k in self._cache if k[0] == partition]:
            del self._cache[cached]

    def committed(self, tally: Counter[str]) -> None:
        metrics = self.metrics
        for name, n in tally.items():
            if name.startswith("rule:"):
                metrics.friction[name[5:]] += n
            elif name.startswith("retracted:"):
                metrics.friction_retracted[name[10:]] += n
        metrics.friction_read += tally["read"]
        metrics.friction_skipped += tally["skipped"]
        metrics.friction_too_late += tally["too_late"]


def install_friction(app: faust.App, settings: Settings, spec: Topics, metrics: Metrics,
                     config: FrictionConfig) -> FrictionDetector:
    """Run the detector in the worker: started with the app, drained on shutdown."""
    detector = FrictionDetector(settings, spec, metrics, config)
    run_in_worker(app, detector)
    return detector
