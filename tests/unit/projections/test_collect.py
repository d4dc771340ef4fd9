"""The collector's verdict on a body: splitting, the codec's check, keys and dead letters."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

import orjson
import pytest

from projections.collect import (
    EmptyBodyError,
    RawEvent,
    collect_native,
    collect_segment,
    split_native,
    split_segment,
)
from schemas.codec import MAX_TOUCHPOINT_BYTES, decode_touchpoint
from schemas.dead_letter import DeadLetter
from schemas.segment import segment_touchpoint

NOW = datetime(2024, 5, 1, 12, 0, tzinfo=UTC)
SOURCE = "http:/v1/touchpoints"


def event(**extra: Any) -> dict[str, Any]:
    base: dict[str, Any] = {
        "event_id": str(uuid.uuid4()), "schema_version": 1, "type": "page_view",
        "occurred_at": (NOW - timedelta(minutes=1)).isoformat(), "channel": "web",
        "properties": {"url": "https://shop.test/"}}
    base.update(extra)
    return {k: v for k, v in base.items() if v is not None}


def raw(**extra: Any) -> bytes:
    return orjson.dumps(event(**extra))


def letters(dead: list[bytes]) -> list[DeadLetter]:
    return [DeadLetter.model_validate_json(d) for d in dead]


def test_one_object_is_one_event_with_its_bytes() -> None:
    body = raw(customer_id="c-1")
    assert split_native(body, ndjson=False) == [RawEvent(body, orjson.loads(body))]


def test_an_array_is_its_items_with_their_json() -> None:
    items = [event(customer_id="c-1"), event(anonymous_id="a-1"), 7]
    got = split_native(orjson.dumps(items), ndjson=False)
    assert [orjson.loads(g.raw) for g in got] == [g.parsed for g in got] == items


def test_json_lines_skip_blank_lines_and_carriage_returns() -> None:
    a, b = raw(customer_id="c"), raw(customer_id="d")
    assert split_native(a + b"\r\n\n  \n" + b + b"\n", ndjson=True) == [
        RawEvent(a), RawEvent(b)]


def test_a_body_that_is_no_json_is_one_bad_event() -> None:
    assert split_native(b"{nope", ndjson=False) == [RawEvent(b"{nope")]


def test_an_empty_body_is_refused_as_a_whole() -> None:
    for body in (b"", b"  \n"):
        with pytest.raises(EmptyBodyError):
            split_native(body, ndjson=True)
        with pytest.raises(EmptyBodyError):
            split_segment(body, batch=False)


def test_accepted_events_are_keyed_by_customer_else_anonymous_id() -> None:
    known, visitor = raw(customer_id="c-1", anonymous_id="a-1"), raw(anonymous_id="a-2")
    out = collect_native([RawEvent(known), RawEvent(visitor)], source=SOURCE, now=NOW)
    assert out.accepted == [(b"c-1", known), (b"a-2", visitor)]
    assert out.dead == [] and out.answer() == {"accepted": 2, "rejected": []}


def test_refused_events_are_dead_letters_with_reason_bytes_and_place() -> None:
    good = raw(customer_id="c")
    events = [good, b"{bad", raw(type="teleport", customer_id="c"),
              raw(customer_id="c", occurred_at=(NOW + timedelta(days=2)).isoformat())]
    out = collect_native(map(RawEvent, events), source=SOURCE, now=NOW)
    assert out.accepted == [(b"c", good)]
    assert [(r.index, r.reason) for r in out.rejected] == [
        (1, "invalid_json"), (2, "unknown_type"), (3, "future_timestamp")]
    for letter, index in zip(letters(out.dead), (1, 2, 3), strict=True):
        assert letter.raw_bytes() == events[index]
        assert (letter.topic, letter.partition, letter.offset) == (SOURCE, 0, index)
        assert (letter.error.stage, letter.received_at) == ("collect", NOW)
        assert letter.error.reason == out.rejected[index - 1].reason
        assert out.rejected[index - 1].message == letter.error.detail


def test_the_verdict_is_the_codecs_own() -> None:
    # the same bytes, the same clock: the collector and the validator cannot disagree
    for candidate in (raw(customer_id="c"), raw(), raw(channel="pigeon", customer_id="c"),
                      raw(type="support_contact", customer_id="c",
                          properties={"topic": "t"})):
        parsed = collect_native(split_native(b"[" + candidate + b"]", ndjson=False),
                                source=SOURCE, now=NOW)
        out = collect_native([RawEvent(candidate)], source=SOURCE, now=NOW)
        assert parsed.answer() == out.answer()
        try:
            decode_touchpoint(candidate, now=NOW)
            assert len(out.accepted) == 1
        except ValueError as refused:
            assert out.rejected[0].reason == getattr(refused, "reason", None)


def test_an_oversized_event_is_payload_too_large_alone() -> None:
    big = raw(customer_id="c", properties={"url": "u", "pad": "x" * MAX_TOUCHPOINT_BYTES})
    small = raw(customer_id="c")
    out = collect_native(split_native(b"[" + big + b"," + small + b"]", ndjson=False),
                         source=SOURCE, now=NOW)
    assert len(out.accepted) == 1
    assert [(r.index, r.reason) for r in out.rejected] == [(0, "payload_too_large")]
    assert letters(out.dead)[0].raw_size == len(big)


def test_segment_single_call_and_its_write_key() -> None:
    body = orjson.dumps({"writeKey": "wk", "userId": "u", "event": "Order Completed",
                         "properties": {"order_id": "o", "revenue": 3}})
    calls = split_segment(body, batch=False)
    assert calls.write_key == "wk"
    out = collect_segment(calls, call="track", source="http:/v1/track", now=NOW)
    (key, value), = out.accepted
    assert key == b"u" and orjson.loads(value)["type"] == "purchase"


def test_segment_batch_items_inherit_and_refusals_keep_the_call_without_key() -> None:
    items = [{"type": "page", "anonymousId": "a", "properties": {"url": "u"}},
             {"type": "track", "userId": "u"},
             {"type": "nope"}]
    body = orjson.dumps({"writeKey": "wk", "sentAt": NOW.isoformat(),
                         "context": {"channel": "mobile"}, "batch": items})
    calls = split_segment(body, batch=True)
    out = collect_segment(calls, call=None, source="http:/v1/batch", now=NOW)
    assert orjson.loads(out.accepted[0][1]) == segment_touchpoint(
        items[0], call=None, received_at=NOW, defaults={"sentAt": NOW.isoformat(),
                                                        "context": {"channel": "mobile"}})
    assert orjson.loads(out.accepted[0][1])["channel"] == "mobile_app"
    assert [(r.index, r.reason) for r in out.rejected] == [(1, "missing_field"),
                                                           (2, "unknown_type")]
    dead = letters(out.dead)
    assert [orjson.loads(d.raw_bytes()) for d in dead] == items[1:]
    assert {d.error.stage for d in dead} == {"segment"}


def test_a_segment_body_that_is_no_call_is_one_dead_letter_without_the_key() -> None:
    for body, batch, reason in ((b"{oops", False, "invalid_json"), (b"[1]", False,
                                "not_an_object"),
                                (b'{"writeKey": "wk", "batch": 3}', True, "invalid_field"),
                                (b'{"writeKey": "wk"}', True, "missing_field")):
        calls = split_segment(body, batch=batch)
        out = collect_segment(calls, call=None, source="http:/v1/batch", now=NOW)
        assert out.accepted == []
        assert [(r.index, r.reason) for r in out.rejected] == [(0, reason)]
        assert b"wk" not in letters(out.dead)[0].raw_bytes()


def test_a_write_key_never_reaches_the_dlq() -> None:
    body = orjson.dumps({"writeKey": "secret-key", "event": "X"})  # no identity
    out = collect_segment(split_segment(body, batch=False), call="track",
                          source="http:/v1/track", now=NOW)
    assert out.rejected[0].reason == "unknown_type"  # generic track, until registered
    assert b"secret-key" not in out.dead[0]
