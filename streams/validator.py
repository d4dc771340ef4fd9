"""The validator agent: touchpoints.ingest -> touchpoints (valid) or touchpoints.dlq."""

from __future__ import annotations

import asyncio
import logging
import time
import weakref
from datetime import UTC, datetime
from typing import Any

import faust
from faust.streams import _current_event

from journey.settings import Settings
from projections.ingest import Admitted, DedupWindow, admit
from schemas.codec import encode_json
from schemas.dead_letter import DeadLetter
from streams.metrics import Metrics

log = logging.getLogger(__name__)

SWEEP_EVERY_SECONDS = 600.0

# topic, key, value, partition (None: by key)
Record = tuple[str, bytes | None, bytes, int | None]


def _as_current(event: Any) -> None:
    # Faust routes table writes to the changelog partition of the *current* event,
    # and a take_events() batch leaves only the last event current; point it at
    # the event being handled so each id lands in its own partition's state.
    _current_event.set(weakref.ref(event))


def install_validator(app: faust.App, settings: Settings, metrics: Metrics,
                      ingest: faust.TopicT, touchpoints: faust.TopicT,
                      dlq: faust.TopicT, seen: Any) -> None:
    window = DedupWindow(settings.dedup_window_hours * 3600.0)
    store_topic = touchpoints.get_topic_name()
    changelog = seen.changelog_topic.get_topic_name()
    dlq_topic = dlq.get_topic_name()

    @app.agent(ingest, name="validator")
    async def validate(stream: Any) -> None:
        async for batch in stream.take_events(settings.validator_batch_size, within=0.05):
            now = datetime.now(UTC)
            now_s = now.timestamp()
            out: list[Record] = []
            for event in batch:
                msg = event.message
                raw = msg.value if isinstance(msg.value, bytes) else bytes(msg.value or b"")
                metrics.read += 1
                outcome = admit(raw, now=now)
                if isinstance(outcome, Admitted):
                    _as_current(event)
                    event_key = outcome.event_id.encode()
                    entry = seen.get(event_key)
                    if window.is_repeat(entry[0] if entry else None, now_s):
                        metrics.duplicates += 1
                        continue
                    # Store and changelog written side by side (not through the
                    # table's per-key send_soon buffer) so the changelog records
                    # travel in the same flushed batch as the touchpoints.
                    seen.data[event_key] = [now_s, msg.partition]
                    out.append((changelog, event_key, b"[%r,%d]" % (now_s, msg.partition),
                                msg.partition))
                    metrics.valid += 1
                    out.append((store_topic, outcome.key, outcome.value, None))
                else:
                    metrics.invalid[str(outcome.error.reason)] += 1
                    record = DeadLetter.from_error(
                        raw, outcome.error, topic=msg.topic, partition=msg.partition,
                        offset=msg.offset, received_at=now,
                    )
                    out.append((dlq_topic, msg.key, encode_json(record.model_dump(mode="json")),
                                None))
            # take_events acks the batch when this body returns: everything must be
            # on the broker (acks=all) by then, so send and flush before returning.
            await send_all(app, out, metrics)

    @app.timer(SWEEP_EVERY_SECONDS)  # type: ignore[untyped-decorator]
    async def sweep_seen_events() -> None:
        now_s = time.time()
        expired = [(k, v) for k, v in list(seen.data.items())
                   if v and window.expired(v[0], now_s)]
        for key, value in expired:
            del seen.data[key]
            seen.send_changelog(value[1], key, None)
        if expired:
            log.info("dedup window: forgot %d event ids", len(expired))


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
