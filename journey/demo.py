"""`journey demo`: the whole ingest path on a synthetic workload, from nothing to a funnel."""

from __future__ import annotations

import asyncio
import random
import time
import uuid
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from journey.demo_friction import DemoAlerts, friction_report, plant, print_friction
from journey.errors import ServiceUnavailableError
from journey.output import DataTable, make_console
from journey.sdk import TouchpointProducer
from journey.settings import Settings
from journey.stack import KafkaStack, Outcome
from journey.worker import WorkerProcess, require_worker, worker_status
from journey.workload import Workload, generate

FUNNEL = ("ad_impression", "site_visit", "add_to_cart", "purchase")
FUNNEL_WINDOW = timedelta(days=7)
# The touchpoint report does not depend on the journey projection: if the projection
# has not caught up by then, the journey tables are shown as they are, marked partial.
PROJECTION_TIMEOUT = 180.0


@dataclass
class DemoReport:
    seed: int
    produced: int = 0
    valid: int = 0
    duplicates: int = 0
    dlq_by_reason: dict[str, int] = field(default_factory=dict)
    rows_written: int = 0
    produce_seconds: float = 0.0
    pipeline_seconds: float = 0.0
    funnel: list[tuple[int, str, int]] = field(default_factory=list)
    funnel_by_channel: list[list[Any]] = field(default_factory=list)
    paths_to_purchase: list[tuple[str, int, float]] = field(default_factory=list)
    stage_map: list[tuple[str, str, int, int]] = field(default_factory=list)
    projection_seconds: float = 0.0
    projection_lags: dict[str, int] = field(default_factory=dict)
    expected: Any = None
    friction: Any = None  # demo_friction.FrictionReport
    alerts: Any = None  # the demo alert consumer's counters (streams.alerts.AlertStats)

    @property
    def dlq(self) -> int:
        return sum(self.dlq_by_reason.values())

    @property
    def balanced(self) -> bool:
        return self.produced == self.valid + self.dlq + self.duplicates

    @property
    def rows_match(self) -> bool:
        return self.rows_written == self.valid


def _counters(settings: Settings) -> dict[str, Any]:
    return dict(require_worker(settings)["counters"])


def _rows(settings: Settings) -> int:
    from projections.clickhouse.builders.trends import touchpoint_total_query
    from projections.clickhouse.runner import Runner

    _, rows = Runner.for_settings(settings).run(touchpoint_total_query())
    return int(rows[0][0])


async def _produce(settings: Settings, workload: Workload, progress: Progress) -> float:
    task = progress.add_task("producing", total=len(workload.messages))
    started = time.perf_counter()
    async with TouchpointProducer(settings) as producer:
        for i, message in enumerate(workload.messages):
            if message.reason is None:
                await producer.send_json(message.value)  # validated by the SDK first
            else:
                await producer.send_raw(message.value, key=message.key)  # deliberately bad
            if i % 500 == 0:
                progress.update(task, completed=i)
        await producer.flush()
    progress.update(task, completed=len(workload.messages))
    return time.perf_counter() - started


def _wait_for_pipeline(settings: Settings, before: dict[str, Any], produced: int,
                       progress: Progress, timeout: float) -> dict[str, Any]:
    """Poll the worker until every message is routed and every valid one is written."""
    routed = progress.add_task("validating", total=produced)
    written = progress.add_task("writing to ClickHouse", total=None)
    deadline = time.monotonic() + timeout
    while True:
        now = _counters(settings)
        delta = {k: now[k] - before[k]
                 for k in ("read", "validated", "valid", "duplicates", "written")}
        progress.update(routed, completed=delta["read"])
        progress.update(written, total=max(delta["valid"], 1), completed=delta["written"])
        # every valid touchpoint past the dedup stage (stored or dropped), every stored one
        # written
        deduplicated = delta["valid"] + delta["duplicates"] >= delta["validated"]
        if delta["read"] >= produced and deduplicated and delta["written"] >= delta["valid"]:
            return now
        if time.monotonic() > deadline:
            raise ServiceUnavailableError(
                f"the pipeline did not finish within {timeout:.0f}s (read {delta['read']} of "
                f"{produced}, wrote {delta['written']} of {delta['valid']}): see "
                f"{settings.home / 'worker.log'} and 'journey status'")
        time.sleep(0.25)


