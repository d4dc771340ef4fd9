"""Envelope rules of EVENTS.md, seen through decode_touchpoint."""

from datetime import UTC, datetime, timedelta, timezone
from typing import Any

import orjson
import pytest
from pydantic import ValidationError

from schemas.codec import (
    MAX_TOUCHPOINT_BYTES,
    InvalidTouchpointError,
    Reason,
    decode_touchpoint,
    validate_touchpoint,
)
from schemas.envelope import Channel
from schemas.touchpoint import TOUCHPOINT_MODELS, Touchpoint, identity_key
from tests.unit.schemas.examples import CONTRACT_SERVICE_TYPES, NOW, example


def _decode(event: dict[str, Any] | bytes, now: datetime = NOW) -> Touchpoint:
    raw = event if isinstance(event, bytes) else orjson.dumps(event)
    return decode_touchpoint(raw, now=now)


def _refusal(event: dict[str, Any] | bytes, now: datetime = NOW) -> InvalidTouchpointError:
    with pytest.raises(InvalidTouchpointError) as caught:
        _decode(event, now)
    return caught.value


def _at(moment: datetime) -> str:
    return moment.isoformat()


def test_reason_codes_are_the_documented_ones() -> None:
    assert {r.value for r in Reason} == {
        "payload_too_large",
        "invalid_json",
        "not_an_object",
        "unknown_type",
        "missing_field",
        "invalid_field",
        "naive_timestamp",
        "future_timestamp",
        "missing_identity",
        "missing_case_id",
        "unsupported_schema_version",
    }


def test_channels_are_the_twelve_of_the_contract() -> None:
    assert {c.value for c in Channel} == {
        "web", "mobile_app", "email", "phone", "chat", "social", "in_person",
        "self_service", "community", "advertising", "mail_fax", "sms",
    }  # fmt: skip


@pytest.mark.parametrize("field", ["event_id", "schema_version", "type", "occurred_at", "channel"])
def test_missing_envelope_field(field: str) -> None:
    event = example("page_view")
    del event[field]
    error = _refusal(event)
    assert (error.reason, error.field) == ("missing_field", field)


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("event_id", "not-a-uuid"),
        ("event_id", "0b5f8e9c6a514f0e9d3c6a2b7c1d9e01"),
        ("event_id", "{0b5f8e9c-6a51-4f0e-9d3c-6a2b7c1d9e01}"),
        ("event_id", 42),
        ("schema_version", "1"),
        ("schema_version", True),
        ("schema_version", 1.5),
        ("channel", "fax"),
        ("channel", "WEB"),
        ("occurred_at", 1714564800),
        ("occurred_at", "2024-05-01"),
        ("occurred_at", "2024-05-01 13:30:00Z"),
        ("occurred_at", "2024-13-01T13:30:00Z"),
        ("occurred_at", "2024-05-01T13:30:00+2:00"),
        ("occurred_at", "0001-01-01T00:00:00+01:00"),
        ("customer_id", ""),
        ("customer_id", "c" * 129),
        ("customer_id", 42),
        ("session_id", 7),
        ("case_id", ["case-7"]),
        ("source", {"name": "crm"}),
        ("received_at", "yesterday"),
        ("customer_key", 42),
    ],
)
def test_wrong_envelope_field(field: str, value: Any) -> None:
    error = _refusal(example("page_view", **{field: value}))
    assert (error.reason, error.field) == ("invalid_field", field)


def test_ids_of_128_characters_are_fine() -> None:
    tp = _decode(example("page_view", customer_id="c" * 128, anonymous_id="a" * 128))
    assert tp.customer_id == "c" * 128


def test_event_id_is_kept_in_canonical_lowercase_form() -> None:
    tp = _decode(example("page_view", event_id="0B5F8E9C-6A51-4F0E-9D3C-6A2B7C1D9E01"))
    assert tp.event_id == "0b5f8e9c-6a51-4f0e-9d3c-6a2b7c1d9e01"


@pytest.mark.parametrize(
    "text",
    [
        "2024-05-01T11:30:00Z",
        "2024-05-01t11:30:00z",
        "2024-05-01T13:30:00+02:00",
        "2024-05-01T06:30:00-05:00",
        "2024-05-01T11:30:00-00:00",
        "2024-05-01T11:30:00.123456789Z",
    ],
)
def test_rfc3339_timestamps_with_offset_are_accepted(text: str) -> None:
    tp = _decode(example("page_view", occurred_at=text))
    assert tp.occurred_at.astimezone(UTC).replace(microsecond=0) == datetime(
        2024, 5, 1, 11, 30, tzinfo=UTC
    )


