"""The dedup stage: the validated topic -> `touchpoints`, each event id once within the window.

The validator keys every valid touchpoint by its customer key, so all repeats of an
event id - however the producer keyed or partitioned them on the ingest topic - meet
in one partition of the validated topic. This stage reads that topic (group
`<app id>-dedup`) and remembers, per partition, each event id it passed on and when it
first saw it, in a `PartitionStore` (RocksDB, with the compacted `<app id>.dedup-state`
changelog as its truth). A repeat within `JOURNEY_DEDUP_WINDOW_HOURS` is dropped and
counted; anything else goes to the same partition of `touchpoints`, bytes unchanged.
Per batch the touchpoints, the window's changes and the consumed offsets are one Kafka
transaction, so the window always matches what `touchpoints` holds, through crashes,
restarts and rebalances.

Store keys: `i<event id>` -> first seen (epoch seconds, text) and `t<first seen ms, 8
bytes big-endian><event id>` -> empty, a time index from which ids leave the window.
"""

from __future__ import annotations

import logging
import time
from collections import Counter
from typing import Any, Final

import faust
import orjson

from projections.ingest import DedupWindow
from streams.batch import TransactionalService, run_in_worker, transactional_id
from streams.kafka import Record
from streams.metrics import Metrics
from streams.settings import Settings
from streams.store import PartitionStore
from streams.topics import Topics
from streams.validator import EVENT_ID_HEADER

log = logging.getLogger(__name__)

SWEEP_EVERY_SECONDS: Final = 600.0
SWEEP_LIMIT: Final = 50_000  # ids forgotten per batch at most, so a transaction stays small


class DedupLayoutError(RuntimeError):
    """The validated topic, `touchpoints` and the changelog do not share a partition count."""


def dedup_group(settings: Settings) -> str:
    """Stable across generations: a replay does not deduplicate the event store again."""
    return f"{settings.app_id}-dedup"


def id_key(event_id: str) -> bytes:
    return b"i" + event_id.encode()


def time_key(first_seen: float, event_id: str) -> bytes:
    return b"t" + int(first_seen * 1000).to_bytes(8, "big") + event_id.encode()


def event_id_of(message: Any) -> str:
    """The event id the validator put in the header (decoded from the value otherwise)."""
    for name, value in message.headers or ():
        if name == EVENT_ID_HEADER:
            return str(value.decode())
    return str(orjson.loads(message.value)["event_id"])


class DedupStage(TransactionalService):
    """Drops repeats of an event id within the window; see the module docstring."""

    name = "dedup stage"

    def __init__(self, settings: Settings, spec: Topics, metrics: Metrics, *,
                 sweep_seconds: float = SWEEP_EVERY_SECONDS) -> None:
        group = dedup_group(settings)
        super().__init__(
            settings.bootstrap, sources=[spec.validated.name], group_id=group,
            transactional_id=transactional_id(group, settings.worker_port),
            client_id=f"{settings.app_id}-dedup", batch_size=settings.validator_batch_size,
            changelog=spec.dedup_state.name,
            store_root=settings.worker_dir / f"{settings.app_id}.dedup")
        self.metrics = metrics
        self.spec = spec
        self.window = DedupWindow(settings.dedup_window_hours * 3600.0)
        self.sweep_seconds = sweep_seconds
        self._next_sweep = time.monotonic() + sweep_seconds

    async def check(self, producer: Any) -> None:
        counts = {name: len(await producer.partitions_for(name)) for name in
                  (self.spec.validated.name, self.spec.touchpoints.name,
                   self.spec.dedup_state.name)}
        if len(set(counts.values())) != 1:
            raise DedupLayoutError(
                f"the validated topic, the event store and the dedup changelog need the same "
                f"number of partitions, found {counts}: the worker creates them with "
                "JOURNEY_TOPIC_PARTITIONS partitions")

    def due(self) -> bool:
        return time.monotonic() >= self._next_sweep

    def handle(self, got: dict[Any, list[Any]]) -> tuple[list[Record], Counter[str]]:
        now = time.time()
        out: list[Record] = []
        tally: Counter[str] = Counter()
        store_topic = self.spec.touchpoints.name
        for tp, messages in got.items():
            store = self.stores[tp.partition]
            for msg in messages:
                event_id = event_id_of(msg)
                if not self.remember(store, event_id, now):
                    tally["duplicates"] += 1
                    continue
                tally["valid"] += 1
                out.append(Record(store_topic, msg.key, msg.value, tp.partition))
        if self.due():
            self._next_sweep = time.monotonic() + self.sweep_seconds
            for store in self.stores.values():
                tally["forgotten"] += self.forget_expired(store, now)
        return out, tally

    def remember(self, store: PartitionStore, event_id: str, now: float) -> bool:
        """True for an id not seen within the window (now remembered), False for a repeat."""
        key = id_key(event_id)
        seen = store.get(key)
        if seen is not None:
            first_seen = float(seen)
            if self.window.is_repeat(first_seen, now):
                return False
            store.put(time_key(first_seen, event_id), None)  # seen again after its window
        store.put(key, repr(now).encode())
        store.put(time_key(now, event_id), b"")
        return True

    def forget_expired(self, store: PartitionStore, now: float) -> int:
        """Forget the ids whose window has passed (at most SWEEP_LIMIT per call)."""
        # expired: first seen at or before now - window (ms resolution of the index)
        bound = b"t" + (int((now - self.window.window_seconds) * 1000) + 1).to_bytes(8, "big")
        forgotten = 0
        for key in store.keys_between(b"t", bound, limit=SWEEP_LIMIT):
            store.put(key, None)
            store.put(b"i" + key[9:], None)
            forgotten += 1
        if forgotten:
            log.info("dedup window of partition %d: forgot %d event ids", store.partition,
                     forgotten)
        return forgotten

    def committed(self, tally: Counter[str]) -> None:
        self.metrics.valid += tally["valid"]
        self.metrics.duplicates += tally["duplicates"]


def install_dedup(app: faust.App, settings: Settings, spec: Topics,
                  metrics: Metrics) -> DedupStage:
    """Run the dedup stage in the worker: started with the app, drained on shutdown."""
    stage = DedupStage(settings, spec, metrics)
    run_in_worker(app, stage)
    return stage
