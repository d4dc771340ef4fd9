"""The collector's way to the broker: the records of the requests waiting go out together,
one record batch per topic partition, and each request is answered only once every replica
in sync acknowledged its records (acks=all, idempotent producer)."""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
from collections.abc import Sequence
from typing import Any, Final

from projections.errors import ServiceUnavailableError
from streams.kafka import (
    CachedKeyPartitioner,
    KafkaError,
    Record,
    create_topics,
    make_producer,
    record_batches,
)
from streams.settings import Settings
from streams.topics import Topics

log = logging.getLogger(__name__)

CONNECT_TIMEOUT: Final = 15.0
FIRST_RETRY_SECONDS: Final = 0.5
MAX_RETRY_SECONDS: Final = 10.0


class BrokerUnavailableError(Exception):
    """The broker did not acknowledge a request's records in time: the client resends."""


def _retrieve(future: asyncio.Future[Any]) -> None:
    # A send we stopped waiting for may still fail later; its error is read here so that
    # asyncio does not report it as never retrieved (the client was told to resend).
    if not future.cancelled():
        future.exception()


def _settle(delivered: asyncio.Future[Any], waiters: list[asyncio.Future[None]]) -> None:
    """Tell every request of a group how its records fared."""
    error = None
    if not delivered.cancelled():
        # return_exceptions: every batch's error is read, the first one is told
        error = delivered.exception() or next(
            (r for r in delivered.result() if isinstance(r, BaseException)), None)
    for acked in waiters:
        if acked.done():
            continue
        if delivered.cancelled():
            acked.cancel()
        elif error is not None:
            acked.set_exception(error)
        else:
            acked.set_result(None)


class Publisher:
    """One idempotent producer per collector process, connected in the background so that
    the collector answers (503) while the broker is away, and sends as soon as it is back."""

    def __init__(self, settings: Settings, spec: Topics) -> None:
        self.bootstrap = settings.bootstrap
        self.topics = (spec.ingest, spec.dlq)
        self.ingest_topic = spec.ingest.name
        self.dlq_topic = spec.dlq.name
        self.timeout = settings.collector_send_timeout
        self._partitioner = CachedKeyPartitioner()
        self._producer: Any = None
        self._connecting: asyncio.Task[None] | None = None
        self._sending: asyncio.Task[None] | None = None
        self._waiting: list[tuple[list[Record], asyncio.Future[None]]] = []
        self._wakeup = asyncio.Event()
        self.healthy = False  # the last send (or the connection) succeeded

    @property
    def connected(self) -> bool:
        return self._producer is not None

    def start(self) -> None:
        """Begin connecting; returns at once."""
        self._connecting = asyncio.get_running_loop().create_task(self._connect_until_up())

    async def wait_connected(self, timeout: float) -> bool:
        if self._connecting is None:
            return self.connected
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(asyncio.shield(self._connecting), timeout)
        return self.connected

    async def _connect_until_up(self) -> None:
        delay = FIRST_RETRY_SECONDS
        warned = False
        while True:
            # The request timeout bounds how long a batch may wait for the broker, so
            # that a send the client was told to repeat does not linger much longer.
            producer = make_producer(self.bootstrap, client_id="journey-collector",
                                     request_timeout_ms=int(self.timeout * 1000))
            try:
                await asyncio.wait_for(producer.start(), CONNECT_TIMEOUT)
                await create_topics(self.bootstrap, self.topics)
            except (TimeoutError, KafkaError, OSError, ServiceUnavailableError) as exc:
                with contextlib.suppress(Exception):
                    await producer.stop()
                if not warned:
                    log.warning("collector: Kafka at %s is not reachable (%s); answering 503 "
                                "and retrying", self.bootstrap, type(exc).__name__)
                    warned = True
                await asyncio.sleep(delay)
                delay = min(delay * 2, MAX_RETRY_SECONDS)
                continue
            self._producer = producer
            self.healthy = True
            log.info("collector: connected to Kafka at %s", self.bootstrap)
            return

    async def publish(self, accepted: Sequence[tuple[bytes, bytes]],
                      dead: Sequence[bytes]) -> None:
        """Send accepted touchpoints (keyed) to the ingest topic and dead letters to the DLQ,
        and wait for all of them to be acknowledged; BrokerUnavailableError otherwise."""
        if self._producer is None:
            raise BrokerUnavailableError(f"not connected to Kafka at {self.bootstrap} yet")
        records = [Record(self.ingest_topic, key, value) for key, value in accepted]
        records += [Record(self.dlq_topic, None, value) for value in dead]
        if not records:
            return
        acked: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._waiting.append((records, acked))
        self._wakeup.set()
        if self._sending is None or self._sending.done():
            self._sending = asyncio.get_running_loop().create_task(self._send_forever())
        try:
            # shield: the group's outcome is shared with the other requests in it
            await asyncio.wait_for(asyncio.shield(acked), self.timeout)
        except TimeoutError:
            acked.add_done_callback(_retrieve)
            self.healthy = False
            raise BrokerUnavailableError(
                f"Kafka at {self.bootstrap} did not acknowledge within {self.timeout:g}s"
            ) from None
        except KafkaError as exc:
            self.healthy = False
            raise BrokerUnavailableError(f"Kafka at {self.bootstrap} refused the records "
                                         f"({type(exc).__name__}: {exc})") from exc
        self.healthy = True

    async def _send_forever(self) -> None:
        """The one task that hands records to the producer (group commit): it takes the
        records of every request waiting, sends them as one record batch per topic
        partition, and goes on to the next group while the broker acknowledges this one.
        One sender also keeps concurrent requests from racing for aiokafka's per-partition
        batch slot, whose wait shortens its own timeout on every retry."""
        while True:
            await self._wakeup.wait()
            self._wakeup.clear()
            group, self._waiting = self._waiting, []
            if not group:
                continue
            waiters = [acked for _, acked in group]
            try:
                chunks = await record_batches(
                    self._producer, [r for records, _ in group for r in records],
                    self._partitioner)
                futures = [await self._producer.send_batch(c.builder, c.topic,
                                                           partition=c.partition)
                           for c in chunks]
            except (KafkaError, OSError) as exc:
                for acked in waiters:
                    if not acked.done():
                        acked.set_exception(exc)
                continue
            delivered = asyncio.gather(*futures, return_exceptions=True)
            delivered.add_done_callback(functools.partial(_settle, waiters=waiters))

    async def stop(self) -> None:
        for task in (self._connecting, self._sending):
            if task is not None and not task.done():
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
        producer, self._producer = self._producer, None
        if producer is not None:
            await producer.stop()
