"""The friction detector's wiring that needs no broker: events, schedule, restore records."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime
from types import SimpleNamespace

import orjson

from projections.friction import FrictionConfig, FrictionState
from projections.friction.rules import Finding
from projections.friction.state import PendingCheckout
from schemas.friction import FrictionEvent, Severity, friction_id_for
from streams.friction import WATERMARK_KEY, FrictionDetector, PartitionState, friction_event

CONFIG = FrictionConfig()
A, B = str(uuid.UUID(int=1)), str(uuid.UUID(int=2))
NOW = datetime(2026, 1, 2, tzinfo=UTC)


def finding(rule: str, kind: str, evidence: tuple[str, ...]) -> Finding:
    return Finding(rule, kind, Severity.HIGH, 1_700_000_000_000, evidence, "one sentence.",
                   case_id="k1", channel="chat")


def test_a_friction_event_has_the_documented_id_and_fields() -> None:
    event = friction_event(finding("repeat_contact", "case", (B, A)), "cust", "retention", NOW)
    assert event.friction_id == friction_id_for("repeat_contact", "cust", [A, B])
    assert event.evidence == [A, B]
    assert (event.rule, event.kind, event.stage, event.case_id) == (
        "repeat_contact", "case", "retention", "k1")
    assert event.occurred_at == datetime.fromtimestamp(1_700_000_000, UTC)
    assert FrictionEvent.model_validate(orjson.loads(event.model_dump_json())) == event


def test_an_sla_breach_id_carries_its_kind() -> None:
    first = friction_event(finding("sla_breach", "first_response", (A,)), "cust", None, NOW)
    resolution = friction_event(finding("sla_breach", "resolution", (A,)), "cust", None, NOW)
    assert first.friction_id != resolution.friction_id
    assert first.friction_id == friction_id_for("sla_breach", "cust", [A], "first_response")
    assert first.stage == ""


def pending(due: int) -> FrictionState:
    return FrictionState(last_seen=0, checkouts=(PendingCheckout(0, A, 10.0, due),))


def test_the_schedule_keeps_one_live_entry_per_customer() -> None:
    part = PartitionState()
    part.schedule("c", pending(500), CONFIG)
    part.schedule("c", pending(900), CONFIG)  # later: the earlier entry stays live
    assert part.scheduled == {"c": 500}
    part.schedule("c", pending(100), CONFIG)  # earlier: a new live entry
    assert part.scheduled == {"c": 100}
    assert sorted(part.heap) == [(100, "c"), (500, "c")]
    part.schedule("c", None, CONFIG)
    assert part.scheduled == {}


def record(key: bytes, value: bytes | None) -> SimpleNamespace:
    return SimpleNamespace(key=key, value=value)


def test_restore_records_rebuild_states_and_the_watermark() -> None:
    detector = FrictionDetector.__new__(FrictionDetector)
    part = PartitionState()
    state = pending(700)
    detector._replay(part, record(b"c1", orjson.dumps(state.to_dict())))
    detector._replay(part, record(b"c2", orjson.dumps(state.to_dict())))
    detector._replay(part, record(b"c2", None))  # a tombstone: forgotten
    detector._replay(part, record(WATERMARK_KEY, orjson.dumps({"max_seen": 9, "watermark": 4})))
    assert part.states == {"c1": state}
    assert (part.max_seen, part.watermark) == (9, 4)
