"""`journey dlq`: what the validator refused, read from the dead-letter topic without a group."""

from __future__ import annotations

import asyncio
import contextlib
import heapq
import json
import logging
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import datetime
from enum import StrEnum
from typing import Annotated, Any

import typer
from pydantic import ValidationError

from journey.cli import app
from journey.output import DataTable, make_console
from journey.settings import Settings
from schemas.dead_letter import DeadLetter

RAW_PREVIEW_CHARS = 60
# The reason shown for a record on the DLQ topic that is not a dead-letter record at all.
UNREADABLE = "unreadable_dead_letter"
# Give up when no partition moves towards its end offset for this long (broker gone).
STALL_TIMEOUT = 30.0


class DlqFormat(StrEnum):
    table = "table"
    json = "json"


@dataclass(frozen=True, slots=True)
class DeadLetterRow:
    """One dead letter as shown: why it was refused and where it came from."""

    received_at: datetime | None
    reason: str
    detail: str
    field: str | None
    source_topic: str | None
    source_partition: int | None
    source_offset: int | None
    raw: str
    raw_encoding: str
    # where the dead letter itself sits on the DLQ topic, and Kafka's timestamp of it
    partition: int
    offset: int
    timestamp_ms: int

    def order(self) -> tuple[int, int, int]:
        # Kafka's timestamp, not received_at: every record has one, even an unreadable one.
        return (self.timestamp_ms, self.partition, self.offset)

    def as_json(self) -> dict[str, Any]:
        return {
            "received_at": self.received_at.isoformat() if self.received_at else None,
            "reason": self.reason,
            "detail": self.detail,
            "field": self.field,
            "source": {
                "topic": self.source_topic,
                "partition": self.source_partition,
                "offset": self.source_offset,
            },
            "raw": self.raw,
            "raw_encoding": self.raw_encoding,
            "dlq": {"partition": self.partition, "offset": self.offset},
        }


def parse_dead_letter(
    partition: int, offset: int, timestamp_ms: int, value: bytes | None
) -> DeadLetterRow:
    """A DLQ record as a row; a record that is not a dead letter becomes an UNREADABLE row."""
    try:
        letter = DeadLetter.model_validate_json(value or b"")
    except ValidationError as exc:
        text = (value or b"").decode("utf-8", errors="replace")
        errors = exc.errors()
        where = ".".join(str(part) for part in errors[0]["loc"]) if errors else ""
        first = (errors[0]["msg"] + (f" ({where})" if where else "")) if errors else str(exc)
        return DeadLetterRow(
            None, UNREADABLE, f"not a dead-letter record: {first}", None, None, None, None,
            text[:RAW_PREVIEW_CHARS], "utf-8", partition, offset, timestamp_ms,
        )  # fmt: skip
    error = letter.error
    return DeadLetterRow(
        letter.received_at, error.reason, error.detail, error.field, letter.topic,
        letter.partition, letter.offset, letter.raw[:RAW_PREVIEW_CHARS], letter.raw_encoding,
        partition, offset, timestamp_ms,
    )  # fmt: skip


@dataclass
class DeadLetterTally:
    """Counts every dead letter by reason and keeps the newest `limit` that match `reason`."""

    limit: int
    reason: str | None = None
    by_reason: Counter[str] = field(default_factory=Counter)
    total: int = 0
    matching: int = 0
    # a min-heap on order(), so the oldest kept row is the one to drop
    _newest: list[tuple[tuple[int, int, int], DeadLetterRow]] = field(default_factory=list)

    def add(self, row: DeadLetterRow) -> None:
        self.total += 1
        self.by_reason[row.reason] += 1
        if self.reason is not None and row.reason != self.reason:
            return
        self.matching += 1
        if self.limit <= 0:
            return
        item = (row.order(), row)
        if len(self._newest) < self.limit:
            heapq.heappush(self._newest, item)
        elif item[0] > self._newest[0][0]:
            heapq.heapreplace(self._newest, item)

    def rows(self) -> list[DeadLetterRow]:
        """The kept rows, oldest first (the newest at the bottom, as with tail)."""
        return [row for _, row in sorted(self._newest, key=lambda item: item[0])]


