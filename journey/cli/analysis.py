"""`journey paths|flows|retention|customer`: journey analysis on the warehouse."""

from __future__ import annotations

import csv
import difflib
import json
import sys
from collections.abc import Callable, Mapping, Sequence
from datetime import datetime
from enum import StrEnum
from typing import Annotated, Any

import typer
from rich.markup import escape
from rich.style import Style
from rich.text import Text

from journey.cli import app
from journey.cli.schema import required_properties
from journey.cli.sql import OutputFormat
from journey.errors import ConfigurationError, JourneyError
from journey.output import DataTable, make_console
from journey.settings import Settings
from projections.analysis.paths import (
    DEFAULT_CONVERSION,
    MAX_PATH_LENGTH,
    FlowsSpec,
    PathsSpec,
    StageMapSpec,
    sankey,
)
from projections.analysis.retention import MAX_RETENTION_PERIODS, Period, RetentionSpec
from projections.analysis.spec import before
from projections.analysis.timeline import CustomerSpec
from projections.clickhouse.builders import build
from projections.clickhouse.builders.timeline import identity_query
from projections.clickhouse.runner import Answer, Runner
from projections.clickhouse.sql import Params, Statement
from schemas.catalogue import CATALOGUE

ANY_EVENT = "any"
# Flows a table shows unless --top says otherwise; JSON and CSV get them all.
DEFAULT_TOP_FLOWS = 20
BAR_WIDTH = 24
SUMMARY_CHARS = 72


class TimelineFormat(StrEnum):
    table = "table"
    json = "json"


class UnknownCustomerError(JourneyError):
    """No touchpoint belongs to the id given to `journey customer`."""


# ---- options ---------------------------------------------------------------------------


def parse_moment(text: str) -> datetime:
    """An ISO 8601 date or time; without an offset it is UTC (as the query builders read it)."""
    try:
        return datetime.fromisoformat(text.strip())
    except ValueError:
        raise typer.BadParameter(
            f"{text!r} is not a date or time: use e.g. 2024-05-01 or 2024-05-01T09:30:00Z"
        ) from None


Since = Annotated[
    datetime | None,
    typer.Option(
        parser=parse_moment, metavar="TIME", help="from this time on (ISO 8601; UTC if no offset)"
    ),
]
Until = Annotated[
    datetime | None,
    typer.Option(parser=parse_moment, metavar="TIME", help="before this time (ISO 8601)"),
]
ShowSql = Annotated[
    bool, typer.Option("--show-sql", help="print the statement and its bound values to stderr")
]
Format = Annotated[OutputFormat, typer.Option("--format", "-f", help="table, json or csv")]
Collapse = Annotated[
    bool,
    typer.Option(
        "--collapse-repeats/--no-collapse-repeats",
        help="count a run of one type (a, a, b) as one step (a, b)",
    ),
]
Exclude = Annotated[
    list[str] | None,
    typer.Option("--exclude", metavar="TYPE", help="leave this touchpoint type out (repeatable)"),
]


TopFlows = Annotated[
    int | None,
    typer.Option(
        min=1,
        help=f"the largest flows only (default: {DEFAULT_TOP_FLOWS} in a table, all with "
        "--format json or csv)",
    ),
]


def touchpoint_type(option: str, value: str) -> str:
    """The value if it is a catalogue type; otherwise a one-line error naming the option."""
    if value in CATALOGUE:
        return value
    near = difflib.get_close_matches(value, list(CATALOGUE), n=1)
    hint = f"did you mean {near[0]}? " if near else ""
    raise ConfigurationError(
        f"{option}: {value!r} is not a touchpoint type ({hint}see 'journey schema list')"
    )


def _check_range(since: datetime | None, until: datetime | None) -> None:
    if not before(since, until):
        raise ConfigurationError("--since must be earlier than --until")


def _build(spec: Callable[..., object], **options: Any) -> Statement:
    # The specs check their options (for every caller); their message is the error.
    try:
        return build(spec(**options))
    except ValueError as exc:
        raise ConfigurationError(str(exc)) from exc


