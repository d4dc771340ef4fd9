"""The alert consumer: friction topic -> console, JSON-lines file and webhook sinks.

It runs its own aiokafka consumer (group `<app id>-alerts` unless told otherwise) and
works batch by batch, in the validator's way: decode each friction event, drop a
friction id it already handled (bounded memory), pick the sinks whose filter accepts
it and whose throttle lets it through, deliver to every sink at once, dead-letter
what a sink could not deliver within its retry budget to the alert dead-letter topic,
wait for the broker's acknowledgements and only then commit the batch's offsets.

So a graceful stop (the batch in flight finishes and commits) never delivers an alert
twice on restart, and a hard kill delivers at least once: webhook receivers drop the
repeats by the Idempotency-Key header, which is the friction id.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import os
import signal
import time
from abc import ABC, abstractmethod
from collections import Counter, OrderedDict
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Final, Protocol

import aiohttp
import orjson
from pydantic import ValidationError
from rich.console import Console
from rich.text import Text

from projections.errors import ConfigurationError, ServiceUnavailableError
from schemas.codec import decode_json, encode_json
from schemas.friction import FrictionEvent, Severity
from streams.alerts_config import (
    AlertFilter,
    AlertsConfig,
    ConsoleSinkConfig,
    FileSinkConfig,
    RetryBudget,
    SinkConfig,
    WebhookFormat,
    WebhookSinkConfig,
    default_config,
)
from streams.kafka import (
    ConsumerRebalanceListener,
    KafkaError,
    TopicPartition,
    create_topics,
    make_consumer,
    make_producer,
    read_topic_to_end,
    unavailable,
)
from streams.settings import Settings
from streams.topics import topics

log = logging.getLogger(__name__)

POLL_MS: Final = 200
CONNECT_TIMEOUT: Final = 15.0
FIRST_RETRY_SECONDS: Final = 0.2
MAX_RETRY_SECONDS: Final = 10.0
# Poll deadline on top of the longest sink budget: a batch in the sinks must not make
# the group think this member died.
POLL_MARGIN_SECONDS: Final = 120.0
USER_AGENT: Final = "journey-alerts/1"
ERROR_CHARS: Final = 500


def alerts_group(settings: Settings) -> str:
    """The default consumer group: instances sharing it share the partitions."""
    return f"{settings.app_id}-alerts"


# -- what a batch is made of -------------------------------------------------------------


class _Record(Protocol):
    """What the consumer reads of a consumed record (aiokafka's ConsumerRecord)."""

    topic: str
    partition: int
    offset: int
    key: bytes | None
    value: bytes | None


@dataclass(frozen=True, slots=True)
class Alert:
    """One friction event as read: the model, the JSON object as received, and where."""

    friction: FrictionEvent
    document: dict[str, Any]
    topic: str
    partition: int
    offset: int

    @property
    def payload(self) -> bytes:
        """The friction event JSON on one line (extra fields kept)."""
        return encode_json(self.document)

    @property
    def key(self) -> bytes:
        return self.friction.customer_key.encode()


@dataclass(frozen=True, slots=True)
class Poison:
    """A record of the friction topic that is no friction event."""

    error: str
    raw: bytes | None
    key: bytes | None
    topic: str
    partition: int
    offset: int


def decode_alert(record: _Record) -> Alert | Poison:
    """A friction record as an Alert, or as Poison saying what is wrong with it."""
    where = (record.topic, record.partition, record.offset)
    if record.value is None:
        return Poison("a tombstone (no value), not a friction event", None, record.key, *where)
    try:
        document = decode_json(record.value)
    except ValueError as exc:
        return Poison(f"not JSON: {exc}"[:ERROR_CHARS], record.value, record.key, *where)
    if not isinstance(document, dict):
        return Poison("not a JSON object", record.value, record.key, *where)
    try:
        friction = FrictionEvent.model_validate(document)
    except ValidationError as exc:
        first = exc.errors()[0]
        loc = ".".join(str(part) for part in first["loc"])
        return Poison(f"not a friction event: {loc}: {first['msg']}"[:ERROR_CHARS],
                      record.value, record.key, *where)
    return Alert(friction, document, *where)


# -- pure policies: dedup, throttle, routing ---------------------------------------------


class RecentIds:
    """The last `capacity` friction ids seen, oldest forgotten first."""

    def __init__(self, capacity: int) -> None:
        self.capacity = capacity
        self._ids: OrderedDict[str, None] = OrderedDict()

    def first_sighting(self, friction_id: str) -> bool:
        """True the first time an id is seen (while it is remembered), False on a repeat."""
        if friction_id in self._ids:
            self._ids.move_to_end(friction_id)
            return False
        self._ids[friction_id] = None
        if len(self._ids) > self.capacity:
            self._ids.popitem(last=False)
        return True

    def forget(self, friction_id: str) -> None:
        self._ids.pop(friction_id, None)

    def __len__(self) -> int:
        return len(self._ids)


class Throttle:
    """At most one alert per (customer_key, rule) per `period` seconds of detection time.

    Time is the friction's `detected_at`, passed in: a backlog read late is throttled as
    it was detected, not bunched into one alert. The window is fixed from the last alert
    let through; throttled alerts do not extend it. Keys beyond `capacity` are forgotten
    least recently alerted first.
    """

    def __init__(self, period: float, capacity: int) -> None:
        self.period = period
        self.capacity = capacity
        self._last: OrderedDict[tuple[str, str], float] = OrderedDict()

    def admit(self, customer_key: str, rule: str, at: float) -> bool:
        if self.period <= 0:
            return True
        key = (customer_key, rule)
        last = self._last.get(key)
        # abs(): a friction detected before the last alert (replayed or re-detected)
        # is inside the window too.
        if last is not None and abs(at - last) < self.period:
            return False
        self._last[key] = at
        self._last.move_to_end(key)
        if len(self._last) > self.capacity:
            self._last.popitem(last=False)
        return True


@dataclass
class SinkStats:
    delivered: int = 0
    filtered: int = 0
    throttled: int = 0
    dead_lettered: int = 0
    retries: int = 0
    withdrawn: int = 0  # retracted while held: never delivered
    retractions_delivered: int = 0
    retractions_skipped: int = 0  # the sink does not take retractions
    held: int = 0  # waiting for their hold to pass, at the last look
    last_error: str | None = None

    def snapshot(self) -> dict[str, Any]:
        return {
            "delivered": self.delivered,
            "filtered": self.filtered,
            "throttled": self.throttled,
            "dead_lettered": self.dead_lettered,
            "retries": self.retries,
            "withdrawn": self.withdrawn,
            "retractions_delivered": self.retractions_delivered,
            "retractions_skipped": self.retractions_skipped,
            "held": self.held,
            "last_error": self.last_error,
        }


@dataclass
class AlertStats:
    """Counters of one alert consumer; one event loop, so no locking."""

    started_at: float = field(default_factory=time.time)
    read: int = 0
    invalid: int = 0
    duplicates: int = 0
    stale: int = 0  # detected more than max_age_seconds after they happened
    batches: int = 0
    commit_failures: int = 0
    dlq_send_failures: int = 0
    sinks: dict[str, SinkStats] = field(default_factory=dict)

    @property
    def dead_lettered(self) -> int:
        """Records on the alert dead-letter topic: sink failures plus invalid records."""
        return self.invalid + sum(s.dead_lettered for s in self.sinks.values())

    def snapshot(self) -> dict[str, Any]:
        return {
            "uptime_seconds": round(time.time() - self.started_at, 3),
            "read": self.read,
            "invalid": self.invalid,
            "duplicates": self.duplicates,
            "stale": self.stale,
            "batches": self.batches,
            "dead_lettered": self.dead_lettered,
            "commit_failures": self.commit_failures,
            "dlq_send_failures": self.dlq_send_failures,
            "sinks": {name: s.snapshot() for name, s in self.sinks.items()},
        }

    def summary_line(self) -> str:
        parts = [f"alerts: read {self.read:,}", f"duplicates {self.duplicates:,}",
                 f"stale {self.stale:,}", f"invalid {self.invalid:,}"]
        for name, s in self.sinks.items():
            line = (f"{name}: delivered {s.delivered:,}, throttled {s.throttled:,}, "
                    f"filtered {s.filtered:,}, dead-lettered {s.dead_lettered:,}")
            if s.held or s.withdrawn:
                line += f", held {s.held:,}, withdrawn {s.withdrawn:,}"
            if s.retractions_delivered:
                line += f", retractions {s.retractions_delivered:,}"
            parts.append(line)
        if self.commit_failures or self.dlq_send_failures:
            parts.append(f"commit failures {self.commit_failures:,}, "
                         f"dead-letter send failures {self.dlq_send_failures:,}")
        return " | ".join(parts)


def _sighting(friction: FrictionEvent) -> str:
    return f"{friction.friction_id}:{friction.status}"


@dataclass(frozen=True, slots=True)
class _Policy:
    name: str
    filter: AlertFilter
    throttle: Throttle
    hold: float
    retractions: bool


class AlertRouter:
    """Decides which sinks get which alert: dedup by friction id and status, the age
    check, then each sink's filter and throttle.

    Dedup is consumer-wide (a repeated record reaches no sink); filters and throttles are
    per sink, so a sink that filters a rule out does not use up another sink's throttle
    window. A retraction is not throttled: it reaches a sink that takes retractions if
    the sink's filter accepts the friction it retracts.
    """

    def __init__(self, sinks: Sequence[SinkConfig], memory: int, stats: AlertStats,
                 max_age_seconds: float = 0.0) -> None:
        self.seen = RecentIds(memory)
        self.max_age_seconds = max_age_seconds
        self.policies = [_Policy(s.name, s.filter, Throttle(s.throttle_seconds, memory),
                                 s.hold_seconds, s.retractions) for s in sinks]
        self.stats = stats
        for s in sinks:
            stats.sinks.setdefault(s.name, SinkStats())

    def first(self, alert: Alert) -> bool:
        """Whether a record is news: not a repeat of one seen, not found long after."""
        friction = alert.friction
        if not self.seen.first_sighting(_sighting(friction)):
            self.stats.duplicates += 1
            return False
        if self.max_age_seconds and friction.status == "detected" and \
                friction.detected_at.timestamp() - friction.occurred_at.timestamp() > \
                self.max_age_seconds:
            # Found long after it happened: a replay or a late backlog, not news.
            self.stats.stale += 1
            return False
        return True

    def forget(self, alert: Alert) -> None:
        """Take back a sighting: the record will be read again (a rebalance)."""
        self.seen.forget(_sighting(alert.friction))

    def admit(self, policy: _Policy, alert: Alert) -> bool:
        """Whether one sink gets a record that is news; counts what it holds back."""
        friction = alert.friction
        counters = self.stats.sinks[policy.name]
        if friction.status == "retracted" and not policy.retractions:
            counters.retractions_skipped += 1
            return False
        if not policy.filter.accepts(friction):
            counters.filtered += 1
            return False
        if friction.status == "retracted":
            counters.retractions_delivered += 1
            return True
        if not policy.throttle.admit(friction.customer_key, friction.rule,
                                     friction.detected_at.timestamp()):
            counters.throttled += 1
            return False
        return True

    def route(self, alerts: Iterable[Alert]) -> dict[str, list[Alert]]:
        """Each sink's share of the alerts, in order, without holding any."""
        out: dict[str, list[Alert]] = {p.name: [] for p in self.policies}
        for alert in alerts:
            if self.first(alert):
                for policy in self.policies:
                    if self.admit(policy, alert):
                        out[policy.name].append(alert)
        return out


@dataclass(slots=True)
class _Held:
    alert: Alert | None  # None: nothing to deliver (poison, a repeat, stale)
    offset: int
    waiting: set[str]  # the sinks it has not been released to yet


class Holding:
    """One partition's records read but not yet released to every sink, in offset order.

    A sink with `hold_seconds` gets a friction only once it has stood that long: once
    this partition has been read up to that moment - a later record detected after it,
    or the partition read to its end with the clock past it - and no retraction of it
    came. A friction retracted within the hold reaches that sink not at all, and
    neither does its retraction (withdrawn). Records leave the buffer, and their offsets
    may be committed, once released to every sink; so a restart delivers what was held.
    Each sink gets its records in offset order.
    """

    def __init__(self, router: AlertRouter, limit: int) -> None:
        self.router = router
        self.limit = limit  # held records beyond it are released at once, oldest first
        self.records: list[_Held] = []
        self.newest = -math.inf  # the newest detection time read in this partition
        self.end = 0  # the offset after the last record read
        # friction ids retracted by a record in the buffer (always after its detection:
        # one customer's friction is in one partition, in the order it was written)
        self._retractions: Counter[str] = Counter()
        self._withdrawn: dict[str, set[str]] = {p.name: set() for p in router.policies}

    def add(self, alert: Alert | None, offset: int) -> None:
        news = alert is not None and self.router.first(alert)
        waiting = {p.name for p in self.router.policies} if news else set()
        self.records.append(_Held(alert if news else None, offset, waiting))
        if news and alert is not None and alert.friction.status == "retracted":
            self._retractions[alert.friction.friction_id] += 1
        if alert is not None:
            self.newest = max(self.newest, alert.friction.detected_at.timestamp())
        self.end = offset + 1

    def release(self, now: float | None) -> tuple[dict[str, list[Alert]], int | None]:
        """Each sink's records that are due, and the offset to commit (None: no change).

        `now` is the clock if the partition has been read to its end, else None (a
        consumer behind cannot know what retractions are still to come)."""
        horizon = self.newest if now is None else max(self.newest, now)
        overflow = len(self.records) - self.limit
        out: dict[str, list[Alert]] = {}
        for policy in self.router.policies:
            out[policy.name] = self._release(policy, horizon, overflow)
        done = 0
        while done < len(self.records) and not self.records[done].waiting:
            done += 1
        if not done:
            return out, None
        offset = self.records[done - 1].offset + 1
        self._forget(self.records[:done])
        del self.records[:done]
        return out, offset

    def _release(self, policy: _Policy, horizon: float, overflow: int) -> list[Alert]:
        due: list[Alert] = []
        withdrawn = self._withdrawn[policy.name]
        counters = self.router.stats.sinks[policy.name]
        for i, held in enumerate(self.records):
            if policy.name not in held.waiting:
                continue
            alert = held.alert
            assert alert is not None
            friction = alert.friction
            if friction.status == "detected" and policy.hold and i >= overflow and \
                    friction.detected_at.timestamp() + policy.hold > horizon:
                break  # not yet stood long enough: neither it nor what follows
            held.waiting.discard(policy.name)
            if friction.status == "retracted" and friction.friction_id in withdrawn:
                withdrawn.discard(friction.friction_id)
                continue
            if friction.status == "detected" and policy.hold and \
                    self._retractions[friction.friction_id]:
                counters.withdrawn += 1
                withdrawn.add(friction.friction_id)
                continue
            if self.router.admit(policy, alert):
                due.append(alert)
        return due

    def _forget(self, records: list[_Held]) -> None:
        for held in records:
            if held.alert is not None and held.alert.friction.status == "retracted":
                self._retractions[held.alert.friction.friction_id] -= 1
                if not self._retractions[held.alert.friction.friction_id]:
                    del self._retractions[held.alert.friction.friction_id]

    def held(self, sink: str) -> int:
        return sum(1 for h in self.records if sink in h.waiting)

    def drop(self) -> None:
        """Let go of every record (the partition was revoked; it is read again)."""
        for held in self.records:
            if held.alert is not None:
                self.router.forget(held.alert)
        self._forget(self.records)
        self.records.clear()


# -- how an alert reads ------------------------------------------------------------------

SEVERITY_STYLES: Final = {
    Severity.LOW: "cyan",
    Severity.MEDIUM: "yellow",
    Severity.HIGH: "bold red",
    Severity.CRITICAL: "bold white on red",
}
_SLACK_ICONS: Final = {
    Severity.LOW: ":information_source:",
    Severity.MEDIUM: ":warning:",
    Severity.HIGH: ":rotating_light:",
    Severity.CRITICAL: ":fire:",
}


def _one_line(text: str) -> str:
    return " ".join(text.split())


def console_line(friction: FrictionEvent) -> Text:
    """One readable line: time, severity (coloured), rule, customer, case, message."""
    line = Text()
    line.append(friction.detected_at.astimezone(UTC).strftime("%H:%M:%S "), style="dim")
    if friction.status == "retracted":  # later evidence disproved it
        line.append(f"{'RESOLVED':<8}", style="bold green")
    else:
        line.append(f"{friction.severity.value.upper():<8}",
                    style=SEVERITY_STYLES[friction.severity])
    line.append(" ")
    line.append(_one_line(friction.rule), style="bold")
    line.append("  customer ")
    line.append(_one_line(friction.customer_key), style="cyan")
    if friction.case_id:
        line.append(f"  case {_one_line(friction.case_id)}")
    line.append("  ")
    line.append(_one_line(friction.message))
    return line


def _slack_escape(text: str) -> str:
    # Slack reads &, < and > as markup (links, mentions); everything else is literal.
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def slack_body(friction: FrictionEvent) -> dict[str, str]:
    """The body of a Slack-compatible incoming webhook: {"text": "..."}."""
    case = f" (case {_slack_escape(friction.case_id)})" if friction.case_id else ""
    if friction.status == "retracted":
        return {"text": f":white_check_mark: *RESOLVED* `{_slack_escape(friction.rule)}` "
                        f"customer {_slack_escape(friction.customer_key)}{case}: no longer "
                        f"stands ({_slack_escape(_one_line(friction.message))})"}
    text = (
        f"{_SLACK_ICONS[friction.severity]} *{friction.severity.value.upper()}* "
        f"`{_slack_escape(friction.rule)}` customer {_slack_escape(friction.customer_key)}"
        f"{case}: {_slack_escape(_one_line(friction.message))}"
    )
    return {"text": text}


# -- sinks -------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class DeliveryFailure:
    """An alert a sink gave up on: it goes to the alert dead-letter topic."""

    alert: Alert
    error: str
    attempts: int


class Sink(Protocol):
    stats: SinkStats

    @property
    def config(self) -> SinkConfig: ...

    async def start(self) -> None: ...

    async def deliver(self, alerts: Sequence[Alert]) -> list[DeliveryFailure]:
        """Deliver within the retry budget; what could not be delivered is returned."""
        ...

    async def close(self) -> None: ...


def _describe(exc: BaseException) -> str:
    text = str(exc) or type(exc).__name__
    return _one_line(f"{type(exc).__name__}: {text}")[:ERROR_CHARS]


class _BatchSink(ABC):
    """A sink that writes a whole batch at once; the batch is retried as one."""

    def __init__(self, config: SinkConfig, stats: SinkStats) -> None:
        self.config = config
        self.stats = stats

    async def start(self) -> None:
        return None

    async def close(self) -> None:
        return None

    @abstractmethod
    async def write(self, alerts: Sequence[Alert]) -> None:
        """Write the whole batch, or raise OSError/ValueError to have it retried."""

    async def deliver(self, alerts: Sequence[Alert]) -> list[DeliveryFailure]:
        if not alerts:
            return []
        budget = self.config.retry
        loop = asyncio.get_running_loop()
        deadline = loop.time() + budget.max_seconds
        attempts = 0
        while True:
            attempts += 1
            try:
                await self.write(alerts)
            except (OSError, ValueError) as exc:  # a disk or a pipe failing
                error = _describe(exc)
                self.stats.last_error = error
                wait = budget.backoff(attempts)
                if attempts >= budget.attempts or loop.time() + wait >= deadline:
                    log.warning("sink %s gave up on %d alerts after %d attempts: %s",
                                self.config.name, len(alerts), attempts, error)
                    return [DeliveryFailure(a, error, attempts) for a in alerts]
                self.stats.retries += 1
                log.warning("sink %s failed (%s); retrying in %.1fs", self.config.name, error,
                            wait)
                await asyncio.sleep(wait)
                continue
            self.stats.delivered += len(alerts)
            return []


class ConsoleSink(_BatchSink):
    """One coloured line per alert on a rich console."""

    def __init__(self, config: ConsoleSinkConfig, stats: SinkStats,
                 console: Console | None = None) -> None:
        super().__init__(config, stats)
        self.console = console if console is not None else Console(highlight=False)

    async def write(self, alerts: Sequence[Alert]) -> None:
        for alert in alerts:
            self.console.print(console_line(alert.friction), soft_wrap=True)
        self.console.file.flush()


class FileSink(_BatchSink):
    """Appends one friction event JSON per line; flushed and fsynced before the commit.

    A failed write is cut off again (the file is truncated to where the batch began),
    so a retry does not leave half a line or a repeat behind. That assumes one writer
    per file: give each instance its own path.
    """

    def __init__(self, config: FileSinkConfig, stats: SinkStats) -> None:
        super().__init__(config, stats)
        self.path = config.path
        self._fd: int | None = None

    async def start(self) -> None:
        try:
            self._fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        except OSError as exc:
            raise ConfigurationError(
                f"sink {self.config.name!r}: cannot open {self.path} for appending "
                f"({exc.strerror}): create its folder or fix the path") from None

    async def close(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None

    async def write(self, alerts: Sequence[Alert]) -> None:
        data = b"".join(alert.payload + b"\n" for alert in alerts)
        await asyncio.to_thread(self._append, data)

    def _append(self, data: bytes) -> None:
        fd = self._fd
        if fd is None:
            raise OSError(f"{self.path} is not open")
        start = os.lseek(fd, 0, os.SEEK_END)
        try:
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view):]
            os.fsync(fd)
        except OSError:
            with contextlib.suppress(OSError):
                os.ftruncate(fd, start)
            raise


