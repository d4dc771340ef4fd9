"""The exported JSON Schemas say what the models accept."""

import json
from pathlib import Path
from typing import Any

import orjson
import pytest
from hypothesis import HealthCheck, given, settings
from jsonschema import Draft202012Validator, FormatChecker

from schemas.catalogue import SERVICE_TYPES, TOUCHPOINT_TYPES
from schemas.codec import InvalidTouchpointError, validate_touchpoint
from schemas.dead_letter import DeadLetter
from schemas.envelope import Channel
from schemas.export import export_json_schemas, json_schemas
from schemas.friction import FrictionEvent, Severity
from tests.unit.schemas.examples import EXAMPLE_TYPES, NOW, example, wrong_value_for
from tests.unit.schemas.test_codec import mutated_events

SCHEMAS = json_schemas()
COMBINED = Draft202012Validator(SCHEMAS["touchpoint.schema.json"], format_checker=FormatChecker())


def _per_type(type_name: str) -> Draft202012Validator:
    return Draft202012Validator(
        SCHEMAS[f"touchpoint.{type_name}.schema.json"], format_checker=FormatChecker()
    )


def _model_accepts(event: dict[str, Any]) -> bool:
    try:
        validate_touchpoint(event)
    except InvalidTouchpointError:
        return False
    return True


def test_export_writes_one_file_per_type_and_the_shared_ones(tmp_path: Path) -> None:
    written = export_json_schemas(tmp_path / "out")
    names = {path.name for path in written}
    assert names == {f"touchpoint.{t}.schema.json" for t in TOUCHPOINT_TYPES} | {
        "touchpoint.schema.json",
        "friction.schema.json",
        "dead_letter.schema.json",
    }
    for path in written:
        schema = json.loads(path.read_text("utf-8"))
        Draft202012Validator.check_schema(schema)
        assert schema == SCHEMAS[path.name]
        assert schema["$id"].endswith(path.name)
        assert schema["title"] and schema["description"]


@pytest.mark.parametrize("type_name", TOUCHPOINT_TYPES)
def test_per_type_schema_states_the_envelope_rules(type_name: str) -> None:
    schema = SCHEMAS[f"touchpoint.{type_name}.schema.json"]
    fields = schema["properties"]
    assert {"event_id", "schema_version", "type", "occurred_at", "channel"} <= set(
        schema["required"]
    )
    assert fields["type"]["const"] == type_name
    assert fields["schema_version"]["const"] == 1
    assert fields["occurred_at"]["format"] == "date-time"
    assert fields["event_id"]["format"] == "uuid"
    assert schema["$defs"]["Channel"]["enum"] == [c.value for c in Channel]
    for name in ("customer_id", "anonymous_id"):
        text = fields[name] if "type" in fields[name] else fields[name]["anyOf"][0]
        assert (text["minLength"], text["maxLength"]) == (1, 128)
    assert {"required": ["customer_id"], "properties": {"customer_id": {"type": "string"}}} in (
        schema["anyOf"]
    )
    assert ("case_id" in schema["required"]) == (type_name in SERVICE_TYPES)
    both = {"customer_id", "anonymous_id"} <= set(schema["required"])
    assert both == (type_name == "identify")


def test_combined_schema_is_discriminated_by_type() -> None:
    schema = SCHEMAS["touchpoint.schema.json"]
    assert len(schema["oneOf"]) == len(TOUCHPOINT_TYPES)
    assert schema["discriminator"]["propertyName"] == "type"
    assert set(schema["discriminator"]["mapping"]) == set(TOUCHPOINT_TYPES)


@pytest.mark.parametrize("type_name", EXAMPLE_TYPES)
def test_valid_examples_are_accepted_by_the_schemas(type_name: str) -> None:
    event = example(type_name)
    _per_type(type_name).validate(event)
    COMBINED.validate(event)


@pytest.mark.parametrize("type_name", EXAMPLE_TYPES)
def test_every_refused_property_mutation_is_refused_by_the_schema(type_name: str) -> None:
    validator = _per_type(type_name)
    base = example(type_name)
    for name, value in base["properties"].items():
        for mutated in (
            {**base["properties"], name: wrong_value_for(value)},
            {k: v for k, v in base["properties"].items() if k != name},
        ):
            event = {**base, "properties": mutated}
            assert validator.is_valid(event) == _model_accepts(event), (name, mutated)


