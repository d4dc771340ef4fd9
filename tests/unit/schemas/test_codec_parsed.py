"""decode_parsed_touchpoint says what decode_touchpoint says of the same bytes."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import orjson
from hypothesis import given, settings
from hypothesis import strategies as st

from schemas.codec import InvalidTouchpointError, decode_parsed_touchpoint, decode_touchpoint
from tests.unit.schemas.examples import EXAMPLE_TYPES, NOW, example

values = (st.none() | st.booleans() | st.integers(-(2**63), 2**63 - 1) | st.text(max_size=8)
          | st.floats(allow_nan=False, allow_infinity=False))


def outcome(call: Any) -> Any:
    try:
        return call().model_dump()
    except InvalidTouchpointError as refused:
        return (refused.reason, refused.field)


@settings(max_examples=200)
@given(type_name=st.sampled_from(EXAMPLE_TYPES), field=st.text(max_size=12), value=values,
       pad=st.integers(0, 70_000))
def test_same_verdict(type_name: str, field: str, value: Any, pad: int) -> None:
    event = example(type_name)
    event["properties"][field or "x"] = value
    if pad > 60_000:
        event["properties"]["pad"] = "p" * pad
    raw = orjson.dumps(event)
    assert outcome(lambda: decode_touchpoint(raw, now=NOW)) == outcome(
        lambda: decode_parsed_touchpoint(orjson.loads(raw), size=len(raw), now=NOW))


def test_not_an_object_either_way() -> None:
    now = datetime(2024, 1, 1, tzinfo=UTC)
    assert outcome(lambda: decode_parsed_touchpoint([1], size=3, now=now)) == (
        "not_an_object", None)
