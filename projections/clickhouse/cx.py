"""CX metrics and the cost of friction: named builders over touchpoints and friction rows.

The definitions are written out in docs/METRICS.md; the builders' docstrings say how the
SQL computes them.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from enum import StrEnum
from typing import Any

from projections.clickhouse.funnels import (
    DEFAULT_WINDOW,
    FunnelSpec,
    FunnelSpecError,
    _with,
    parse_duration,
    parse_funnel,
)
from projections.clickhouse.queries import (
    Params,
    _deduplicated,
    _identities,
    _people,
    _time_range,
    _where,
)
from projections.clickhouse.tables import FRICTION, TOUCHPOINTS
from projections.friction.config import DEFAULT_CHANNEL as FRICTION_DEFAULT_CHANNEL
from projections.friction.config import SlaBreachConfig

# ---- vocabulary ------------------------------------------------------------------------

SUPPORT_CONTACT = "support_contact"
BILLING_INQUIRY = "billing_inquiry"
AGENT_RESPONSE = "agent_response"
ESCALATION = "escalation"
CASE_RESOLVED = "case_resolved"
CASE_REOPENED = "case_reopened"
SURVEY_RESPONSE = "survey_response"
PURCHASE = "purchase"
OUTBOUND = "outbound"
SERVICE_TYPES = (
    SUPPORT_CONTACT, BILLING_INQUIRY, AGENT_RESPONSE, ESCALATION, CASE_RESOLVED, CASE_REOPENED,
)  # fmt: skip

# The default funnel of `friction impact`: a started checkout that ends in a purchase.
DEFAULT_IMPACT_FUNNEL = ("checkout_started", PURCHASE)
DEFAULT_RETENTION_FROM_DAYS = 30
DEFAULT_RETENTION_TO_DAYS = 60
DEFAULT_REVENUE_DAYS = 60
MAX_OUTCOME_DAYS = 3660
PERCENTILES = (0.5, 0.9)


class Dimension(StrEnum):
    channel = "channel"
    day = "day"
    week = "week"
    month = "month"


# What a time dimension puts a unit in: the UTC day, the ISO week's Monday, the month's
# first day. Identifiers from this table are the only ones a grouping pastes into SQL.
_PERIODS = {Dimension.day: "toDate", Dimension.week: "toMonday", Dimension.month: "toStartOfMonth"}
# `--by total` (or nothing): one row over everything.
TOTAL = "total"


def parse_grouping(text: str) -> tuple[Dimension, ...]:
    """`channel`, `week`, `channel,week`, ... or `total`: the dimensions of a KPI row."""
    parts = [part.strip() for part in text.split(",") if part.strip()]
    if parts == [TOTAL] or not parts:
        return ()
    choices = ", ".join([*(d.value for d in Dimension), TOTAL])
    found: list[Dimension] = []
    for part in parts:
        try:
            dimension = Dimension(part)
        except ValueError:
            raise ValueError(f"cannot group by {part!r}: choose from {choices}") from None
        if dimension in found:
            raise ValueError(f"{part!r} is given twice")
        found.append(dimension)
    if sum(d in _PERIODS for d in found) > 1:
        raise ValueError("group by one period at most (day, week or month)")
    return tuple(found)


@dataclass(frozen=True, slots=True)
class Deadline:
    """A channel's service levels: seconds from a case's first contact to the first
    answer, and to its resolution."""

    first_response_seconds: int
    resolution_seconds: int

    def __post_init__(self) -> None:
        for name in ("first_response_seconds", "resolution_seconds"):
            value = getattr(self, name)
            if not 0 < value < 2**32:
                raise ValueError(f"a deadline's {name} must be positive, got {value}")


# Used for a channel that neither the given deadlines nor their default name.
DEFAULT_DEADLINE = Deadline(first_response_seconds=24 * 3600, resolution_seconds=72 * 3600)
DeadlineLike = Deadline | tuple[int, int]


# The channel name that sets the default deadlines in `parse_deadlines`.
DEFAULT_CHANNEL = "default"


def rule_deadlines(sla: SlaBreachConfig) -> tuple[dict[str, Deadline], Deadline]:
    """The sla_breach rule's deadlines (projections/friction/config.py) as KPI deadlines,
    so SLA compliance judges cases by the same clock as the friction detectors."""
    def seconds(channel: str) -> Deadline:
        return Deadline(sla.first_response_ms(channel) // 1000, sla.resolution_ms(channel) // 1000)

    channels = (set(sla.first_response) | set(sla.resolution)) - {FRICTION_DEFAULT_CHANNEL}
    return {c: seconds(c) for c in sorted(channels)}, seconds(FRICTION_DEFAULT_CHANNEL)


def parse_deadlines(items: Sequence[str]) -> tuple[dict[str, Deadline], Deadline]:
    """`CHANNEL=FIRST/RESOLUTION` texts (`chat=5m/4h`, `default=24h/3d`): the deadlines by
    channel, and the default for the channels not named (DEFAULT_DEADLINE if none is)."""
    named: dict[str, Deadline] = {}
    default = DEFAULT_DEADLINE
    for item in items:
        channel, sep, spans = item.partition("=")
        first, slash, resolution = spans.partition("/")
        channel = channel.strip()
        if not sep or not slash or not channel:
            raise ValueError(
                f"write CHANNEL=FIRST_RESPONSE/RESOLUTION such as chat=5m/4h, got {item!r}"
            )
        deadline = Deadline(
            parse_duration(first, f"{channel}: first response"),
            parse_duration(resolution, f"{channel}: resolution"),
        )
        if channel == DEFAULT_CHANNEL:
            default = deadline
        else:
            named[channel] = deadline
    return named, default


def _deadline(value: DeadlineLike) -> Deadline:
    return value if isinstance(value, Deadline) else Deadline(int(value[0]), int(value[1]))


# ---- shared pieces ---------------------------------------------------------------------


def _in_range(since: datetime | None, until: datetime | None, params: Params) -> str:
    """A condition on `occurred_at`: inside the range (true when the range is open)."""
    return " AND ".join(_time_range(since, until, params)) or "1"


def _horizon() -> str:
    """The latest stored touchpoint: a deadline or outcome window ending after it has not
    been seen yet."""
    return f"(SELECT max(occurred_at) FROM {_deduplicated(TOUCHPOINTS)}) AS horizon"


def _inbound_contact(params: Params) -> str:
    """Condition on (type, properties): the customer reached out about a case."""
    params.update(support_contact=SUPPORT_CONTACT, billing_inquiry=BILLING_INQUIRY,
                  outbound=OUTBOUND)  # fmt: skip
    return (
        "(type = {billing_inquiry:String} OR (type = {support_contact:String}"
        " AND JSONExtractString(properties, 'direction') != {outbound:String}))"
    )


def _company_answer(params: Params) -> str:
    """Condition on (type, properties): the company answered a case."""
    params.update(agent_response=AGENT_RESPONSE, support_contact=SUPPORT_CONTACT,
                  outbound=OUTBOUND)  # fmt: skip
    return (
        "(type = {agent_response:String} OR (type = {support_contact:String}"
        " AND JSONExtractString(properties, 'direction') = {outbound:String}))"
    )


def _seconds_to_first(times: str) -> str:
    # seconds from the case's opening to the earliest of `times` (NULL when none)
    return f"if(empty({times}), NULL, dateDiff('millisecond', opened_at, arrayMin({times})) / 1000)"


def _cases(deadlines: Mapping[str, DeadlineLike], default: DeadlineLike, params: Params) -> str:
    """CTE `support_cases`: one row per case that has an inbound contact, over all history.

    opened_at and channel are those of the first inbound contact (ties by event_id);
    answers and resolutions count from opened_at on. sla_met is 1 when the first answer
    and the first resolution both came within the channel's deadlines (inclusive), 0 when
    either came late or a deadline passed before the data's horizon without it, NULL
    while the case can still go either way. Needs `horizon`.
    """
    named = {channel: _deadline(d) for channel, d in sorted(deadlines.items())}
    fallback = _deadline(default)
    params.update(
        service_types=list(SERVICE_TYPES),
        case_resolved=CASE_RESOLVED,
        escalation=ESCALATION,
        sla_channels=list(named),
        sla_first_response=[d.first_response_seconds for d in named.values()],
        sla_resolution=[d.resolution_seconds for d in named.values()],
        sla_default_first_response=fallback.first_response_seconds,
        sla_default_resolution=fallback.resolution_seconds,
    )
    columns = "case_id, occurred_at, event_id, channel, type, properties"
    return f"""support_cases AS (
    SELECT
        case_id,
        argMinIf(channel, (occurred_at, event_id), inbound) AS channel,
        minIf(occurred_at, inbound) AS opened_at,
        countIf(inbound) AS contacts,
        arrayFilter(t -> t >= opened_at, groupArrayIf(occurred_at, answer)) AS answers,
        arrayFilter(t -> t >= opened_at, groupArrayIf(occurred_at, resolution)) AS resolutions,
        {_seconds_to_first("answers")} AS first_response_seconds,
        {_seconds_to_first("resolutions")} AS resolution_seconds,
        toUInt8(countIf(escalated) > 0) AS escalated,
        indexOf({{sla_channels:Array(String)}}, channel) AS sla_at,
        if(sla_at = 0, {{sla_default_first_response:UInt32}},
           {{sla_first_response:Array(UInt32)}}[sla_at]) AS first_response_deadline,
        if(sla_at = 0, {{sla_default_resolution:UInt32}},
           {{sla_resolution:Array(UInt32)}}[sla_at]) AS resolution_deadline,
        multiIf(
            ifNull(first_response_seconds <= first_response_deadline, 0)
                AND ifNull(resolution_seconds <= resolution_deadline, 0), toNullable(toUInt8(1)),
            ifNull(first_response_seconds > first_response_deadline, 0)
                OR ifNull(resolution_seconds > resolution_deadline, 0)
                OR (first_response_seconds IS NULL
                    AND horizon > opened_at + toIntervalSecond(first_response_deadline))
                OR (resolution_seconds IS NULL
                    AND horizon > opened_at + toIntervalSecond(resolution_deadline)),
                toNullable(toUInt8(0)),
            NULL) AS sla_met
    FROM (
        SELECT
            case_id, occurred_at, event_id, channel,
            {_inbound_contact(params)} AS inbound,
            {_company_answer(params)} AS answer,
            type = {{case_resolved:String}} AS resolution,
            type = {{escalation:String}} AS escalated
        FROM (SELECT {columns} FROM {_deduplicated(TOUCHPOINTS)}
              WHERE type IN {{service_types:Array(String)}} AND case_id != '')
    )
    GROUP BY case_id
    HAVING contacts > 0
)"""


# The columns every branch of `kpi_units` gives, in order, with their types.
_UNIT_COLUMNS = (
    ("unit", "String"),
    ("channel", "String"),
    ("at", "DateTime64(3, 'UTC')"),
    ("person", "String"),
    ("survey", "String"),
    ("score", "Nullable(Float64)"),
    ("resolved", "UInt8"),
    ("contacts", "UInt64"),
    ("first_response_seconds", "Nullable(Float64)"),
    ("resolution_seconds", "Nullable(Float64)"),
    ("sla_met", "Nullable(UInt8)"),
    ("escalated", "UInt8"),
    ("rule", "String"),
)
_UNIT_DEFAULTS = {
    "unit": "''", "channel": "''", "person": "''", "survey": "''", "score": "NULL",
    "resolved": "0", "contacts": "0", "first_response_seconds": "NULL",
    "resolution_seconds": "NULL", "sla_met": "NULL", "escalated": "0", "rule": "''",
}  # fmt: skip


def _unit(source: str, values: Mapping[str, str], where: str) -> str:
    """One branch of `kpi_units`: `values` by column (the rest defaults), cast to the
    shared types so that UNION ALL lines up."""
    cells = ", ".join(
        f"CAST({values.get(name, _UNIT_DEFAULTS.get(name, 'NULL'))} AS {type_}) AS {name}"
        for name, type_ in _UNIT_COLUMNS
    )
    return f"SELECT {cells}\n    FROM {source}\n    {where}"


def _kpi_units(since: datetime | None, until: datetime | None, params: Params) -> str:
    """CTE `kpi_units`: every counted thing as one row placed at a channel and a time.

    case: a case at its first inbound contact; survey: an answer at its case when it
    names a known case, else at itself; active: a person's touchpoints of one channel and
    day; friction: a friction row at its own channel and time. Each branch applies the
    range to its own time. Needs `identities` and `support_cases`.
    """
    in_range = _where(_time_range(since, until, params))
    params["survey_type"] = SURVEY_RESPONSE
    cases = _unit(
        "(SELECT *, opened_at AS occurred_at FROM support_cases)",
        {
            "unit": "'case'", "channel": "channel", "at": "occurred_at",
            "resolved": "notEmpty(resolutions)", "contacts": "contacts",
            "first_response_seconds": "first_response_seconds",
            "resolution_seconds": "resolution_seconds", "sla_met": "sla_met",
            "escalated": "escalated",
        },
        in_range,
    )  # fmt: skip
    matched = "ifNull(c.case_id, '') != ''"
    surveys = _unit(
        f"""(
        SELECT
            s.survey AS survey, s.score AS score,
            if({matched}, ifNull(c.channel, ''), s.channel) AS channel,
            if({matched}, assumeNotNull(c.opened_at), s.occurred_at) AS occurred_at
        FROM (
            SELECT
                JSONExtractString(properties, 'survey') AS survey, score, channel, occurred_at,
                if(JSONExtractString(properties, 'case_id') != '',
                   JSONExtractString(properties, 'case_id'), case_id) AS survey_case
            FROM {_deduplicated(TOUCHPOINTS)}
            WHERE type = {{survey_type:String}}
        ) AS s
        LEFT ANY JOIN support_cases AS c ON s.survey_case = c.case_id
    )""",
        {"unit": "'survey'", "channel": "channel", "at": "occurred_at", "survey": "survey",
         "score": "score"},
        in_range,
    )  # fmt: skip
    # The range applies to the touchpoints before they are folded into days.
    activity = _unit(
        f"""(
        SELECT DISTINCT person, channel, toStartOfDay(occurred_at) AS day
        FROM {_people(["channel", "occurred_at"], _time_range(since, until, params))}
    )""",
        {"unit": "'active'", "channel": "channel", "at": "day", "person": "person"},
        "",
    )
    frictions = _unit(
        f"(SELECT rule, channel, occurred_at FROM {_deduplicated(FRICTION)})",
        {"unit": "'friction'", "channel": "channel", "at": "occurred_at", "rule": "rule"},
        in_range,
    )
    branches = "\n    UNION ALL\n    ".join([cases, surveys, activity, frictions])
    return f"kpi_units AS (\n    {branches}\n)"


def _dimension_sql(dimension: Dimension) -> tuple[str, str]:
    """(expression over kpi_units, output name) of a dimension."""
    if dimension is Dimension.channel:
        return "channel", "channel"
    return f"{_PERIODS[dimension]}(at)", "period"


# KPI result columns after the dimensions, in order (see kpis_sql).
KPI_COLUMNS = (
    "customers", "cases", "csat_answers", "csat", "nps_answers", "nps", "ces_answers", "ces",
    "resolved_cases", "fcr", "first_response_median_seconds", "first_response_p90_seconds",
    "resolution_median_seconds", "resolution_p90_seconds", "sla_cases", "sla_compliance",
    "escalation_rate", "repeat_contact_rate", "frictions", "friction_per_1000",
)  # fmt: skip


def _quantiles(column: str, counted: str) -> tuple[str, str]:
    """The median and p90 of a case column (exact, linearly interpolated; NULL for none)."""
    levels = ", ".join(str(p) for p in PERCENTILES)
    values = (
        f"quantilesExactInclusiveIf({levels})(assumeNotNull({column}),"
        f" unit = 'case' AND {column} IS NOT NULL)"
    )
    return f"if({counted} = 0, NULL, {values}[1])", f"if({counted} = 0, NULL, {values}[2])"


def kpis_sql(
    *,
    by: Sequence[Dimension | str] = (Dimension.channel,),
    since: datetime | None = None,
    until: datetime | None = None,
    deadlines: Mapping[str, DeadlineLike] | None = None,
    default_deadline: DeadlineLike = DEFAULT_DEADLINE,
) -> tuple[str, Params]:
    """CX metrics (CSAT, NPS, CES, FCR, first-response and resolution times, SLA
    compliance, escalation and repeat-contact rates, friction per 1,000 customers) per
    channel and/or period.

    Strategy: `support_cases` folds each case's service events (all history, deduplicated
    with FINAL) into one row with arrayFilter/arrayMin over its answer and resolution
    times, and judges its SLA against the channel's deadlines (bound arrays looked up
    with indexOf). `kpi_units` then lines up cases, survey answers, active people
    (stitched as in `queries._people`, folded to distinct person-channel-days) and
    friction rows in one UNION ALL, each at a channel and a time, so that one GROUP BY
    over the dimensions computes every metric with -If aggregates. Without dimensions
    there is one row. Friction counts come from sumMap into a Map by rule.

    Rows: the dimensions (channel, period) in the order of `by`, then KPI_COLUMNS:
    shares in 0..1, NPS in -100..100, seconds as numbers, NULL where nothing was counted.
    """
    dimensions = tuple(Dimension(d) for d in by)
    if len(set(dimensions)) != len(dimensions) or sum(d in _PERIODS for d in dimensions) > 1:
        raise ValueError("group by distinct dimensions, one period at most")
    params: Params = {}
    dims = [_dimension_sql(d) for d in dimensions]
    keys = "".join(f"{expression} AS {name},\n    " for expression, name in dims)
    group = f"GROUP BY {', '.join(name for _, name in dims)}" if dims else ""
    order = f"ORDER BY {', '.join(name for _, name in dims)}" if dims else ""
    answered = "countIf(unit = 'case' AND first_response_seconds IS NOT NULL)"
    resolved = "countIf(unit = 'case' AND resolution_seconds IS NOT NULL)"
    response_median, response_p90 = _quantiles("first_response_seconds", answered)
    resolution_median, resolution_p90 = _quantiles("resolution_seconds", resolved)
    if deadlines is None:  # the friction rules' defaults
        deadlines, default_deadline = rule_deadlines(SlaBreachConfig())
    cases = _cases(deadlines, default_deadline, params)
    sql = f"""