def _run(settings: Settings, sql: str, params: Params, show_sql: bool) -> Answer:
    if show_sql:
        typer.echo(sql.strip(), err=True)
        typer.echo(f"-- parameters: {json.dumps(params, default=str)}", err=True)
    return Runner.for_settings(settings).run(sql, params)


def _records(columns: Sequence[str], rows: Sequence[Sequence[Any]]) -> list[dict[str, Any]]:
    return [dict(zip(columns, row, strict=True)) for row in rows]


def _echo_json(payload: Any) -> None:
    typer.echo(json.dumps(payload, ensure_ascii=False))


def _write_csv(header: Sequence[str], rows: Sequence[Sequence[Any]]) -> None:
    writer = csv.writer(sys.stdout, lineterminator="\n")
    writer.writerow(header)
    writer.writerows(["" if v is None else v for v in row] for row in rows)


def _percent(share: float | None) -> str:
    return "" if share is None else f"{share * 100:.1f}%"


def _bar(value: float, largest: float) -> str:
    if largest <= 0:
        return ""
    return "█" * max(1, round(BAR_WIDTH * value / largest)) if value > 0 else ""


# ---- paths -----------------------------------------------------------------------------


@app.command("paths")
def paths_command(
    start_at: Annotated[
        str | None,
        typer.Option(metavar="TYPE", help="paths from the first touchpoint of this type on"),
    ] = None,
    end_at: Annotated[
        str | None,
        typer.Option(metavar="TYPE", help="paths leading up to the first touchpoint of this type"),
    ] = None,
    top: Annotated[int, typer.Option(min=1, help="how many paths to show")] = 20,
    max_length: Annotated[
        int, typer.Option(min=1, max=MAX_PATH_LENGTH, help="steps per path at most")
    ] = 6,
    collapse_repeats: Collapse = True,
    exclude: Exclude = None,
    since: Since = None,
    until: Until = None,
    output: Format = OutputFormat.table,
    show_sql: ShowSql = False,
) -> None:
    """The most common sequences of touchpoint types per person."""
    if start_at is not None and end_at is not None:
        raise ConfigurationError("give --start-at or --end-at, not both")
    start_at = start_at and touchpoint_type("--start-at", start_at)
    end_at = end_at and touchpoint_type("--end-at", end_at)
    excluded = [touchpoint_type("--exclude", t) for t in exclude or []]
    _check_range(since, until)
    sql, params = _build(
        PathsSpec, start_at=start_at, end_at=end_at, top=top, max_length=max_length,
        collapse_repeats=collapse_repeats, exclude=excluded, since=since, until=until,
    )  # fmt: skip
    columns, rows = _run(Settings(), sql, params, show_sql)
    paths = _records(columns, rows)
    if output is OutputFormat.json:
        _echo_json({"paths": paths})
    elif output is OutputFormat.csv:
        _write_csv(
            ["path", "steps", "people", "share"],
            [[p["path_text"], len(p["path"]), p["people"], p["share"]] for p in paths],
        )
    else:
        anchor = f"from {start_at}" if start_at else f"to {end_at}" if end_at else "from the start"
        _print_paths(paths, f"top paths {anchor} (at most {max_length} steps)")


def _print_paths(paths: list[dict[str, Any]], title: str) -> None:
    table = DataTable(title=title)
    table.add_column("#", justify="right")
    table.add_column("path")
    table.add_column("people", justify="right")
    table.add_column("share", justify="right")
    table.add_column("")
    largest = max((p["people"] for p in paths), default=0)
    for rank, p in enumerate(paths, 1):
        table.add_row(
            str(rank), p["path_text"], str(p["people"]), _percent(p["share"]),
            Text(_bar(p["people"], largest), style="cyan"),
        )  # fmt: skip
    console = make_console()
    console.print(table)
    if not paths:
        console.print("[dim]no person has such a path[/dim]")


