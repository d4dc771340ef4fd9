"""Who may send to the collector, and how much: write keys, per-key rate limits, CORS."""

from __future__ import annotations

import base64
import binascii
import hashlib
import ipaddress
import math
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Final

from journey.errors import ConfigurationError

OPEN_KEY: Final = "-"
"""The key label of requests to a collector without write keys (loopback only)."""
UNKNOWN_KEY: Final = "unknown"
"""The key label of requests whose credentials match no write key."""


def _label(key: str) -> str:
    # Metrics name a key without showing it: a short digest stands for an unnamed key.
    return "key-" + hashlib.sha256(key.encode()).hexdigest()[:8]


def _digest(key: str) -> bytes:
    return hashlib.sha256(key.encode()).digest()


@dataclass(frozen=True, slots=True)
class WriteKeys:
    """The configured write keys, each with the name metrics count it under.

    Looked up by the SHA-256 of the presented key, so that the time a lookup takes says
    nothing about how much of a key was right.
    """

    by_digest: dict[bytes, str] = field(default_factory=dict)

    @classmethod
    def parse(cls, entries: Iterable[str], where: str) -> WriteKeys:
        """Entries are `key` or `name=key`; blank entries and # comments are skipped."""
        by_digest: dict[bytes, str] = {}
        names: set[str] = set()
        for entry in entries:
            entry = entry.strip()
            if not entry or entry.startswith("#"):
                continue
            name, sep, key = entry.partition("=")
            if not sep:
                name, key = _label(entry), entry
            name, key = name.strip(), key.strip()
            if not key or not name or any(c.isspace() for c in key + name):
                raise ConfigurationError(
                    f"write key entry {entry[:3]}... in {where} is not `key` or `name=key` "
                    "(no spaces): fix it")
            if _digest(key) in by_digest or name in names:
                raise ConfigurationError(
                    f"write key {name!r} appears twice in {where}: give each key once")
            by_digest[_digest(key)] = name
            names.add(name)
        return cls(by_digest)

    @classmethod
    def load(cls, inline: str | None, file: Path | None) -> WriteKeys:
        """The keys of JOURNEY_COLLECTOR_WRITE_KEYS and JOURNEY_COLLECTOR_WRITE_KEYS_FILE."""
        keys = cls.parse((inline or "").split(","), "JOURNEY_COLLECTOR_WRITE_KEYS")
        if file is not None:
            try:
                text = file.read_text()
            except OSError as exc:
                raise ConfigurationError(
                    f"cannot read JOURNEY_COLLECTOR_WRITE_KEYS_FILE {file}: "
                    f"{exc.strerror or exc}: fix the path") from None
            more = cls.parse(text.splitlines(), str(file))
            for digest, name in more.by_digest.items():
                if digest in keys.by_digest or name in keys.by_digest.values():
                    raise ConfigurationError(
                        f"write key {name!r} is both in JOURNEY_COLLECTOR_WRITE_KEYS and in "
                        f"{file}: give each key once")
                keys.by_digest[digest] = name
        return keys

    def __bool__(self) -> bool:
        return bool(self.by_digest)

    def name_of(self, key: str | None) -> str | None:
        """The name of a presented key, None when it is no write key."""
        if not key:
            return None
        return self.by_digest.get(_digest(key))


def presented_key(authorization: str | None) -> str | None:
    """The key in `Authorization: Bearer KEY` or `Basic base64(KEY:)` (Segment's way:
    the key is the user name, the password empty or ignored)."""
    if not authorization:
        return None
    scheme, _, value = authorization.strip().partition(" ")
    scheme, value = scheme.lower(), value.strip()
    if scheme == "bearer":
        return value or None
    if scheme == "basic":
        try:
            decoded = base64.b64decode(value, validate=True).decode("utf-8")
        except (binascii.Error, UnicodeDecodeError):
            return None
        return decoded.partition(":")[0] or None
    return None


def is_loopback(host: str) -> bool:
    """True when `host` can only be reached from this machine."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


@dataclass(slots=True)
class _Bucket:
    tokens: float
    at: float


@dataclass(slots=True)
class RateLimiter:
    """A token bucket per key: `rate` events per second, up to `burst_seconds` of them at
    once. A request larger than the bucket passes when the bucket is full and leaves it in
    debt, so no request is too large to ever pass; the clock is the caller's."""

    rate: float
    burst_seconds: float
    _buckets: dict[str, _Bucket] = field(default_factory=dict)

    @property
    def capacity(self) -> float:
        return self.rate * self.burst_seconds

    def admit(self, key: str, events: int, now: float) -> int | None:
        """None when `events` may pass now (and are counted), else seconds to wait."""
        if self.rate <= 0:
            return None
        bucket = self._buckets.get(key)
        if bucket is None:
            bucket = self._buckets[key] = _Bucket(self.capacity, now)
        bucket.tokens = min(self.capacity, bucket.tokens + (now - bucket.at) * self.rate)
        bucket.at = now
        needed = min(float(events), self.capacity)
        if bucket.tokens < needed:
            return max(1, math.ceil((needed - bucket.tokens) / self.rate))
        bucket.tokens -= events
        return None

    def refund(self, key: str, events: int) -> None:
        """Give back what a request took that was not served (the client sends it again)."""
        bucket = self._buckets.get(key)
        if bucket is not None:
            bucket.tokens = min(self.capacity, bucket.tokens + events)


@dataclass(frozen=True, slots=True)
class CorsPolicy:
    """Which browser origins may send; `*` allows any."""

    origins: frozenset[str]

    @classmethod
    def parse(cls, value: str) -> CorsPolicy:
        return cls(frozenset(o.strip().rstrip("/") for o in value.split(",") if o.strip()))

    def allows(self, origin: str) -> bool:
        return "*" in self.origins or origin.rstrip("/") in self.origins
