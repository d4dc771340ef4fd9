"""The funnel builder: the SQL a FunnelSpec becomes, without an engine."""

from __future__ import annotations

import re
from datetime import datetime
from typing import Any

import pytest

from projections.analysis.funnel import (
    Attribution,
    FunnelOrder,
    FunnelSpec,
    FunnelSpecError,
    parse_funnel,
)
from projections.clickhouse.builders.funnel import (
    CHAIN_MAX_STEPS,
    dropped_query,
    funnel_query,
    takes_chain_path,
)
from projections.clickhouse.readonly import check_readonly

HOSTILE = "x'; DROP TABLE touchpoints; --"


_PLACEHOLDER = re.compile(r"\{([A-Za-z_][A-Za-z0-9_]*):([^}]+)\}")


def bound_names(sql: str) -> set[str]:
    return {m.group(1) for m in _PLACEHOLDER.finditer(sql)}


def all_specs() -> list[FunnelSpec]:
    steps = ["site_visit[utm_campaign=spring]", "?product_view", "add_to_cart<=1h", "purchase"]
    return [
        parse_funnel(steps),
        parse_funnel(steps, order="strict", breakdown="channel"),
        parse_funnel(["site_visit", "purchase"], order="any", breakdown="utm_campaign"),
        parse_funnel(steps, exclude=["refund@1-4"], breakdown="x", attribution="first-touch"),
        parse_funnel(steps, breakdown="source", attribution="last-touch"),
        parse_funnel(["purchase"], since=datetime(2024, 1, 1), until=datetime(2024, 2, 1)),
    ]


@pytest.mark.parametrize("general", [False, True])
@pytest.mark.parametrize("spec", all_specs())
def test_sql_shape(spec: FunnelSpec, general: bool) -> None:
    sql, params = funnel_query(spec, general=general)
    assert check_readonly(sql)  # passes the read-only gate that journey sql uses
    chain = takes_chain_path(spec) and not general
    path = ("funnel_chains", "funnel_walks") if chain else ("funnel_timelines", "funnel_walks")
    for cte in ("identities", "funnel_events", *path, "funnel_people"):
        assert f"{cte} AS (" in sql
    assert ("arrayFold" in sql) == (not chain)
    assert ("arrayReverseSplit" in sql) == (chain and len(spec.steps) > 1)
    assert "windowFunnel" not in sql
    assert "FROM touchpoints FINAL" in sql
    assert "quantilesExactInclusiveIf(0.5, 0.9)" in sql
    assert ("GROUPING SETS" in sql) == (spec.breakdown is not None)
    assert bound_names(sql) == set(params), "every placeholder bound, every parameter used"
    reads_every_type = spec.order is FunnelOrder.strict or (
        spec.breakdown is not None and spec.breakdown.attribution is not Attribution.start
    )
    assert ("type IN {" in sql) == (not reads_every_type)
    assert ("(r AND " in sql) == (spec.order is FunnelOrder.strict)
    dropped, dropped_params = (
        dropped_query(spec, len(spec.steps), general=general) if len(spec.steps) > 1 else ("", {})
    )
    if dropped:
        assert check_readonly(dropped)
        assert bound_names(dropped) == set(dropped_params)
        assert "ORDER BY person" in dropped and "LIMIT {" in dropped
        assert ("funnel_chains AS (" in dropped) == chain


@pytest.mark.parametrize(
    ("steps", "options", "chain"),
    [
        (["site_visit", "add_to_cart", "purchase"], {}, True),
        (["site_visit[utm_campaign=spring]", "purchase[revenue>50]"], {"window": "1h"}, True),
        (["page_view"] * CHAIN_MAX_STEPS, {}, True),
        (["page_view"] * (CHAIN_MAX_STEPS + 1), {}, False),
        (["purchase"], {"breakdown": "channel"}, True),
        (
            ["site_visit", "purchase"],
            {"breakdown": "utm_campaign", "attribution": "first-touch"},
            True,
        ),
        (["site_visit", "purchase"], {"breakdown": "channel", "attribution": "last-touch"}, False),
        (["site_visit", "purchase"], {"order": "strict"}, False),
        (["site_visit", "purchase"], {"order": "any"}, False),
        (["site_visit", "?product_view", "purchase"], {}, False),
        (["site_visit", "purchase<=1h"], {}, False),
        (["site_visit", "!refund", "purchase"], {}, False),
        (["site_visit", "purchase"], {"exclude": ["refund"]}, False),
    ],
)
def test_which_specs_take_the_chain_path(
    steps: list[str], options: dict[str, Any], chain: bool
) -> None:
    spec = parse_funnel(steps, **options)
    assert takes_chain_path(spec) is chain
    sql, params = funnel_query(spec)
    assert ("funnel_chains AS (" in sql) is chain
    assert bound_names(sql) == set(params)


