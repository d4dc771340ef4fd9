"""`journey alerts`: deliver friction events to console, file and webhook sinks."""

from __future__ import annotations

import asyncio
import json
import logging
from collections import Counter
from enum import StrEnum
from pathlib import Path
from typing import Annotated

import typer

from journey.cli import app
from journey.output import DataTable, make_console
from journey.settings import Settings
from streams.alerts import (
    AlertDeadLetterRow,
    AlertStats,
    alerts_group,
    read_alert_dead_letters,
    run_alerts_until_signalled,
)
from streams.alerts_config import (
    AlertsConfig,
    FileSinkConfig,
    WebhookSinkConfig,
    default_config,
    load_config,
)

alerts_app = typer.Typer(
    help="Deliver friction alerts to the console, a JSON-lines file or webhooks "
    "(see docs/ALERTS.md). Without a subcommand: run the alert consumer.",
)
app.add_typer(alerts_app, name="alerts")


class DlqFormat(StrEnum):
    table = "table"
    json = "json"


class _QuietKafkaClient:
    """Silences aiokafka until Kafka is reached (or for good in a short command).

    aiokafka logs a failed connection before raising it; the person gets it as one line
    of ours, so its own lines would only repeat it. Once connected, its warnings about a
    broker going away are worth seeing.
    """

    def __init__(self) -> None:
        self.logger = logging.getLogger("aiokafka")
        self.level = self.logger.level

    def __enter__(self) -> _QuietKafkaClient:
        self.logger.setLevel(logging.CRITICAL)
        return self

    def __exit__(self, *_: object) -> None:
        self.restore()

    def restore(self) -> None:
        self.logger.setLevel(self.level)


def _describe_sinks(config: AlertsConfig) -> str:
    parts = []
    for sink in config.sinks:
        where = ""
        if isinstance(sink, FileSinkConfig):
            where = f" {sink.path}"
        elif isinstance(sink, WebhookSinkConfig):
            where = f" {sink.url}"
        parts.append(f"{sink.name} ({sink.type.value}{where})")
    return ", ".join(parts)


@alerts_app.callback(invoke_without_command=True)
def alerts(
    ctx: typer.Context,
    config: Annotated[
        Path | None,
        typer.Option("--config", "-c", help="TOML file of sinks; unset = one console sink"),
    ] = None,
    group: Annotated[
        str | None,
        typer.Option(help="consumer group; instances sharing it share the partitions "
                          "[default: <app id>-alerts]"),
    ] = None,
    from_beginning: Annotated[
        bool,
        typer.Option("--from-beginning/--from-latest",
                     help="where a group without committed offsets starts"),
    ] = True,
    max_alerts: Annotated[
        int | None,
        typer.Option("--max-alerts", min=1, help="stop after this many friction events"),
    ] = None,
    idle_exit: Annotated[
        float | None,
        typer.Option("--idle-exit", min=0.1, help="stop after this many seconds without "
                                                  "friction"),
    ] = None,
    stats: Annotated[
        bool, typer.Option("--stats", help="print the counters as JSON on stdout at the end")
    ] = False,
) -> None:
    """Run the alert consumer until Ctrl-C / SIGTERM (the batch in flight is finished
    and committed; a second signal stops at once)."""
    if ctx.invoked_subcommand is not None:
        return
    settings = Settings()
    # ConfigurationError propagates: the entry point prints it as one line and exits 1.
    alerts_config = load_config(config) if config is not None else default_config()
    errors = make_console(stderr=True)
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(levelname)s %(message)s")
    chosen = group or alerts_config.group or alerts_group(settings)
    errors.print(f"alerts: group {chosen} reading {settings.topic_friction} at "
                 f"{settings.bootstrap} -> {_describe_sinks(alerts_config)}", markup=False)

    def summary(counters: AlertStats) -> None:
        errors.print(counters.summary_line(), markup=False)

    try:
        with _QuietKafkaClient() as quiet:
            counters = run_alerts_until_signalled(
                settings, alerts_config, group=group, from_beginning=from_beginning,
                max_alerts=max_alerts, idle_exit=idle_exit, on_summary=summary,
                on_ready=quiet.restore,
            )
    except asyncio.CancelledError:
        typer.echo("error: stopped at once: the batch in flight was not committed and is "
                   "delivered again at the next start", err=True)
        raise typer.Exit(130) from None
    if stats:
        typer.echo(json.dumps(counters.snapshot(), ensure_ascii=False))