# ---- flows -----------------------------------------------------------------------------


@app.command("flows")
def flows_command(
    conversion: Annotated[
        str, typer.Option(metavar="TYPE", help="the touchpoint type that makes a person converted")
    ] = DEFAULT_CONVERSION,
    top: TopFlows = None,
    collapse_repeats: Collapse = True,
    exclude: Exclude = None,
    since: Since = None,
    until: Until = None,
    output: Format = OutputFormat.table,
    show_sql: ShowSql = False,
) -> None:
    """Touchpoint-to-touchpoint flows (Sankey data), split by converted people."""
    conversion = touchpoint_type("--conversion", conversion)
    excluded = [touchpoint_type("--exclude", t) for t in exclude or []]
    _check_range(since, until)
    # A table reads every flow (a few hundred at most) to say how many it leaves out.
    sql, params = _build(
        FlowsSpec, conversion=conversion,
        top=None if output is OutputFormat.table else top,
        collapse_repeats=collapse_repeats, exclude=excluded, since=since, until=until,
    )  # fmt: skip
    columns, rows = _run(Settings(), sql, params, show_sql)
    _emit_flows(output, columns, rows, conversion, top, "touchpoint flows")


def _emit_flows(output: OutputFormat, columns: list[str], rows: list[list[Any]],
                label: str, top: int | None, what: str) -> None:
    flows = _records(columns, rows)
    if output is not OutputFormat.table:
        # the builders order flows largest first; the stage map has no LIMIT of its own
        flows, rows = (flows[:top], rows[:top]) if top is not None else (flows, rows)
    if output is OutputFormat.json:
        _echo_json(sankey(flows, label))
    elif output is OutputFormat.csv:
        _write_csv(columns, rows)
    else:
        _print_flows(flows[: top or DEFAULT_TOP_FLOWS], label, what, total=len(flows))


def _print_flows(flows: list[dict[str, Any]], conversion: str,
                 what: str = "touchpoint flows", *, total: int) -> None:
    table = DataTable(title=f"{what} (converted: has {conversion})")
    table.add_column("from")
    table.add_column("to")
    table.add_column("transitions", justify="right")
    table.add_column("people", justify="right")
    table.add_column("by converted", justify="right")
    table.add_column("")
    largest = max((f["transitions"] for f in flows), default=0)
    for f in flows:
        # the bar's green part is the converted people's share of the flow
        whole = _bar(f["transitions"], largest)
        green = round(len(whole) * f["converted_transitions"] / f["transitions"])
        bar = Text(whole[:green], style="green")
        bar.append(whole[green:], style="grey50")
        table.add_row(
            f["source"], f["target"], str(f["transitions"]), str(f["people"]),
            _percent(f["converted_transitions"] / f["transitions"]), bar,
        )  # fmt: skip
    console = make_console()
    console.print(table)
    if not flows:
        console.print("[dim]no person has two touchpoints in a row[/dim]")
    elif total > len(flows):
        console.print(f"[dim]the {len(flows)} largest of {total} flows (see --top)[/dim]")


@app.command("map")
def map_command(
    level: Annotated[
        str, typer.Option(metavar="stage|touchpoint", help="journey stages or touchpoint types")
    ] = "stage",
    conversion: Annotated[
        str, typer.Option(metavar="TYPE", help="touchpoint level: what makes a person converted")
    ] = DEFAULT_CONVERSION,
    top: TopFlows = None,
    since: Since = None,
    until: Until = None,
    output: Format = OutputFormat.table,
    show_sql: ShowSql = False,
) -> None:
    """The journey map: stage-to-stage (or touchpoint-to-touchpoint) flows, converted vs not."""
    if level not in ("stage", "touchpoint"):
        raise typer.BadParameter("use stage or touchpoint", param_hint="--level")
    _check_range(since, until)
    if level == "touchpoint":
        conversion = touchpoint_type("--conversion", conversion)
        sql, params = _build(FlowsSpec, conversion=conversion, since=since,
                             until=until)
        label = conversion
    else:
        sql, params = _build(StageMapSpec, since=since, until=until)
        label = "a purchase"
    columns, rows = _run(Settings(), sql, params, show_sql)
    what = "touchpoint flows" if level == "touchpoint" else "stage map"
    _emit_flows(output, columns, rows, label, top, what)


