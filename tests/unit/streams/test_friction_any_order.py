"""Friction is a function of each customer's touchpoints, not of their arrival order.

Random customers with friction of every kind and clean controls; random arrival orders
in which no touchpoint arrives more than `max_lateness` behind the newest event time its
customer had shown; random assignment to partitions and random batches. The friction the
real detector (on real RocksDB stores) ends up publishing must equal the in-order replay
of each customer's touchpoints (`evaluate`), field for field.
"""

from __future__ import annotations

import itertools
import random
import tempfile
import uuid
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import orjson
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from journey.settings import Settings
from projections.friction import FrictionConfig
from projections.friction.config import DAY, HOUR, MINUTE
from projections.friction.signal import signal_of
from projections.friction.timeline import evaluate
from schemas.codec import decode_stored_touchpoint
from streams.friction import FrictionDetector
from streams.kafka import TopicPartition
from streams.metrics import Metrics
from streams.store import PartitionStore
from streams.topics import topics
from tests.unit.schemas.examples import example

T0 = datetime(2026, 3, 1, tzinfo=UTC)
# Small lateness bounds, so that sealing, retractions and deadlines all happen.
CONFIG = replace(FrictionConfig(), max_lateness=2 * DAY, allowed_lateness=5 * MINUTE)
PARTITIONS = 3


def make(type_: str, at: int, customer: str, rng: random.Random, **fields: Any) -> bytes:
    data = example(type_, event_id=str(uuid.UUID(int=rng.getrandbits(128), version=4)),
                   customer_id=customer,
                   occurred_at=(T0 + timedelta(milliseconds=at)).isoformat())
    data.update(fields)
    data["customer_key"] = customer
    data["received_at"] = T0.isoformat()
    return orjson.dumps(data)


def journey_of(customer: str, rng: random.Random, clean: bool) -> list[bytes]:
    """One customer's touchpoints over about six days: cases answered late or in time,
    checkouts bought or left, feedback; a clean control only browses and is answered."""
    out: list[bytes] = []
    t = rng.randrange(0, 2 * DAY)
    for n in range(rng.randint(2, 9)):
        t += rng.choice([MINUTE, 7 * MINUTE, HOUR, 5 * HOUR, DAY])
        kind = "browse" if clean and n % 2 else rng.choice(
            ["case", "case", "checkout", "feedback", "browse", "cancel", "escalate"])
        if clean and kind != "browse":
            kind = "answered"
        case = f"{customer}-k{rng.randint(1, 2)}"
        channel = rng.choice(["chat", "phone", "email"])
        if kind == "browse":
            out.append(make("page_view", t, customer, rng))
        elif kind in ("case", "answered"):
            out.append(make("support_contact", t, customer, rng, case_id=case, channel=channel,
                            properties={"topic": "billing", "direction": "inbound"}))
            answer = MINUTE if kind == "answered" else rng.choice([MINUTE, 30 * MINUTE, 2 * DAY])
            if kind == "answered" or rng.random() < 0.7:
                out.append(make("agent_response", t + answer, customer, rng, case_id=case,
                                channel=channel, properties={}))
            if kind == "answered" or rng.random() < 0.5:
                out.append(make("case_resolved", t + answer + HOUR, customer, rng,
                                case_id=case, channel=channel, properties={}))
        elif kind == "checkout":
            out.append(make("checkout_started", t, customer, rng))
            if rng.random() < 0.5:
                out.append(make("purchase", t + rng.choice([HOUR, 2 * DAY]), customer, rng))
        elif kind == "feedback":
            out.append(make("survey_response", t, customer, rng,
                            properties={"survey": "csat", "score": rng.randint(1, 5)}))
        elif kind == "escalate":
            out.append(make("escalation", t, customer, rng, case_id=case, channel=channel))
        else:
            out.append(make("subscription_cancelled", t, customer, rng))
    return out


