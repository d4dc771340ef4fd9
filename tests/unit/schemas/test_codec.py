"""The codec: wire form, round trips, normalisation, and never raising on any bytes."""

import copy
from datetime import UTC, datetime, timedelta, timezone
from typing import Any

import orjson
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from schemas.codec import (
    InvalidTouchpointError,
    decode_json,
    decode_stored_touchpoint,
    decode_touchpoint,
    encode_json,
    encode_touchpoint,
    normalise,
)
from schemas.friction import FrictionEvent, Severity
from schemas.touchpoint import Touchpoint
from tests.unit.schemas.examples import EXAMPLE_TYPES, NOW, example

RECEIVED_AT = datetime(2024, 5, 1, 14, 0, 0, 123456, tzinfo=timezone(timedelta(hours=2)))


def _decode(event: dict[str, Any]) -> Touchpoint:
    return decode_touchpoint(orjson.dumps(event), now=NOW)


@pytest.mark.parametrize("type_name", EXAMPLE_TYPES)
def test_round_trip(type_name: str) -> None:
    tp = _decode(example(type_name))
    assert decode_touchpoint(encode_touchpoint(tp), now=NOW) == tp
    assert decode_stored_touchpoint(encode_touchpoint(tp)) == tp


@pytest.mark.parametrize("type_name", EXAMPLE_TYPES)
def test_wire_form_is_the_input_when_the_input_is_canonical(type_name: str) -> None:
    event = example(type_name, occurred_at="2024-05-01T13:30:00.250000+02:00")
    assert orjson.loads(encode_touchpoint(_decode(event))) == event


def test_absent_optional_envelope_fields_are_omitted() -> None:
    event = example("page_view", session_id=None, source=None)
    wire = orjson.loads(encode_touchpoint(_decode(event)))
    for name in ("session_id", "source", "anonymous_id", "case_id", "received_at", "customer_key"):
        assert name not in wire


def test_properties_are_written_back_exactly_as_given() -> None:
    event = example("purchase")
    event["properties"] = {
        "order_id": "o-1",
        "revenue": 10.5,
        "currency": "EUR",
        "items": None,
        "coupon": None,
        "nested": {"a": [1, 2.5, None]},
    }
    tp = _decode(event)
    assert orjson.loads(encode_touchpoint(tp))["properties"] == event["properties"]
    assert decode_stored_touchpoint(encode_touchpoint(tp)) == tp


def test_properties_object_is_always_written() -> None:
    event = example("agent_response")
    del event["properties"]
    assert orjson.loads(encode_touchpoint(_decode(event)))["properties"] == {}


def test_timestamps_are_rfc3339_with_offset() -> None:
    tp = normalise(_decode(example("page_view")), received_at=RECEIVED_AT, customer_key="c")
    wire = orjson.loads(encode_touchpoint(tp))
    assert wire["occurred_at"] == "2024-05-01T13:30:00.250000+02:00"
    assert wire["received_at"] == "2024-05-01T12:00:00.123456Z"


def test_normalise_sets_received_at_in_utc_and_customer_key() -> None:
    tp = _decode(example("page_view"))
    stored = normalise(tp, received_at=RECEIVED_AT, customer_key="cust-canonical")
    assert stored.received_at == RECEIVED_AT
    assert stored.received_at is not None and stored.received_at.tzinfo is UTC
    assert stored.customer_key == "cust-canonical"
    assert type(stored) is type(tp)
    assert tp.received_at is None  # the original is untouched
    assert stored.model_copy(update={"received_at": None, "customer_key": None}) == tp


def test_received_at_and_customer_key_round_trip() -> None:
    stored = normalise(_decode(example("purchase")), received_at=RECEIVED_AT, customer_key="k-1")
    again = decode_stored_touchpoint(encode_touchpoint(stored))
    assert again == stored
    assert (again.received_at, again.customer_key) == (RECEIVED_AT, "k-1")


def test_received_at_given_with_an_offset_is_stored_in_utc() -> None:
    tp = _decode(example("page_view", received_at="2024-05-01T14:00:00+02:00"))
    assert tp.received_at == datetime(2024, 5, 1, 12, tzinfo=UTC)
    assert tp.received_at is not None and tp.received_at.utcoffset() == timedelta(0)


def test_normalise_refuses_naive_received_at() -> None:
    with pytest.raises(ValueError, match="aware"):
        normalise(_decode(example("page_view")), received_at=datetime(2024, 5, 1), customer_key="c")


def test_stored_events_skip_the_future_and_size_checks() -> None:
    far = (NOW + timedelta(days=30)).isoformat()
    event = example("page_view", occurred_at=far, padding="x" * 70_000)
    tp = decode_stored_touchpoint(orjson.dumps(event))
    assert tp.model_extra == {"padding": "x" * 70_000}


