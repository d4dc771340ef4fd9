"""Delivery helpers of the agents: the current event for tables, flushed batched sends."""

from __future__ import annotations

import asyncio
import logging
import weakref
from typing import Any

import faust
from faust.streams import _current_event

from streams.metrics import Metrics
from streams.tables import Record

log = logging.getLogger(__name__)


def as_current(event: Any) -> None:
    # Faust routes table writes to the changelog partition of the *current* event,
    # and a take_events() batch leaves only the last event current; point it at
    # the event being handled so each id lands in its own partition's state.
    _current_event.set(weakref.ref(event))


async def send_all(app: faust.App, records: list[Record], metrics: Metrics) -> None:
    """Send and flush, retrying with backoff while the broker is unavailable."""
    pending = records
    delay = 0.2
    while pending:
        futures: list[asyncio.Future[Any]] = []
        try:
            for topic, key, value, partition in pending:
                futures.append(asyncio.ensure_future(await app.producer.send(
                    topic, key, value, partition=partition, timestamp=None, headers=None)))
            await app.producer.flush()
            await asyncio.gather(*futures)
            return
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # aiokafka raises several unrelated classes here
            metrics.send_failures += 1
            log.warning("send of %d records failed (%s: %s); retrying in %.1fs",
                        len(pending), type(exc).__name__, exc, delay)
            # Resend whatever is not confirmed: a duplicate in the event store is
            # absorbed downstream (ClickHouse dedups on event_id), a loss is not.
            confirmed = len(futures)
            pending = [rec for i, rec in enumerate(pending)
                       if i >= confirmed or not _succeeded(futures[i])]
            await asyncio.sleep(delay)
            delay = min(delay * 2, 10.0)


def _succeeded(future: asyncio.Future[Any]) -> bool:
    return future.done() and not future.cancelled() and future.exception() is None