@alerts_app.command("check")
def check(
    config: Annotated[Path, typer.Argument(help="the TOML file to check")],
) -> None:
    """Check a config file and show the sinks it defines (no Kafka needed)."""
    parsed = load_config(config)
    table = DataTable(title=f"{config}: {len(parsed.sinks)} sinks")
    for name in ("name", "type", "target", "rules", "min severity", "throttle", "retry"):
        table.add_column(name, overflow="fold")
    for sink in parsed.sinks:
        target = ""
        if isinstance(sink, FileSinkConfig):
            target = str(sink.path)
        elif isinstance(sink, WebhookSinkConfig):
            target = f"{sink.url} ({sink.format.value})"
        rules = ", ".join(sorted(sink.filter.rules)) if sink.filter.rules else "all"
        throttle = f"{sink.throttle_seconds:g}s" if sink.throttle_seconds > 0 else "off"
        retry = f"{sink.retry.attempts} attempts / {sink.retry.max_seconds:g}s"
        if sink.hold_seconds > 0:
            throttle += f", hold {sink.hold_seconds:g}s"
        if sink.retractions:
            throttle += ", retractions"
        table.add_row(sink.name, sink.type.value, target, rules,
                      sink.filter.min_severity.value, throttle, retry)
    make_console().print(table)


@alerts_app.command("dlq")
def dlq(
    limit: Annotated[
        int, typer.Option("--limit", "-n", min=0, help="how many of the newest to show")
    ] = 20,
    sink: Annotated[str | None, typer.Option("--sink", "-s", help="only this sink")] = None,
    output: Annotated[DlqFormat, typer.Option("--format", "-f", help="table or json")] = (
        DlqFormat.table
    ),
) -> None:
    """Show alerts no sink could deliver: the newest dead letters and a count by sink."""
    settings = Settings()
    topic = settings.topic_alerts_dlq
    with _QuietKafkaClient():
        rows = asyncio.run(read_alert_dead_letters(settings))
    everything = rows or []
    by_sink = Counter(row.sink or "(invalid record)" for row in everything)
    matching = [r for r in everything if sink is None or r.sink == sink]
    shown = matching[-limit:] if limit else []
    if output is DlqFormat.json:
        document = {
            "topic": topic,
            "exists": rows is not None,
            "total": len(everything),
            "matching": len(matching),
            "by_sink": dict(by_sink.most_common()),
            "records": [row.as_json() for row in shown],
        }
        typer.echo(json.dumps(document, ensure_ascii=False))
        return
    _print_dead_letters(topic, rows, shown, by_sink, len(matching), sink)


def _print_dead_letters(topic: str, rows: list[AlertDeadLetterRow] | None,
                        shown: list[AlertDeadLetterRow], by_sink: Counter[str],
                        matching: int, sink: str | None) -> None:
    console = make_console()
    if rows is None:
        console.print(f"no topic {topic} yet: no alert was ever dead-lettered", markup=False)
        return
    if not rows:
        console.print(f"no alert dead letters in {topic}", markup=False)
        return
    if shown:
        table = DataTable(title=f"{topic}: newest {len(shown)}")
        for name in ("failed_at", "sink", "severity", "rule", "customer", "attempts", "error"):
            table.add_column(name, overflow="fold")
        for row in shown:
            table.add_row(row.failed_at, row.sink or "-", row.severity or "-", row.rule or "-",
                          row.customer_key or "-", str(row.attempts), row.error)
        console.print(table, markup=False)
    counts = DataTable(title="by sink")
    counts.add_column("sink")
    counts.add_column("dead letters", justify="right")
    for name, n in by_sink.most_common():
        counts.add_row(name, f"{n:,}")
    console.print(counts, markup=False)
    only = f"{matching:,} for sink {sink}, " if sink else ""
    console.print(f"{len(rows):,} alert dead letters in {topic}; {only}{len(shown)} shown",
                  markup=False)