def test_the_chain_path_grows_by_a_constant_per_step() -> None:
    # each step names the previous step's times once: the SQL (and the engine's query
    # tree) does not double with every step
    sizes = [len(funnel_query(parse_funnel(["page_view"] * n))[0]) for n in (2, 3, 16)]
    per_step = sizes[1] - sizes[0]
    assert sizes[2] - sizes[0] < 14 * per_step * 1.2
    sql, _ = funnel_query(parse_funnel(["page_view"] * CHAIN_MAX_STEPS))
    assert sql.count("arrayReverseSplit") == CHAIN_MAX_STEPS - 1


def test_every_user_value_is_bound() -> None:
    quoted_name = 'it\'s "q" `x`'
    spec = parse_funnel(
        [
            f'site_visit[utm_campaign="{HOSTILE}",url~"{HOSTILE}"]',
            f'purchase["{quoted_name.replace(chr(34), chr(92) + chr(34))}">=12.5]',
        ],
        exclude=[f'refund[reason!="{HOSTILE}"]'],
        breakdown=f'"{HOSTILE}"',
    )
    assert spec.steps[1].filters[0].field.name == quoted_name
    plain = parse_funnel(
        [
            f'site_visit[utm_campaign="{HOSTILE}",url~"{HOSTILE}"]',
            f'purchase["{quoted_name.replace(chr(34), chr(92) + chr(34))}">=12.5]',
        ],
        breakdown=f'"{HOSTILE}"',
        attribution="first-touch",
    )
    assert not takes_chain_path(spec) and takes_chain_path(plain)
    built = [funnel_query(spec), dropped_query(spec, 2, limit=5)]
    built += [funnel_query(plain), dropped_query(plain, 2, limit=5)]
    for sql, params in built:
        assert HOSTILE not in sql and "DROP" not in sql
        assert quoted_name not in sql and "it's" not in sql and "12.5" not in sql
        values = list(params.values())
        assert HOSTILE in values and quoted_name in values and 12.5 in values
        assert "site_visit" in values and "purchase" in values
        check_readonly(sql)
    # the types read (the plain spec reads every type: first-touch looks at all events)
    assert ["purchase", "refund", "site_visit"] in funnel_query(spec)[1].values()


def test_operators_come_from_the_whitelist() -> None:
    sql, _ = funnel_query(parse_funnel(["purchase[a!=1,b>=2,c<=3,d=x,e~y,f>4,g<5]"]))
    assert "NOT ifNull(toFloat64OrNull(JSONExtractString(properties, {" in sql
    for op in (">=", "<=", ">", "<"):
        assert f") {op} {{funnel_" in sql
    assert "position(JSONExtractString(properties, {" in sql


def test_envelope_fields_are_columns_and_properties_are_json() -> None:
    sql, params = funnel_query(
        parse_funnel(["support_contact[channel=phone,properties.channel=x]"], breakdown="case_id")
    )
    assert "channel = {" in sql and "toString(case_id)" in sql
    assert "channel" in params.values()  # the property's name, bound
    assert "e.channel AS channel" in sql and "e.case_id AS case_id" in sql


def test_dropped_query_checks_its_step() -> None:
    spec = parse_funnel(["site_visit", "?product_view", "purchase"])
    for step in (0, 1, 4):
        with pytest.raises(FunnelSpecError, match="--dropped-at takes a step from 2 to 3"):
            dropped_query(spec, step)
    with pytest.raises(FunnelSpecError, match="the limit must be positive"):
        dropped_query(spec, 2, limit=0)
    sql, params = dropped_query(spec, 3, limit=None)
    assert "LIMIT" not in sql
    # the previous required step of 3 is 1 (2 is optional)
    assert re.search(
        r"reached\[\{(funnel_\d+):UInt8\}\] AND NOT reached\[\{(funnel_\d+):UInt8\}\]", sql
    )
    names = re.findall(r"reached\[\{(funnel_\d+):UInt8\}\]", sql)
    assert [params[n] for n in names] == [1, 3]
