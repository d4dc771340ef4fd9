"""`journey demo`."""

from __future__ import annotations

from typing import Annotated

import typer

from journey.cli import app
from journey.errors import ConfigurationError
from journey.settings import Settings


@app.command()
def demo(
    customers: Annotated[int, typer.Option(help="customers in the synthetic workload")] = 3000,
    seed: Annotated[int | None, typer.Option(help="workload seed (default: a new one)")] = None,
    keep_running: Annotated[bool, typer.Option(
        "--keep-running", help="leave Kafka and the worker running afterwards")] = False,
    timeout: Annotated[float, typer.Option(help="seconds to wait for the pipeline")] = 600.0,
    alerts: Annotated[str | None, typer.Option(
        help="also run an alert consumer printing friction of this severity or more "
        "(low, medium, high, critical) to the console")] = None,
) -> None:
    """Bring up the stack, run a seeded workload through the engine and report."""
    from journey.demo import run_demo

    if customers < 1:
        raise ConfigurationError("--customers must be at least 1")
    if alerts is not None and alerts not in ("low", "medium", "high", "critical"):
        raise ConfigurationError(
            f"--alerts: unknown severity {alerts!r}: use low, medium, high or critical")
    report = run_demo(Settings(), customers=customers, seed=seed, keep_running=keep_running,
                      timeout=timeout, alerts=alerts)
    if not (report.balanced and report.rows_match):
        raise typer.Exit(1)