EDGE_CASES: list[tuple[str, dict[str, Any], bool]] = [
    # (type, envelope overrides or {"properties": ...}, expected acceptance)
    ("page_view", {"occurred_at": "2024-05-01T11:30:00"}, False),
    ("page_view", {"occurred_at": "2024-05-01 11:30:00Z"}, False),
    ("page_view", {"occurred_at": "2024-05-01t11:30:00z"}, True),
    ("page_view", {"occurred_at": 1714564800}, False),
    ("page_view", {"customer_id": None}, False),
    ("page_view", {"customer_id": None, "anonymous_id": "a"}, True),
    ("page_view", {"customer_id": ""}, False),
    ("page_view", {"customer_id": "c" * 129}, False),
    ("page_view", {"anonymous_id": "a" * 128}, True),
    ("page_view", {"channel": "fax"}, False),
    ("page_view", {"schema_version": 2}, False),
    ("page_view", {"schema_version": True}, False),
    ("page_view", {"schema_version": "1"}, False),
    ("page_view", {"schema_version": 1.0}, True),
    ("page_view", {"event_id": "0B5F8E9C-6A51-4F0E-9D3C-6A2B7C1D9E01"}, True),
    ("page_view", {"event_id": "0b5f8e9c6a514f0e9d3c6a2b7c1d9e01"}, False),
    ("page_view", {"session_id": None, "source": None, "x_extra": None}, True),
    ("page_view", {"properties": None}, False),
    ("agent_response", {"properties": {}}, True),
    ("support_contact", {"case_id": None}, False),
    ("identify", {"anonymous_id": None}, False),
    ("survey_response", {"properties": {"survey": "csat", "score": 0}}, False),
    ("survey_response", {"properties": {"survey": "csat", "score": 5}}, True),
    ("survey_response", {"properties": {"survey": "csat", "score": 6}}, False),
    ("survey_response", {"properties": {"survey": "nps", "score": 0}}, True),
    ("survey_response", {"properties": {"survey": "nps", "score": 10}}, True),
    ("survey_response", {"properties": {"survey": "nps", "score": 11}}, False),
    ("survey_response", {"properties": {"survey": "ces", "score": 7}}, True),
    ("survey_response", {"properties": {"survey": "ces", "score": 8}}, False),
    ("survey_response", {"properties": {"survey": "ces", "score": 4.0}}, True),
    ("survey_response", {"properties": {"survey": "ces", "score": 4.5}}, False),
    ("review", {"properties": {"rating": 6}}, False),
    ("review", {"properties": {"rating": True}}, False),
    ("purchase", {"properties": {"order_id": "o", "revenue": -1, "currency": "EUR"}}, False),
    ("purchase", {"properties": {"order_id": "o", "revenue": 1, "currency": "eur"}}, False),
    ("purchase", {"properties": {"order_id": "o", "revenue": 0, "currency": "EUR"}}, True),
    ("purchase", {"properties": {"order_id": "o", "revenue": "1", "currency": "EUR"}}, False),
    ("add_to_cart", {"properties": {"product_id": "p", "quantity": 0}}, False),
    ("add_to_cart", {"properties": {"product_id": "p", "quantity": 2.0}}, True),
]


@pytest.mark.parametrize(("type_name", "overrides", "accepted"), EDGE_CASES)
def test_schema_and_models_agree_on_edge_cases(
    type_name: str, overrides: dict[str, Any], accepted: bool
) -> None:
    event = example(type_name, **overrides)
    assert _model_accepts(event) == accepted
    assert _per_type(type_name).is_valid(event) == accepted
    assert COMBINED.is_valid(event) == accepted


def test_unknown_type_is_refused_by_the_combined_schema() -> None:
    assert not COMBINED.is_valid(example("page_view", type="page_viewed"))
    event = example("page_view")
    del event["type"]
    assert not COMBINED.is_valid(event)


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(mutated_events())
def test_schema_and_models_agree_on_mutated_events(event: dict[str, Any]) -> None:
    # Round-tripped through JSON so the schema sees what a producer would send.
    event = orjson.loads(orjson.dumps(event))
    # The 24 h future rule and the UTC range of timestamps are not expressible in
    # JSON Schema; validate_touchpoint without `now` skips the first, and the
    # mutation values include out-of-range timestamps only with offsets:
    try:
        validate_touchpoint(event)
    except InvalidTouchpointError as error:
        if "cannot be represented in UTC" in error.detail:
            return
    assert COMBINED.is_valid(event) == _model_accepts(event), event


def test_friction_and_dead_letter_schemas_accept_their_models() -> None:
    friction = FrictionEvent(
        friction_id="0b5f8e9c-6a51-4f0e-9d3c-6a2b7c1d9e01",
        rule="sla_breach",
        severity=Severity.CRITICAL,
        customer_key="c",
        occurred_at=NOW,
        detected_at=NOW,
        stage="support",
        case_id="case-7",
        channel=Channel.PHONE,
        evidence=["0b5f8e9c-6a51-4f0e-9d3c-6a2b7c1d9e01"],
        message="The case waited past its deadline.",
    )
    friction_schema = Draft202012Validator(SCHEMAS["friction.schema.json"])
    friction_schema.validate(orjson.loads(orjson.dumps(friction.model_dump(mode="json"))))
    assert not friction_schema.is_valid({**friction.model_dump(mode="json"), "severity": "meh"})
    error = InvalidTouchpointError("invalid_json", "Not JSON.")
    record = DeadLetter.from_error(
        b"\xff", error, topic="touchpoints.ingest", partition=0, offset=1, received_at=NOW
    )
    dlq_schema = Draft202012Validator(SCHEMAS["dead_letter.schema.json"])
    dlq_schema.validate(record.model_dump(mode="json"))
    assert not dlq_schema.is_valid({**record.model_dump(mode="json"), "raw_encoding": "hex"})
