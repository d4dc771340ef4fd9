"""`journey kpis` and `journey friction impact`: CX metrics and the cost of friction."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Annotated, Any

import typer
from rich.text import Text

from journey.cli import app
from journey.cli.analysis import (
    Format,
    ShowSql,
    Since,
    Until,
    _bar,
    _build,
    _check_range,
    _echo_json,
    _percent,
    _records,
    _run,
    _write_csv,
)
from journey.cli.friction import friction_app
from journey.cli.funnel import _duration
from journey.cli.sql import OutputFormat
from journey.errors import ConfigurationError
from journey.output import DataTable, make_console
from journey.settings import Settings
from projections.analysis.funnel import DEFAULT_WINDOW, FunnelSpecError, split_steps
from projections.analysis.impact import (
    DEFAULT_IMPACT_FUNNEL,
    DEFAULT_RETENTION_FROM_DAYS,
    DEFAULT_RETENTION_TO_DAYS,
    DEFAULT_REVENUE_DAYS,
    MAX_OUTCOME_DAYS,
    ImpactSpec,
    impact_funnel,
)
from projections.analysis.kpis import (
    Deadline,
    Dimension,
    KpiSpec,
    kpi_flat,
    kpi_records,
    parse_deadlines,
    parse_grouping,
    rule_deadlines,
)
from projections.friction.config import load_config

NO_CHANNEL = "(none)"
ALL = "(all)"


# ---- kpis ------------------------------------------------------------------------------


def _deadlines(items: Sequence[str]) -> tuple[dict[str, Deadline], Deadline]:
    """--sla when given, else the sla_breach rule's deadlines (JOURNEY_FRICTION_CONFIG)."""
    if not items:
        return rule_deadlines(load_config(Settings().friction_config).sla_breach)
    try:
        return parse_deadlines(items)
    except ValueError as exc:
        raise ConfigurationError(f"--sla: {exc}") from exc


def _groups(text: str) -> tuple[Dimension, ...]:
    try:
        return parse_grouping(text)
    except ValueError as exc:
        raise ConfigurationError(f"--by: {exc}") from exc


def _number(value: float | None, digits: int = 1) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


def _top_frictions(rates: Mapping[str, float] | None, top: int = 3) -> str:
    ranked = sorted((rates or {}).items(), key=lambda item: (-item[1], item[0]))[:top]
    return ", ".join(f"{rule} {rate:.1f}" for rule, rate in ranked)


def _print_kpis(records: list[dict[str, Any]], dimensions: Sequence[Dimension]) -> None:
    table = DataTable(title="CX metrics")
    names = list(dict.fromkeys("channel" if d is Dimension.channel else "period"
                               for d in dimensions))  # fmt: skip
    for name in names or ["scope"]:
        table.add_column(name, no_wrap=True)
    numbers = [
        "customers", "cases", "CSAT", "NPS", "CES", "FCR", "1st resp med", "1st resp p90",
        "resolve med", "resolve p90", "SLA", "escalated", "repeat",
    ]  # fmt: skip
    for name in numbers:
        table.add_column(name, justify="right")
    table.add_column("friction / 1k customers")
    for r in records:
        keys = [str(r[name] or NO_CHANNEL) for name in names] or [ALL]
        table.add_row(
            *keys, str(r["customers"]), str(r["cases"]),
            _percent(r["csat"]) or "-", _number(r["nps"]), _number(r["ces"], 2),
            _percent(r["fcr"]) or "-",
            _duration(r["first_response_median_seconds"]),
            _duration(r["first_response_p90_seconds"]),
            _duration(r["resolution_median_seconds"]), _duration(r["resolution_p90_seconds"]),
            _percent(r["sla_compliance"]) or "-", _percent(r["escalation_rate"]) or "-",
            _percent(r["repeat_contact_rate"]) or "-", _top_frictions(r["friction_per_1000"]),
        )  # fmt: skip
    console = make_console()
    console.print(table)
    if not records:
        console.print("[dim]nothing in the warehouse for this range[/dim]")


@app.command("kpis")
def kpis_command(
    by: Annotated[
        str,
        typer.Option(
            "--by",
            metavar="DIMENSIONS",
            help="channel, day, week, month or total, or a pair such as channel,week",
        ),
    ] = "channel",
    sla: Annotated[
        list[str] | None,
        typer.Option(
            "--sla",
            metavar="CHANNEL=FIRST/RESOLUTION",
            help="service-level deadlines of a channel, e.g. chat=5m/4h; "
            "default=24h/3d for the channels not named (repeatable)",
        ),
    ] = None,
    since: Since = None,
    until: Until = None,
    output: Format = OutputFormat.table,
    show_sql: ShowSql = False,
) -> None:
    """CX metrics: CSAT, NPS, CES, FCR, first-response and resolution times, SLA
    compliance, escalation and repeat-contact rates, friction per 1,000 customers.

    Definitions: docs/METRICS.md. A case counts at the channel and time of its first
    inbound contact; people are counted once however many anonymous ids they used.
    """
    dimensions = _groups(by)
    deadlines, default = _deadlines(sla or [])
    _check_range(since, until)
    sql, params = _build(
        KpiSpec, by=dimensions, since=since, until=until, deadlines=deadlines,
        default_deadline=default,
    )  # fmt: skip
    columns, rows = _run(Settings(), sql, params, show_sql)
    records = kpi_records(columns, rows)
    if output is OutputFormat.json:
        _echo_json({
            "by": [d.value for d in dimensions],
            "since": since.isoformat() if since else None,
            "until": until.isoformat() if until else None,
            "rows": records,
        })  # fmt: skip
    elif output is OutputFormat.csv:
        _write_csv(*kpi_flat(records))
    else:
        _print_kpis(records, dimensions)


