"""Every Faust table of the engine, declared once."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import faust
import orjson

from journey.settings import Settings


@dataclass(frozen=True, slots=True)
class Tables:
    # person key (bytes) -> JourneyState.to_dict(): customer id or unlinked anonymous id
    journeys: Any
    # anonymous id (bytes) -> IdentityLinks.to_dict()
    identity_links: Any


def declare_tables(app: faust.App, settings: Settings) -> Tables:
    return Tables(
        journeys=app.Table(
            "journeys", default=None, partitions=settings.topic_partitions,
            key_type=bytes,  # the app's raw key codec: bytes in, bytes back on recovery
            help="each customer's (or unlinked visitor's) journey state",
        ),
        identity_links=app.Table(
            "identity-links", default=None, partitions=settings.topic_partitions,
            key_type=bytes, help="the customer each anonymous id is linked to",
        ),
    )


# topic, key, value (None: a tombstone), partition (None: by key)
Record = tuple[str, bytes | None, bytes | None, int | None]


def put(table: Any, key: bytes, value: Any, partition: int, out: list[Record]) -> None:
    """Change a table entry, queueing its changelog record on `out` instead of sending it.

    Faust's own `table[key] = value` sends each changelog record through a small
    per-record buffer that throttles a busy agent; queued on `out`, the records travel
    in the batch's flushed send, before the batch's offsets are acknowledged. The
    caller has made an event of `partition` the current one (the store needs it).
    """
    changelog = table.changelog_topic.get_topic_name()
    if value is None:
        table.data.pop(key, None)
        out.append((changelog, key, None, partition))
    else:
        table.data[key] = value
        out.append((changelog, key, orjson.dumps(value), partition))