def run_demo(settings: Settings, *, customers: int, seed: int | None, keep_running: bool,
             timeout: float = 600.0, console: Console | None = None,
             alerts: str | None = None) -> DemoReport:
    console = console or make_console()
    seed = seed if seed is not None else random.SystemRandom().randrange(1, 2**31)
    report = DemoReport(seed=seed)

    stack = KafkaStack(settings, console=console)
    up = stack.up()
    console.print(f"kafka: {up.outcome.value} at {up.status.bootstrap} ({up.seconds:.1f}s)")
    worker = None
    if worker_status(settings, timeout=0.5) is None:
        with console.status("starting the worker"):
            worker = WorkerProcess(settings)
            worker.start()
        console.print(f"worker: started at {settings.worker_url} (log {worker.log_path})")
    else:
        console.print(f"worker: already running at {settings.worker_url}")
    alerting = DemoAlerts(settings, alerts, console) if alerts else None
    try:
        if alerting is not None:
            with console.status("starting an alert consumer"):
                alerting.start()
            console.print(f"alerts: friction of severity {alerts} or more is printed as found")
        start = datetime.now(UTC).replace(microsecond=0) - timedelta(days=30)
        with console.status(f"generating the workload (seed {seed})"):
            # event ids of this run's own: the same seed again on this home is no repeat
            workload = generate(customers, seed, start=start, id_space=uuid.uuid4())
        with console.status("planting friction journeys"):
            planted = plant(settings, start, customers, timeout)
        report.expected = workload.expectation
        report.produced = len(workload.messages)
        before = _counters(settings)
        rows_before = _rows(settings)

        columns = (TextColumn("{task.description:<24}"), BarColumn(), MofNCompleteColumn(),
                   TimeElapsedColumn())
        with Progress(*columns, console=console) as progress:
            t0 = time.perf_counter()
            report.produce_seconds = asyncio.run(_produce(settings, workload, progress))
            after = _wait_for_pipeline(settings, before, report.produced, progress, timeout)
            report.pipeline_seconds = time.perf_counter() - t0
            report.projection_lags = _wait_for_projections(
                settings, progress, min(timeout, PROJECTION_TIMEOUT))
            report.projection_seconds = time.perf_counter() - t0

        report.valid = after["valid"] - before["valid"]
        report.duplicates = after["duplicates"] - before["duplicates"]
        report.dlq_by_reason = {
            reason: n - before["invalid_by_reason"].get(reason, 0)
            for reason, n in after["invalid_by_reason"].items()
            if n - before["invalid_by_reason"].get(reason, 0)
        }
        report.rows_written = _rows(settings) - rows_before
        report.funnel = _funnel(settings)
        report.funnel_by_channel = _funnel_by_channel(settings)
        report.paths_to_purchase = _paths_to_purchase(settings)
        report.stage_map = _stage_map(settings)
        report.friction = friction_report(settings, planted, since=start)
        if alerting is not None:
            alerting.stop()
            report.alerts = alerting.stats
    finally:
        if not keep_running:
            if worker is not None:
                with console.status("stopping the worker"):
                    worker.stop()
            if up.outcome is Outcome.STARTED:
                with console.status("stopping kafka"):
                    stack.down()
    print_report(report, console)
    if keep_running:
        console.print(f"\nstill running: kafka at {up.status.bootstrap}, worker at "
                      f"{settings.worker_url}. Try: journey sql \"SELECT type, count() FROM "
                      "touchpoints GROUP BY type\"; stop with 'journey stack down'.")
    return report


def _funnel(settings: Settings) -> list[tuple[int, str, int]]:
    from projections.analysis.funnel import parse_funnel, step_people
    from projections.clickhouse.runner import Runner

    # the same engine as journey funnel and GET /analysis/funnel
    spec = parse_funnel(list(FUNNEL), window=f"{int(FUNNEL_WINDOW.total_seconds())}s")
    return step_people(Runner.for_settings(settings).funnel(spec))


def _wait_for_projections(settings: Settings, progress: Progress,
                          timeout: float) -> dict[str, int]:
    """Until the journey projection and every sink have committed all they were sent.

    Returns the lags left when it gave up after `timeout` ({} when caught up).
    """
    from journey.replay import projection_lags, with_generation

    current = with_generation(settings)
    task = progress.add_task("journey projection", total=None)
    deadline = time.monotonic() + timeout
    quiet = 0
    while quiet < 2:
        lags = asyncio.run(projection_lags(current))
        behind = sum(lags.values())
        progress.update(task, total=max(behind, 1) if quiet == 0 else 1,
                        completed=0 if behind else 1)
        quiet = quiet + 1 if behind == 0 else 0
        if time.monotonic() > deadline:
            return {name: lag for name, lag in lags.items() if lag}
        time.sleep(0.5)
    progress.update(task, total=1, completed=1)
    return {}


def _funnel_by_channel(settings: Settings) -> list[list[Any]]:
    from projections.analysis.funnel import funnel_rows, parse_funnel
    from projections.clickhouse.runner import Runner

    spec = parse_funnel(list(FUNNEL), window="7d", breakdown="channel",
                        attribution="first-touch")
    columns, flat = funnel_rows(spec, Runner.for_settings(settings).funnel(spec))
    keep = [columns.index(c) for c in ("breakdown", "step", "label", "people")]
    return [[row[i] for i in keep] for row in flat]


def _paths_to_purchase(settings: Settings) -> list[tuple[str, int, float]]:
    from projections.analysis.paths import PathsSpec
    from projections.clickhouse.runner import Runner

    columns, rows = Runner.for_settings(settings).ask(
        PathsSpec(end_at="purchase", top=5, max_length=5))
    text, people, share = (columns.index(c) for c in ("path_text", "people", "share"))
    return [(str(r[text]), int(r[people]), float(r[share])) for r in rows]


