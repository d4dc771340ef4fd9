"""`journey friction ...`: the friction detectors' rules and what friction costs."""

from __future__ import annotations

import typer

from journey.cli import app

friction_app = typer.Typer(
    help="Friction detectors: their rules and the impact of each friction.",
    no_args_is_help=True,
)
app.add_typer(friction_app, name="friction")