# Worth another try; any other 4xx will fail the same way again.
RETRIABLE_STATUSES: Final = frozenset({408, 425, 429})


class WebhookSink:
    """One HTTP POST per alert, at most `concurrency` at a time, each retried with backoff.

    The budget's max_seconds is shared by the batch: once spent, no new attempt starts
    and what is left is dead-lettered, so a dead receiver holds a batch for about
    max_seconds plus one request timeout, not once per alert.
    """

    def __init__(self, config: WebhookSinkConfig, stats: SinkStats) -> None:
        self.config: WebhookSinkConfig = config
        self.stats = stats
        self._session: aiohttp.ClientSession | None = None
        self._slots = asyncio.Semaphore(config.concurrency)

    async def start(self) -> None:
        self._session = aiohttp.ClientSession(
            timeout=aiohttp.ClientTimeout(total=self.config.timeout_seconds),
            headers={"User-Agent": USER_AGENT, **dict(self.config.headers)},
        )

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None

    def body(self, alert: Alert) -> bytes:
        if self.config.format is WebhookFormat.SLACK:
            return orjson.dumps(slack_body(alert.friction))
        return alert.payload

    async def deliver(self, alerts: Sequence[Alert]) -> list[DeliveryFailure]:
        if not alerts:
            return []
        deadline = asyncio.get_running_loop().time() + self.config.retry.max_seconds
        results = await asyncio.gather(*(self._deliver_one(a, deadline) for a in alerts))
        failures = [r for r in results if r is not None]
        self.stats.delivered += len(alerts) - len(failures)
        if failures:
            log.warning("sink %s gave up on %d of %d alerts: %s", self.config.name,
                        len(failures), len(alerts), failures[-1].error)
        return failures

    async def _deliver_one(self, alert: Alert, deadline: float) -> DeliveryFailure | None:
        loop = asyncio.get_running_loop()
        budget: RetryBudget = self.config.retry
        attempts = 0
        error = f"retry budget of {budget.max_seconds:g}s spent before the first attempt"
        body = self.body(alert)
        while True:
            async with self._slots:
                if loop.time() >= deadline:
                    break
                attempts += 1
                error, retriable, retry_after = await self._post(alert, body)
            if not error:
                return None
            self.stats.last_error = error
            wait = max(budget.backoff(attempts), retry_after)
            if not retriable or attempts >= budget.attempts or loop.time() + wait >= deadline:
                break
            self.stats.retries += 1
            await asyncio.sleep(wait)
        return DeliveryFailure(alert, error, attempts)

    async def _post(self, alert: Alert, body: bytes) -> tuple[str, bool, float]:
        """('' or the error, whether to retry, the receiver's Retry-After in seconds)."""
        session = self._session
        if session is None:
            raise RuntimeError(f"sink {self.config.name} was not started")
        headers = {"Content-Type": "application/json",
                   "Idempotency-Key": alert.friction.friction_id}
        try:
            async with session.post(self.config.url, data=body, headers=headers) as response:
                if 200 <= response.status < 300:
                    await response.read()
                    return "", False, 0.0
                text = _one_line(await response.text(errors="replace"))[:200]
                retriable = response.status >= 500 or response.status in RETRIABLE_STATUSES
                return (f"HTTP {response.status} from {self.config.url}: {text}", retriable,
                        _retry_after(response.headers.get("Retry-After")))
        except (aiohttp.ClientError, TimeoutError, OSError) as exc:
            return f"{_describe(exc)} ({self.config.url})", True, 0.0


