"""`journey collector`: the HTTP entry point for producers."""

from __future__ import annotations

from typing import Annotated

import typer

from journey.cli import app
from journey.errors import ConfigurationError
from journey.settings import Settings

LEVELS = ("critical", "error", "warning", "info", "debug")


@app.command()
def collector(
    loglevel: Annotated[str, typer.Option(help="critical, error, warning, info or debug")]
    = "warning",
) -> None:
    """Run the HTTP collector: native and Segment-compatible endpoints into Kafka."""
    from journey.collector.run import run_collector

    if loglevel not in LEVELS:
        raise ConfigurationError(f"unknown log level {loglevel!r}: use {', '.join(LEVELS)}")
    run_collector(Settings(), lambda line: typer.echo(line, err=True), loglevel)
