"""Friction events and their deterministic ids."""

import uuid
from datetime import UTC, datetime

import pytest
from pydantic import ValidationError

from schemas.codec import decode_json, encode_json
from schemas.friction import FRICTION_NAMESPACE, FrictionEvent, Severity, friction_id_for

A = "0b5f8e9c-6a51-4f0e-9d3c-6a2b7c1d9e01"
B = "7d2c1e4a-0f3b-4c5d-8e9f-1a2b3c4d5e6f"
C = "c0ffee00-0000-4000-8000-000000000001"


def test_same_input_same_id() -> None:
    assert friction_id_for("repeat_contact", "cust-1", [A, B]) == friction_id_for(
        "repeat_contact", "cust-1", [A, B]
    )


def test_id_is_a_uuid5_in_the_friction_namespace() -> None:
    value = uuid.UUID(friction_id_for("sla_breach", "cust-1", [A]))
    assert value.version == 5
    assert str(value) == friction_id_for("sla_breach", "cust-1", [A])


def test_known_value_never_changes() -> None:
    # Stored friction ids depend on this: a change here breaks deduplication.
    assert uuid.UUID("f65520d2-333e-43a1-b55c-983bea23caca") == FRICTION_NAMESPACE
    expected = uuid.uuid5(FRICTION_NAMESPACE, f'["repeat_contact","cust-1",["{A}","{B}"]]')
    assert friction_id_for("repeat_contact", "cust-1", [B, A]) == str(expected)


def test_arrival_order_duplicates_and_case_do_not_matter() -> None:
    reference = friction_id_for("repeat_contact", "cust-1", [A, B, C])
    assert friction_id_for("repeat_contact", "cust-1", [C, A, B]) == reference
    assert friction_id_for("repeat_contact", "cust-1", iter([B, C, A, A])) == reference
    assert friction_id_for("repeat_contact", "cust-1", [A.upper(), B, C]) == reference


@pytest.mark.parametrize(
    ("rule", "customer_key", "evidence"),
    [
        ("sla_breach", "cust-1", [A, B]),
        ("repeat_contact", "cust-2", [A, B]),
        ("repeat_contact", "cust-1", [A]),
        ("repeat_contact", "cust-1", []),
    ],
)
def test_any_difference_gives_another_id(rule: str, customer_key: str, evidence: list[str]) -> None:
    assert friction_id_for(rule, customer_key, evidence) != friction_id_for(
        "repeat_contact", "cust-1", [A, B]
    )


def test_parts_cannot_run_into_each_other() -> None:
    assert friction_id_for("a", "bc", []) != friction_id_for("ab", "c", [])


def _friction(**overrides: object) -> FrictionEvent:
    fields: dict[str, object] = {
        "friction_id": friction_id_for("repeat_contact", "cust-1", [A, B]),
        "rule": "repeat_contact",
        "severity": "high",
        "customer_key": "cust-1",
        "occurred_at": "2024-05-01T13:30:00+02:00",
        "detected_at": "2024-05-01T11:31:00Z",
        "stage": "support",
        "case_id": "case-7",
        "channel": "phone",
        "evidence": [A, B],
        "message": "Second contact about case-7 within 7 days.",
    }
    fields.update(overrides)
    return FrictionEvent.model_validate(fields)


def test_friction_event_round_trips_through_json() -> None:
    friction = _friction()
    assert friction.severity is Severity.HIGH
    assert friction.detected_at == datetime(2024, 5, 1, 11, 31, tzinfo=UTC)
    assert FrictionEvent.model_validate(decode_json(encode_json(friction))) == friction


def test_optional_fields_may_be_absent() -> None:
    friction = _friction(case_id=None, channel=None)
    assert (friction.case_id, friction.channel) == (None, None)


@pytest.mark.parametrize(
    "overrides",
    [
        {"severity": "severe"},
        {"friction_id": "not-a-uuid"},
        {"occurred_at": "2024-05-01T13:30:00"},
        {"channel": "fax"},
        {"evidence": ["not-a-uuid"]},
        {"rule": ""},
    ],
)
def test_invalid_friction_events_are_refused(overrides: dict[str, object]) -> None:
    with pytest.raises(ValidationError):
        _friction(**overrides)
