"""`journey sql`: read-only SQL on the warehouse (projections/clickhouse/runner.py finds it)."""

from __future__ import annotations

import csv
import json
import sys
from enum import StrEnum
from typing import Annotated, Any

import typer

from journey.cli import app
from journey.errors import ConfigurationError
from journey.settings import Settings
from projections.clickhouse.runner import Runner

Columns = list[str]
Rows = list[list[Any]]


class OutputFormat(StrEnum):
    table = "table"
    json = "json"
    csv = "csv"


def _parse_params(items: list[str]) -> dict[str, str]:
    params: dict[str, str] = {}
    for item in items:
        name, sep, value = item.partition("=")
        if not sep or not name.strip():
            raise ConfigurationError(f"--param takes name=value, got {item!r}")
        params[name.strip()] = value
    return params


def _cell(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, dict | list):
        return json.dumps(value, ensure_ascii=False)
    return str(value)


def _print_table(columns: Columns, rows: Rows) -> None:
    from rich.text import Text

    from journey.output import DataTable, make_console

    table = DataTable(show_lines=False)
    for k, name in enumerate(columns):
        values = [row[k] for row in rows if row[k] is not None]
        numeric = bool(values) and all(
            isinstance(v, int | float) and not isinstance(v, bool) for v in values)
        table.add_column(name, justify="right" if numeric else "left")
    for row in rows:
        table.add_row(*(Text("NULL", style="dim") if v is None else _cell(v) for v in row))
    console = make_console()
    console.print(table)
    if console.is_terminal:  # piped, the output is the table alone
        console.print(f"[dim]{len(rows)} row{'' if len(rows) == 1 else 's'}[/dim]")


@app.command("sql")
def sql_command(
    statement: Annotated[
        str, typer.Argument(help="one read-only statement (SELECT, WITH, SHOW, ...)")
    ],
    output: Annotated[
        OutputFormat, typer.Option("--format", "-f", help="table, json or csv")
    ] = OutputFormat.table,
    param: Annotated[
        list[str] | None,
        typer.Option("--param", "-p", help="bind {name:Type} in the statement: name=value"),
    ] = None,
) -> None:
    """Run a read-only SQL statement on the warehouse (through the worker when it runs)."""
    # JourneyError propagates: the entry point prints it as one line and exits 1.
    columns, rows = Runner.for_settings(Settings()).run(statement, _parse_params(param or []))
    if output is OutputFormat.json:
        typer.echo(json.dumps({"columns": columns, "rows": rows}, ensure_ascii=False))
    elif output is OutputFormat.csv:
        writer = csv.writer(sys.stdout, lineterminator="\n")
        writer.writerow(columns)
        writer.writerows([_cell(v) for v in row] for row in rows)
    else:
        _print_table(columns, rows)