def _retry_after(value: str | None) -> float:
    # Only the seconds form; an HTTP date is rare from webhooks and the backoff covers it.
    try:
        return min(max(float(value), 0.0), MAX_RETRY_SECONDS) if value else 0.0
    except ValueError:
        return 0.0


def make_sinks(config: AlertsConfig, stats: AlertStats,
               console: Console | None = None) -> list[Sink]:
    sinks: list[Sink] = []
    for sink in config.sinks:
        counters = stats.sinks.setdefault(sink.name, SinkStats())
        if isinstance(sink, ConsoleSinkConfig):
            sinks.append(ConsoleSink(sink, counters, console))
        elif isinstance(sink, FileSinkConfig):
            sinks.append(FileSink(sink, counters))
        elif isinstance(sink, WebhookSinkConfig):
            sinks.append(WebhookSink(sink, counters))
        else:  # pragma: no cover - the config parser makes only these
            raise TypeError(f"no sink for {type(sink).__name__}")
    return sinks


# -- the alert dead-letter topic ---------------------------------------------------------


def _iso_now() -> str:
    return datetime.now(UTC).isoformat().replace("+00:00", "Z")


def dead_letter(failure: DeliveryFailure | Poison, *, sink: SinkConfig | None,
                group: str, failed_at: str | None = None) -> tuple[bytes | None, bytes]:
    """(key, value) of an alert dead letter: the friction, the sink, the last error."""
    if isinstance(failure, DeliveryFailure):
        alert = failure.alert
        key: bytes | None = alert.key
        document: dict[str, Any] = {
            "friction": alert.document, "raw": None, "error": failure.error,
            "attempts": failure.attempts,
            "source": {"topic": alert.topic, "partition": alert.partition,
                       "offset": alert.offset},
        }
    else:
        key = failure.key
        document = {
            "friction": None,
            "raw": failure.raw.decode("utf-8", errors="replace") if failure.raw else None,
            "error": failure.error, "attempts": 0,
            "source": {"topic": failure.topic, "partition": failure.partition,
                       "offset": failure.offset},
        }
    document["sink"] = sink.name if sink is not None else None
    document["sink_type"] = sink.type.value if sink is not None else None
    document["failed_at"] = failed_at or _iso_now()
    document["group"] = group
    return key, encode_json(document)


