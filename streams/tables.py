"""Every Faust table of the engine, declared once."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import faust

from journey.settings import Settings


@dataclass(frozen=True, slots=True)
class Tables:
    # event id (bytes) -> [first seen (epoch s), ingest partition]: the validator's dedup window
    seen_events: Any


def declare_tables(app: faust.App, settings: Settings) -> Tables:
    return Tables(
        seen_events=app.Table(
            "seen-events",
            default=None,
            partitions=settings.topic_partitions,
            key_type=bytes,  # the app's raw key codec: bytes in, bytes back on recovery
            help="event ids seen by the validator within the dedup window",
        ),
    )
