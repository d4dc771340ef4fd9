"""`journey friction ...`: the friction detectors' rules and what friction costs."""

from __future__ import annotations

import json
from enum import StrEnum
from pathlib import Path
from typing import Annotated

import typer
from rich.text import Text

from journey.cli import app
from journey.output import DataTable, make_console
from journey.settings import Settings
from projections.durations import format_duration
from projections.friction.config import (
    config_as_dict,
    describe_rules,
    load_config,
)

friction_app = typer.Typer(
    help="Friction detectors: their rules and the impact of each friction.",
    no_args_is_help=True,
)
app.add_typer(friction_app, name="friction")


class RulesFormat(StrEnum):
    table = "table"
    json = "json"


@friction_app.command("rules")
def rules(
    config: Annotated[Path | None, typer.Option(
        "--config", help="TOML file of rule settings (default: JOURNEY_FRICTION_CONFIG, "
        "else the built-in defaults)", dir_okay=False)] = None,
    output: Annotated[RulesFormat, typer.Option("--format", help="table or json")] =
    RulesFormat.table,
) -> None:
    """Print every friction rule with its on/off, severities and thresholds."""
    settings = Settings()
    path = config or settings.friction_config
    effective = load_config(path)
    if output is RulesFormat.json:
        typer.echo(json.dumps(config_as_dict(effective), indent=2))
        return
    table = DataTable(title=f"friction rules ({path or 'built-in defaults'})", show_lines=True)
    table.add_column("rule", style="bold")
    table.add_column("on")
    table.add_column("severities")
    table.add_column("thresholds")
    for name, enabled, severities, thresholds in describe_rules(effective):
        table.add_row(name, "yes" if enabled else Text("no", style="red"),
                      severities.replace("; ", "\n"), thresholds.replace("; ", "\n"))
    console = make_console()
    console.print(table)
    console.print(f"allowed lateness {format_duration(effective.allowed_lateness)}: a deadline "
                  "is reported once its partition has seen an event that much past it")