# -- the consumer ------------------------------------------------------------------------


class AlertConsumer:
    """Reads friction in batches, delivers to every sink, then commits.

    Rebalances work as in the validator: the batch in flight holds `_lock`, a revocation
    waits for it (so it commits while the partitions are still ours), and a batch
    fetched before a rebalance is dropped - it comes again from the committed offsets.
    """

    def __init__(self, settings: Settings, config: AlertsConfig | None = None, *,
                 group: str | None = None, from_beginning: bool = True,
                 max_alerts: int | None = None, idle_exit: float | None = None,
                 stop_event: asyncio.Event | None = None, console: Console | None = None,
                 on_summary: Callable[[AlertStats], None] | None = None,
                 on_ready: Callable[[], None] | None = None) -> None:
        self.settings = settings
        self.config = config if config is not None else default_config()
        spec = topics(settings)
        self.friction_spec = spec.friction
        self.dlq_spec = spec.alerts_dlq
        self.group_id = group or self.config.group or alerts_group(settings)
        self.from_beginning = from_beginning
        self.max_alerts = max_alerts
        self.idle_exit = idle_exit
        self.stats = AlertStats()
        self.router = AlertRouter(self.config.sinks, self.config.memory, self.stats,
                                  self.config.max_age_seconds)
        self.sinks = make_sinks(self.config, self.stats, console)
        self.on_summary = on_summary
        self.on_ready = on_ready
        self._stopping = stop_event if stop_event is not None else asyncio.Event()
        self._lock = asyncio.Lock()
        self._generation = 0
        self._held: dict[Any, Holding] = {}  # per partition, what is not yet committed
        self._consumer: Any = None
        self._last_activity = 0.0
        self._assigned = asyncio.Event()

    def stop(self) -> None:
        """Finish the batch in flight, commit it, then return from run()."""
        self._stopping.set()

    @property
    def assignment(self) -> set[TopicPartition]:
        return set(self._consumer.assignment()) if self._consumer is not None else set()

    async def wait_assigned(self, timeout: float = 60.0) -> None:
        await asyncio.wait_for(self._assigned.wait(), timeout)

    async def run(self) -> AlertStats:
        """Until stopped (or --max-alerts / --idle-exit); the counters at the end."""
        bootstrap = self.settings.bootstrap
        await create_topics(bootstrap, [self.friction_spec, self.dlq_spec],
                            timeout=CONNECT_TIMEOUT)
        poll_ms = int((self.config.longest_budget() + POLL_MARGIN_SECONDS) * 1000)
        consumer = make_consumer(
            bootstrap, group_id=self.group_id, max_poll_records=self.config.batch_size,
            client_id=f"{self.group_id}", max_poll_interval_ms=max(poll_ms, 300_000),
            rebalance_timeout_ms=max(poll_ms, 60_000),
        )
        producer = make_producer(bootstrap, client_id=f"{self.group_id}-dlq")
        started: list[Any] = []
        try:
            for client in (consumer, producer):
                try:
                    await asyncio.wait_for(client.start(), CONNECT_TIMEOUT)
                except (TimeoutError, KafkaError, OSError) as exc:
                    await client.stop()
                    raise unavailable(bootstrap, exc) from exc
                started.append(client)
            for sink in self.sinks:
                await sink.start()
            consumer.subscribe([self.friction_spec.name], listener=_Rebalance(self))
            self._consumer = consumer
            if self.on_ready is not None:
                self.on_ready()
            try:
                await self._loop(consumer, producer)
            except KafkaError as exc:  # not retried inside aiokafka: say it on one line
                raise ServiceUnavailableError(
                    f"Kafka at {bootstrap} failed while reading {self.friction_spec.name} "
                    f"({_describe(exc)}); the batch in flight stays uncommitted and is "
                    "delivered again at the next start") from exc
        finally:
            self._consumer = None
            for sink in self.sinks:
                await sink.close()
            for client in reversed(started):
                await client.stop()
        return self.stats

    async def _loop(self, consumer: Any, producer: Any) -> None:
        loop = asyncio.get_running_loop()
        self._last_activity = loop.time()
        next_summary = loop.time() + self.config.summary_seconds
        while not self._stopping.is_set():
            got = await consumer.getmany(timeout_ms=POLL_MS,
                                         max_records=self.config.batch_size)
            # Read right after getmany returns: the records belong to this generation.
            generation = self._generation
            if got:
                self._last_activity = loop.time()
                async with self._lock:
                    if generation != self._generation:
                        log.info("dropping a batch fetched before a rebalance: it comes "
                                 "again from the committed offsets")
                        continue
                    await self._handle(got, consumer, producer)
            elif any(h.records for h in self._held.values()):
                async with self._lock:  # held friction whose hold has passed meanwhile
                    if generation == self._generation:
                        await self._release(consumer, producer, [])
            if self.max_alerts is not None and self.stats.read >= self.max_alerts:
                break
            now = loop.time()
            if self.idle_exit is not None and now - self._last_activity >= self.idle_exit:
                log.info("no friction for %.1fs: stopping", self.idle_exit)
                break
            if self.config.summary_seconds > 0 and now >= next_summary:
                next_summary = now + self.config.summary_seconds
                self._summarise()
        self._summarise()

    def _summarise(self) -> None:
        if self.on_summary is not None:
            self.on_summary(self.stats)
        else:
            log.info("%s", self.stats.summary_line())

    async def _handle(self, got: dict[Any, list[Any]], consumer: Any, producer: Any) -> None:
        """Take one fetched batch into the partitions' holdings, then release."""
        letters: list[tuple[bytes | None, bytes]] = []
        # --max-alerts: the records past the limit stay uncommitted for the next run
        left = None if self.max_alerts is None else self.max_alerts - self.stats.read
        for tp, records in got.items():
            if left is not None:
                records = records[:max(left, 0)]
                left -= len(records)
            if not records:
                continue
            self.stats.read += len(records)
            holding = self._held.get(tp)
            if holding is None:
                holding = self._held[tp] = Holding(self.router, self.config.memory)
            for record in records:
                decoded = decode_alert(record)
                if isinstance(decoded, Alert):
                    holding.add(decoded, record.offset)
                    continue
                self.stats.invalid += 1
                log.error("%s[%d]@%d is no friction event (%s): dead-lettered",
                          decoded.topic, decoded.partition, decoded.offset, decoded.error)
                letters.append(dead_letter(decoded, sink=None, group=self.group_id))
                holding.add(None, record.offset)
        await self._release(consumer, producer, letters)

    async def _release(self, consumer: Any, producer: Any,
                       letters: list[tuple[bytes | None, bytes]]) -> None:
        """Deliver what is due to every sink, dead-letter the rest, then commit."""
        shares: dict[str, list[Alert]] = {sink.config.name: [] for sink in self.sinks}
        offsets: dict[Any, int] = {}
        now = time.time()
        for tp, holding in self._held.items():
            # The position, not the last record: it has moved past the commit markers of
            # a transactional topic's end.
            end = consumer.highwater(tp)
            read_to_end = end is not None and holding.records and \
                await consumer.position(tp) >= end
            due, offset = holding.release(now if read_to_end else None)
            for name, alerts in due.items():
                shares[name].extend(alerts)
            if offset is not None:
                offsets[tp] = offset
        for sink in self.sinks:
            sink.stats.held = sum(h.held(sink.config.name) for h in self._held.values())
        if not offsets and not any(shares.values()) and not letters:
            return
        results = await asyncio.gather(*(sink.deliver(shares[sink.config.name])
                                          for sink in self.sinks))
        failed_at = _iso_now()
        for sink, failures in zip(self.sinks, results, strict=True):
            sink.stats.dead_lettered += len(failures)
            letters.extend(dead_letter(f, sink=sink.config, group=self.group_id,
                                       failed_at=failed_at) for f in failures)
        if letters and not await self._send_dead_letters(producer, letters):
            raise ServiceUnavailableError(
                f"stopped while {len(letters)} alert dead letters could not be written to "
                f"{self.dlq_spec.name} (Kafka at {self.settings.bootstrap}); the batch "
                "stays uncommitted and is delivered again at the next start")
        if offsets:
            await self._commit(consumer, offsets)
        self.stats.batches += 1

    async def _send_dead_letters(self, producer: Any,
                                 letters: list[tuple[bytes | None, bytes]]) -> bool:
        """Send all and await every acknowledgement; retry until done. False if stopped."""
        pending = letters
        delay = FIRST_RETRY_SECONDS
        topic = self.dlq_spec.name
        while True:
            futures: list[Any] = []
            failed: list[tuple[bytes | None, bytes]] = []
            error: BaseException | None = None
            for i, (key, value) in enumerate(pending):
                try:
                    futures.append(await producer.send(topic, value, key=key))
                except KafkaError as exc:  # e.g. no metadata while the broker is away
                    error = exc
                    failed.extend(pending[i:])
                    break
            results = await asyncio.gather(*futures, return_exceptions=True)
            for letter, result in zip(pending, results, strict=False):
                if isinstance(result, BaseException):
                    if not isinstance(result, KafkaError):
                        raise result
                    error = error or result
                    failed.append(letter)
            if not failed:
                return True
            self.stats.dlq_send_failures += 1
            log.warning("%d of %d alert dead letters not acknowledged by %s (%s); retrying "
                        "in %.1fs", len(failed), len(pending), topic,
                        _describe(error) if error else "?", delay)
            pending = failed
            try:
                await asyncio.wait_for(self._stopping.wait(), delay)
                return False
            except TimeoutError:
                delay = min(delay * 2, MAX_RETRY_SECONDS)

    async def _commit(self, consumer: Any, offsets: dict[Any, int]) -> None:
        try:
            await consumer.commit(offsets)
        except KafkaError as exc:
            # The group moved on: the next owner delivers these alerts again (the
            # Idempotency-Key lets receivers drop them); counted, never silent.
            self.stats.commit_failures += 1
            log.warning("commit failed (%s) for %s", _describe(exc),
                        ", ".join(f"{tp.topic}[{tp.partition}]@{o}"
                                  for tp, o in sorted(offsets.items())))

    async def on_revoked(self, revoked: Iterable[Any]) -> None:
        self._assigned.clear()
        async with self._lock:  # the batch in flight commits while the partitions are ours
            self._generation += 1
            # What is held is uncommitted: the partitions' next owner reads it again.
            for holding in self._held.values():
                holding.drop()
            self._held.clear()

    async def on_assigned(self, assigned: Iterable[Any]) -> None:
        async with self._lock:
            if not self.from_beginning:
                await self._start_at_end(sorted(assigned))
            self._last_activity = asyncio.get_running_loop().time()
            self._assigned.set()

    async def _start_at_end(self, assigned: list[Any]) -> None:
        """--from-latest: a partition never committed starts at its end, committed at once.

        Committing the end right away means a restart resumes there too, instead of
        skipping what arrived while this instance was down.
        """
        consumer = self._consumer
        try:
            fresh = [tp for tp in assigned if await consumer.committed(tp) is None]
            if not fresh:
                return
            await consumer.seek_to_end(*fresh)
            await consumer.commit({tp: await consumer.position(tp) for tp in fresh})
        except KafkaError as exc:
            log.warning("could not commit the end offsets of %s (%s): a restart starts "
                        "at the end again", [tp.partition for tp in assigned], _describe(exc))