# ---- retention -------------------------------------------------------------------------


@app.command("retention")
def retention_command(
    cohort_event: Annotated[
        str, typer.Option(metavar="TYPE", help="cohorts by each person's first touchpoint of this")
    ] = DEFAULT_CONVERSION,
    return_event: Annotated[
        str, typer.Option(metavar="any|TYPE", help="what counts as coming back")
    ] = ANY_EVENT,
    period: Annotated[Period, typer.Option(help="week (from Monday) or month")] = Period.week,
    periods: Annotated[
        int,
        typer.Option(min=0, max=MAX_RETENTION_PERIODS, help="later periods to show after period 0"),
    ] = 8,
    since: Since = None,
    until: Until = None,
    output: Format = OutputFormat.table,
    show_sql: ShowSql = False,
) -> None:
    """Cohorts by first touchpoint of a type, and the share coming back in each later period."""
    cohort_event = touchpoint_type("--cohort-event", cohort_event)
    returning = (
        None if return_event == ANY_EVENT else touchpoint_type("--return-event", return_event)
    )
    _check_range(since, until)
    sql, params = _build(
        RetentionSpec, cohort_event=cohort_event, return_event=returning, period=period,
        periods=periods, since=since, until=until,
    )  # fmt: skip
    columns, rows = _run(Settings(), sql, params, show_sql)
    cohorts = _records(columns, rows)
    if output is OutputFormat.json:
        _echo_json(
            {
                "cohort_event": cohort_event,
                "return_event": return_event,
                "period": period.value,
                "cohorts": cohorts,
            }
        )
    elif output is OutputFormat.csv:
        numbers = range(periods + 1)
        _write_csv(
            ["cohort", "size", *(f"period_{k}" for k in numbers), *(f"rate_{k}" for k in numbers)],
            [[c["cohort"], c["size"], *c["returned"], *c["retention"]] for c in cohorts],
        )
    else:
        what = "any touchpoint" if returning is None else returning
        _print_retention(
            cohorts, periods, f"{period.value}ly cohorts by first {cohort_event}, back with {what}"
        )


def heat(share: float) -> Style:
    """A background from dark (0%) to bright green (100%), text readable on it."""
    level = max(0.0, min(1.0, share))
    red, green, blue = round(20 + 10 * level), round(40 + 175 * level), round(30 + 60 * level)
    return Style(bgcolor=f"rgb({red},{green},{blue})", color="black" if level > 0.55 else "white")


def _print_retention(cohorts: list[dict[str, Any]], periods: int, title: str) -> None:
    table = DataTable(title=title)
    table.add_column("cohort")
    table.add_column("size", justify="right")
    for k in range(periods + 1):
        table.add_column(str(k), justify="right")
    for c in cohorts:
        cells: list[Text | str] = [str(c["cohort"]), str(c["size"])]
        for share in c["retention"]:
            # None: the period has not started within the data yet
            cells.append(Text("") if share is None else Text(_percent(share), style=heat(share)))
        table.add_row(*cells)
    console = make_console()
    console.print(table)
    if not cohorts:
        console.print("[dim]nobody has the cohort event in this range[/dim]")


# ---- one customer's timeline -----------------------------------------------------------


