"""`journey samples ...`: real public data sets as touchpoint JSON lines."""

from __future__ import annotations

import sys
from datetime import UTC, datetime
from pathlib import Path
from typing import Annotated

import orjson
import typer

from journey.cli import app
from journey.errors import ConfigurationError

samples_app = typer.Typer(
    help="Real data sets as touchpoints (JSON lines on stdout, for 'journey produce -').",
    no_args_is_help=True,
)
app.add_typer(samples_app, name="samples")


@samples_app.command("helpdesk")
def helpdesk(
    path: Annotated[Path, typer.Argument(help="Helpdesk.csv of the help-desk ticket log")],
    end: Annotated[str | None, typer.Option(
        help="shift the log so its last event lands at this ISO time (default: now; "
        "'original' keeps the 2010-2014 dates)")] = None,
) -> None:
    """The help-desk ticket log as service touchpoints: each ticket a case of customer
    HD-<ticket> on email, with contacts, responses, escalations, resolutions, reopens.

    journey samples helpdesk ../shared/data/helpdesk_tickets/Helpdesk.csv | journey produce -
    """
    from journey.workload import replay_helpdesk

    if not path.is_file():
        raise ConfigurationError(f"{path} is not a file: give the path of Helpdesk.csv")
    if end == "original":
        until = None
    else:
        try:
            until = datetime.fromisoformat(end) if end else datetime.now(UTC)
        except ValueError:
            raise ConfigurationError(
                f"--end: {end!r} is not an ISO time like 2026-01-31T12:00:00Z") from None
        if until.tzinfo is None:
            until = until.replace(tzinfo=UTC)
    out = sys.stdout.buffer
    try:
        for event in replay_helpdesk(path, end=until):
            out.write(orjson.dumps(event) + b"\n")
    except (KeyError, ValueError) as exc:
        raise ConfigurationError(f"{path} does not look like the help-desk log: {exc}") from None
    out.flush()