class _Rebalance(ConsumerRebalanceListener):  # type: ignore[misc]
    """aiokafka's group callbacks, handed to the alert consumer."""

    def __init__(self, consumer: AlertConsumer) -> None:
        self.consumer = consumer

    async def on_partitions_revoked(self, revoked: set[TopicPartition]) -> None:
        await self.consumer.on_revoked(revoked)

    async def on_partitions_assigned(self, assigned: set[TopicPartition]) -> None:
        await self.consumer.on_assigned(assigned)


async def run_alerts(settings: Settings, config: AlertsConfig | None = None, *,
                     stop_event: asyncio.Event | None = None, console: Console | None = None,
                     group: str | None = None, from_beginning: bool = True,
                     max_alerts: int | None = None, idle_exit: float | None = None,
                     on_summary: Callable[[AlertStats], None] | None = None,
                     on_ready: Callable[[], None] | None = None) -> AlertStats:
    """Run an alert consumer until `stop_event` is set (or max_alerts / idle_exit).

    `config` None means one console sink. `on_summary` gets the counters every
    summary_seconds and at the end; `on_ready` is called once Kafka is reached. Setting
    `stop_event` finishes and commits the batch in flight; cancelling the task instead
    leaves it uncommitted (delivered again by the next run). Raises
    ServiceUnavailableError when Kafka is unreachable.
    """
    consumer = AlertConsumer(settings, config, group=group, from_beginning=from_beginning,
                             max_alerts=max_alerts, idle_exit=idle_exit,
                             stop_event=stop_event, console=console, on_summary=on_summary,
                             on_ready=on_ready)
    return await consumer.run()