def test_offset_of_the_producer_is_kept() -> None:
    tp = _decode(example("page_view", occurred_at="2024-05-01T13:30:00+02:00"))
    assert tp.occurred_at.utcoffset() == timedelta(hours=2)


@pytest.mark.parametrize("text", ["2024-05-01T11:30:00", "2024-05-01T11:30:00.5"])
def test_naive_timestamp(text: str) -> None:
    error = _refusal(example("page_view", occurred_at=text))
    assert (error.reason, error.field) == ("naive_timestamp", "occurred_at")


def test_naive_received_at_is_naive_timestamp() -> None:
    error = _refusal(example("page_view", received_at="2024-05-01T11:30:00"))
    assert (error.reason, error.field) == ("naive_timestamp", "received_at")


def test_more_than_24_hours_ahead_is_future_timestamp() -> None:
    error = _refusal(example("page_view", occurred_at=_at(NOW + timedelta(hours=24, minutes=1))))
    assert (error.reason, error.field) == ("future_timestamp", "occurred_at")


@pytest.mark.parametrize("ahead", [timedelta(hours=23, minutes=59), timedelta(hours=24)])
def test_up_to_24_hours_ahead_is_fine(ahead: timedelta) -> None:
    _decode(example("page_view", occurred_at=_at(NOW + ahead)))


def test_future_check_compares_instants_not_wall_clocks() -> None:
    # 23:59 ahead of NOW expressed at +05:00 reads as 28:59 ahead on the wall clock.
    moment = (NOW + timedelta(hours=23, minutes=59)).astimezone(timezone(timedelta(hours=5)))
    _decode(example("page_view", occurred_at=moment.isoformat()))


def test_old_events_are_fine() -> None:
    _decode(example("page_view", occurred_at="1999-12-31T23:59:59Z"))


def test_naive_now_is_a_programming_error() -> None:
    with pytest.raises(ValueError, match="aware"):
        decode_touchpoint(orjson.dumps(example("page_view")), now=datetime(2024, 5, 1))
    with pytest.raises(ValueError, match="aware"):
        validate_touchpoint(example("page_view"), now=datetime(2024, 5, 1))


@pytest.mark.parametrize(
    "ids", [{}, {"customer_id": None}, {"customer_id": None, "anonymous_id": None}]
)
def test_missing_both_ids(ids: dict[str, Any]) -> None:
    event = example("page_view")
    del event["customer_id"]
    event.update(ids)
    error = _refusal(event)
    assert error.reason == "missing_identity"


def test_either_id_is_enough() -> None:
    event = example("page_view", anonymous_id="anon-1")
    del event["customer_id"]
    tp = _decode(event)
    assert identity_key(tp) == "anon-1"
    assert identity_key(_decode(example("page_view", anonymous_id="anon-1"))) == "cust-42"


@pytest.mark.parametrize("missing", ["customer_id", "anonymous_id"])
def test_identify_needs_both_ids(missing: str) -> None:
    event = example("identify")
    del event[missing]
    error = _refusal(event)
    assert (error.reason, error.field) == ("missing_identity", missing)
    event[missing] = None
    error = _refusal(event)
    assert (error.reason, error.field) == ("missing_identity", missing)


@pytest.mark.parametrize("type_name", sorted(CONTRACT_SERVICE_TYPES))
def test_service_event_without_case_id(type_name: str) -> None:
    event = example(type_name)
    del event["case_id"]
    error = _refusal(event)
    assert (error.reason, error.field) == ("missing_case_id", "case_id")
    event["case_id"] = None
    assert _refusal(event).reason == "missing_case_id"


def test_non_service_event_needs_no_case_id() -> None:
    tp = _decode(example("purchase"))
    assert tp.case_id is None
    assert _decode(example("survey_response", case_id="case-7")).case_id == "case-7"


def test_payload_of_exactly_64_kib_is_fine_and_one_byte_more_is_too_large() -> None:
    event = example("page_view")
    base = len(orjson.dumps({**event, "padding": ""}))
    event["padding"] = "x" * (MAX_TOUCHPOINT_BYTES - base)
    raw = orjson.dumps(event)
    assert len(raw) == MAX_TOUCHPOINT_BYTES
    _decode(raw)
    event["padding"] += "x"
    assert _refusal(orjson.dumps(event)).reason == "payload_too_large"


def test_size_is_checked_before_parsing() -> None:
    assert _refusal(b"x" * (MAX_TOUCHPOINT_BYTES + 1)).reason == "payload_too_large"


