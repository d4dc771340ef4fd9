"""The friction part of `journey demo`: planted friction, counts by rule, the planted check."""

from __future__ import annotations

import asyncio
import random
import time
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any

from rich.console import Console
from rich.text import Text

from journey.errors import ServiceUnavailableError
from journey.friction_plan import PUSH_AFTER_DAYS, PlantedFriction, plant_friction
from journey.output import DataTable
from journey.sdk import TouchpointProducer
from journey.settings import Settings
from journey.worker import require_worker

if TYPE_CHECKING:
    from projections.clickhouse.runner import Runner

SEVERITIES = ("low", "medium", "high", "critical")


@dataclass
class FrictionReport:
    planted: int = 0
    found_planted: int = 0
    missing: list[str] = field(default_factory=list)  # planted friction ids not found
    extra: list[str] = field(default_factory=list)  # found for planted customers, not planted
    by_rule: dict[str, dict[str, int]] = field(default_factory=dict)  # rule -> severity -> n
    kpis: list[dict[str, Any]] = field(default_factory=list)  # per channel
    impact: list[dict[str, Any]] = field(default_factory=list)  # per rule

    @property
    def exact(self) -> bool:
        return self.planted == self.found_planted and not self.missing and not self.extra


def planted_start(workload_start: datetime) -> datetime:
    """Planted journeys end (their watermark pushers) a day before the workload begins, so
    the workload's own events then move every partition's watermark forward in time."""
    return workload_start - timedelta(days=PUSH_AFTER_DAYS + 1)


