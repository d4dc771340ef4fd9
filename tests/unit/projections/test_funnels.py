"""The funnel grammar, the SQL it builds and the result shaper, without an engine."""

from __future__ import annotations

import math
import re
from datetime import UTC, datetime
from typing import Any

import pytest

from projections.clickhouse.funnels import (
    CHAIN_MAX_STEPS,
    MAX_STEPS,
    Attribution,
    Breakdown,
    Field,
    FunnelExclusion,
    FunnelOrder,
    FunnelSpec,
    FunnelSpecError,
    FunnelStep,
    StepFilter,
    dropped_query,
    funnel_query,
    parse_breakdown,
    parse_duration,
    parse_exclusion,
    parse_funnel,
    parse_step,
    shape_funnel,
    takes_chain_path,
)
from projections.clickhouse.readonly import check_readonly

HOSTILE = "x'; DROP TABLE touchpoints; --"


# ---- the grammar -----------------------------------------------------------------------


def test_plain_steps() -> None:
    spec = parse_funnel(["site_visit", "add_to_cart", "purchase"])
    assert [s.type for s in spec.steps] == ["site_visit", "add_to_cart", "purchase"]
    assert spec.order is FunnelOrder.ordered
    assert spec.window_seconds == 14 * 86400
    assert spec.exclusions == () and spec.breakdown is None


@pytest.mark.parametrize(
    ("text", "filters"),
    [
        ("purchase[revenue>50]", [StepFilter(Field("revenue", False), ">", "50", 50.0)]),
        ("purchase[ revenue >= 50.5 ]", [StepFilter(Field("revenue", False), ">=", "50.5", 50.5)]),
        ("purchase[revenue<1e3]", [StepFilter(Field("revenue", False), "<", "1e3", 1000.0)]),
        ("purchase[revenue<=-2]", [StepFilter(Field("revenue", False), "<=", "-2", -2.0)]),
        ("purchase[revenue=50]", [StepFilter(Field("revenue", False), "=", "50", 50.0)]),
        ('purchase[order_id="007"]', [StepFilter(Field("order_id", False), "=", "007")]),
        ("support_contact[channel=phone]", [StepFilter(Field("channel", True), "=", "phone")]),
        (
            "support_contact[properties.channel!=phone]",
            [StepFilter(Field("channel", False), "!=", "phone")],
        ),
        ("support_contact[topic~bill]", [StepFilter(Field("topic", False), "~", "bill")]),
        (
            'site_visit[utm_campaign="spring, sale]"]',
            [StepFilter(Field("utm_campaign", False), "=", "spring, sale]")],
        ),
        ('site_visit[url=""]', [StepFilter(Field("url", False), "=", "")]),
        (
            r'site_visit["it\'s \"q\""=a\b]',
            [StepFilter(Field('it\'s "q"', False), "=", "a\\b")],
        ),
        (
            "support_contact[channel=phone, case_id=k-1,source!=ivr]",
            [
                StepFilter(Field("channel", True), "=", "phone"),
                StepFilter(Field("case_id", True), "=", "k-1"),
                StepFilter(Field("source", True), "!=", "ivr"),
            ],
        ),
    ],
)
def test_filters(text: str, filters: list[StepFilter]) -> None:
    step = parse_step(text)
    assert list(step.filters) == filters
    assert step.label == text


def test_prefixes_and_windows() -> None:
    spec = parse_funnel(
        ["site_visit", "?product_view", "add_to_cart<=30m", "!support_contact[channel=phone]",
         "purchase[revenue>0] <= 2d"],
        window="2w",
        order="strict",
    )  # fmt: skip
    assert [(s.type, s.optional, s.within_seconds) for s in spec.steps] == [
        ("site_visit", False, None),
        ("product_view", True, None),
        ("add_to_cart", False, 1800),
        ("purchase", False, 172800),
    ]
    (exclusion,) = spec.exclusions
    assert (exclusion.type, exclusion.after_step, exclusion.before_step) == (
        "support_contact",
        3,
        4,
    )
    assert exclusion.filters == (StepFilter(Field("channel", True), "=", "phone"),)
    assert (spec.window_seconds, spec.order) == (14 * 86400, FunnelOrder.strict)
    assert spec.required == (True, False, True, True)
    assert spec.previous_required(3) == 1 and spec.previous_required(4) == 3


