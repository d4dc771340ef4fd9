"""`journey funnel`: step funnels with filters, optional steps, exclusions and breakdowns."""

from __future__ import annotations

import csv
import json
import sys
from collections.abc import Sequence
from datetime import datetime
from typing import Annotated, Any

import typer

from journey.cli import app
from journey.cli.sql import OutputFormat, _cell, _print_table
from journey.errors import ConfigurationError
from journey.settings import Settings
from projections.analysis.funnel import (
    DEFAULT_DROPPED_LIMIT,
    DEFAULT_WINDOW,
    Attribution,
    FunnelGroup,
    FunnelOrder,
    FunnelSpec,
    FunnelSpecError,
    funnel_rows,
    parse_funnel,
    shape_funnel,
)
from projections.analysis.spec import parse_moment
from projections.clickhouse.builders.funnel import dropped_query, funnel_query
from projections.clickhouse.runner import Runner
from projections.clickhouse.sql import Params

ALL_PEOPLE = "(all)"
NO_VALUE = "(none)"

# Rich markup would eat the [filters]: `\\[` keeps a bracket literal.
_EPILOG = """\
STEP is TYPE\\[FILTER,...]\\[<=DURATION]: site_visit, 'purchase\\[revenue>50]',
'support_contact\\[channel=phone,topic~bill]', 'add_to_cart<=1h' (at most 1h after the
previous step). Prefix ? for an optional step; put '!TYPE\\[...]' between two steps to
end an attempt when that event happens between them.

FILTER is FIELD OP VALUE, OP one of = != > >= < <= ~ (contains). FIELD is channel,
source, session_id, case_id, customer_id, anonymous_id, or else a property
(properties.NAME forces a property). Quote a value holding , or \\] or spaces:
'site_visit\\[utm_campaign="spring, sale"]'. An unquoted number compares as a number.

Examples:

  journey funnel site_visit add_to_cart purchase --window 7d -b channel
  journey funnel site_visit '?product_view' add_to_cart '!support_contact' purchase
  journey funnel ad_click purchase -b utm_campaign --attribution first-touch
  journey funnel site_visit purchase -x 'refund@1-2' --dropped-at 2 -f csv
"""


def _moment(text: str | None, option: str) -> datetime | None:
    if text is None:
        return None
    try:
        return parse_moment(text)
    except ValueError:
        raise ConfigurationError(
            f"{option} takes an ISO 8601 date or time such as 2024-05-01 or "
            f"2024-05-01T09:00:00Z, got {text!r}"
        ) from None


def _duration(seconds: float | None) -> str:
    """A short human duration for the table: 45.5s, 5m 3s, 2h 5m, 3d 4h."""
    if seconds is None:
        return "-"
    if seconds < 60:
        return f"{seconds:.1f}s" if seconds % 1 else f"{int(seconds)}s"
    whole = round(seconds)
    for unit, size, sub, sub_size in (("d", 86400, "h", 3600), ("h", 3600, "m", 60)):
        if whole >= size:
            rest = (whole % size) // sub_size
            return f"{whole // size}{unit} {rest}{sub}" if rest else f"{whole // size}{unit}"
    minutes, secs = divmod(whole, 60)
    return f"{minutes}m {secs}s" if secs else f"{minutes}m"


def _percent(ratio: float | None) -> str:
    return "-" if ratio is None else f"{ratio * 100:.1f}%"


def _table_rows(
    spec: FunnelSpec, groups: Sequence[FunnelGroup]
) -> tuple[list[str], list[list[Any]]]:
    columns = [
        "step", "people", "of prev", "of first", "dropped",
        "median prev", "p90 prev", "median first", "p90 first",
    ]  # fmt: skip
    if spec.breakdown is not None:
        columns.insert(0, str(spec.breakdown.field))
    rows: list[list[Any]] = []
    for group in groups:
        for r in group.steps:
            row: list[Any] = [
                f"{r.step}. {r.label}",
                r.people,
                _percent(r.conversion_from_previous),
                _percent(r.conversion_from_first),
                "-" if r.dropped is None else r.dropped,
                _duration(r.median_seconds_from_previous),
                _duration(r.p90_seconds_from_previous),
                _duration(r.median_seconds_from_first),
                _duration(r.p90_seconds_from_first),
            ]
            if spec.breakdown is not None:
                name = ALL_PEOPLE if group.breakdown is None else group.breakdown or NO_VALUE
                row.insert(0, name)
            rows.append(row)
    return columns, rows


