"""Dead-letter records keep the refused bytes exactly."""

from datetime import UTC, datetime, timedelta, timezone

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from pydantic import ValidationError

from schemas.codec import InvalidTouchpointError, decode_json, decode_touchpoint, encode_json
from schemas.dead_letter import DeadLetter
from tests.unit.schemas.examples import NOW

ERROR = InvalidTouchpointError("invalid_field", "Field 'channel' is invalid.", "channel")


def _record(raw: bytes) -> DeadLetter:
    return DeadLetter.from_error(
        raw, ERROR, topic="touchpoints.ingest", partition=3, offset=1234, received_at=NOW
    )


def _through_json(record: DeadLetter) -> DeadLetter:
    return DeadLetter.model_validate(decode_json(encode_json(record)))


def test_utf8_input_is_kept_as_text() -> None:
    raw = '{"type": "café", "channel": "fax"}'.encode()
    record = _record(raw)
    assert record.raw_encoding == "utf-8"
    assert record.raw == raw.decode("utf-8")
    assert _through_json(record).raw_bytes() == raw


def test_binary_input_is_kept_as_base64() -> None:
    raw = b"\xff\xfe\x00\x80 not utf-8 \xed\xa0\x80"
    record = _record(raw)
    assert record.raw_encoding == "base64"
    assert _through_json(record).raw_bytes() == raw


def test_error_and_source_are_recorded() -> None:
    received = datetime(2024, 5, 1, 14, tzinfo=timezone(timedelta(hours=2)))
    record = DeadLetter.from_error(
        b"[]", ERROR, topic="t", partition=0, offset=7, received_at=received, stage="normalise"
    )
    wire = decode_json(encode_json(record))
    assert wire["error"] == {
        "reason": "invalid_field",
        "detail": "Field 'channel' is invalid.",
        "field": "channel",
        "stage": "normalise",
    }
    assert (wire["topic"], wire["partition"], wire["offset"]) == ("t", 0, 7)
    assert wire["received_at"] == "2024-05-01T12:00:00Z"
    assert record.received_at.tzinfo is UTC


def test_default_stage_is_validate() -> None:
    record = _record(b"x")
    assert record.error.stage == "validate"


def test_a_record_with_broken_base64_is_refused() -> None:
    record = _record(b"\xff")
    with pytest.raises(ValidationError):
        DeadLetter.model_validate({**record.model_dump(), "raw": "not base64!"})


@settings(max_examples=200, deadline=None)
@given(
    st.binary(max_size=256) | st.text(max_size=64).map(lambda t: t.encode("utf-8", "surrogatepass"))
)
def test_any_refused_bytes_come_back_exactly(raw: bytes) -> None:
    try:
        decode_touchpoint(raw, now=NOW)
    except InvalidTouchpointError as error:
        record = DeadLetter.from_error(
            raw, error, topic="touchpoints.ingest", partition=0, offset=0, received_at=NOW
        )
        assert _through_json(record).raw_bytes() == raw


def test_a_huge_payload_keeps_a_prefix_that_fits_a_kafka_record() -> None:
    from datetime import UTC, datetime

    from schemas.codec import InvalidTouchpointError
    from schemas.dead_letter import MAX_RAW_BYTES, DeadLetter

    raw = b'{"pad": "' + b"\x01" * (3 * 1024 * 1024) + b'"}'
    error = InvalidTouchpointError("payload_too_large", "too large")
    record = DeadLetter.from_error(
        raw, error, topic="t", partition=0, offset=7, received_at=datetime(2026, 1, 1, tzinfo=UTC)
    )
    assert record.raw_truncated and record.raw_size == len(raw)
    assert record.raw_bytes() == raw[:MAX_RAW_BYTES]
    # even with every byte JSON-escaped, the record stays under Kafka's 1 MiB default
    assert len(record.model_dump_json()) < 1024 * 1024


def test_a_small_payload_is_kept_whole() -> None:
    from datetime import UTC, datetime

    from schemas.codec import InvalidTouchpointError
    from schemas.dead_letter import DeadLetter

    record = DeadLetter.from_error(
        b"[1]",
        InvalidTouchpointError("not_an_object", "x"),
        topic="t",
        partition=0,
        offset=1,
        received_at=datetime(2026, 1, 1, tzinfo=UTC),
    )
    assert (record.raw_truncated, record.raw_size, record.raw_bytes()) == (False, 3, b"[1]")
