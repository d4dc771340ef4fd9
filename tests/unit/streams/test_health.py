"""Health checks, the stuck-group rule, tokens and the Prometheus exposition: pure logic."""

from __future__ import annotations

import asyncio
import dataclasses
from collections import Counter

import pytest
from prometheus_client.parser import text_string_to_metric_families

from journey.errors import ConfigurationError
from journey.settings import Settings
from streams.health import CheckResult, GroupProgress, HealthMonitor, groups_result
from streams.metrics import EXPORTED, NOT_COUNTERS, Metrics, exposition
from streams.web import bearer_allowed, check_exposure, is_loopback

# ---- the stuck-group rule ------------------------------------------------------------


def test_a_group_is_stuck_only_with_lag_and_an_offset_that_stands_still() -> None:
    progress = GroupProgress(stuck_after=60)
    tp = ("touchpoints", 0)
    # caught up: never stuck, however long
    for now in (0, 100, 1000):
        assert progress.observe("g", {tp: (50, 50)}, now).stuck == ()
    # lag appears at 1000; the offset stands still: stuck from 1060 on
    assert progress.observe("g", {tp: (50, 80)}, 1000).stuck == ()
    assert progress.observe("g", {tp: (50, 90)}, 1059).stuck == ()
    state = progress.observe("g", {tp: (50, 90)}, 1060)
    assert state.lag == 40
    (stuck,) = state.stuck
    assert (stuck.topic, stuck.partition, stuck.committed, stuck.lag, stuck.seconds) == (
        "touchpoints", 0, 50, 40, 60)
    # it moves, however slowly: not stuck, and the clock starts again
    assert progress.observe("g", {tp: (51, 90)}, 1061).stuck == ()
    assert progress.observe("g", {tp: (51, 90)}, 1120).stuck == ()
    assert progress.observe("g", {tp: (51, 90)}, 1121).stuck != ()
    # caught up again: forgotten
    assert progress.observe("g", {tp: (90, 90)}, 1122).stuck == ()
    assert progress.observe("g", {tp: (90, 95)}, 1123).stuck == ()


def test_groups_and_partitions_are_tracked_apart() -> None:
    progress = GroupProgress(stuck_after=10)
    a, b = ("t", 0), ("t", 1)
    progress.observe("g1", {a: (0, 5), b: (0, 5)}, 0)
    progress.observe("g2", {a: (0, 5)}, 0)
    g1 = progress.observe("g1", {a: (1, 5), b: (0, 5)}, 20)
    g2 = progress.observe("g2", {a: (0, 5)}, 20)
    assert [s.partition for s in g1.stuck] == [1]
    assert [s.partition for s in g2.stuck] == [0]
    result = groups_result({"g1": g1, "g2": g2})
    assert not result.ok
    assert result.reason is not None and result.reason.startswith(
        "consumer group g1 is stuck: 5 records wait on t[1]")
    assert "(and 1 more partitions)" in result.reason
    assert result.detail["lag"] == {"g1": 9, "g2": 5}
    assert groups_result({"g1": progress.observe("g1", {a: (5, 5)}, 21)}).ok


# ---- the monitor ------------------------------------------------------------------------


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def test_the_report_fails_with_every_reason_and_when_checks_are_missing_or_old() -> None:
    clock = Clock()
    state = {"broker": True}

    async def warehouse() -> CheckResult:
        return CheckResult(True)

    async def broker() -> CheckResult:
        return CheckResult(state["broker"], None if state["broker"] else "broker: down")

    async def hangs() -> CheckResult:
        await asyncio.sleep(10)
        return CheckResult(True)

    async def raises() -> CheckResult:
        raise RuntimeError("boom")

    monitor = HealthMonitor([("warehouse", warehouse), ("broker", broker)], interval=5,
                            timeout=0.1, clock=clock)
    healthy, body = monitor.report()
    assert not healthy and body["reasons"] == ["the health checks have not run yet"]
    asyncio.run(monitor.run_once())
    assert monitor.report() == (True, {"ok": True, "checks": {"warehouse": {"ok": True},
                                                               "broker": {"ok": True}}})
    state["broker"] = False
    asyncio.run(monitor.run_once())
    healthy, body = monitor.report()
    assert not healthy and body["reasons"] == ["broker: down"]
    assert body["checks"]["broker"] == {"ok": False, "reason": "broker: down"}
    clock.now = 100.0  # no round for 20 intervals
    state["broker"] = True
    healthy, body = monitor.report()
    assert any("last finished 100s ago" in r for r in body["reasons"])

    slow = HealthMonitor([("a", hangs), ("b", raises)], interval=5, timeout=0.05, clock=clock)
    asyncio.run(slow.run_once())
    healthy, body = slow.report()
    assert body["reasons"] == ["a: no answer within 0.05s", "b: RuntimeError: boom"]