def _print_funnel_table(columns: list[str], rows: list[list[Any]], text_columns: int) -> None:
    # Unlike `journey sql`'s table: labels never fold, numbers line up on the right.
    from journey.output import DataTable, make_console

    table = DataTable()
    for n, name in enumerate(columns):
        text = n < text_columns
        # a number that does not fit wraps: an ellipsis would show a wrong number
        table.add_column(name, no_wrap=text, overflow="fold", justify="left" if text else "right")
    for row in rows:
        table.add_row(*(_cell(v) for v in row))
    make_console().print(table)


def _emit(output: OutputFormat, columns: list[str], rows: list[list[Any]]) -> None:
    if output is OutputFormat.json:
        typer.echo(json.dumps({"columns": columns, "rows": rows}, ensure_ascii=False))
    elif output is OutputFormat.csv:
        writer = csv.writer(sys.stdout, lineterminator="\n")
        writer.writerow(columns)
        writer.writerows([_cell(v) for v in row] for row in rows)
    else:
        _print_table(columns, rows)


def _show(sql: str, params: Params) -> None:
    # the statement as it runs, then its bound values in a comment: still valid SQL
    typer.echo(sql.strip())
    typer.echo(f"-- parameters: {json.dumps(params, ensure_ascii=False, default=str)}")


@app.command("funnel", epilog=_EPILOG)
def funnel_command(
    steps: Annotated[
        list[str],
        typer.Argument(
            help="the steps in order (see below); ?type optional, !type excluded",
            metavar="STEP...",
        ),
    ],
    window: Annotated[
        str, typer.Option("--window", "-w", help="conversion window from step 1: 30m, 12h, 14d, 2w")
    ] = DEFAULT_WINDOW,
    order: Annotated[
        FunnelOrder,
        typer.Option(
            "--order",
            help="ordered: other events may come between steps; strict: none may; "
            "any: the steps in any order",
        ),
    ] = FunnelOrder.ordered,
    exclude: Annotated[
        list[str] | None,
        typer.Option(
            "--exclude",
            "-x",
            help="TYPE[FILTER,...]@A-B: that event between steps A and B ends the attempt "
            "(no @A-B: anywhere between the first and last step)",
        ),
    ] = None,
    breakdown: Annotated[
        str | None,
        typer.Option(
            "--breakdown", "-b", help="an envelope field (channel, source, ...) or property"
        ),
    ] = None,
    attribution: Annotated[
        Attribution,
        typer.Option(
            "--attribution",
            help="whose breakdown value: start (the step-1 event), first-touch (the person's "
            "first non-empty value), last-touch (the last one up to the furthest step)",
        ),
    ] = Attribution.start,
    since: Annotated[
        str | None,
        typer.Option("--since", help="only events at or after this time (UTC if no offset)"),
    ] = None,
    until: Annotated[
        str | None, typer.Option("--until", help="only events before this time")
    ] = None,
    dropped_at: Annotated[
        int | None,
        typer.Option(
            "--dropped-at",
            help="list the people who reached the step before N but not step N",
            metavar="N",
        ),
    ] = None,
    limit: Annotated[
        int, typer.Option("--limit", help="most people --dropped-at lists (0: all)")
    ] = DEFAULT_DROPPED_LIMIT,
    show_sql: Annotated[
        bool, typer.Option("--show-sql", help="print the statement and its parameters; run nothing")
    ] = False,
    output: Annotated[
        OutputFormat, typer.Option("--format", "-f", help="table, json or csv")
    ] = OutputFormat.table,
) -> None:
    """People passing each step of a funnel: conversion, drop-off, time taken.

    A person (anonymous ids joined to their customer by identify) counts once,
    with the attempt that gets furthest within the window.
    """
    try:
        spec = parse_funnel(
            steps,
            exclude=exclude or (),
            order=order,
            window=window,
            breakdown=breakdown,
            attribution=attribution,
            since=_moment(since, "--since"),
            until=_moment(until, "--until"),
        )
        if dropped_at is not None:
            sql, params = dropped_query(spec, dropped_at, limit=limit or None)
        else:
            sql, params = funnel_query(spec)
    except FunnelSpecError as exc:
        raise ConfigurationError(str(exc)) from exc
    if show_sql:
        _show(sql, params)
        return
    # JourneyError propagates: the entry point prints it as one line and exits 1.
    columns, rows = Runner.for_settings(Settings()).run(sql, params)
    if dropped_at is not None:
        if spec.breakdown is None:
            columns, rows = columns[:1] + columns[2:], [row[:1] + row[2:] for row in rows]
        _emit(output, columns, rows)
        return
    groups = shape_funnel(spec, rows)
    if output is OutputFormat.table:
        columns, rows = _table_rows(spec, groups)
        _print_funnel_table(columns, rows, text_columns=2 if spec.breakdown is not None else 1)
    else:
        _emit(output, *funnel_rows(spec, groups))
