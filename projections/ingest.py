"""The validator's decision, as pure code: admit a raw message or say why not."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Literal

import orjson

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


# event id -> first seen (epoch seconds), oldest first: one ingest partition's window
SeenIds = dict[str, float]

# What replaying one changelog record did to the window (for the restore's log line).
Replayed = Literal["kept", "forgotten", "expired", "uncommitted"]


class SightingFormatError(ValueError):
    """A dedup changelog value that is not `[first seen, offset]`."""


@dataclass(frozen=True, slots=True)
class Sighting:
    """A dedup changelog value: when an id was first seen, at which ingest offset."""

    first_seen: float
    offset: int

    def encode(self) -> bytes:
        return orjson.dumps([self.first_seen, self.offset])

    @classmethod
    def decode(cls, raw: bytes) -> Sighting:
        try:
            first_seen, offset = orjson.loads(raw)
        except (orjson.JSONDecodeError, TypeError, ValueError) as exc:
            raise SightingFormatError(f"not [first_seen, offset]: {raw[:80]!r}") from exc
        if (not isinstance(first_seen, int | float) or isinstance(first_seen, bool)
                or not isinstance(offset, int) or isinstance(offset, bool) or offset < 0):
            raise SightingFormatError(f"not [first_seen, offset]: {raw[:80]!r}")
        return cls(float(first_seen), offset)


@dataclass
class DedupWindow:
    """Decides whether an event id is a repeat within the window, and what to forget.

    The state (`SeenIds`, one per ingest partition) is handed in so the caller chooses
    where it lives. It is kept oldest first - an id seen again after its window moves
    to the end - so that forgetting can stop at the first id still inside the window.
    """

    window_seconds: float

    def is_repeat(self, first_seen: float | None, now: float) -> bool:
        return first_seen is not None and now - first_seen < self.window_seconds

    def expired(self, first_seen: float, now: float) -> bool:
        return now - first_seen >= self.window_seconds

    def remember(self, seen: SeenIds, event_id: str, now: float) -> bool:
        """True for an id not seen within the window (now remembered), False for a repeat."""
        first_seen = seen.get(event_id)
        if first_seen is not None:
            if now - first_seen < self.window_seconds:
                return False
            del seen[event_id]  # re-inserted below, at the young end
        seen[event_id] = now
        return True

    def forget_expired(self, seen: SeenIds, now: float) -> list[str]:
        """Drop the ids whose window has passed and return them, oldest first."""
        expired: list[str] = []
        for event_id, first_seen in seen.items():
            if not self.expired(first_seen, now):
                break
            expired.append(event_id)
        for event_id in expired:
            del seen[event_id]
        return expired

    def replay(self, seen: SeenIds, event_id: str, sighting: Sighting | None, now: float,
               resume_offset: int) -> Replayed:
        """Apply one changelog record (None: a tombstone) while restoring a partition.

        `resume_offset` is where consumption of the ingest partition resumes. A sighting
        at or past it was written for a batch whose offsets were never committed: that
        batch is routed again and records its ids again, so the sighting is ignored -
        otherwise an id whose touchpoint never reached the broker would count as a repeat.
        """
        if sighting is None:
            seen.pop(event_id, None)
            return "forgotten"
        if sighting.offset >= resume_offset:
            return "uncommitted"
        seen.pop(event_id, None)  # a newer sighting replaces the old one at the young end
        if self.expired(sighting.first_seen, now):
            return "expired"
        seen[event_id] = sighting.first_seen
        return "kept"