WITH
{_identities(params)},
{_horizon()},
{cases},
{_kpi_units(since, until, params)}
SELECT
    {keys}uniqExactIf(person, unit = 'active') AS customers,
    countIf(unit = 'case') AS cases,
    countIf(unit = 'survey' AND survey = 'csat') AS csat_answers,
    countIf(unit = 'survey' AND survey = 'csat' AND score >= 4) / nullIf(csat_answers, 0) AS csat,
    countIf(unit = 'survey' AND survey = 'nps') AS nps_answers,
    100 * (countIf(unit = 'survey' AND survey = 'nps' AND score >= 9)
           - countIf(unit = 'survey' AND survey = 'nps' AND score <= 6)) / nullIf(nps_answers, 0)
        AS nps,
    countIf(unit = 'survey' AND survey = 'ces') AS ces_answers,
    if(ces_answers = 0, NULL, avgIf(score, unit = 'survey' AND survey = 'ces')) AS ces,
    countIf(unit = 'case' AND resolved = 1) AS resolved_cases,
    countIf(unit = 'case' AND resolved = 1 AND contacts = 1) / nullIf(resolved_cases, 0) AS fcr,
    {response_median} AS first_response_median_seconds,
    {response_p90} AS first_response_p90_seconds,
    {resolution_median} AS resolution_median_seconds,
    {resolution_p90} AS resolution_p90_seconds,
    countIf(unit = 'case' AND sla_met IS NOT NULL) AS sla_cases,
    countIf(unit = 'case' AND sla_met = 1) / nullIf(sla_cases, 0) AS sla_compliance,
    countIf(unit = 'case' AND escalated = 1) / nullIf(cases, 0) AS escalation_rate,
    countIf(unit = 'case' AND contacts > 1) / nullIf(cases, 0) AS repeat_contact_rate,
    CAST(sumMapIf([rule], [toUInt64(1)], unit = 'friction'), 'Map(String, UInt64)') AS frictions,
    if(customers = 0, CAST(map(), 'Map(String, Float64)'),
       CAST(mapApply((r, n) -> (r, 1000 * n / customers), frictions), 'Map(String, Float64)'))
        AS friction_per_1000
