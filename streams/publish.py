"""The collector's way to the broker: each request's records in one batched send, answered
only once every replica in sync acknowledged them (acks=all, idempotent producer)."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Sequence
from typing import Any, Final

from journey.errors import ServiceUnavailableError
from journey.settings import Settings
from streams.kafka import (
    DefaultPartitioner,
    KafkaError,
    Record,
    create_topics,
    make_producer,
    record_batches,
)
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


class Publisher:
    """One idempotent producer per collector process, connected in the background so that
    the collector answers (503) while the broker is away, and sends as soon as it is back."""

    def __init__(self, settings: Settings, spec: Topics) -> None:
        self.bootstrap = settings.bootstrap
        self.topics = (spec.ingest, spec.dlq)
        self.ingest_topic = spec.ingest.name
        self.dlq_topic = spec.dlq.name
        self.timeout = settings.collector_send_timeout
        self._partitioner = DefaultPartitioner()
        self._producer: Any = None
        self._connecting: asyncio.Task[None] | None = None
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
        producer = self._producer
        if producer is None:
            raise BrokerUnavailableError(f"not connected to Kafka at {self.bootstrap} yet")
        records = [Record(self.ingest_topic, key, value) for key, value in accepted]
        records += [Record(self.dlq_topic, None, value) for value in dead]
        if not records:
            return
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.timeout
        try:
            futures = await asyncio.wait_for(self._enqueue(producer, records), self.timeout)
        except (TimeoutError, KafkaError) as exc:
            self.healthy = False
            raise BrokerUnavailableError(f"Kafka at {self.bootstrap} did not take the records "
                                         f"({type(exc).__name__})") from exc
        # asyncio.wait, not wait_for: the producer's delivery futures are its own and must
        # not be cancelled when we stop waiting.
        _, pending = await asyncio.wait(futures, timeout=max(0.0, deadline - loop.time()))
        if pending:
            for future in pending:
                future.add_done_callback(_retrieve)
            self.healthy = False
            raise BrokerUnavailableError(
                f"Kafka at {self.bootstrap} did not acknowledge within {self.timeout:g}s")
        for future in futures:
            error = future.exception()
            if error is not None:
                self.healthy = False
                raise BrokerUnavailableError(f"Kafka at {self.bootstrap} refused the records "
                                             f"({type(error).__name__}: {error})") from error
        self.healthy = True

    async def _enqueue(self, producer: Any, records: list[Record]) -> list[asyncio.Future[Any]]:
        # One record batch per topic partition: one future per batch, not one per record.
        chunks = await record_batches(producer, records, self._partitioner)
        return [await producer.send_batch(c.builder, c.topic, partition=c.partition)
                for c in chunks]

    async def stop(self) -> None:
        if self._connecting is not None and not self._connecting.done():
            self._connecting.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._connecting
        producer, self._producer = self._producer, None
        if producer is not None:
            await producer.stop()
