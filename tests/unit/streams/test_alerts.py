"""The alert consumer's pure parts: decoding, dedup, filters, throttle, routing, bodies."""

from __future__ import annotations

import asyncio
import io
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import orjson
import pytest
from rich.console import Console

from journey.cli import main
from schemas.friction import Severity, friction_id_for
from streams.alerts import (
    SEVERITY_STYLES,
    Alert,
    AlertRouter,
    AlertStats,
    ConsoleSink,
    FileSink,
    Holding,
    Poison,
    RecentIds,
    SinkStats,
    Throttle,
    _BatchSink,
    console_line,
    dead_letter,
    decode_alert,
    parse_alert_dead_letter,
    slack_body,
)
from streams.alerts_config import (
    AlertFilter,
    ConsoleSinkConfig,
    FileSinkConfig,
    RetryBudget,
    WebhookSinkConfig,
)

T0 = datetime(2026, 11, 25, 9, 0, tzinfo=UTC)


def friction(rule: str = "repeat_contact", customer: str = "c-1", *,
             severity: Severity = Severity.HIGH, at: datetime = T0,
             message: str = "Third contact about case k-9 in two days",
             case_id: str | None = "k-9", **extra: Any) -> dict[str, Any]:
    evidence = [str(uuid.uuid4()), str(uuid.uuid4())]
    doc: dict[str, Any] = {
        "friction_id": friction_id_for(rule, customer, evidence),
        "rule": rule,
        "severity": severity.value,
        "customer_key": customer,
        "occurred_at": (at - timedelta(minutes=1)).isoformat().replace("+00:00", "Z"),
        "detected_at": at.isoformat().replace("+00:00", "Z"),
        "stage": "support",
        "case_id": case_id,
        "channel": "phone",
        "evidence": evidence,
        "message": message,
    }
    doc.update(extra)
    return doc


@dataclass
class Record:
    topic: str
    partition: int
    offset: int
    key: bytes | None
    value: bytes | None


def record(doc: dict[str, Any] | None, offset: int = 0, raw: bytes | None = None) -> Record:
    value = raw if raw is not None else (orjson.dumps(doc) if doc is not None else None)
    return Record("friction", 1, offset, b"c-1", value)


def alert(doc: dict[str, Any], offset: int = 0) -> Alert:
    decoded = decode_alert(record(doc, offset))
    assert isinstance(decoded, Alert), decoded
    return decoded


# -- decoding ----------------------------------------------------------------------------


def test_a_friction_event_decodes_with_its_extra_fields_kept() -> None:
    doc = friction(kind="first_response", impact={"eur": 12.5})
    decoded = alert(doc, offset=7)
    assert decoded.friction.rule == "repeat_contact"
    assert decoded.friction.severity is Severity.HIGH
    assert (decoded.topic, decoded.partition, decoded.offset) == ("friction", 1, 7)
    assert orjson.loads(decoded.payload) == doc
    assert b"\n" not in decoded.payload
    assert decoded.key == b"c-1"


@pytest.mark.parametrize(
    ("raw", "reason"),
    [
        (None, "tombstone"),
        (b"{not json", "not JSON"),
        (b"[1, 2]", "not a JSON object"),
        (orjson.dumps({**friction(), "severity": "urgent"}), "not a friction event: severity"),
        (orjson.dumps({k: v for k, v in friction().items() if k != "customer_key"}),
         "not a friction event: customer_key"),
    ],
)
def test_what_is_no_friction_event_becomes_poison(raw: bytes | None, reason: str) -> None:
    rec = Record("friction", 2, 9, b"k", raw)
    decoded = decode_alert(rec)
    assert isinstance(decoded, Poison)
    assert reason in decoded.error
    assert (decoded.partition, decoded.offset, decoded.raw) == (2, 9, raw)


# -- dedup and throttle ------------------------------------------------------------------


def test_recent_ids_remember_a_bounded_number() -> None:
    seen = RecentIds(capacity=2)
    assert seen.first_sighting("a")
    assert not seen.first_sighting("a")
    assert seen.first_sighting("b")
    assert seen.first_sighting("c")  # "a" is forgotten now
    assert len(seen) == 2
    assert seen.first_sighting("a")
    assert not seen.first_sighting("c")


