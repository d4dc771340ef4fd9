"""The producer SDK: validated, batched, idempotent touchpoint publishing from Python."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from datetime import UTC, datetime
from types import TracebackType
from typing import Any

from journey.settings import Settings
from schemas.codec import InvalidTouchpointError, decode_touchpoint, encode_json
from schemas.touchpoint import Touchpoint, identity_key
from streams.kafka import KafkaError, make_producer, unavailable

__all__ = ["InvalidTouchpointError", "TouchpointProducer"]


class TouchpointProducer:
    """Publishes touchpoints to the ingest topic.

    Every event is validated before it leaves the process (a bad one raises
    InvalidTouchpointError and nothing is sent); the key is the customer id, or
    the anonymous id before identification, so one customer's events stay in order.

        async with TouchpointProducer(Settings()) as producer:
            await producer.send({"event_id": ..., "type": "purchase", ...})
    """

    def __init__(self, settings: Settings | None = None, *, bootstrap: str | None = None,
                 topic: str | None = None, linger_ms: int = 10,
                 batch_bytes: int = 512 * 1024) -> None:
        settings = settings or Settings()
        self.bootstrap = bootstrap or settings.bootstrap
        self.topic = topic or settings.topic_ingest
        self._producer = make_producer(self.bootstrap, linger_ms=linger_ms,
                                       batch_bytes=batch_bytes, client_id="journey-sdk")
        self._pending: list[Any] = []
        self.sent = 0

    async def start(self) -> None:
        try:
            await self._producer.start()
        except (KafkaError, OSError) as exc:
            await self._producer.stop()
            raise unavailable(self.bootstrap, exc) from exc

    async def stop(self) -> None:
        try:
            await self.flush()
        finally:
            await self._producer.stop()

    async def __aenter__(self) -> TouchpointProducer:
        await self.start()
        return self

    async def __aexit__(self, exc_type: type[BaseException] | None,
                        exc: BaseException | None, tb: TracebackType | None) -> None:
        await self.stop()

    @staticmethod
    def prepare(event: Touchpoint | Mapping[str, Any], *,
                now: datetime | None = None) -> tuple[bytes, bytes]:
        """Validate one event and return (key, value) bytes; raises on a bad event."""
        raw = (encode_json(event.model_dump(mode="json", exclude_none=True))
               if isinstance(event, Touchpoint) else encode_json(dict(event)))
        touchpoint = decode_touchpoint(raw, now=now or datetime.now(UTC))
        return identity_key(touchpoint).encode(), raw

    async def send(self, event: Touchpoint | Mapping[str, Any]) -> None:
        """Validate and enqueue one event; delivery is confirmed by flush()."""
        key, value = self.prepare(event)
        await self.send_raw(value, key=key)

    async def send_json(self, raw: bytes) -> None:
        """Validate an already encoded event and enqueue those exact bytes."""
        touchpoint = decode_touchpoint(raw, now=datetime.now(UTC))
        await self.send_raw(raw, key=identity_key(touchpoint).encode())

    async def send_many(self, events: Iterable[Touchpoint | Mapping[str, Any]]) -> int:
        """Validate all events first, then enqueue them; none is sent if one is bad."""
        now = datetime.now(UTC)
        prepared = [self.prepare(e, now=now) for e in events]
        for key, value in prepared:
            await self.send_raw(value, key=key)
        return len(prepared)

    async def send_raw(self, value: bytes, *, key: bytes | None = None) -> None:
        """Enqueue bytes as they are, without validation (replays, tests, bad input)."""
        self._pending.append(await self._producer.send(self.topic, value, key=key))
        self.sent += 1
        if len(self._pending) >= 10000:
            await self._settle()

    async def flush(self) -> None:
        """Wait until every enqueued event is acknowledged by all in-sync replicas."""
        await self._producer.flush()
        await self._settle()

    async def _settle(self) -> None:
        pending, self._pending = self._pending, []
        for fut in pending:
            await fut  # raises the delivery error, if any