def run_alerts_until_signalled(settings: Settings, config: AlertsConfig | None = None,
                               **options: Any) -> AlertStats:
    """run_alerts in its own event loop: the first SIGINT/SIGTERM stops gracefully, the
    second cancels the batch in flight (raising asyncio.CancelledError)."""

    async def main() -> AlertStats:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        task = asyncio.current_task()

        def on_signal() -> None:
            if stop.is_set() and task is not None:
                task.cancel()
            stop.set()

        installed = []
        for sig in (signal.SIGINT, signal.SIGTERM):
            with contextlib.suppress(NotImplementedError, RuntimeError):
                loop.add_signal_handler(sig, on_signal)
                installed.append(sig)
        try:
            return await run_alerts(settings, config, stop_event=stop, **options)
        finally:
            for sig in installed:
                loop.remove_signal_handler(sig)

    return asyncio.run(main())


# -- reading the alert dead-letter topic -------------------------------------------------




@dataclass(frozen=True, slots=True)
class AlertDeadLetterRow:
    """One alert dead letter as listed."""

    failed_at: str
    sink: str | None
    rule: str | None
    severity: str | None
    customer_key: str | None
    friction_id: str | None
    attempts: int
    error: str
    partition: int
    offset: int
    document: dict[str, Any] | None

    def as_json(self) -> dict[str, Any]:
        return {**(self.document or {}), "dlq": {"partition": self.partition,
                                                  "offset": self.offset}}