def arrival(events: list[bytes], rng: random.Random) -> list[bytes]:
    """A random order in which each event arrives less than max_lateness behind its
    customer's newest: sorted by event time plus a random delay below the bound."""
    def at(raw: bytes) -> int:
        return signal_of(decode_stored_touchpoint(raw)).at

    delayed = [(at(e) + rng.randrange(0, CONFIG.max_lateness), i, e)
               for i, e in enumerate(events)]
    return [e for _, _, e in sorted(delayed)]


def standing(records: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """The friction that stands after the records: the newest per id, unless retracted."""
    last: dict[str, dict[str, Any]] = {}
    for record in records:
        last[record["friction_id"]] = record
    return {fid: {k: v for k, v in r.items() if k not in ("detected_at", "status")}
            for fid, r in last.items() if r["status"] == "detected"}


def reference(by_customer: dict[str, list[bytes]], partition_of: dict[str, int],
              ) -> dict[str, dict[str, Any]]:
    from streams.friction import friction_event

    maxima: dict[int, int] = {}
    signals = {c: [signal_of(decode_stored_touchpoint(e)) for e in es]
               for c, es in by_customer.items()}
    for customer, sigs in signals.items():
        p = partition_of[customer]
        maxima[p] = max([maxima.get(p, -(2**62)), *(s.at for s in sigs)])
    out: dict[str, dict[str, Any]] = {}
    for customer, sigs in signals.items():
        watermark = maxima[partition_of[customer]] - CONFIG.allowed_lateness
        for fid, finding in evaluate(sigs, watermark, CONFIG, customer).items():
            record = friction_event(finding, customer, T0).model_dump(mode="json")
            out[fid] = {k: v for k, v in record.items() if k not in ("detected_at", "status")}
    return out


def detect_in_batches(stream: list[tuple[int, bytes]], cuts: list[int],
                      home: Path) -> list[dict[str, Any]]:
    settings_ = Settings(home=home)
    detector = FrictionDetector(settings_, topics(settings_), Metrics(), CONFIG)
    for p in range(PARTITIONS):
        store = PartitionStore(home / f"p{p}", detector.changelog or "", p)
        store.open()
        detector.stores[p] = store
    records: list[dict[str, Any]] = []
    try:
        offsets = [0] * PARTITIONS
        bounds = [0, *sorted(set(cuts)), len(stream)]
        for lo, hi in itertools.pairwise(bounds):
            got: dict[Any, list[Any]] = {}
            for p, raw in stream[lo:hi]:
                tp = TopicPartition(detector.sources[0], p)
                got.setdefault(tp, []).append(
                    type("M", (), {"topic": tp.topic, "partition": p, "offset": offsets[p],
                                   "key": b"k", "value": raw, "headers": []})())
                offsets[p] += 1
            out, _ = detector.handle(got)
            records.extend(orjson.loads(r.value or b"") for r in out)
            for store in detector.stores.values():
                store.changelog_records()
                store.commit(None)
            if hi % 3 == 0:
                detector._cache.clear()  # as after a restart: state from the stores only
    finally:
        for store in detector.stores.values():
            store.close()
    return records


@settings(max_examples=40, deadline=None, suppress_health_check=list(HealthCheck))
@given(seed=st.integers(0, 2**32), customers=st.integers(1, 12),
       cuts=st.lists(st.integers(0, 200), max_size=12))
def test_any_arrival_order_and_partitioning_finds_the_in_order_friction(
        seed: int, customers: int, cuts: list[int]) -> None:
    rng = random.Random(seed)
    by_customer = {f"c{n}": journey_of(f"c{n}", rng, clean=n % 4 == 0)
                   for n in range(customers)}
    partition_of = {c: rng.randrange(PARTITIONS) for c in by_customer}
    # customers interleave at random; each customer's own events arrive in an allowed order
    queues = {c: arrival(es, rng) for c, es in by_customer.items()}
    stream: list[tuple[int, bytes]] = []
    while any(queues.values()):
        customer = rng.choice([c for c, q in queues.items() if q])
        stream.append((partition_of[customer], queues[customer].pop(0)))
    with tempfile.TemporaryDirectory() as home:
        records = detect_in_batches(stream, cuts, Path(home))
    assert standing(records) == reference(by_customer, partition_of)