def test_throttle_lets_one_through_per_period_and_key() -> None:
    throttle = Throttle(period=600, capacity=100)
    t = T0.timestamp()
    assert throttle.admit("c-1", "sla_breach", t)
    assert not throttle.admit("c-1", "sla_breach", t + 599)  # inside
    assert throttle.admit("c-1", "repeat_contact", t + 10)  # another rule
    assert throttle.admit("c-2", "sla_breach", t + 10)  # another customer
    assert throttle.admit("c-1", "sla_breach", t + 600)  # outside: a new window
    assert not throttle.admit("c-1", "sla_breach", t + 1000)  # throttled ones don't extend
    assert throttle.admit("c-1", "sla_breach", t + 1200)
    assert not throttle.admit("c-1", "sla_breach", t + 1100)  # detected earlier: inside too


def test_throttle_off_admits_everything() -> None:
    throttle = Throttle(period=0, capacity=1)
    assert all(throttle.admit("c", "r", T0.timestamp()) for _ in range(5))


def test_throttle_forgets_the_least_recent_key_beyond_capacity() -> None:
    throttle = Throttle(period=600, capacity=2)
    t = T0.timestamp()
    assert throttle.admit("a", "r", t)
    assert throttle.admit("b", "r", t)
    assert throttle.admit("c", "r", t)  # "a" is forgotten
    assert throttle.admit("a", "r", t + 1)
    assert not throttle.admit("c", "r", t + 1)


# -- filters and routing -----------------------------------------------------------------


def test_a_filter_takes_rules_and_a_minimum_severity() -> None:
    f = AlertFilter(rules=frozenset({"sla_breach"}), min_severity=Severity.MEDIUM)
    assert f.accepts(alert(friction("sla_breach", severity=Severity.MEDIUM)).friction)
    assert f.accepts(alert(friction("sla_breach", severity=Severity.CRITICAL)).friction)
    assert not f.accepts(alert(friction("sla_breach", severity=Severity.LOW)).friction)
    assert not f.accepts(alert(friction("repeat_contact")).friction)
    assert AlertFilter().accepts(alert(friction(severity=Severity.LOW)).friction)


def test_routing_dedups_filters_and_throttles_per_sink_and_counts_each() -> None:
    stats = AlertStats()
    sinks = [
        ConsoleSinkConfig(name="all", throttle_seconds=0),
        ConsoleSinkConfig(name="critical", throttle_seconds=0,
                          filter=AlertFilter(min_severity=Severity.CRITICAL)),
        ConsoleSinkConfig(name="sla", throttle_seconds=600,
                          filter=AlertFilter(rules=frozenset({"sla_breach"}))),
    ]
    router = AlertRouter(sinks, memory=1000, stats=stats)
    first = alert(friction("sla_breach", severity=Severity.CRITICAL), 0)
    again = alert(first.document, 1)  # a replay: same friction id
    second = alert(friction("sla_breach", at=T0 + timedelta(minutes=5)), 2)
    third = alert(friction("sla_breach", at=T0 + timedelta(minutes=11)), 3)
    other = alert(friction("repeat_contact", severity=Severity.LOW), 4)
    shares = router.route([first, again, second, third, other])

    def offsets(name: str) -> list[int]:
        return [a.offset for a in shares[name]]

    assert offsets("all") == [0, 2, 3, 4]
    assert offsets("critical") == [0]
    assert offsets("sla") == [0, 3]  # second is inside first's 10-minute window
    assert stats.duplicates == 1
    assert (stats.sinks["all"].filtered, stats.sinks["all"].throttled) == (0, 0)
    assert stats.sinks["critical"].filtered == 3
    assert (stats.sinks["sla"].filtered, stats.sinks["sla"].throttled) == (1, 1)
    # the dedup memory lasts across batches
    assert router.route([alert(second.document, 5)]) == {"all": [], "critical": [], "sla": []}
    assert stats.duplicates == 2


# -- how an alert reads ------------------------------------------------------------------


def test_the_console_line_is_one_line_with_the_severity_coloured() -> None:
    doc = friction("sla_breach", "c-42", severity=Severity.CRITICAL,
                   message="Resolution\noverdue [bold]by[/bold] 2 h")
    line = console_line(alert(doc).friction)
    assert line.plain == ("09:00:00 CRITICAL sla_breach  customer c-42  case k-9  "
                          "Resolution overdue [bold]by[/bold] 2 h")
    assert any(span.style == SEVERITY_STYLES[Severity.CRITICAL] for span in line.spans)