def test_stored_events_are_still_parsed() -> None:
    with pytest.raises(InvalidTouchpointError) as caught:
        decode_stored_touchpoint(orjson.dumps(example("page_view", channel="pigeon")))
    assert caught.value.reason == "invalid_field"


def test_encode_json_handles_models_anywhere() -> None:
    tp = _decode(example("page_view", session_id=None))
    friction = FrictionEvent(
        friction_id="0b5f8e9c-6a51-4f0e-9d3c-6a2b7c1d9e01",
        rule="repeat_contact",
        severity=Severity.HIGH,
        customer_key="c",
        occurred_at=NOW,
        detected_at=NOW,
        stage="support",
        evidence=[],
        message="Third call about one case.",
    )
    data = decode_json(encode_json({"touchpoint": tp, "friction": [friction], "at": NOW}))
    assert data["touchpoint"] == orjson.loads(encode_touchpoint(tp))
    assert data["friction"][0]["severity"] == "high"
    assert data["at"] == "2024-05-01T12:00:00Z"
    assert FrictionEvent.model_validate(data["friction"][0]) == friction


def test_encode_json_refuses_unknown_objects() -> None:
    with pytest.raises(TypeError):
        encode_json(object())


def test_decode_json_raises_value_error_on_bad_input() -> None:
    with pytest.raises(ValueError):
        decode_json(b"{")


# --- property-based: whatever comes in, a Touchpoint or InvalidTouchpointError ---

JSON_SCALARS = (
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**63), max_value=2**64 - 1)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=20)
)
JSON_VALUES = st.recursive(
    JSON_SCALARS,
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4)
    ),
    max_leaves=12,
)
# Values that are valid somewhere in the contract, so that mutations also reach
# the deeper checks instead of failing on the first field.
PLAUSIBLE: st.SearchStrategy[Any] = st.sampled_from(
    [
        "2024-05-01T11:30:00Z",
        "2024-05-01T11:30:00",
        "2099-01-01T00:00:00Z",
        "9999-12-31T23:59:59-23:59",
        "0001-01-01T00:00:00+23:59",
        "0b5f8e9c-6a51-4f0e-9d3c-6a2b7c1d9e01",
        "web",
        "EUR",
        "nps",
        "csat",
        "inbound",
        "case-7",
        "",
        "x" * 129,
        1,
        2,
        0,
        -1,
        11,
        1.0,
        3.5,
        1e300,
        True,
        False,
        None,
        [],
        {},
        ["a"],
    ]
)
MUTATION_VALUES = PLAUSIBLE | JSON_VALUES


def _assert_decodes_or_refuses(raw: bytes) -> None:
    try:
        tp = decode_touchpoint(raw, now=NOW)
    except InvalidTouchpointError as error:
        assert error.reason and error.detail
        return
    # Whatever is admitted survives the store and comes back equal.
    assert isinstance(tp, Touchpoint)
    stored = normalise(tp, received_at=NOW, customer_key="k")
    assert decode_stored_touchpoint(encode_touchpoint(stored)) == stored


@st.composite
def mutated_events(draw: st.DrawFn) -> dict[str, Any]:
    event = example(draw(st.sampled_from(EXAMPLE_TYPES)))
    for _ in range(draw(st.integers(min_value=1, max_value=4))):
        target = event
        if draw(st.booleans()) and isinstance(event.get("properties"), dict):
            target = event["properties"]
        keys = [*sorted(target), "type", "customer_id", "anonymous_id", "case_id", "extra"]
        key = draw(st.sampled_from(keys))
        if draw(st.booleans()):
            target.pop(key, None)
        else:
            # A copy: sampled values are shared objects that later steps may mutate.
            target[key] = copy.deepcopy(draw(MUTATION_VALUES))
    return event


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=512))
def test_arbitrary_bytes_never_raise_anything_else(raw: bytes) -> None:
    _assert_decodes_or_refuses(raw)


@settings(max_examples=300, deadline=None)
@given(JSON_VALUES)
def test_arbitrary_json_never_raises_anything_else(value: Any) -> None:
    _assert_decodes_or_refuses(orjson.dumps(value))


@settings(max_examples=500, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(mutated_events())
def test_mutated_events_never_raise_anything_else(event: dict[str, Any]) -> None:
    _assert_decodes_or_refuses(orjson.dumps(event))


@settings(max_examples=200, deadline=None)
@given(mutated_events(), st.integers(min_value=0, max_value=200))
def test_truncated_events_never_raise_anything_else(event: dict[str, Any], cut: int) -> None:
    raw = orjson.dumps(event)
    _assert_decodes_or_refuses(raw[: max(0, len(raw) - cut)])
