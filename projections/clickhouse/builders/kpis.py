"""The KPI builder: CX metrics over cases, surveys, active people and friction, the SQL
that answers a KpiSpec (projections/analysis/kpis.py; definitions in docs/METRICS.md)."""

from __future__ import annotations

from collections.abc import Mapping
from datetime import datetime

from projections.analysis.kpis import PERCENTILES, Deadline, Dimension, KpiSpec
from projections.clickhouse.sql import (
    CASE_RESOLVED,
    ESCALATION,
    SERVICE_TYPES,
    SURVEY_RESPONSE,
    Params,
    Statement,
    company_answer,
    deduplicated,
    horizon,
    identities,
    inbound_contact,
    people,
    time_range,
    where,
)
from projections.clickhouse.tables import FRICTION, TOUCHPOINTS, columns

# What a time dimension puts a unit in: the UTC day, the ISO week's Monday, the month's
# first day. Function names from this table are the only ones a grouping writes into SQL.
_PERIODS = {Dimension.day: "toDate", Dimension.week: "toMonday", Dimension.month: "toStartOfMonth"}


def _seconds_to_first(times: str) -> str:
    # seconds from the case's opening to the earliest of `times` (NULL when none)
    return f"if(empty({times}), NULL, dateDiff('millisecond', opened_at, arrayMin({times})) / 1000)"


def _cases(spec: KpiSpec, params: Params) -> str:
    """CTE `support_cases`: one row per case that has an inbound contact, over all history.

    opened_at and channel are those of the first inbound contact (ties by event_id);
    answers and resolutions count from opened_at on. sla_met is 1 when the first answer
    and the first resolution both came within the channel's deadlines (inclusive), 0 when
    either came late or a deadline passed before the data's horizon without it, NULL
    while the case can still go either way. Needs `horizon`.
    """
    named = spec.named_deadlines
    fallback = spec.default_deadline
    assert isinstance(fallback, Deadline)  # KpiSpec made it one
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
    read = ", ".join(str(c) for c in columns(
        TOUCHPOINTS, "case_id", "occurred_at", "event_id", "channel", "type", "properties"))
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
            {inbound_contact(params)} AS inbound,
            {company_answer(params)} AS answer,
            type = {{case_resolved:String}} AS resolution,
            type = {{escalation:String}} AS escalated
        FROM (SELECT {read} FROM {deduplicated(TOUCHPOINTS)}
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
    in_range = time_range(since, until, params)
    in_range_sql = where(in_range)
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
        in_range_sql,
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
            FROM {deduplicated(TOUCHPOINTS)}
            WHERE type = {{survey_type:String}}
        ) AS s
        LEFT ANY JOIN support_cases AS c ON s.survey_case = c.case_id
    )""",
        {"unit": "'survey'", "channel": "channel", "at": "occurred_at", "survey": "survey",
         "score": "score"},
        in_range_sql,
    )  # fmt: skip
    # The range applies to the touchpoints before they are folded into days.
    activity = _unit(
        f"""(
        SELECT DISTINCT person, channel, toStartOfDay(occurred_at) AS day
        FROM {people(columns(TOUCHPOINTS, "channel", "occurred_at"), in_range)}
    )""",
        {"unit": "'active'", "channel": "channel", "at": "day", "person": "person"},
        "",
    )
    frictions = _unit(
        f"(SELECT rule, channel, occurred_at FROM {deduplicated(FRICTION)})",
        {"unit": "'friction'", "channel": "channel", "at": "occurred_at", "rule": "rule"},
        in_range_sql,
    )
    branches = "\n    UNION ALL\n    ".join([cases, surveys, activity, frictions])
    return f"kpi_units AS (\n    {branches}\n)"


def _dimension_sql(dimension: Dimension) -> tuple[str, str]:
    """(expression over kpi_units, output name) of a dimension."""
    if dimension is Dimension.channel:
        return "channel", "channel"
    return f"{_PERIODS[dimension]}(at)", "period"


def _quantiles(column: str, counted: str) -> tuple[str, str]:
    """The median and p90 of a case column (exact, linearly interpolated; NULL for none)."""
    levels = ", ".join(str(p) for p in PERCENTILES)
    values = (
        f"quantilesExactInclusiveIf({levels})(assumeNotNull({column}),"
        f" unit = 'case' AND {column} IS NOT NULL)"
    )
    return f"if({counted} = 0, NULL, {values}[1])", f"if({counted} = 0, NULL, {values}[2])"


def kpis_query(spec: KpiSpec) -> Statement:
    """CX metrics (CSAT, NPS, CES, FCR, first-response and resolution times, SLA
    compliance, escalation and repeat-contact rates, friction per 1,000 customers) per
    channel and/or period.

    Strategy: `support_cases` folds each case's service events (all history, deduplicated
    with FINAL) into one row with arrayFilter/arrayMin over its answer and resolution
    times, and judges its SLA against the channel's deadlines (bound arrays looked up
    with indexOf). `kpi_units` then lines up cases, survey answers, active people
    (stitched as in `sql.people`, folded to distinct person-channel-days) and
    friction rows in one UNION ALL, each at a channel and a time, so that one GROUP BY
    over the dimensions computes every metric with -If aggregates. Without dimensions
    there is one row. Friction counts come from sumMap into a Map by rule.

    Rows: the dimensions (channel, period) in the order of `by`, then KPI_COLUMNS:
    shares in 0..1, NPS in -100..100, seconds as numbers, NULL where nothing was counted.
    """
    params: Params = {}
    dims = [_dimension_sql(d) for d in spec.dimensions]
    keys = "".join(f"{expression} AS {name},\n    " for expression, name in dims)
    group = f"GROUP BY {', '.join(name for _, name in dims)}" if dims else ""
    order = f"ORDER BY {', '.join(name for _, name in dims)}" if dims else ""
    answered = "countIf(unit = 'case' AND first_response_seconds IS NOT NULL)"
    resolved = "countIf(unit = 'case' AND resolution_seconds IS NOT NULL)"
    response_median, response_p90 = _quantiles("first_response_seconds", answered)
    resolution_median, resolution_p90 = _quantiles("resolution_seconds", resolved)
    cases = _cases(spec, params)
    sql = f"""
WITH
{identities(params)},
{horizon()},
{cases},
{_kpi_units(spec.since, spec.until, params)}
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
    return Statement(sql, params)