def _stage_map(settings: Settings) -> list[tuple[str, str, int, int]]:
    from projections.analysis.paths import StageMapSpec
    from projections.clickhouse.runner import Runner

    _, rows = Runner.for_settings(settings).ask(StageMapSpec())
    return [(str(r[0]), str(r[1]), int(r[2]), int(r[4])) for r in rows]


def _mark(ok: bool) -> str:
    return "[green]ok[/green]" if ok else "[red]MISMATCH[/red]"


def print_report(report: DemoReport, console: Console) -> None:
    exp = report.expected
    table = DataTable(title=f"journey demo - seed {report.seed}", show_lines=False)
    table.add_column("")
    table.add_column("measured", justify="right")
    table.add_column("planted", justify="right")
    table.add_row("produced", f"{report.produced:,}", f"{exp.messages:,}" if exp else "")
    table.add_row("valid", f"{report.valid:,}", f"{exp.valid:,}" if exp else "")
    table.add_row("dead-lettered", f"{report.dlq:,}", f"{exp.dlq:,}" if exp else "")
    reasons = sorted(set(report.dlq_by_reason) | {r for r, n in
                     (exp.dlq_by_reason.items() if exp else []) if n})
    for reason in reasons:
        table.add_row(f"  {reason}", f"{report.dlq_by_reason.get(reason, 0):,}",
                      f"{exp.dlq_by_reason.get(reason, 0):,}" if exp else "")
    table.add_row("duplicates dropped", f"{report.duplicates:,}",
                  f"{exp.duplicates:,}" if exp else "")
    table.add_row("rows in ClickHouse (new)", f"{report.rows_written:,}",
                  f"{exp.valid:,}" if exp else "")
    console.print(table)
    console.print(f"produced = valid + DLQ + duplicates: {_mark(report.balanced)}    "
                  f"ClickHouse rows = valid: {_mark(report.rows_match)}")
    rate = report.produced / report.pipeline_seconds if report.pipeline_seconds else 0.0
    console.print(f"throughput: produced in {report.produce_seconds:.1f}s, end to end "
                  f"(produce -> validate -> ClickHouse) {report.pipeline_seconds:.1f}s = "
                  f"{rate:,.0f} events/s")
    funnel = DataTable(title="funnel, 7-day window (computed in ClickHouse)")
    funnel.add_column("step")
    funnel.add_column("touchpoint")
    funnel.add_column("customers", justify="right")
    funnel.add_column("from previous", justify="right")
    funnel.add_column("from first", justify="right")
    funnel.add_column("")
    first = report.funnel[0][2] if report.funnel else 0
    prev = first
    for step, name, n in report.funnel:
        bar = "#" * (round(30 * n / first) if first else 0)
        funnel.add_row(str(step), name, f"{n:,}",
                       f"{n / prev:.0%}" if prev else "-", f"{n / first:.0%}" if first else "-",
                       bar)
        prev = n
    console.print(funnel)

    if report.funnel_by_channel:
        by_channel = DataTable(title="the same funnel by first-touch channel (people per step)")
        by_channel.add_column("channel")
        for name in FUNNEL:
            by_channel.add_column(name, justify="right")
        grouped: dict[str, list[int]] = {}
        for breakdown, _step, _label, people in report.funnel_by_channel:
            label = "(all)" if breakdown is None else str(breakdown)
            grouped.setdefault(label, []).append(int(people))
        for channel, people in grouped.items():
            by_channel.add_row(channel, *(f"{n:,}" for n in people))
        console.print(by_channel)

    if report.paths_to_purchase:
        paths = DataTable(title="top paths to purchase (repeats collapsed)")
        paths.add_column("path")
        paths.add_column("people", justify="right")
        paths.add_column("share", justify="right")
        for text, people, share in report.paths_to_purchase:
            paths.add_row(text, f"{people:,}", f"{share:.1%}")
        console.print(paths)

    if report.projection_lags:
        console.print(f"[yellow]the journey projection had not caught up after "
                      f"{report.projection_seconds:.0f}s (records behind: "
                      f"{report.projection_lags}); the stage map below is partial[/yellow]")
    if report.stage_map:
        stages = DataTable(title=f"stage map (journey projection caught up in "
                             f"{report.projection_seconds:.1f}s)" if not report.projection_lags
                       else "stage map (partial)")
        stages.add_column("from")
        stages.add_column("to")
        stages.add_column("moves", justify="right")
        stages.add_column("of them by buyers", justify="right")
        stages.add_column("")
        largest = max(m for _, _, m, _ in report.stage_map)
        for source, target, moves, buyers in report.stage_map:
            stages.add_row(source, target, f"{moves:,}", f"{buyers:,}",
                           "#" * max(1, round(30 * moves / largest)))
        console.print(stages)
    if report.friction is not None:
        print_friction(report.friction, console, _mark)
    if report.alerts is not None:
        sink = report.alerts.sinks.get("console")
        if sink is not None:
            console.print(f"alert consumer: read {report.alerts.read:,} friction events, "
                          f"printed {sink.delivered:,}, below the severity {sink.filtered:,}, "
                          f"throttled {sink.throttled:,}")
