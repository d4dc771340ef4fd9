"""The friction detector's wiring on real partition stores: events, retractions, schedule."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import orjson
import pytest

from journey.settings import Settings
from projections.friction import FrictionConfig
from projections.friction.rules import Finding
from schemas.friction import FrictionEvent, Severity, friction_id_for
from streams.friction import FrictionDetector, friction_event
from streams.kafka import TopicPartition
from streams.metrics import Metrics
from streams.store import PartitionStore
from streams.topics import topics
from tests.unit.schemas.examples import example
from tests.unit.streams.fakes import Message

A, B = str(uuid.UUID(int=1)), str(uuid.UUID(int=2))
NOW = datetime(2026, 1, 2, tzinfo=UTC)
T0 = datetime(2026, 1, 1, 9, tzinfo=UTC)


def finding(rule: str, kind: str, evidence: tuple[str, ...]) -> Finding:
    return Finding(rule, kind, Severity.HIGH, 1_700_000_000_000, evidence, "one sentence.",
                   case_id="k1", channel="chat", stage="retention")


def test_a_friction_event_has_the_documented_id_and_fields() -> None:
    event = friction_event(finding("repeat_contact", "case", (B, A)), "cust", NOW)
    assert event.friction_id == friction_id_for("repeat_contact", "cust", [A, B])
    assert event.evidence == [A, B]
    assert (event.rule, event.kind, event.stage, event.case_id, event.status) == (
        "repeat_contact", "case", "retention", "k1", "detected")
    assert event.occurred_at == datetime.fromtimestamp(1_700_000_000, UTC)
    assert FrictionEvent.model_validate(orjson.loads(event.model_dump_json())) == event
    retracted = friction_event(finding("repeat_contact", "case", (B, A)), "cust", NOW,
                               retracted=True)
    assert (retracted.friction_id, retracted.status) == (event.friction_id, "retracted")


def test_an_sla_breach_id_carries_its_kind() -> None:
    first = friction_event(finding("sla_breach", "first_response", (A,)), "cust", NOW)
    resolution = friction_event(finding("sla_breach", "resolution", (A,)), "cust", NOW)
    assert first.friction_id != resolution.friction_id
    assert first.friction_id == friction_id_for("sla_breach", "cust", [A], "first_response")


@pytest.fixture
def detector(tmp_path: Path) -> Iterator[FrictionDetector]:
    settings = Settings(home=tmp_path)
    d = FrictionDetector(settings, topics(settings), Metrics(), FrictionConfig())
    store = PartitionStore(tmp_path / "p0", d.changelog or "", 0)
    store.open()
    d.stores[0] = store
    yield d
    store.close()


def stored(type_: str, minutes: float, n: int, customer: str = "c1", **extra: Any) -> bytes:
    data = example(type_, event_id=str(uuid.UUID(int=n)), customer_id=customer,
                   occurred_at=(T0 + timedelta(minutes=minutes)).isoformat())
    data.update(extra)
    data["customer_key"] = customer
    data["received_at"] = NOW.isoformat()
    return orjson.dumps(data)


offset = 0


def run(detector: FrictionDetector, values: list[bytes]) -> list[dict[str, Any]]:
    """One batch; its store changes committed; the friction records it sends."""
    global offset
    tp = TopicPartition(detector.sources[0], 0)
    got = {tp: [Message(tp.topic, 0, offset + i, b"k", v) for i, v in enumerate(values)]}
    offset += len(values)
    out, tally = detector.handle(got)
    for store in detector.stores.values():
        store.changelog_records()
        store.commit(None)
    detector.committed(tally)
    return [orjson.loads(r.value or b"") for r in out if r.topic == detector.friction_topic]


def contact(minutes: float, n: int) -> bytes:
    return stored("support_contact", minutes, n, case_id="k1", channel="chat",
                  properties={"topic": "billing", "direction": "inbound"})


def test_a_breach_fired_by_the_watermark_is_retracted_by_a_late_answer(
        detector: FrictionDetector) -> None:
    assert run(detector, [contact(0, 1)]) == []
    # another customer's events move the watermark past the chat's 10-minute deadline
    fired = run(detector, [stored("page_view", 60, 2, customer="c2")])
    assert [(f["rule"], f["kind"], f["status"]) for f in fired] == [
        ("sla_breach", "first_response", "detected")]
    # the agent had answered after 5 minutes: that answer arrives now
    answer = stored("agent_response", 5, 3, case_id="k1", channel="chat", properties={})
    retracted = run(detector, [answer])
    assert [(f["friction_id"], f["status"]) for f in retracted] == [
        (fired[0]["friction_id"], "retracted")]
    assert detector.metrics.friction_retracted == {"sla_breach": 1}


def test_a_silent_customer_s_deadline_fires_from_the_schedule(
        detector: FrictionDetector) -> None:
    run(detector, [contact(0, 1), stored("page_view", 1, 2, customer="c2")])
    fired = run(detector, [stored("page_view", 30, 3, customer="c3")])
    assert [f["customer_key"] for f in fired] == ["c1"]
    occurred = datetime.fromisoformat(fired[0]["occurred_at"])
    assert occurred == T0 + timedelta(minutes=10), "dated at its deadline"
    assert run(detector, [stored("page_view", 90, 4, customer="c3")]) == [], "fired once"


def test_a_touchpoint_behind_the_sealed_part_is_counted_as_too_late(
        detector: FrictionDetector) -> None:
    run(detector, [stored("page_view", 0, 1), stored("page_view", 60, 2),
                   stored("page_view", 10 * 24 * 60, 3)])  # the first two are now sealed
    assert run(detector, [contact(30, 4)]) == []  # between sealed ones: cannot be placed
    assert detector.metrics.friction_too_late == 1
    # 10 days behind as well, but after everything sealed: still placed exactly
    assert {f["rule"] for f in run(detector, [contact(90, 5)])} == {"sla_breach"}
    assert detector.metrics.friction_too_late == 1


def test_history_imported_behind_a_far_ahead_watermark_is_not_forgotten_before_its_answer(
        detector: FrictionDetector) -> None:
    # other customers have pushed the partition's event time a year ahead
    run(detector, [stored("page_view", 365 * 24 * 60, 1, customer="now")])
    fired = run(detector, [contact(0, 2)])  # an old ticket arrives: its deadline has passed
    assert {f["kind"] for f in fired} == {"first_response", "resolution"}
    # the next row of the import answers it within both chat deadlines (10 min, 24 h)
    answer = stored("case_resolved", 5, 3, case_id="k1", channel="chat", properties={})
    retracted = run(detector, [answer])
    assert sorted((f["kind"], f["status"]) for f in retracted) == [
        ("first_response", "retracted"), ("resolution", "retracted")]