async def test_the_console_sink_prints_one_unwrapped_line_per_alert() -> None:
    out = io.StringIO()
    stats = SinkStats()
    sink = ConsoleSink(ConsoleSinkConfig(name="c"), stats, Console(file=out, width=40))
    docs = [friction(customer=f"c-{i}", message="a long message " * 5) for i in range(3)]
    assert await sink.deliver([alert(d) for d in docs]) == []
    lines = out.getvalue().splitlines()
    assert len(lines) == 3  # not wrapped at 40 columns
    assert [line.split("customer ")[1].split()[0] for line in lines] == ["c-0", "c-1", "c-2"]
    assert stats.delivered == 3


def test_the_slack_body_is_one_text_with_markup_escaped() -> None:
    doc = friction("escalation", "c-<7>", severity=Severity.MEDIUM,
                   message="Escalated to <!channel> & billing", case_id=None)
    body = slack_body(alert(doc).friction)
    assert body == {"text": ":warning: *MEDIUM* `escalation` customer c-&lt;7&gt;: "
                            "Escalated to &lt;!channel&gt; &amp; billing"}
    with_case = slack_body(alert(friction(severity=Severity.CRITICAL)).friction)
    assert with_case["text"].startswith(":fire: *CRITICAL* `repeat_contact` customer c-1 "
                                        "(case k-9): ")


# -- dead letters ------------------------------------------------------------------------


def test_a_dead_letter_holds_the_friction_the_sink_and_the_error() -> None:
    from streams.alerts import DeliveryFailure

    a = alert(friction(), offset=11)
    hook = WebhookSinkConfig(name="hook", url="http://x")
    key, value = dead_letter(DeliveryFailure(a, "HTTP 503 from http://x: down", 5),
                             sink=hook, group="g", failed_at="2026-11-25T09:00:00Z")
    doc = orjson.loads(value)
    assert key == b"c-1"
    assert doc == {
        "friction": a.document, "raw": None, "sink": "hook", "sink_type": "webhook",
        "error": "HTTP 503 from http://x: down", "attempts": 5,
        "failed_at": "2026-11-25T09:00:00Z", "group": "g",
        "source": {"topic": "friction", "partition": 1, "offset": 11},
    }
    row = parse_alert_dead_letter(0, 3, value)
    assert (row.sink, row.rule, row.customer_key, row.attempts) == (
        "hook", "repeat_contact", "c-1", 5)
    assert row.friction_id == a.friction.friction_id


def test_poison_is_dead_lettered_without_a_sink() -> None:
    poison = decode_alert(Record("friction", 0, 4, b"k", b"oops"))
    assert isinstance(poison, Poison)
    key, value = dead_letter(poison, sink=None, group="g")
    doc = orjson.loads(value)
    assert key == b"k"
    assert (doc["friction"], doc["sink"], doc["raw"], doc["attempts"]) == (None, None,
                                                                          "oops", 0)
    assert doc["error"].startswith("not JSON")
    assert parse_alert_dead_letter(0, 0, b"garbage").error.startswith("unreadable")


# -- batch sinks on a real file ----------------------------------------------------------


async def test_the_file_sink_appends_one_json_line_per_alert(tmp_path: Path) -> None:
    path = tmp_path / "alerts.jsonl"
    path.write_bytes(b'{"earlier": true}\n')
    stats = SinkStats()
    sink = FileSink(FileSinkConfig(name="f", path=path), stats)
    await sink.start()
    docs = [friction(customer=f"c-{i}") for i in range(3)]
    try:
        assert await sink.deliver([alert(d) for d in docs]) == []
    finally:
        await sink.close()
    lines = path.read_bytes().splitlines()
    assert [orjson.loads(line) for line in lines[1:]] == docs
    assert stats.delivered == 3


async def test_the_file_sink_refuses_a_folder_that_does_not_exist(tmp_path: Path) -> None:
    from journey.errors import ConfigurationError

    sink = FileSink(FileSinkConfig(name="f", path=tmp_path / "no" / "a.jsonl"), SinkStats())
    with pytest.raises(ConfigurationError, match="cannot open"):
        await sink.start()


class FailingSink(_BatchSink):
    """A batch sink whose writes fail `failures` times with an OSError."""

    def __init__(self, budget: RetryBudget, failures: int) -> None:
        super().__init__(ConsoleSinkConfig(name="flaky", retry=budget), SinkStats())
        self.failures = failures
        self.writes = 0

    async def write(self, alerts: Sequence[Alert]) -> None:
        self.writes += 1
        if self.writes <= self.failures:
            raise OSError(28, "No space left on device")


