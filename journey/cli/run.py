"""`journey worker`, `journey status` and `journey produce`."""

from __future__ import annotations

import asyncio
import sys
from pathlib import Path
from typing import Annotated

import orjson
import typer
from rich.markup import escape

from journey.cli import app
from journey.errors import ConfigurationError
from journey.output import DataTable, make_console
from journey.replay import with_generation
from journey.settings import Settings
from journey.worker import run_worker, worker_status


@app.command()
def worker(
    loglevel: Annotated[str, typer.Option(help="crit, error, warn, info or debug")] = "warn",
) -> None:
    """Run the stream processor: validator, ClickHouse sink and the HTTP query API."""
    if loglevel not in {"crit", "error", "warn", "info", "debug"}:
        raise ConfigurationError(f"unknown log level {loglevel!r}: use crit, error, warn, "
                                 "info or debug")
    settings = with_generation(Settings())
    if worker_status(settings, timeout=0.5) is not None:
        raise ConfigurationError(f"a worker already answers at {settings.worker_url}: stop it "
                                 "first or set JOURNEY_WORKER_PORT for a second one")
    run_worker(settings, loglevel=loglevel)


@app.command()
def status(
    as_json: Annotated[bool, typer.Option("--json", help="print the raw JSON")] = False,
) -> None:
    """Show the worker's counters: read, valid, invalid by reason, duplicates, written,
    the journey projection's, and the friction found by rule."""
    settings = Settings()
    data = worker_status(settings)
    console = make_console()
    if data is None:
        console.print(f"worker: [red]not running[/red] (nothing answers at "
                      f"{escape(settings.worker_url)}; start it with 'journey worker')")
        raise typer.Exit(1)
    if as_json:
        typer.echo(orjson.dumps(data, option=orjson.OPT_INDENT_2).decode())
        return
    c = data["counters"]
    table = DataTable(title=f"worker {settings.worker_url}  (up {c['uptime_seconds']:.0f}s)")
    table.add_column("counter")
    table.add_column("value", justify="right")
    for name in ("read", "validated", "valid", "invalid", "duplicates", "written",
                 "sink_batches", "sink_failures", "send_failures"):
        if name in c:
            table.add_row(name, f"{c[name]:,}")
    for reason, n in c["invalid_by_reason"].items():
        table.add_row(f"  invalid: {reason}", f"{n:,}")
    for name, n in c.get("journey", {}).items():
        table.add_row(f"journey: {name}", f"{n:,}")
    if "friction_read" in c:
        table.add_row("friction detectors: touchpoints", f"{c['friction_read']:,}")
        if c.get("friction_skipped"):
            table.add_row("  skipped (not a touchpoint)", f"{c['friction_skipped']:,}")
        if c.get("friction_too_late"):
            table.add_row("  too late (not used for friction)", f"{c['friction_too_late']:,}")
    for rule, n in c.get("friction", {}).items():
        table.add_row(f"  friction: {rule}", f"{n:,}")
    for rule, n in c.get("friction_retracted", {}).items():
        table.add_row(f"  retracted: {rule}", f"{n:,}")
    console.print(table)
    console.print(f"bootstrap {data['bootstrap']}  warehouse {data['warehouse']}", markup=False)
    if c.get("last_insert_error"):
        console.print(f"[red]last insert error:[/red] {escape(c['last_insert_error'])}")


def _key_of(line: bytes) -> bytes | None:
    # Keys the message like a well-behaved producer would, without judging the event.
    try:
        obj = orjson.loads(line)
    except orjson.JSONDecodeError:
        return None
    if isinstance(obj, dict):
        ident = obj.get("customer_id") or obj.get("anonymous_id")
        if isinstance(ident, str) and ident:
            return ident.encode()
    return None


@app.command()
def produce(
    file: Annotated[str, typer.Argument(help="JSON-lines file, or - for standard input")],
    topic: Annotated[str | None, typer.Option(help="target topic (default: ingest)")] = None,
) -> None:
    """Send JSON lines to the ingest topic exactly as given (no validation)."""
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn

    from journey.sdk import TouchpointProducer

    if file == "-":
        lines = [ln for ln in sys.stdin.buffer.read().splitlines() if ln.strip()]
    else:
        path = Path(file)
        if not path.is_file():
            raise ConfigurationError(f"no such file: {file} (give a JSON-lines file or -)")
        lines = [ln for ln in path.read_bytes().splitlines() if ln.strip()]
    settings = Settings()

    async def send() -> int:
        async with TouchpointProducer(settings, topic=topic) as producer:
            with Progress(TextColumn("producing"), BarColumn(), MofNCompleteColumn(),
                          transient=True, disable=not sys.stderr.isatty()) as progress:
                task = progress.add_task("produce", total=len(lines))
                for line in lines:
                    await producer.send_raw(line, key=_key_of(line))
                    progress.advance(task)
        return len(lines)

    n = asyncio.run(send())
    typer.echo(f"sent {n} messages to {topic or settings.topic_ingest} at {settings.bootstrap}")


@app.command()
def replay(
    keep_running: Annotated[bool, typer.Option(
        "--keep-running", help="leave the new generation's worker running")] = False,
    timeout: Annotated[float, typer.Option(help="seconds to wait for the catch-up")] = 3600.0,
) -> None:
    """Rebuild every projection from the touchpoints topic, offset 0 on (a new generation)."""
    from journey.replay import replay as run_replay

    console = make_console()
    report = run_replay(Settings(), keep_running=keep_running, timeout=timeout, console=console)
    table = DataTable(title=f"replay: generation {report.generation}")
    table.add_column("table")
    table.add_column("rows", justify="right")
    for name, n in report.rows.items():
        table.add_row(name, f"{n:,}")
    console.print(table)
    console.print(f"{report.events:,} touchpoints replayed in {report.seconds:.1f}s = "
                  f"{report.rate:,.0f} events/s")