FROM kpi_units
{group}
{order}
"""
    return sql, params


def kpi_records(columns: Sequence[str], rows: Sequence[Sequence[Any]]) -> list[dict[str, Any]]:
    """KPI rows as records; NaN (no value) becomes None."""
    return [
        {
            name: None if isinstance(value, float) and math.isnan(value) else value
            for name, value in zip(columns, row, strict=True)
        }
        for row in rows
    ]


def kpi_flat(records: Sequence[Mapping[str, Any]]) -> tuple[list[str], list[list[Any]]]:
    """KPI records as flat columns (CSV): the friction maps become one column per rule,
    `frictions.RULE` and `friction_per_1000.RULE`, over every rule any row has."""
    rules = sorted({rule for r in records for rule in (r.get("frictions") or {})})
    if records:
        plain = [c for c in records[0] if c not in ("frictions", "friction_per_1000")]
    else:
        plain = [c for c in KPI_COLUMNS if c not in ("frictions", "friction_per_1000")]
    columns = [*plain, *(f"frictions.{r}" for r in rules),
               *(f"friction_per_1000.{r}" for r in rules)]  # fmt: skip
    rows = [
        [
            *(r[c] for c in plain),
            *((r.get("frictions") or {}).get(rule, 0) for rule in rules),
            *((r.get("friction_per_1000") or {}).get(rule) for rule in rules),
        ]
        for r in records
    ]
    return columns, rows


# ---- friction impact -------------------------------------------------------------------


def split_steps(text: str) -> list[str]:
    """`a,b[x=1,y=2],c` -> ['a', 'b[x=1,y=2]', 'c']: commas inside [...] or "..." stay."""
    steps: list[str] = []
    current: list[str] = []
    depth, quoted, escaped = 0, False, False
    for ch in text:
        if escaped:
            escaped = False
        elif ch == "\\" and quoted:
            escaped = True
        elif ch == '"':
            quoted = not quoted
        elif not quoted and ch == "[":
            depth += 1
        elif not quoted and ch == "]":
            depth = max(0, depth - 1)
        elif not quoted and depth == 0 and ch == ",":
            steps.append("".join(current).strip())
            current = []
            continue
        current.append(ch)
    steps.append("".join(current).strip())
    return [step for step in steps if step]


def impact_funnel(steps: Sequence[str] | None = None, window: str = DEFAULT_WINDOW) -> FunnelSpec:
    """The funnel whose conversion `friction_impact_sql` compares (journey funnel's syntax);
    no steps: checkout_started then purchase."""
    return parse_funnel(list(steps or DEFAULT_IMPACT_FUNNEL), window=window)


def _check_days(name: str, value: int) -> None:
    if not 0 <= value <= MAX_OUTCOME_DAYS:
        raise ValueError(f"{name} must be between 0 and {MAX_OUTCOME_DAYS} days, got {value}")


# Result columns of friction_impact_sql, in order.
IMPACT_COLUMNS = (
    "rule", "affected", "matched", "comparison",
    "conversion_affected", "conversion_comparison", "conversion_diff",
    "retention_customers", "retention_affected", "retention_comparison", "retention_diff",
    "revenue_customers", "revenue_affected_total", "revenue_per_customer_affected",
    "revenue_per_customer_comparison", "revenue_per_customer_diff", "lost_revenue",
)  # fmt: skip


def friction_impact_sql(
    funnel: FunnelSpec | None = None,
    *,
    since: datetime | None = None,
    until: datetime | None = None,
    retention_from_days: int = DEFAULT_RETENTION_FROM_DAYS,
    retention_to_days: int = DEFAULT_RETENTION_TO_DAYS,
    revenue_days: int = DEFAULT_REVENUE_DAYS,
    rules: Sequence[str] = (),
) -> tuple[str, Params]:
    """Per friction rule: conversion, retention and revenue of the customers who hit it,
    against comparable customers who did not, and the revenue that difference costs.

    Strategy (the definitions are in docs/METRICS.md): the funnel's own CTEs (as in
    `funnels.funnel_query`, over the study period) say who converted. `impact_people`
    folds each stitched person's whole history into one row: first-seen time, first
    touchpoint in the period, an inbound service contact in the period, every touchpoint
    time and every purchase as arrays. A person is affected by a rule when a friction of
    it (its customer_key stitched through `identities`) falls in the period; the first
    such friction is the reference date. Strata are (ISO week first seen, had a service
    contact). The comparison pool of a rule is every person active in the period with no
    friction of that rule ever, in a stratum that has affected people; a comparison
    person's reference date is their first touchpoint in the period plus the stratum's
    median delay (lower median) from affected people's first touchpoint in the period to
    their friction. Outcomes are then read from the arrays around each reference date;
    a retention or revenue window that ends after the data's horizon is not counted.
    Per rule and stratum the groups are summed; the comparison mean is the mean of the
    comparison strata weighted by the affected counts (direct standardisation), over the
    strata that have both groups ("matched").

    Rows, costliest first (lost_revenue, NULL last): IMPACT_COLUMNS.
    """
    spec = impact_funnel() if funnel is None else funnel
    _check_days("retention_from_days", retention_from_days)
    _check_days("retention_to_days", retention_to_days)
    _check_days("revenue_days", revenue_days)
    if retention_from_days >= retention_to_days:
        raise ValueError("the retention window must end after it starts")
    if revenue_days < 1:
        raise ValueError("revenue_days must be at least 1")
    try:
        spec = dataclasses.replace(spec, since=since, until=until)
    except FunnelSpecError as exc:
        raise ValueError(str(exc)) from exc
    params: Params = {}
    with_sql, _, _ = _with(spec, params)
    last_required = max(n for n, step in enumerate(spec.steps, 1) if not step.optional)
    params.update(
        impact_last_required=last_required,
        retention_from_days=retention_from_days,
        retention_to_days=retention_to_days,
        revenue_days=revenue_days,
        purchase_type=PURCHASE,
    )
    in_range = _in_range(since, until, params)
    friction_filter = ""
    if rules:
        params["impact_rules"] = list(rules)
        friction_filter = "WHERE rule IN {impact_rules:Array(String)}"
    stratum = "first_week, had_service"
    people = _people(["occurred_at", "type", "properties", "revenue"], [])
    sql = f"""
{with_sql},
{_horizon()},
impact_people AS (
    SELECT
        person,
        toMonday(min(occurred_at)) AS first_week,
        minIf(occurred_at, {in_range}) AS entered_at,
        countIf({in_range}) > 0 AS active,
        toUInt8(countIf({in_range} AND {_inbound_contact(params)}) > 0) AS had_service,
        groupArray(occurred_at) AS times,
        groupArrayIf((occurred_at, toFloat64(ifNull(revenue, 0))),
                     type = {{purchase_type:String}}) AS purchases
    FROM {people}
    GROUP BY person
),
impact_frictions AS (
    SELECT
        f.rule AS rule,
        if(ifNull(i.linked_customer_id, '') != '', assumeNotNull(i.linked_customer_id),
           f.customer_key) AS person,
        minIf(f.occurred_at, {in_range}) AS hit_at,
        countIf({in_range}) > 0 AS in_period
    FROM (SELECT rule, customer_key, occurred_at FROM {_deduplicated(FRICTION)} {friction_filter})
        AS f
    LEFT ANY JOIN identities AS i ON f.customer_key = i.anonymous_id
    GROUP BY rule, person
),
affected_people AS (
    SELECT f.rule AS rule, p.person AS person, p.first_week AS first_week,
        p.had_service AS had_service, f.hit_at AS reference_at, p.entered_at AS entered_at
    FROM impact_frictions AS f
    INNER JOIN impact_people AS p ON p.person = f.person
    WHERE f.in_period AND p.active
),
stratum_delays AS (
    SELECT rule, {stratum},
        quantileExactLow(0.5)(greatest(toInt64(0),
            dateDiff('millisecond', entered_at, reference_at))) AS delay_ms
    FROM affected_people
    GROUP BY rule, {stratum}
),
comparison_people AS (
    SELECT d.rule AS rule, p.person AS person, p.first_week AS first_week,
        p.had_service AS had_service, addMilliseconds(p.entered_at, d.delay_ms) AS reference_at
    FROM impact_people AS p
    INNER JOIN stratum_delays AS d
        ON p.first_week = d.first_week AND p.had_service = d.had_service
    WHERE p.active AND (d.rule, p.person) NOT IN (SELECT rule, person FROM impact_frictions)
),
impact_outcomes AS (
    SELECT
        g.rule AS rule, g.first_week AS first_week, g.had_service AS had_service,
        g.is_affected AS is_affected,
        toUInt8(ifNull(c.converted, 0)) AS converted,
        toUInt8(g.reference_at + toIntervalDay({{retention_to_days:UInt16}}) <= horizon)
            AS retention_seen,
        toUInt8(arrayExists(
            t -> t >= g.reference_at + toIntervalDay({{retention_from_days:UInt16}})
                AND t < g.reference_at + toIntervalDay({{retention_to_days:UInt16}}),
            p.times)) AS retained,
        toUInt8(g.reference_at + toIntervalDay({{revenue_days:UInt16}}) <= horizon)
            AS revenue_seen,
        arraySum(arrayMap(
            x -> if(x.1 >= g.reference_at
                    AND x.1 < g.reference_at + toIntervalDay({{revenue_days:UInt16}}), x.2, 0),
            p.purchases)) AS revenue
    FROM (
        SELECT rule, person, {stratum}, reference_at, toUInt8(1) AS is_affected
        FROM affected_people
        UNION ALL
        SELECT rule, person, {stratum}, reference_at, toUInt8(0) AS is_affected
        FROM comparison_people
    ) AS g
    INNER JOIN impact_people AS p ON p.person = g.person
    LEFT ANY JOIN (
        SELECT person, reached[{{impact_last_required:UInt8}}] AS converted FROM funnel_people
    ) AS c ON c.person = g.person
),
impact_strata AS (
    SELECT rule, {stratum},
        countIf(is_affected = 1) AS a_n,
        countIf(is_affected = 0) AS c_n,
        countIf(is_affected = 1 AND converted = 1) AS a_conv,
        countIf(is_affected = 0 AND converted = 1) AS c_conv,
        countIf(is_affected = 1 AND retention_seen = 1) AS a_ret_n,
        countIf(is_affected = 0 AND retention_seen = 1) AS c_ret_n,
        countIf(is_affected = 1 AND retention_seen = 1 AND retained = 1) AS a_ret,
        countIf(is_affected = 0 AND retention_seen = 1 AND retained = 1) AS c_ret,
        countIf(is_affected = 1 AND revenue_seen = 1) AS a_rev_n,
        countIf(is_affected = 0 AND revenue_seen = 1) AS c_rev_n,
        sumIf(revenue, is_affected = 1 AND revenue_seen = 1) AS a_rev,
        sumIf(revenue, is_affected = 0 AND revenue_seen = 1) AS c_rev
    FROM impact_outcomes
    GROUP BY rule, {stratum}
)
SELECT
    rule,
    sum(a_n) AS affected,
    sumIf(a_n, c_n > 0) AS matched,
    sumIf(c_n, c_n > 0) AS comparison,
    sumIf(a_conv, c_n > 0) / nullIf(matched, 0) AS conversion_affected,
    sumIf(a_n * c_conv / c_n, c_n > 0) / nullIf(matched, 0) AS conversion_comparison,
    conversion_affected - conversion_comparison AS conversion_diff,
    sumIf(a_ret_n, c_ret_n > 0) AS retention_customers,
    sumIf(a_ret, c_ret_n > 0) / nullIf(retention_customers, 0) AS retention_affected,
    sumIf(a_ret_n * c_ret / c_ret_n, c_ret_n > 0) / nullIf(retention_customers, 0)
        AS retention_comparison,
    retention_affected - retention_comparison AS retention_diff,
    sumIf(a_rev_n, c_rev_n > 0) AS revenue_customers,
    sumIf(a_rev, c_rev_n > 0) AS revenue_affected_total,
    revenue_affected_total / nullIf(revenue_customers, 0) AS revenue_per_customer_affected,
    sumIf(a_rev_n * c_rev / c_rev_n, c_rev_n > 0) / nullIf(revenue_customers, 0)
        AS revenue_per_customer_comparison,
    revenue_per_customer_affected - revenue_per_customer_comparison AS revenue_per_customer_diff,
    (revenue_per_customer_comparison - revenue_per_customer_affected) * revenue_customers
        AS lost_revenue
FROM impact_strata
GROUP BY rule
ORDER BY lost_revenue DESC NULLS LAST, affected DESC, rule
"""
    return sql, params
