"""The friction-impact builder: what each friction costs, the SQL that answers an
ImpactSpec (projections/analysis/impact.py; definitions in docs/METRICS.md)."""

from __future__ import annotations

from projections.analysis.impact import ImpactSpec
from projections.clickhouse.builders.funnel import funnel_ctes
from projections.clickhouse.sql import (
    PURCHASE,
    Params,
    Statement,
    deduplicated,
    horizon,
    in_range,
    inbound_contact,
    people,
)
from projections.clickhouse.tables import FRICTION, TOUCHPOINTS, columns


def impact_query(spec: ImpactSpec) -> Statement:
    """Per friction rule: conversion, retention and revenue of the customers who hit it,
    against comparable customers who did not, and the revenue that difference costs.

    Strategy (the definitions are in docs/METRICS.md): the funnel's own CTEs (as in
    `funnel.funnel_query`, over the study period) say who converted. `impact_people`
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
    funnel = spec.study_funnel
    params: Params = {}
    with_sql = funnel_ctes(funnel, params)
    last_required = max(n for n, step in enumerate(funnel.steps, 1) if not step.optional)
    params.update(
        impact_last_required=last_required,
        retention_from_days=spec.retention_from_days,
        retention_to_days=spec.retention_to_days,
        revenue_days=spec.revenue_days,
        purchase_type=PURCHASE,
    )
    window = in_range(spec.since, spec.until, params)
    friction_filter = ""
    if spec.rules:
        params["impact_rules"] = list(spec.rules)
        friction_filter = "WHERE rule IN {impact_rules:Array(String)}"
    stratum = "first_week, had_service"
    read = people(columns(TOUCHPOINTS, "occurred_at", "type", "properties", "revenue"), [])
    sql = f"""
{with_sql},
{horizon()},
impact_people AS (
    SELECT
        person,
        toMonday(min(occurred_at)) AS first_week,
        minIf(occurred_at, {window}) AS entered_at,
        countIf({window}) > 0 AS active,
        toUInt8(countIf({window} AND {inbound_contact(params)}) > 0) AS had_service,
        groupArray(occurred_at) AS times,
        groupArrayIf((occurred_at, toFloat64(ifNull(revenue, 0))),
                     type = {{purchase_type:String}}) AS purchases
    FROM {read}
    GROUP BY person
),
impact_frictions AS (
    SELECT
        f.rule AS rule,
        if(ifNull(i.linked_customer_id, '') != '', assumeNotNull(i.linked_customer_id),
           f.customer_key) AS person,
        minIf(f.occurred_at, {window}) AS hit_at,
        countIf({window}) > 0 AS in_period
    FROM (SELECT rule, customer_key, occurred_at FROM {deduplicated(FRICTION)} {friction_filter})
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
    return Statement(sql, params)
