"""The journey projection on real partition stores, whatever the partitions' relative lag.

The workload generator's journeys (anonymous visitors who identify, late events, service
cases, ...) are fed through the real projection with its inbox commands looped back,
each partition of `touchpoints` and of the inbox drained at its own random pace - so
anonymous touchpoints often arrive after their identify, as forwarded commands, long
after the customer's own. Afterwards every touchpoint counts once in its person's
journey and every person's stored stage chain is one consistent path in event time.
"""

from __future__ import annotations

import itertools
import random
import tempfile
from collections import Counter
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import orjson
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from journey.settings import Settings
from journey.workload import generate
from projections.ingest import Admitted, admit
from projections.journey import JourneyConfig
from streams.journeys import JOURNEY_PREFIX, JourneyProjection
from streams.kafka import DefaultPartitioner, TopicPartition
from streams.metrics import Metrics
from streams.store import PartitionStore
from streams.topics import topics
from tests.unit.streams.fakes import Message

PARTITIONS = 3
NOW = datetime(2026, 3, 1, tzinfo=UTC)


def project(seed: int, lag: dict[int, float], home: Path) -> tuple[
        list[dict[str, Any]], dict[str, dict[str, Any]], list[Admitted]]:
    workload = generate(60, seed, start=NOW - timedelta(days=30))
    partitioner, everyone = DefaultPartitioner(), list(range(PARTITIONS))
    settings_ = Settings(home=home)
    spec = topics(settings_)
    # a small window, so that late touchpoints often land before the folded part
    projection = JourneyProjection(settings_, spec, Metrics(), JourneyConfig(recent_limit=6))
    for p in everyone:
        store = PartitionStore(home / f"p{p}", projection.changelog or "", p)
        store.open()
        projection.stores[p] = store
    queues: dict[tuple[str, int], list[tuple[bytes, bytes]]] = {
        (t, p): [] for t in (spec.touchpoints.name, spec.journey_inbox.name) for p in everyone}
    admitted: dict[str, Admitted] = {}
    for message in workload.messages:
        outcome = admit(message.value, now=NOW)
        if isinstance(outcome, Admitted) and outcome.event_id not in admitted:
            admitted[outcome.event_id] = outcome
            p = partitioner(outcome.key, everyone, everyone)
            queues[(spec.touchpoints.name, p)].append((outcome.key, outcome.value))
    rng = random.Random(seed)
    rows: list[dict[str, Any]] = []
    offset = 0
    try:
        while any(queues.values()):
            got: dict[Any, list[Message]] = {}
            for (topic, p), queue in queues.items():
                # a lagging partition takes little while anything else is waiting
                waiting = any(q for k, q in queues.items() if k != (topic, p))
                n = len(queue) if not waiting else int(rng.randint(0, 200) * lag[p])
                taken, queues[(topic, p)] = queue[:n], queue[n:]
                if taken:
                    got[TopicPartition(topic, p)] = [
                        Message(topic, p, offset + i, k, v) for i, (k, v) in enumerate(taken)]
                    offset += len(taken)
            if not got:
                continue
            out, _ = projection.handle(got)
            for store in projection.stores.values():
                store.changelog_records()
                store.commit(None)
            for record in out:
                if record.topic == spec.journey_inbox.name:
                    p = partitioner(record.key, everyone, everyone)
                    queues[(record.topic, p)].append((record.key or b"", record.value or b""))
                elif record.topic == spec.journey_transitions.name:
                    rows.append(orjson.loads(record.value or b""))
        journeys = {key[1:].decode(): orjson.loads(value)
                    for store in projection.stores.values()
                    for key, value in store.scan(JOURNEY_PREFIX)}
    finally:
        for store in projection.stores.values():
            store.close()
    return rows, journeys, list(admitted.values())


def visible(rows: list[dict[str, Any]]) -> dict[str, list[dict[str, Any]]]:
    """The transitions a ReplacingMergeTree(version, is_deleted) FINAL shows, per person."""
    newest: dict[tuple[str, str], dict[str, Any]] = {}
    for row in rows:
        key = (row["customer_key"], row["transition_id"])
        if key not in newest or row["version"] >= newest[key]["version"]:
            newest[key] = row
    chains: dict[str, list[dict[str, Any]]] = {}
    for row in newest.values():
        if not row["is_deleted"]:
            chains.setdefault(row["customer_key"], []).append(row)
    return {k: sorted(v, key=lambda r: (datetime.fromisoformat(r["occurred_at"]),
                                        r["event_id"]))
            for k, v in chains.items()}


@settings(max_examples=8, deadline=None, suppress_health_check=list(HealthCheck))
@given(seed=st.integers(0, 2**31),
       lag=st.lists(st.sampled_from([0.02, 0.3, 1.0]), min_size=PARTITIONS,
                    max_size=PARTITIONS))
def test_counts_are_exact_and_every_stage_chain_is_one_path(seed: int, lag: list[float]) -> None:
    with tempfile.TemporaryDirectory() as home:
        rows, journeys, admitted = project(seed, dict(enumerate(lag)), Path(home))
    assert sum(j["touchpoints"] for j in journeys.values()) == len(admitted), \
        "every touchpoint counted once"
    assert Counter(j["customer_key"] for j in journeys.values()).most_common(1)[0][1] == 1
    for person, chain in visible(rows).items():
        if person not in journeys:
            # an anonymous journey merged into its customer: the transitions it had folded
            # out of its window before the merge stay under the anonymous id (README)
            continue
        stages = [(r["from_stage"], r["to_stage"]) for r in chain]
        assert chain[0]["from_stage"] == "", (person, stages)
        for before, after in itertools.pairwise(chain):
            assert after["from_stage"] == before["to_stage"], (person, stages)
        assert journeys[person]["stage"] == chain[-1]["to_stage"], (person, stages)