async def test_a_batch_sink_retries_within_its_budget() -> None:
    sink = FailingSink(RetryBudget(attempts=4, max_seconds=5, first_backoff_seconds=0.01),
                       failures=2)
    batch = [alert(friction(customer=f"c-{i}")) for i in range(3)]
    assert await sink.deliver(batch) == []
    assert (sink.writes, sink.stats.retries, sink.stats.delivered) == (3, 2, 3)


async def test_a_batch_sink_gives_up_after_its_attempts() -> None:
    sink = FailingSink(RetryBudget(attempts=3, max_seconds=5, first_backoff_seconds=0.01),
                       failures=99)
    batch = [alert(friction(customer=f"c-{i}")) for i in range(2)]
    failures = await sink.deliver(batch)
    assert [f.alert for f in failures] == batch
    assert all(f.attempts == 3 and "No space left" in f.error for f in failures)
    assert sink.stats.delivered == 0
    assert sink.writes == 3


async def test_a_batch_sink_gives_up_when_its_time_is_spent() -> None:
    sink = FailingSink(RetryBudget(attempts=100, max_seconds=0.3, first_backoff_seconds=0.1,
                                   max_backoff_seconds=0.1), failures=99)
    loop = asyncio.get_running_loop()
    began = loop.time()
    failures = await sink.deliver([alert(friction())])
    assert loop.time() - began < 0.5
    assert len(failures) == 1 and 2 <= failures[0].attempts <= 4


# -- the command's one-line errors (no Kafka reached) ------------------------------------


