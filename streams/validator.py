"""The validator: touchpoints.ingest -> the validated topic (keyed by customer) or the DLQ.

It runs in the worker on its own aiokafka consumer (group `<app id>-validator`) rather
than as a Faust agent: Faust hands each message over in its own asyncio task, which
cost five times the validation itself (docs/adr/0001-validator-outside-faust-streams.md).

The ingest topic takes any key, so the validator keeps no state: a producer's repeat
of an event id may land in any ingest partition. It decodes and checks each message,
and sends every valid touchpoint - normalised, keyed by its customer key, with its
event id in a header - to the internal validated topic, where all events of a customer
(and so all repeats of an event) meet in one partition; the dedup stage
(`streams/dedup.py`) drops repeats there. Bad input goes to the DLQ with its reason.
Per batch, the outputs and the consumed offsets are ONE Kafka transaction: a crash at
any point routes a batch again from the committed offsets and nothing becomes visible
twice (docs/adr/0002-correct-for-any-producer.md).
"""

from __future__ import annotations

import logging
from collections import Counter
from datetime import UTC, datetime
from typing import Any

import faust

from projections.ingest import Admitted, admit
from schemas.codec import encode_json
from schemas.dead_letter import DeadLetter
from streams.batch import TransactionalService, run_in_worker, transactional_id
from streams.kafka import Record
from streams.metrics import Metrics
from streams.settings import Settings
from streams.topics import Topics

log = logging.getLogger(__name__)

EVENT_ID_HEADER = "event_id"


def validator_group(settings: Settings) -> str:
    """The validator's consumer group: stable, so a restart resumes where it committed."""
    return f"{settings.app_id}-validator"


class Validator(TransactionalService):
    """Routes the ingest topic in batches, one transaction per batch."""

    name = "validator"

    def __init__(self, settings: Settings, spec: Topics, metrics: Metrics) -> None:
        group = validator_group(settings)
        super().__init__(
            settings.bootstrap, sources=[spec.ingest.name], group_id=group,
            transactional_id=transactional_id(group, settings.worker_port),
            client_id=f"{settings.app_id}-validator", batch_size=settings.validator_batch_size)
        self.settings = settings
        self.metrics = metrics
        self.validated_topic = spec.validated.name
        self.dlq_topic = spec.dlq.name

    def handle(self, got: dict[Any, list[Any]]) -> tuple[list[Record], Counter[str]]:
        return route(got, self.validated_topic, self.dlq_topic, datetime.now(UTC))

    def committed(self, tally: Counter[str]) -> None:
        metrics = self.metrics
        metrics.read += tally.pop("read", 0)
        metrics.validated += tally.pop("validated", 0)
        metrics.invalid.update(tally)


def route(got: dict[Any, list[Any]], validated_topic: str, dlq_topic: str,
          now: datetime) -> tuple[list[Record], Counter[str]]:
    """Each message's output record and the tally (read, validated, invalid by reason)."""
    out: list[Record] = []
    tally: Counter[str] = Counter()
    for messages in got.values():
        for msg in messages:
            raw = msg.value if msg.value is not None else b""
            tally["read"] += 1
            outcome = admit(raw, now=now)
            if isinstance(outcome, Admitted):
                tally["validated"] += 1
                out.append(Record(validated_topic, outcome.key, outcome.value, None,
                                  ((EVENT_ID_HEADER, outcome.event_id.encode()),)))
            else:
                tally[str(outcome.error.reason)] += 1
                record = DeadLetter.from_error(
                    raw, outcome.error, topic=msg.topic, partition=msg.partition,
                    offset=msg.offset, received_at=now,
                )
                out.append(Record(dlq_topic, msg.key,
                                  encode_json(record.model_dump(mode="json"))))
    return out, tally


def install_validator(app: faust.App, settings: Settings, spec: Topics,
                      metrics: Metrics) -> Validator:
    """Run the validator in the worker: started with the app, drained on shutdown."""
    validator = Validator(settings, spec, metrics)
    run_in_worker(app, validator)
    return validator