async def read_dead_letters(
    bootstrap: str, topic: str, tally: DeadLetterTally, *, stall_timeout: float = STALL_TIMEOUT
) -> bool:
    """Read `topic` from its beginning up to the end offsets it has now, into `tally`.

    No consumer group: nothing is committed and no group's position moves. Records that
    arrive while reading are left out, so the command ends. Returns False when the topic
    does not exist (nothing was ever refused).
    """
    from streams.kafka import read_topic_to_end

    def add(record: Any) -> None:
        tally.add(parse_dead_letter(record.partition, record.offset, record.timestamp,
                                    record.value))

    return await read_topic_to_end(bootstrap, topic, add, stall_timeout=stall_timeout)


@contextlib.contextmanager
def _quiet_kafka_client() -> Iterator[None]:
    # aiokafka logs a failed connection before raising it; the error reaches the person
    # as one line of ours, so its own log lines would only repeat it.
    logger = logging.getLogger("aiokafka")
    level = logger.level
    logger.setLevel(logging.CRITICAL)
    try:
        yield
    finally:
        logger.setLevel(level)


def _one_line(text: str) -> str:
    return text.replace("\r", "\\r").replace("\n", "\\n")


def _print_table(topic: str, tally: DeadLetterTally, exists: bool) -> None:
    # markup off: raw bytes and details are data, never rich markup
    console = make_console()
    if not exists:
        console.print(f"no topic {topic} yet: nothing has been dead-lettered", markup=False)
        return
    if not tally.total:
        console.print(f"no dead letters in {topic}", markup=False)
        return
    rows = tally.rows()
    if rows:
        table = DataTable(title=f"{topic}: newest {len(rows)}")
        for name in ("received_at", "reason", "detail", "field", "source", "raw"):
            table.add_column(name)
        for row in rows:
            source = (
                f"{row.source_topic}/{row.source_partition}@{row.source_offset}"
                if row.source_topic is not None
                else f"(dlq {row.partition}@{row.offset})"
            )
            table.add_row(
                row.received_at.isoformat() if row.received_at else "",
                row.reason,
                row.detail,
                row.field or "",
                source,
                _one_line(row.raw) if row.raw_encoding == "utf-8" else f"(base64) {row.raw}",
            )
        console.print(table)
    counts = DataTable(title="by reason")
    counts.add_column("reason")
    counts.add_column("dead letters", justify="right")
    for reason, n in sorted(tally.by_reason.items(), key=lambda item: (-item[1], item[0])):
        counts.add_row(reason, f"{n:,}")
    console.print(counts)
    shown = f"{tally.matching:,} with reason {tally.reason}, " if tally.reason else ""
    console.print(
        f"{tally.total:,} dead letters in {topic}; {shown}{len(rows)} shown", markup=False
    )


@app.command("dlq")
def dlq_command(
    limit: Annotated[
        int, typer.Option("--limit", "-n", min=0, help="how many of the newest to show")
    ] = 20,
    reason: Annotated[
        str | None, typer.Option("--reason", "-r", help="show only this reason, e.g. invalid_json")
    ] = None,
    output: Annotated[DlqFormat, typer.Option("--format", "-f", help="table or json")] = (
        DlqFormat.table
    ),
) -> None:
    """Show what the validator refused: the newest dead letters and a count by reason."""
    settings = Settings()
    tally = DeadLetterTally(limit=limit, reason=reason)
    # ServiceUnavailableError propagates: the entry point prints it as one line and exits 1.
    with _quiet_kafka_client():
        exists = asyncio.run(read_dead_letters(settings.bootstrap, settings.topic_dlq, tally))
    if output is DlqFormat.json:
        document = {
            "topic": settings.topic_dlq,
            "exists": exists,
            "total": tally.total,
            "matching": tally.matching,
            "by_reason": dict(tally.by_reason.most_common()),
            "records": [row.as_json() for row in tally.rows()],
        }
        typer.echo(json.dumps(document, ensure_ascii=False))
    else:
        _print_table(settings.topic_dlq, tally, exists)