def test_exclusion_option() -> None:
    spec = parse_funnel(
        ["purchase", "review", "survey_response"], exclude=["refund[amount>10]@1-3", "!refund"]
    )
    assert [(e.type, e.after_step, e.before_step) for e in spec.exclusions] == [
        ("refund", 1, 3),
        ("refund", 1, 3),
    ]
    assert parse_exclusion("refund @ 2 - 3", 3).after_step == 2


@pytest.mark.parametrize(
    ("text", "seconds"), [("30s", 30), ("15m", 900), ("2h", 7200), ("14d", 1209600), ("1w", 604800)]
)
def test_durations(text: str, seconds: int) -> None:
    assert parse_duration(text) == seconds


def test_breakdowns() -> None:
    assert parse_breakdown("channel") == Breakdown(Field("channel", True), Attribution.start)
    assert parse_breakdown("utm_campaign", "first-touch") == Breakdown(
        Field("utm_campaign", False), Attribution.first_touch
    )
    assert parse_breakdown("properties.source", "last-touch").field == Field("source", False)
    assert str(Field("source", False)) == "properties.source"
    assert parse_breakdown('"a b"').field == Field("a b", False)


@pytest.mark.parametrize(
    ("steps", "options", "message"),
    [
        (
            [],
            {},
            "a funnel needs at least one step",
        ),
        (
            ["purchse"],
            {},
            "step 1 'purchse': unknown touchpoint type 'purchse' (did you mean purchase?)",
        ),
        (
            ["zzz"],
            {},
            "step 1 'zzz': unknown touchpoint type 'zzz' (see journey schema list)",
        ),
        (
            ["[x=1]"],
            {},
            "step 1 '[x=1]': expected a touchpoint type, such as purchase",
        ),
        (
            ["purchase[revenue]"],
            {},
            "step 1 'purchase[revenue]': expected one of != >= <= = > < ~ after 'revenue'",
        ),
        (
            ["purchase[revenue>]"],
            {},
            "step 1 'purchase[revenue>]': the filter on 'revenue' has no value (write "
            'revenue>"" to compare with an empty or missing value)',
        ),
        (
            ["purchase[revenue>abc]"],
            {},
            "step 1 'purchase[revenue>abc]': > compares numbers, but 'abc' is not a number",
        ),
        (
            ["purchase[revenue>5"],
            {},
            "step 1 'purchase[revenue>5': the filter list is not closed with ]",
        ),
        (
            ["purchase[revenue>5 x]"],
            {},
            "step 1 'purchase[revenue>5 x]': > compares numbers, but '5 x' is not a number",
        ),
        (
            ['purchase[a="b]'],
            {},
            "step 1 'purchase[a=\"b]': a quoted string is not closed with \"",
        ),
        (
            ["purchase[=5]"],
            {},
            "step 1 'purchase[=5]': a filter needs a field name before its operator",
        ),
        (
            ['purchase[a~""]'],
            {},
            "step 1 'purchase[a~\"\"]': ~ on 'a' needs some text to look for",
        ),
        (
            ["purchase extra"],
            {},
            "step 1 'purchase extra': unexpected 'extra'",
        ),
        (
            ["?site_visit", "purchase"],
            {},
            "step 1 cannot be optional: every attempt starts there",
        ),
        (
            ["site_visit<=1h", "purchase"],
            {},
            "step 1 cannot have a per-step window: nothing comes before it",
        ),
        (
            ["site_visit", "purchase<=soon"],
            {},
            "step 2 'purchase<=soon': per-step window 'soon': write a whole number and a "
            "unit (s, m, h, d, w), such as 14d",
        ),
        (
            ["!refund", "purchase"],
            {},
            "exclusion '!refund': it must stand between two steps, not before the first",
        ),
        (
            ["purchase", "!refund"],
            {},
            "exclusion '!refund': it must stand between two steps, not after the last",
        ),
        (
            ["purchase", "!refund<=1h", "review"],
            {},
            "step 2 '!refund<=1h': an exclusion has no per-step window",
        ),
        (
            ["purchase", "review"],
            {"exclude": ["refund@2-5"]},
            "exclusion 'refund@2-5': the steps must satisfy 1 <= A < B <= 2, got 2-5",
        ),
        (
            ["purchase", "review"],
            {"exclude": ["refund@x"]},
            "exclusion 'refund@x': write the steps it separates as @A-B, such as @2-3",
        ),
        (
            ["purchase"],
            {"exclude": ["refund"]},
            "exclusion 'refund': an exclusion needs a funnel of at least two steps",
        ),
        (
            ["purchase", "review"],
            {"window": "0d"},
            "window '0d': must be between 1s and 3660d",
        ),
        (
            ["purchase", "review"],
            {"window": "14 days"},
            "window '14 days': write a whole number and a unit (s, m, h, d, w), such as 14d",
        ),
        (
            ["purchase", "review"],
            {"order": "sideways"},
            "order 'sideways': choose ordered, strict, any",
        ),
        (
            ["purchase", "review"],
            {"order": "any", "exclude": ["refund"]},
            "exclusions need an order between steps: use --order ordered or strict",
        ),
        (
            ["purchase", "review<=1d"],
            {"order": "any"},
            "per-step windows need an order between steps: use --order ordered or strict",
        ),
        (
            ["purchase"],
            {"breakdown": ""},
            "breakdown '': a filter needs a field name before its operator",
        ),
        (
            ["purchase"],
            {"breakdown": "channel", "attribution": "middle"},
            "attribution 'middle': choose start, first-touch, last-touch",
        ),
        (
            ["purchase"],
            {"since": datetime(2024, 5, 2), "until": datetime(2024, 5, 1, tzinfo=UTC)},
            "--since must be before --until",
        ),
        (
            ["page_view"] * (MAX_STEPS + 1),
            {},
            "a funnel takes 1 to 64 steps, got 65",
        ),
    ],
)
def test_invalid_specs(steps: list[str], options: dict[str, Any], message: str) -> None:
    with pytest.raises(FunnelSpecError) as caught:
        parse_funnel(steps, **options)
    assert str(caught.value) == message
    assert "\n" not in str(caught.value)


