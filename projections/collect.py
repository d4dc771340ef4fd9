"""The HTTP collector's decision on a request body, as pure code: what goes to the ingest
topic, what to the DLQ, and what the producer is told.

Every event is checked with the validator's own codec (`decode_touchpoint`) on the very
bytes that will be sent, so the producer hears at once what the validator would say;
the validator still checks them again (it is the authority, and its clock decides the
future-timestamp rule). Refused events become dead letters with the validator's builder.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Final, NamedTuple

import orjson

from schemas.codec import (
    InvalidTouchpointError,
    Reason,
    decode_parsed_touchpoint,
    decode_touchpoint,
    encode_json,
)
from schemas.dead_letter import DeadLetter
from schemas.segment import STAGE as SEGMENT_STAGE
from schemas.segment import segment_touchpoint
from schemas.touchpoint import identity_key

NATIVE_STAGE: Final = "collect"
"""The dead-letter stage of a native event the collector refused."""
WRITE_KEY_FIELD: Final = "writeKey"


class EmptyBodyError(ValueError):
    """The request carried no events at all."""


@dataclass(frozen=True, slots=True)
class Rejection:
    """An event the collector refused: its place in the request, the reason, a sentence."""

    index: int
    reason: str
    message: str

    def as_json(self) -> dict[str, Any]:
        return {"index": self.index, "reason": self.reason, "message": self.message}


@dataclass(slots=True)
class Collected:
    """A request's verdict: records for the ingest topic and the DLQ, and the rejections."""

    accepted: list[tuple[bytes, bytes]] = field(default_factory=list)  # (key, touchpoint)
    dead: list[bytes] = field(default_factory=list)  # dead-letter records
    rejected: list[Rejection] = field(default_factory=list)

    def answer(self) -> dict[str, Any]:
        return {"accepted": len(self.accepted),
                "rejected": [r.as_json() for r in self.rejected]}


UNPARSED: Final = object()


class RawEvent(NamedTuple):
    """One event of a request: the bytes to validate and send, and their JSON when the
    body's parse already gave it (UNPARSED otherwise)."""

    raw: bytes
    parsed: Any = UNPARSED


def split_native(body: bytes, *, ndjson: bool) -> list[RawEvent]:
    """The events of a native request body.

    JSON lines: each non-blank line as it is. JSON: an array's items (re-encoded, as an
    array has no bytes per item) or the whole body as one event - also when it is not
    JSON at all, so that it reaches the DLQ as invalid_json like any other bad event.
    """
    if not body.strip():
        raise EmptyBodyError("the body is empty: send a touchpoint, an array or JSON lines")
    if ndjson:
        return [RawEvent(line.rstrip(b"\r")) for line in body.split(b"\n") if line.strip()]
    try:
        parsed = orjson.loads(body)
    except orjson.JSONDecodeError:
        return [RawEvent(body)]
    if isinstance(parsed, list):
        return [RawEvent(orjson.dumps(item), item) for item in parsed]
    return [RawEvent(body, parsed)]


@dataclass(frozen=True, slots=True)
class SegmentBody:
    """The Segment calls of one request, before mapping."""

    items: Sequence[Any]
    defaults: Mapping[str, Any]
    write_key: str | None
    unreadable: InvalidTouchpointError | None = None  # the body itself is no call
    raw: bytes = b""  # the body as sent, kept for the DLQ when it is unreadable


def split_segment(body: bytes, *, batch: bool) -> SegmentBody:
    """A Segment request body: one call, or a batch whose context and sentAt its calls
    inherit. A body that is neither becomes one refused item (it reaches the DLQ)."""
    if not body.strip():
        raise EmptyBodyError("the body is empty: send a Segment call or a batch")
    try:
        parsed = orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        return SegmentBody((), {}, None, InvalidTouchpointError(
            Reason.INVALID_JSON, f"Not valid UTF-8 JSON: {exc}."), body)
    write_key = parsed.get(WRITE_KEY_FIELD) if isinstance(parsed, dict) else None
    key = write_key if isinstance(write_key, str) else None
    if not isinstance(parsed, dict):
        return SegmentBody((), {}, None, InvalidTouchpointError(
            Reason.NOT_AN_OBJECT, "A Segment request body is a JSON object."), body)
    if not batch:
        return SegmentBody((parsed,), {}, key)
    items = parsed.get("batch")
    if not isinstance(items, list):
        reason = Reason.MISSING_FIELD if items is None else Reason.INVALID_FIELD
        return SegmentBody((), {}, key, InvalidTouchpointError(
            reason, "A Segment batch is an object whose 'batch' is an array of calls.",
            "batch"), _without_write_key(parsed))
    defaults = {name: parsed[name] for name in ("context", "sentAt") if name in parsed}
    return SegmentBody(items, defaults, key)


def _without_write_key(item: Any) -> bytes:
    # A write key is a credential: it never goes to the DLQ with the message.
    if isinstance(item, dict) and WRITE_KEY_FIELD in item:
        item = {k: v for k, v in item.items() if k != WRITE_KEY_FIELD}
    return orjson.dumps(item)


def _refuse(out: Collected, index: int, raw: bytes, error: InvalidTouchpointError, *,
            source: str, stage: str, now: datetime) -> None:
    letter = DeadLetter.from_error(raw, error, topic=source, partition=0, offset=index,
                                   received_at=now, stage=stage)
    out.dead.append(encode_json(letter.model_dump(mode="json")))
    out.rejected.append(Rejection(index, str(error.reason), error.detail))


def _admit(out: Collected, event: RawEvent, *,
           now: datetime) -> InvalidTouchpointError | None:
    raw = event.raw
    try:
        if event.parsed is UNPARSED:
            touchpoint = decode_touchpoint(raw, now=now)
        else:
            touchpoint = decode_parsed_touchpoint(event.parsed, size=len(raw), now=now)
    except InvalidTouchpointError as exc:
        return exc
    out.accepted.append((identity_key(touchpoint).encode(), raw))
    return None


def collect_native(events: Iterable[RawEvent], *, source: str, now: datetime) -> Collected:
    """Check each event; `source` names the endpoint in the dead letters' `topic`."""
    out = Collected()
    for index, event in enumerate(events):
        error = _admit(out, event, now=now)
        if error is not None:
            _refuse(out, index, event.raw, error, source=source, stage=NATIVE_STAGE,
                    now=now)
    return out


def collect_segment(body: SegmentBody, *, call: str | None, source: str,
                    now: datetime) -> Collected:
    """Map each Segment call onto a touchpoint and check it as a native event.

    A refused call goes to the DLQ as Segment sent it (without the write key), with
    stage `segment` and `received_at` = the time its mapping used, so that it can be
    mapped again exactly (schemas.segment.segment_touchpoint).
    """
    out = Collected()
    if body.unreadable is not None:
        _refuse(out, 0, body.raw, body.unreadable, source=source, stage=SEGMENT_STAGE,
                now=now)
        return out
    for index, item in enumerate(body.items):
        try:
            candidate = segment_touchpoint(item, call=call, received_at=now,
                                           defaults=body.defaults)
            error = _admit(out, RawEvent(orjson.dumps(candidate), candidate), now=now)
        except InvalidTouchpointError as exc:
            error = exc
        if error is not None:
            _refuse(out, index, _without_write_key(item), error, source=source,
                    stage=SEGMENT_STAGE, now=now)
    return out