def plant(settings: Settings, workload_start: datetime, customers: int,
          timeout: float) -> PlantedFriction:
    """Send the planted journeys (about one round per 300 customers) and wait until they
    are validated and stored, so the workload's counts that follow stay exact."""
    # A seed of its own per run: the planted customers and event ids are new each time, so
    # a second demo on the same home plants afresh instead of sending repeats.
    planted = plant_friction(planted_start(workload_start), rounds=max(1, customers // 300),
                             partitions=settings.topic_partitions,
                             seed=random.SystemRandom().randrange(2**31))
    def progress() -> int:  # planted events both validated and written to ClickHouse
        counters = require_worker(settings)["counters"]
        return min(int(counters["read"]) - before[0], int(counters["written"]) - before[1])

    counters = require_worker(settings)["counters"]
    before = (int(counters["read"]), int(counters["written"]))

    async def send() -> None:
        async with TouchpointProducer(settings) as producer:
            await producer.send_many(planted.events)
            await producer.flush()

    asyncio.run(send())
    deadline = time.monotonic() + timeout
    while progress() < len(planted.events):
        if time.monotonic() > deadline:
            raise ServiceUnavailableError(
                f"the {len(planted.events)} planted events were not stored within "
                f"{timeout:.0f}s: see 'journey status'")
        time.sleep(0.25)
    return planted


def friction_report(settings: Settings, planted: PlantedFriction | None,
                    since: datetime | None = None) -> FrictionReport:
    """Friction counts, the planted check, the KPIs and the impact table; the KPIs and
    the impact cover the workload from `since` (the planted journeys lie before it)."""
    from projections.clickhouse.runner import Runner

    runner = Runner.for_settings(settings)
    report = FrictionReport()
    _, rows = runner.run("SELECT rule, severity, count() FROM friction FINAL "
                         "GROUP BY rule, severity ORDER BY rule, severity")
    for rule, severity, n in rows:
        report.by_rule.setdefault(str(rule), {})[str(severity)] = int(n)
    if planted is not None:
        _, rows = runner.run("SELECT friction_id FROM friction FINAL "
                             "WHERE has({keys:Array(String)}, customer_key)",
                             {"keys": sorted(planted.customers)})
        found = {str(r[0]) for r in rows}
        expected = planted.ids()
        report.planted = len(expected)
        report.found_planted = len(found & expected)
        report.missing = sorted(expected - found)
        report.extra = sorted(found - expected)
    report.kpis = _kpis(settings, runner, since)
    report.impact = _impact(runner, since)
    return report


def _kpis(settings: Settings, runner: Runner, since: datetime | None) -> list[dict[str, Any]]:
    from projections.analysis.kpis import KpiSpec, kpi_records, rule_deadlines
    from projections.friction.config import load_config

    deadlines, default = rule_deadlines(load_config(settings.friction_config).sla_breach)
    spec = KpiSpec(by=("channel",), since=since, deadlines=deadlines, default_deadline=default)
    return kpi_records(*runner.ask(spec))


def _impact(runner: Runner, since: datetime | None) -> list[dict[str, Any]]:
    from projections.analysis.impact import ImpactSpec

    # The workload spans 30 days: windows that fit in it (the defaults are 30-60 days).
    spec = ImpactSpec(since=since, retention_from_days=7, retention_to_days=21, revenue_days=21)
    return runner.ask(spec).records()


def _pct(value: Any) -> str:
    return "-" if value is None else f"{float(value):.0%}"


def _num(value: Any, digits: int = 1) -> str:
    return "-" if value is None else f"{float(value):,.{digits}f}"


def _minutes(value: Any) -> str:
    return "-" if value is None else f"{float(value) / 60:,.0f}m"


def print_friction(report: FrictionReport, console: Console, mark: Any) -> None:
    table = DataTable(title="friction found, by rule and severity (all customers)")
    table.add_column("rule")
    for severity in SEVERITIES:
        table.add_column(severity, justify="right")
    table.add_column("total", justify="right")
    table.add_column("")
    totals = {rule: sum(counts.values()) for rule, counts in report.by_rule.items()}
    largest = max(totals.values(), default=0)
    for rule, counts in sorted(report.by_rule.items(), key=lambda kv: -totals[kv[0]]):
        table.add_row(rule, *(f"{counts.get(s, 0):,}" for s in SEVERITIES),
                      f"{totals[rule]:,}",
                      "#" * max(1, round(24 * totals[rule] / largest)) if largest else "")
    console.print(table)
    if report.kpis:
        kpis = DataTable(title="CX metrics by channel (journey kpis)")
        for name in ("channel", "cases", "CSAT", "NPS", "CES", "FCR", "1st resp p50",
                     "SLA ok", "escalated", "repeat", "friction/1k"):
            kpis.add_column(name, justify="left" if name == "channel" else "right")
        for k in report.kpis:
            kpis.add_row(str(k.get("channel") or "-"), f"{int(k['cases'] or 0):,}",
                         _pct(k["csat"]), _num(k["nps"], 0), _num(k["ces"]), _pct(k["fcr"]),
                         _minutes(k["first_response_median_seconds"]),
                         _pct(k["sla_compliance"]), _pct(k["escalation_rate"]),
                         _pct(k["repeat_contact_rate"]),
                         _num(sum((k["friction_per_1000"] or {}).values()), 0))
        console.print(kpis)
    if report.impact:
        impact = DataTable(title="what each friction costs (journey friction impact: affected vs "
                             "comparable customers; retention: active 7-21 days later, "
                             "revenue: within 21 days)")
        for name in ("rule", "affected", "conversion", "vs", "retention", "vs",
                     "revenue/customer", "vs", "lost revenue", ""):
            impact.add_column(name, justify="left" if name in ("rule", "") else "right")
        costliest = max((float(r["lost_revenue"] or 0) for r in report.impact), default=0.0)
        for r in report.impact:
            lost = float(r["lost_revenue"] or 0)
            impact.add_row(str(r["rule"]), f"{int(r['affected']):,}",
                           _pct(r["conversion_affected"]), _pct(r["conversion_comparison"]),
                           _pct(r["retention_affected"]), _pct(r["retention_comparison"]),
                           _num(r["revenue_per_customer_affected"]),
                           _num(r["revenue_per_customer_comparison"]), _num(lost, 0),
                           Text("#" * round(20 * lost / costliest), style="red")
                           if costliest > 0 and lost > 0 else "")
        console.print(impact)
    if report.planted:
        console.print(
            f"planted friction: {report.found_planted} of {report.planted} found, "
            f"{len(report.missing)} missing, {len(report.extra)} unplanted on planted "
            f"customers: {mark(report.exact)}")


class DemoAlerts:
    """An alert consumer printing to the console while the demo runs (`--alerts`), in a
    thread of its own; it starts at the friction topic's end, so it shows this run only."""

    def __init__(self, settings: Settings, min_severity: str, console: Console) -> None:
        import threading

        self.settings = settings
        self.min_severity = min_severity
        self.console = console
        self.stats: Any = None
        self.error: BaseException | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stop: asyncio.Event | None = None
        self._ready = threading.Event()
        self._thread = threading.Thread(target=self._run, name="demo-alerts", daemon=True)

    def _run(self) -> None:
        from schemas.friction import Severity
        from streams.alerts import run_alerts
        from streams.alerts_config import AlertFilter, AlertsConfig, ConsoleSinkConfig

        config = AlertsConfig(sinks=(ConsoleSinkConfig(
            name="console", filter=AlertFilter(min_severity=Severity(self.min_severity))),))

        async def main() -> None:
            self._loop = asyncio.get_running_loop()
            self._stop = asyncio.Event()
            self.stats = await run_alerts(
                self.settings, config, stop_event=self._stop, console=self.console,
                group=f"{self.settings.app_id}-demo-alerts", from_beginning=False,
                on_ready=self._ready.set)

        try:
            asyncio.run(main())
        except BaseException as exc:  # reported by stop(), never lost in the thread
            self.error = exc
            self._ready.set()

    def start(self, timeout: float = 60.0) -> None:
        self._thread.start()
        self._ready.wait(timeout)
        if self.error is not None:
            raise self.error

    def stop(self, timeout: float = 60.0) -> None:
        if self._loop is not None and self._stop is not None:
            self._loop.call_soon_threadsafe(self._stop.set)
        self._thread.join(timeout)
        if self.error is not None:
            raise self.error