def test_a_spec_built_directly_is_checked_too() -> None:
    step = FunnelStep("purchase")
    with pytest.raises(FunnelSpecError, match="1 <= A < B <= 1"):
        FunnelSpec((step,), (FunnelExclusion("refund", (), 1, 2),))
    assert len(parse_funnel(["page_view"] * MAX_STEPS).steps) == MAX_STEPS


# ---- the SQL ---------------------------------------------------------------------------

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


# ---- the shaper ------------------------------------------------------------------------


def test_shape_funnel() -> None:
    spec = parse_funnel(["site_visit", "?product_view", "purchase"], breakdown="channel")
    nan = math.nan
    rows = [
        ["", 1, 1, 10, [nan, nan], [0.0, 0.0]],
        ["", 1, 2, 4, [30.0, 50.0], [30.0, 50.0]],
        ["", 1, 3, 5, [60.0, 90.0], [70.0, 120.0]],
        ["web", 0, 1, 4, [None, None], [0.0, 0.0]],  # a JSON hop turns NaN into null
        ["web", 0, 2, 0, [None, None], [None, None]],
        ["web", 0, 3, 1, [60.0, 60.0], [60.0, 60.0]],
        ["email", 0, 1, 6, [nan, nan], [0.0, 0.0]],
        ["", 0, 1, 4, [nan, nan], [0.0, 0.0]],  # people without a channel
    ]
    everybody, email, none, web = shape_funnel(spec, rows)
    assert (everybody.breakdown, email.breakdown, none.breakdown, web.breakdown) == (
        None, "email", "", "web"
    )  # fmt: skip
    visit, view, buy = everybody.steps
    assert (visit.people, visit.conversion_from_previous, visit.conversion_from_first) == (
        10,
        None,
        1.0,
    )
    assert (visit.dropped, visit.median_seconds_from_previous, visit.median_seconds_from_first) == (
        None, None, 0.0
    )  # fmt: skip
    assert (view.label, view.optional, view.conversion_from_previous, view.dropped) == (
        "?product_view", True, 0.4, 6
    )  # fmt: skip
    assert (buy.conversion_from_previous, buy.conversion_from_first, buy.dropped) == (0.5, 0.5, 5)
    assert (buy.median_seconds_from_previous, buy.p90_seconds_from_previous) == (60.0, 90.0)
    assert (buy.median_seconds_from_first, buy.p90_seconds_from_first) == (70.0, 120.0)
    # steps missing from the rows are zeros; a group with no start has no ratios
    assert [s.people for s in email.steps] == [6, 0, 0]
    assert web.steps[1].median_seconds_from_previous is None
    assert shape_funnel(spec, [])[0].steps[2].conversion_from_first is None
