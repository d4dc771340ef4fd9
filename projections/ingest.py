"""The validator's decision, as pure code: admit a raw message or say why not."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from schemas.codec import InvalidTouchpointError, decode_touchpoint, encode_touchpoint, normalise
from schemas.touchpoint import Touchpoint, identity_key


@dataclass(frozen=True, slots=True)
class Admitted:
    """A valid touchpoint, normalised, with the key and bytes for the event store."""

    touchpoint: Touchpoint
    event_id: str
    key: bytes
    value: bytes


@dataclass(frozen=True, slots=True)
class Refused:
    error: InvalidTouchpointError


def admit(raw: bytes, *, now: datetime) -> Admitted | Refused:
    """Validate one message from the ingest topic; never raises for any bytes."""
    try:
        touchpoint = decode_touchpoint(raw, now=now)
    except InvalidTouchpointError as exc:
        return Refused(exc)
    customer_key = identity_key(touchpoint)
    stored = normalise(touchpoint, received_at=now, customer_key=customer_key)
    return Admitted(
        touchpoint=stored,
        event_id=str(stored.event_id),
        key=customer_key.encode(),
        value=encode_touchpoint(stored),
    )


@dataclass(frozen=True, slots=True)
class DedupWindow:
    """Decides whether an event id seen before is a repeat: while it is in the window.

    Where the ids live is the caller's choice (the dedup stage keeps them per partition
    of the validated topic, streams/dedup.py).
    """

    window_seconds: float

    def is_repeat(self, first_seen: float | None, now: float) -> bool:
        return first_seen is not None and now - first_seen < self.window_seconds

    def expired(self, first_seen: float, now: float) -> bool:
        return now - first_seen >= self.window_seconds