@app.command("customer")
def customer_command(
    customer: Annotated[str, typer.Argument(metavar="ID", help="a customer id or anonymous id")],
    limit: Annotated[int, typer.Option(min=1, help="the latest entries to show")] = 200,
    output: Annotated[
        TimelineFormat, typer.Option("--format", "-f", help="table or json")
    ] = TimelineFormat.table,
    show_sql: ShowSql = False,
) -> None:
    """One person's cross-channel timeline, anonymous ids stitched to their customer."""
    settings = Settings()
    try:
        who_sql, who_params = identity_query(CustomerSpec(customer, limit))
    except ValueError as exc:
        raise ConfigurationError(str(exc)) from exc
    columns, rows = _run(settings, who_sql, who_params, show_sql)
    who = _records(columns, rows)[0]
    sql, params = _build(CustomerSpec, customer=customer, limit=limit)
    columns, rows = _run(settings, sql, params, show_sql)
    entries = _records(columns, rows)
    if not entries:
        raise UnknownCustomerError(
            f"no touchpoints for {customer!r}: it is neither a customer id nor an anonymous id "
            "in the warehouse"
        )
    total = entries[0]["total"]
    for entry in entries:
        del entry["total"]
        entry["summary"] = summarize_properties(entry["type"], entry["properties"])
    if output is TimelineFormat.json:
        _echo_json({**who, "total": total, "entries": entries})
    else:
        _print_timeline(who, entries, total)


def summarize_properties(type_: str, properties: str | Mapping[str, Any]) -> str:
    """The properties as 'name=value, ...': the type's required ones first, then the rest."""
    if isinstance(properties, str):
        try:
            data = json.loads(properties or "{}")
        except ValueError:
            return properties[:SUMMARY_CHARS]
    else:
        data = properties
    if not isinstance(data, dict):
        return str(data)[:SUMMARY_CHARS]
    kind = CATALOGUE.get(type_)
    first = [p for p in required_properties(kind) if p in data] if kind is not None else []
    parts = []
    for name in [*first, *(k for k in data if k not in first)]:
        value = data[name]
        if isinstance(value, dict):
            shown = "{…}"
        elif isinstance(value, list):
            shown = f"[{len(value)}]"
        elif isinstance(value, bool):
            shown = "true" if value else "false"
        else:
            shown = str(value)
        parts.append(f"{name}={shown}")
    text = ", ".join(parts)
    return text if len(text) <= SUMMARY_CHARS else text[: SUMMARY_CHARS - 1] + "…"


def _when(value: Any) -> str:
    """An ISO timestamp (as run_query returns them) as 'YYYY-MM-DD HH:MM:SS[.mmm]'."""
    try:
        moment = datetime.fromisoformat(str(value))
    except ValueError:
        return str(value)
    text = moment.strftime("%Y-%m-%d %H:%M:%S")
    millis = moment.microsecond // 1000
    return f"{text}.{millis:03d}" if millis else text


def _print_timeline(who: Mapping[str, Any], entries: list[dict[str, Any]], total: int) -> None:
    console = make_console()
    person = escape(str(who["person"]))  # ids are data, never markup
    if who["via_link"]:
        console.print(
            f"{escape(str(who['requested']))} is an anonymous id linked to customer "
            f"[bold]{person}[/bold]: showing {person}'s timeline"
        )
    else:
        console.print(f"timeline of [bold]{person}[/bold]")
    if who["anonymous_ids"]:
        console.print("linked anonymous ids: " + ", ".join(who["anonymous_ids"]), markup=False)
    if who["ignored_claims"]:
        console.print(
            "[yellow]claims ignored[/yellow] (first claimed by another customer): "
            + escape(", ".join(who["ignored_claims"]))
        )
    table = DataTable()
    table.add_column("occurred_at (UTC)", no_wrap=True)
    table.add_column("channel")
    table.add_column("type")
    table.add_column("case")
    table.add_column("properties")
    for entry in entries:
        table.add_row(
            _when(entry["occurred_at"]), entry["channel"], entry["type"], entry["case_id"],
            entry["summary"],
        )  # fmt: skip
    console.print(table)
    shown = len(entries)
    console.print(
        f"[dim]{shown} entr{'y' if shown == 1 else 'ies'}"
        + (f", the latest of {total} (see --limit)" if total > shown else "")
        + "[/dim]"
    )