def test_a_wrong_config_file_is_one_error_line(tmp_path: Path,
                                               capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "bad.toml"
    path.write_text('[[sinks]]\ntype = "webhook"\nurl = "http://x"\ntimeout = 3\n')
    with pytest.raises(SystemExit) as exited:
        main(["alerts", "--config", str(path)])
    assert exited.value.code == 1
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0
    assert err.startswith(f"error: {path}: [[sinks]] #1: unknown key 'timeout'")
    assert "timeout_seconds" in err


def test_check_shows_the_sinks(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "ok.toml"
    path.write_text('[[sinks]]\nname = "ops"\ntype = "webhook"\nurl = "http://h/x"\n'
                    'min_severity = "high"\nrules = ["sla_breach"]\n')
    main(["alerts", "check", str(path)])
    out = capsys.readouterr().out
    assert "ops" in out and "http://h/x" in out and "sla_breach" in out and "high" in out


def test_friction_found_long_after_it_happened_is_stale_when_a_max_age_is_set() -> None:
    stats = AlertStats()
    sinks = [ConsoleSinkConfig(name="all", throttle_seconds=0)]
    router = AlertRouter(sinks, memory=100, stats=stats, max_age_seconds=3600)
    fresh = alert(friction(), 0)  # detected a minute after it happened
    edge = friction(customer="c-2")
    edge["occurred_at"] = (T0 - timedelta(hours=1)).isoformat()  # exactly the max age
    replayed = friction(customer="c-3")
    replayed["occurred_at"] = (T0 - timedelta(days=20)).isoformat()  # a replay finds it again
    shares = router.route([fresh, alert(edge, 1), alert(replayed, 2)])
    assert [a.offset for a in shares["all"]] == [0, 1]
    assert stats.stale == 1
    unlimited = AlertRouter(sinks, memory=100, stats=AlertStats())  # the default: off
    assert [a.offset for a in unlimited.route([alert(replayed, 2)])["all"]] == [2]


# -- hold and retractions ----------------------------------------------------------------


def retraction(doc: dict[str, Any], after: timedelta) -> dict[str, Any]:
    detected = datetime.fromisoformat(doc["detected_at"]) + after
    return {**doc, "status": "retracted", "detected_at": detected.isoformat()}


def later(minutes: float, customer: str = "c-9") -> dict[str, Any]:
    return friction("escalation", customer, at=T0 + timedelta(minutes=minutes))


def holding_of(*sinks: ConsoleSinkConfig) -> tuple[Holding, AlertStats]:
    stats = AlertStats()
    return Holding(AlertRouter(sinks, memory=100, stats=stats), limit=100), stats


def offsets(released: list[Alert]) -> list[int]:
    return [a.offset for a in released]


def test_without_a_hold_everything_is_released_at_once_and_retractions_only_on_request(
        ) -> None:
    holding, stats = holding_of(ConsoleSinkConfig(name="plain", throttle_seconds=0),
                                ConsoleSinkConfig(name="both", throttle_seconds=0,
                                                  retractions=True))
    first = friction()
    for offset, doc in enumerate([first, retraction(first, timedelta(minutes=3))]):
        holding.add(alert(doc, offset), offset)
    due, commit = holding.release(None)  # even while the partition is behind
    assert offsets(due["plain"]) == [0] and offsets(due["both"]) == [0, 1]
    assert commit == 2
    assert stats.sinks["plain"].retractions_skipped == 1
    assert stats.sinks["both"].retractions_delivered == 1
    assert "RESOLVED" in console_line(due["both"][1].friction).plain


def test_a_held_friction_retracted_within_its_hold_reaches_no_sink() -> None:
    hold = ConsoleSinkConfig(name="held", throttle_seconds=0, hold_seconds=600,
                             retractions=True)
    holding, stats = holding_of(hold, ConsoleSinkConfig(name="now", throttle_seconds=0))
    first, second = friction(), friction(customer="c-2")
    for offset, doc in enumerate([first, second, retraction(first, timedelta(minutes=3))]):
        holding.add(alert(doc, offset), offset)
    due, commit = holding.release(None)
    assert offsets(due["held"]) == [] and offsets(due["now"]) == [0, 1]
    assert commit is None, "held records stay uncommitted"
    assert holding.held("held") == 3
    # read to the end, but the clock has not passed the hold yet
    due, commit = holding.release((T0 + timedelta(minutes=5)).timestamp())
    assert due["held"] == [] and commit is None
    # the hold has passed: the retracted one is withdrawn with its retraction
    due, commit = holding.release((T0 + timedelta(minutes=10)).timestamp())
    assert offsets(due["held"]) == [1] and commit == 3
    assert stats.sinks["held"].withdrawn == 1
    assert stats.sinks["held"].retractions_delivered == 0
    assert holding.records == []


def test_a_partition_behind_releases_a_hold_only_by_what_was_read_after_it() -> None:
    holding, _ = holding_of(ConsoleSinkConfig(name="held", throttle_seconds=0,
                                              hold_seconds=600))
    first = friction()
    holding.add(alert(first, 0), 0)
    # a consumer behind the partition's end cannot tell what retraction is still to come
    assert holding.release(None) == ({"held": []}, None)
    holding.add(alert(later(9), 1), 1)
    assert holding.release(None) == ({"held": []}, None)
    holding.add(alert(later(10, "c-8"), 2), 2)  # read up to the end of the first's hold
    due, commit = holding.release(None)
    assert offsets(due["held"]) == [0] and commit == 1


def test_held_records_beyond_the_limit_are_released_oldest_first() -> None:
    stats = AlertStats()
    router = AlertRouter([ConsoleSinkConfig(name="held", throttle_seconds=0,
                                            hold_seconds=600)], memory=100, stats=stats)
    holding = Holding(router, limit=2)
    for offset in range(3):
        holding.add(alert(friction(customer=f"c-{offset}"), offset), offset)
    due, commit = holding.release(None)
    assert offsets(due["held"]) == [0] and commit == 1


def test_dropped_holdings_are_read_again_as_news() -> None:
    holding, stats = holding_of(ConsoleSinkConfig(name="held", throttle_seconds=0,
                                                  hold_seconds=600))
    doc = friction()
    holding.add(alert(doc, 0), 0)
    holding.drop()  # a rebalance: the partition is read again from its committed offset
    holding.add(alert(doc, 0), 0)
    assert stats.duplicates == 0
    due, _ = holding.release((T0 + timedelta(minutes=11)).timestamp())
    assert offsets(due["held"]) == [0]


def test_a_retraction_is_no_repeat_of_its_friction_and_is_not_throttled() -> None:
    stats = AlertStats()
    router = AlertRouter([ConsoleSinkConfig(name="s", throttle_seconds=3600,
                                            retractions=True)], memory=100, stats=stats)
    first = friction()
    shares = router.route([alert(first, 0), alert(retraction(first, timedelta(minutes=1)), 1),
                           alert(first, 2)])
    assert offsets(shares["s"]) == [0, 1]
    assert stats.duplicates == 1
    assert slack_body(shares["s"][1].friction)["text"].startswith(":white_check_mark:")
