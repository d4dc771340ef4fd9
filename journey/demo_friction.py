"""The friction part of `journey demo`: planted friction, counts by rule, the planted check."""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from rich.console import Console
from rich.table import Table

from journey.errors import ServiceUnavailableError
from journey.friction_plan import PUSH_AFTER_DAYS, PlantedFriction, plant_friction
from journey.sdk import TouchpointProducer
from journey.settings import Settings
from journey.worker import require_worker

SEVERITIES = ("low", "medium", "high", "critical")


@dataclass
class FrictionReport:
    planted: int = 0
    found_planted: int = 0
    missing: list[str] = field(default_factory=list)  # planted friction ids not found
    extra: list[str] = field(default_factory=list)  # found for planted customers, not planted
    by_rule: dict[str, dict[str, int]] = field(default_factory=dict)  # rule -> severity -> n

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
    planted = plant_friction(planted_start(workload_start), rounds=max(1, customers // 300),
                             partitions=settings.topic_partitions)
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


def friction_report(settings: Settings, planted: PlantedFriction | None) -> FrictionReport:
    from journey.cli.sql import run_query

    report = FrictionReport()
    _, rows = run_query(settings, "SELECT rule, severity, count() FROM friction FINAL "
                                  "GROUP BY rule, severity ORDER BY rule, severity")
    for rule, severity, n in rows:
        report.by_rule.setdefault(str(rule), {})[str(severity)] = int(n)
    if planted is not None:
        _, rows = run_query(settings, "SELECT friction_id FROM friction FINAL "
                                      "WHERE has({keys:Array(String)}, customer_key)",
                            {"keys": sorted(planted.customers)})
        found = {str(r[0]) for r in rows}
        expected = planted.ids()
        report.planted = len(expected)
        report.found_planted = len(found & expected)
        report.missing = sorted(expected - found)
        report.extra = sorted(found - expected)
    return report


def print_friction(report: FrictionReport, console: Console, mark: Any) -> None:
    table = Table(title="friction found, by rule and severity (all customers)")
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
    if report.planted:
        console.print(
            f"planted friction: {report.found_planted} of {report.planted} found, "
            f"{len(report.missing)} missing, {len(report.extra)} unplanted on planted "
            f"customers: {mark(report.exact)}")
