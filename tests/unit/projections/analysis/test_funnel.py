"""The funnel question: the step grammar, the spec's checks and the result shaper."""

from __future__ import annotations

import math
from datetime import UTC, datetime
from typing import Any

import pytest

from projections.analysis.funnel import (
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
    parse_breakdown,
    parse_duration,
    parse_exclusion,
    parse_funnel,
    parse_step,
    shape_funnel,
    split_steps,
)


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


def test_split_steps_keeps_filters_whole() -> None:
    assert split_steps('site_visit, purchase[revenue>5,currency="E,UR"],refund') == [
        "site_visit", 'purchase[revenue>5,currency="E,UR"]', "refund",
    ]  # fmt: skip
    assert split_steps(" , ") == []