# ---- friction impact -------------------------------------------------------------------


def _signed_percent(value: float | None) -> str:
    return "-" if value is None else f"{value * 100:+.1f} pts"


def _money(value: float | None) -> str:
    return "-" if value is None else f"{value:,.2f}"


def _versus(affected: float | None, comparison: float | None) -> str:
    return f"{_percent(affected) or '-'} vs {_percent(comparison) or '-'}"


def _print_impact(impacts: list[dict[str, Any]], funnel: str) -> None:
    table = DataTable(
        title=f"what each friction costs (conversion: {funnel}; affected vs comparable)",
    )
    table.add_column("rule", no_wrap=True)
    for name in ("affected", "matched", "comparison"):
        table.add_column(name, justify="right")
    table.add_column("conversion", justify="right")
    table.add_column("diff", justify="right")
    table.add_column("retention", justify="right")
    table.add_column("diff", justify="right")
    table.add_column("revenue / customer", justify="right")
    table.add_column("lost revenue", justify="right")
    table.add_column("")
    largest = max((i["lost_revenue"] or 0 for i in impacts), default=0)
    for i in impacts:
        lost = i["lost_revenue"]
        table.add_row(
            i["rule"], str(i["affected"]), str(i["matched"]), str(i["comparison"]),
            _versus(i["conversion_affected"], i["conversion_comparison"]),
            _signed_percent(i["conversion_diff"]),
            _versus(i["retention_affected"], i["retention_comparison"]),
            _signed_percent(i["retention_diff"]),
            f"{_money(i['revenue_per_customer_affected'])} vs "
            f"{_money(i['revenue_per_customer_comparison'])}",
            _money(lost),
            Text(_bar(lost or 0, largest), style="red"),
        )  # fmt: skip
    console = make_console()
    console.print(table)
    if not impacts:
        console.print("[dim]no friction in this range[/dim]")
    else:
        console.print(
            "[dim]matched: affected customers in a stratum (first-seen week, service contact) "
            "that has comparison customers; the rates and revenue compare those[/dim]"
        )


@friction_app.command("impact")
def impact_command(
    funnel: Annotated[
        str | None,
        typer.Option(
            "--funnel",
            metavar="STEP,STEP,...",
            help="the funnel whose conversion is compared, steps as in journey funnel "
            f"(default: {','.join(DEFAULT_IMPACT_FUNNEL)})",
        ),
    ] = None,
    step: Annotated[
        list[str] | None,
        typer.Option("--step", metavar="STEP", help="a funnel step (repeatable; or --funnel)"),
    ] = None,
    window: Annotated[
        str, typer.Option("--window", "-w", help="the funnel's conversion window: 12h, 14d, 2w")
    ] = DEFAULT_WINDOW,
    retention_from: Annotated[
        int,
        typer.Option(
            min=0,
            max=MAX_OUTCOME_DAYS,
            metavar="DAYS",
            help="retained: any touchpoint from this many days after the reference date",
        ),
    ] = DEFAULT_RETENTION_FROM_DAYS,
    retention_to: Annotated[
        int,
        typer.Option(
            min=1,
            max=MAX_OUTCOME_DAYS,
            metavar="DAYS",
            help="... up to (not including) this many days after it",
        ),
    ] = DEFAULT_RETENTION_TO_DAYS,
    revenue_days: Annotated[
        int,
        typer.Option(
            min=1,
            max=MAX_OUTCOME_DAYS,
            metavar="DAYS",
            help="revenue counted this many days from the reference date",
        ),
    ] = DEFAULT_REVENUE_DAYS,
    rule: Annotated[
        list[str] | None,
        typer.Option("--rule", metavar="RULE", help="only this friction rule (repeatable)"),
    ] = None,
    since: Since = None,
    until: Until = None,
    output: Format = OutputFormat.table,
    show_sql: ShowSql = False,
) -> None:
    """What each friction costs: conversion, retention and revenue of the customers who
    hit it against comparable customers who did not (definitions: docs/METRICS.md)."""
    if funnel is not None and step:
        raise ConfigurationError("give the funnel as --funnel or as --step options, not both")
    steps = split_steps(funnel) if funnel is not None else list(step or [])
    if funnel is not None and not steps:
        raise ConfigurationError("--funnel needs at least one step")
    try:
        spec = impact_funnel(steps, window)
    except FunnelSpecError as exc:
        raise ConfigurationError(str(exc)) from exc
    _check_range(since, until)
    sql, params = _build(
        ImpactSpec, funnel=spec, since=since, until=until,
        retention_from_days=retention_from, retention_to_days=retention_to,
        revenue_days=revenue_days, rules=list(rule or []),
    )  # fmt: skip
    columns, rows = _run(Settings(), sql, params, show_sql)
    impacts = _records(columns, rows)
    labels = [s.label or s.type for s in spec.steps]
    if output is OutputFormat.json:
        _echo_json({
            "funnel": labels,
            "window_seconds": spec.window_seconds,
            "retention_days": [retention_from, retention_to],
            "revenue_days": revenue_days,
            "since": since.isoformat() if since else None,
            "until": until.isoformat() if until else None,
            "rules": impacts,
        })  # fmt: skip
    elif output is OutputFormat.csv:
        _write_csv(columns, rows)
    else:
        _print_impact(impacts, " > ".join(labels))