# ---- tokens -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("host", "loopback"),
    [("127.0.0.1", True), ("127.0.0.2", True), ("::1", True), ("[::1]", True),
     ("localhost", True), ("0.0.0.0", False), ("::", False), ("", False),
     ("10.1.2.3", False), ("192.168.0.7", False), ("no-such-host.invalid", False)],
)
def test_loopback(host: str, loopback: bool) -> None:
    assert is_loopback(host) is loopback


def test_the_worker_refuses_to_serve_beyond_loopback_without_a_token() -> None:
    check_exposure(Settings(worker_host="127.0.0.1"))
    check_exposure(Settings(worker_host="0.0.0.0", api_tokens="s3cret"))
    with pytest.raises(ConfigurationError) as caught:
        check_exposure(Settings(worker_host="0.0.0.0"))
    message = str(caught.value)
    assert "\n" not in message and "JOURNEY_API_TOKENS" in message and "0.0.0.0" in message
    with pytest.raises(ConfigurationError):
        check_exposure(Settings(worker_host="0.0.0.0", api_tokens=" , "))


def test_bearer_tokens() -> None:
    tokens = Settings(api_tokens="alpha, beta-2 ,").api_token_list
    assert tokens == ("alpha", "beta-2")
    for header in ("Bearer alpha", "bearer beta-2", "Bearer  alpha "):
        assert bearer_allowed(header, tokens)
    for refused in (None, "", "Bearer", "Bearer ", "Bearer alph", "Bearer alphaa",
                   "Basic alpha", "alpha", "Bearer alpha,beta-2", "Bearer beta"):
        assert not bearer_allowed(refused, tokens), refused
    assert bearer_allowed(None, ())  # no tokens configured: open (loopback only)


# ---- the Prometheus exposition -----------------------------------------------------------


def test_every_counter_of_the_worker_is_exported() -> None:
    fields = {f.name for f in dataclasses.fields(Metrics)}
    assert fields - NOT_COUNTERS == set(EXPORTED)


def test_the_exposition_is_prometheus_text_with_every_value() -> None:
    metrics = Metrics(read=10, validated=9, valid=8, duplicates=1, written=8,
                      invalid=Counter({"invalid_json": 1}),
                      written_by_table=Counter({"touchpoints": 8, "journeys": 3}),
                      journey=Counter({"applied": 8}), friction=Counter({"sla_breach": 2}),
                      friction_retracted=Counter({"sla_breach": 1}), friction_too_late=4,
                      friction_read=8, friction_skipped=0, sink_batches=3, sink_failures=2,
                      send_failures=0, last_insert_error="Timeout")
    clock = Clock()

    async def ok() -> CheckResult:
        return CheckResult(True, detail={"lag": {"journey-validator": 7}})

    monitor = HealthMonitor([("consumer_groups", ok)], interval=5, timeout=1, clock=clock)
    asyncio.run(monitor.run_once())
    payload, content_type = exposition(metrics, monitor)
    assert content_type.startswith("text/plain")
    samples = {(s.name, tuple(sorted(s.labels.items()))): s.value
               for family in text_string_to_metric_families(payload.decode())
               for s in family.samples}
    assert samples[("journey_ingest_read_total", ())] == 10
    assert samples[("journey_touchpoints_stored_total", ())] == 8
    assert samples[("journey_invalid_total", (("reason", "invalid_json"),))] == 1
    assert samples[("journey_rows_written_total", (("table", "journeys"),))] == 3
    assert samples[("journey_friction_retracted_total", (("rule", "sla_breach"),))] == 1
    assert samples[("journey_friction_too_late_total", ())] == 4
    assert samples[("journey_sink_failures_total", ())] == 2
    assert samples[("journey_last_insert_failed", ())] == 1
    assert samples[("journey_health_check_ok", (("check", "consumer_groups"),))] == 1
    assert samples[("journey_consumer_group_lag", (("group", "journey-validator"),))] == 7
    assert samples[("journey_healthy", ())] == 1
    # every counter is there (each labelled one has a value above)
    for name, _, _ in EXPORTED.values():
        assert any(key[0] == f"{name}_total" for key in samples), name