@pytest.mark.parametrize(
    ("raw", "reason"),
    [
        (b"", "invalid_json"),
        (b"not json", "invalid_json"),
        (b'{"type": "page_view"', "invalid_json"),
        (b"\xff\xfe{}", "invalid_json"),
        (b'{"type": "page_view", "x": "\xc3\x28"}', "invalid_json"),
        (b'{"x": "\\ud800"}', "invalid_json"),
        (b"[]", "not_an_object"),
        (b'[{"type": "page_view"}]', "not_an_object"),
        (b'"page_view"', "not_an_object"),
        (b"42", "not_an_object"),
        (b"null", "not_an_object"),
        (b"true", "not_an_object"),
    ],
)
def test_bytes_that_are_not_a_json_object(raw: bytes, reason: str) -> None:
    assert _refusal(raw).reason == reason


def test_unknown_type() -> None:
    error = _refusal(example("page_view", type="page_viewed"))
    assert (error.reason, error.field) == ("unknown_type", "type")


@pytest.mark.parametrize("value", [None, 5, ["page_view"], {"name": "page_view"}])
def test_type_that_is_not_a_string(value: Any) -> None:
    error = _refusal(example("page_view", type=value))
    assert error.reason == ("missing_field" if value is None else "invalid_field")
    assert error.field == "type"


@pytest.mark.parametrize("version", [0, 2, 99, -1, 2.0])
def test_unsupported_schema_version(version: Any) -> None:
    error = _refusal(example("page_view", schema_version=version))
    assert (error.reason, error.field) == ("unsupported_schema_version", "schema_version")


def test_schema_version_is_judged_before_the_type() -> None:
    # A version-2 event may well use a type that version 1 does not know.
    assert _refusal(example("page_view", schema_version=2, type="cart_abandoned")).reason == (
        "unsupported_schema_version"
    )


def test_most_specific_reason_wins() -> None:
    event = example("purchase", occurred_at="2024-05-01T11:30:00")
    del event["properties"]["revenue"]
    assert _refusal(event).reason == "naive_timestamp"


def test_unknown_extra_fields_are_kept() -> None:
    event = example("purchase", x_tenant="acme", x_flags=[1, None, {"a": True}])
    event["properties"]["coupon"] = "SPRING"
    event["properties"]["gift"] = None
    tp = _decode(event)
    assert tp.model_extra == {"x_tenant": "acme", "x_flags": [1, None, {"a": True}]}
    assert tp.properties.model_extra == {"coupon": "SPRING", "gift": None}


def test_error_carries_one_sentence_and_reason_in_str() -> None:
    error = _refusal(example("page_view", channel="fax"))
    assert str(error).startswith("invalid_field: ")
    assert error.detail.endswith(".")
    assert "\n" not in error.detail


def test_error_survives_pickling() -> None:
    import pickle

    error = InvalidTouchpointError("invalid_field", "Field 'x' is invalid.", "x")
    copy = pickle.loads(pickle.dumps(error))
    assert (copy.reason, copy.detail, copy.field) == ("invalid_field", "Field 'x' is invalid.", "x")


def test_python_built_touchpoints_go_through_the_same_rules() -> None:
    event = example("page_view", occurred_at=datetime(2024, 5, 1, 11, 30, tzinfo=UTC))
    assert validate_touchpoint(event, now=NOW).occurred_at.tzinfo is not None
    naive = example("page_view", occurred_at=datetime(2024, 5, 1, 11, 30))
    with pytest.raises(InvalidTouchpointError) as caught:
        validate_touchpoint(naive, now=NOW)
    assert caught.value.reason == "naive_timestamp"


def test_per_type_model_can_be_built_directly() -> None:
    model = TOUCHPOINT_MODELS["page_view"]
    tp = model.model_validate(example("page_view"))
    assert tp == _decode(example("page_view"))


def test_the_common_base_cannot_be_validated_on_its_own() -> None:
    with pytest.raises(ValidationError, match="common base"):
        Touchpoint.model_validate(example("page_view"))


def test_touchpoints_are_immutable() -> None:
    tp = _decode(example("page_view"))
    with pytest.raises(ValidationError):
        tp.customer_id = "someone-else"


def test_before_the_epoch_is_refused() -> None:
    # The warehouse cannot store it; the sink must never be handed such an event.
    error = _refusal(example("page_view", occurred_at="1969-12-31T23:59:59Z"))
    assert (error.reason, error.field) == ("invalid_field", "occurred_at")


def test_an_amount_the_warehouse_cannot_hold_is_refused() -> None:
    properties = {"order_id": "o-1", "revenue": 1e15, "currency": "EUR"}
    error = _refusal(example("purchase", properties=properties))
    assert (error.reason, error.field) == ("invalid_field", "properties.revenue")
