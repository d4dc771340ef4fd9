"""The validator agent: touchpoints.ingest -> touchpoints (valid) or touchpoints.dlq."""

from __future__ import annotations

import logging
import time
from datetime import UTC, datetime
from typing import Any

import faust

from journey.settings import Settings
from projections.ingest import Admitted, DedupWindow, admit
from schemas.codec import encode_json
from schemas.dead_letter import DeadLetter
from streams.delivery import as_current, send_all
from streams.metrics import Metrics
from streams.tables import Record, put

log = logging.getLogger(__name__)

SWEEP_EVERY_SECONDS = 600.0


def install_validator(app: faust.App, settings: Settings, metrics: Metrics,
                      ingest: faust.TopicT, touchpoints: faust.TopicT,
                      dlq: faust.TopicT, seen: Any) -> None:
    window = DedupWindow(settings.dedup_window_hours * 3600.0)
    store_topic = touchpoints.get_topic_name()
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
                    as_current(event)
                    event_key = outcome.event_id.encode()
                    entry = seen.get(event_key)
                    if window.is_repeat(entry[0] if entry else None, now_s):
                        metrics.duplicates += 1
                        continue
                    put(seen, event_key, [now_s, msg.partition], msg.partition, out)
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