def parse_alert_dead_letter(partition: int, offset: int, value: bytes | None,
                            ) -> AlertDeadLetterRow:
    try:
        document = decode_json(value or b"")
    except ValueError:
        document = None
    if not isinstance(document, dict):
        return AlertDeadLetterRow("", None, None, None, None, None, 0,
                                  "unreadable alert dead letter (not a JSON object)",
                                  partition, offset, None)
    friction = document.get("friction")
    if not isinstance(friction, dict):
        friction = {}  # an invalid record of the friction topic: only its raw text

    def text(obj: dict[str, Any], key: str) -> str | None:
        value = obj.get(key)
        return value if isinstance(value, str) else None

    attempts = document.get("attempts")
    return AlertDeadLetterRow(
        text(document, "failed_at") or "", text(document, "sink"), text(friction, "rule"),
        text(friction, "severity"), text(friction, "customer_key"),
        text(friction, "friction_id"), attempts if isinstance(attempts, int) else 0,
        text(document, "error") or "", partition, offset, document,
    )


async def read_alert_dead_letters(settings: Settings) -> list[AlertDeadLetterRow] | None:
    """Every alert dead letter, oldest first per partition; None when the topic is absent."""
    rows: list[AlertDeadLetterRow] = []

    def add(record: Any) -> None:
        rows.append(parse_alert_dead_letter(record.partition, record.offset, record.value))

    if not await read_topic_to_end(settings.bootstrap, settings.topic_alerts_dlq, add):
        return None
    rows.sort(key=lambda r: (r.failed_at, r.partition, r.offset))
    return rows

