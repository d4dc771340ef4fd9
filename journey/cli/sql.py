"""`journey sql`: read-only SQL on the warehouse, through the worker when it owns chDB."""

from __future__ import annotations

import csv
import http.client
import json
import sys
from collections.abc import Mapping
from datetime import date, datetime
from enum import StrEnum
from pathlib import Path
from typing import Annotated, Any
from urllib.parse import urlsplit

import typer

from journey.cli import app
from journey.errors import ConfigurationError, JourneyError, ServiceUnavailableError
from journey.settings import Settings
from journey.worker import UNAUTHORIZED, refused_token, worker_headers
from projections.clickhouse.client import (
    QueryError,
    WarehouseConfigError,
    WarehouseError,
    WarehouseUnavailableError,
    connect,
)
from projections.clickhouse.queries import jsonable_rows
from projections.clickhouse.readonly import QueryRejectedError, check_readonly, run_readonly

# Connecting to a worker on this machine either succeeds or is refused at once; the
# timeout only matters for a worker_host that does not answer.
WORKER_CONNECT_TIMEOUT = 1.0
WORKER_QUERY_TIMEOUT = 300.0

Columns = list[str]
Rows = list[list[Any]]


class QueryFailedError(JourneyError):
    """The warehouse refused or failed the statement (bad SQL, not read-only, ...)."""


class OutputFormat(StrEnum):
    table = "table"
    json = "json"
    csv = "csv"


def _json_value(value: Any) -> Any:
    # Bound values the worker's JSON body cannot carry as they are: times as ISO text.
    if isinstance(value, datetime | date):
        return value.isoformat()
    raise TypeError(f"cannot send a {type(value).__name__} as a query parameter")


def _ask_worker(
    settings: Settings, sql: str, params: Mapping[str, Any]
) -> tuple[Columns, Rows] | None:
    """The answer of the worker's POST /query, or None when no worker listens there."""
    worker_url = settings.worker_url
    url = urlsplit(worker_url)
    host, port = url.hostname or "127.0.0.1", url.port or 80
    conn = http.client.HTTPConnection(host, port, timeout=WORKER_CONNECT_TIMEOUT)
    try:
        try:
            conn.connect()
        except OSError:
            return None  # not running (refused) or not reachable: open the warehouse directly
        if conn.sock is not None:
            conn.sock.settimeout(WORKER_QUERY_TIMEOUT)
        body = json.dumps({"sql": sql, "parameters": dict(params)}, default=_json_value).encode()
        try:
            conn.request("POST", "/query", body=body, headers={
                "Content-Type": "application/json", **worker_headers(settings)})
            response = conn.getresponse()
            payload = response.read()
        except (OSError, http.client.HTTPException) as exc:
            raise ServiceUnavailableError(
                f"the worker at {worker_url} stopped answering the query ({exc}): "
                "check its log, or stop it to query the warehouse directly"
            ) from exc
    finally:
        conn.close()
    try:
        answer = json.loads(payload)
    except ValueError:
        answer = None
    if response.status == UNAUTHORIZED:
        raise refused_token(settings)
    if response.status == 200 and isinstance(answer, dict) and "columns" in answer:
        return list(answer["columns"]), [list(row) for row in answer.get("rows", [])]
    if isinstance(answer, dict) and answer.get("error"):
        if response.status >= 500:  # e.g. 503 while the worker still opens the warehouse
            raise ServiceUnavailableError(f"the worker at {worker_url}: {answer['error']}")
        raise QueryFailedError(str(answer["error"]))
    raise ServiceUnavailableError(
        f"the worker at {worker_url} answered HTTP {response.status} to POST /query: "
        "is it a journey worker of the same version?"
    )


def _query_directly(dsn: str, sql: str, params: Mapping[str, Any]) -> tuple[Columns, Rows]:
    if dsn.startswith("chdb:///"):
        folder = Path(dsn.removeprefix("chdb://"))
        if not folder.is_dir():
            raise ConfigurationError(
                f"no warehouse at {folder} yet: start the worker once to create it, "
                "or point JOURNEY_CLICKHOUSE_DSN at an existing one"
            )
    try:
        with connect(dsn) as warehouse:
            result = run_readonly(warehouse, sql, params)
            return list(result.columns), jsonable_rows(result)
    except (QueryRejectedError, QueryError) as exc:
        raise QueryFailedError(str(exc)) from exc
    except WarehouseConfigError as exc:
        raise ConfigurationError(str(exc)) from exc
    except WarehouseUnavailableError as exc:
        raise ServiceUnavailableError(str(exc)) from exc
    except WarehouseError as exc:
        raise QueryFailedError(str(exc)) from exc


def run_query(
    settings: Settings, sql: str, params: Mapping[str, Any] | None = None
) -> tuple[Columns, Rows]:
    """Run one read-only statement wherever the warehouse is; values come back as JSON data.

    Embedded chDB (`chdb://`): ask the worker's query API first, since a running worker
    holds the warehouse; when none listens, open the warehouse here. A server DSN is
    queried directly. Raises JourneyError subclasses with one-line messages.
    """
    try:
        check_readonly(sql)  # refuse early, before reaching out to a worker or a warehouse
    except QueryRejectedError as exc:
        raise QueryFailedError(str(exc)) from exc
    bound = dict(params or {})
    dsn = settings.warehouse_dsn
    if dsn.startswith("chdb://"):
        answer = _ask_worker(settings, sql, bound)
        if answer is not None:
            return answer
    return _query_directly(dsn, sql, bound)


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
    columns, rows = run_query(Settings(), statement, _parse_params(param or []))
    if output is OutputFormat.json:
        typer.echo(json.dumps({"columns": columns, "rows": rows}, ensure_ascii=False))
    elif output is OutputFormat.csv:
        writer = csv.writer(sys.stdout, lineterminator="\n")
        writer.writerow(columns)
        writer.writerows([_cell(v) for v in row] for row in rows)
    else:
        _print_table(columns, rows)
