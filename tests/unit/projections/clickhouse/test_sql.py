"""The SQL fragments (time range, identity stitching, people) and the table registry's
columns, through the builders that use them, without an engine."""

from __future__ import annotations

import re
from datetime import UTC, datetime

import pytest

from projections.analysis.funnel import (
    Field,
    FunnelSpec,
    FunnelSpecError,
    FunnelStep,
    StepFilter,
    parse_funnel,
)
from projections.analysis.trends import TouchpointCountsSpec
from projections.clickhouse.builders.funnel import funnel_query
from projections.clickhouse.builders.trends import touchpoint_counts_query
from projections.clickhouse.readonly import check_readonly
from projections.clickhouse.sql import Statement, people
from projections.clickhouse.tables import TOUCHPOINTS, Column, UnknownColumnError, column

HOSTILE = ["it's", "x'; DROP TABLE touchpoints; --", "{step_0:String}", "\\'", "$$"]


def funnel(types: list[str], window_seconds: int, **options: object) -> Statement:
    """The one funnel engine over plain step types, as the demo asks it."""
    steps = tuple(FunnelStep(t) for t in types)
    return funnel_query(FunnelSpec(steps, window_seconds=window_seconds, **options))  # type: ignore[arg-type]


def counts(**options: object) -> Statement:
    return touchpoint_counts_query(TouchpointCountsSpec(**options))  # type: ignore[arg-type]


def test_funnel_binds_step_types_and_window() -> None:
    sql, params = funnel(HOSTILE, window_seconds=3600)
    for step in HOSTILE[:2]:
        assert step not in sql
    assert "DROP" not in sql
    assert set(HOSTILE) <= {v for v in params.values() if isinstance(v, str)}
    assert 3_600_000 in params.values()
    assert f"FROM {TOUCHPOINTS} FINAL" in sql
    # the statement is read-only by the gate's own standard
    check_readonly(sql)


def test_funnel_checks_its_arguments() -> None:
    with pytest.raises(ValueError):
        FunnelSpec(())
    with pytest.raises(ValueError):
        FunnelSpec((FunnelStep("purchase"),), window_seconds=0)
    with pytest.raises(FunnelSpecError):
        parse_funnel([])


def test_time_range_is_bound() -> None:
    since = datetime(2024, 1, 1, tzinfo=UTC)
    until = datetime(2024, 2, 1)  # naive reads as UTC
    sql, params = counts(since=since, until=until)
    assert params == {
        "since": "2024-01-01T00:00:00+00:00",
        "until": "2024-02-01T00:00:00+00:00",
        "identify_type": "identify",
    }
    assert "{since:String}" in sql and "{until:String}" in sql
    assert "2024" not in sql
    sql, params = funnel(["a", "b"], 60, since=since)
    assert "since" in params and "until" not in params
    assert re.search(r"occurred_at >= \S+\(\{since:String\}", sql)


def test_counts_without_range_filter_no_time() -> None:
    sql, params = counts()
    # only the identity link's type is bound; no time bound is read
    assert params == {"identify_type": "identify"}
    assert "occurred_at >=" not in sql and "occurred_at <" not in sql
    assert f"FROM {TOUCHPOINTS} FINAL" in sql


def _identities_cte(sql: str) -> str:
    start = sql.index("identities AS (")
    return sql[start : sql.index("\n)", start)]


@pytest.mark.parametrize(
    "built",
    [
        funnel(["ad_impression", "purchase"], 60),
        funnel(["ad_impression", "purchase"], 60, since=datetime(2024, 1, 1, tzinfo=UTC)),
        counts(),
        counts(until=datetime(2024, 1, 1, tzinfo=UTC)),
    ],
)
def test_queries_stitch_anonymous_ids_to_their_first_identify(
    built: tuple[str, dict[str, object]],
) -> None:
    sql, params = built
    assert params["identify_type"] == "identify"
    cte = _identities_cte(sql)
    assert "type = {identify_type:String}" in cte
    assert f"FROM {TOUCHPOINTS} FINAL" in cte
    # first link wins: the customer of the earliest identify, ties by event_id
    assert "argMin(customer_id, (occurred_at, event_id))" in cte
    assert "GROUP BY anonymous_id" in cte
    # an identify before the queried range still links, so the link ignores the range
    assert "since" not in cte and "until" not in cte
    assert "LEFT ANY JOIN identities AS i ON e.anonymous_id = i.anonymous_id" in sql
    # person: own customer_id, else the linked customer, else the anonymous id
    person = sql[sql.index("multiIf(") :]
    order = [person.index(c) for c in ("e.customer_id", "i.linked_customer_id", "e.anonymous_id")]
    assert order == sorted(order)
    assert "identify" not in sql.replace("identify_type", "").replace("identities", "")
    check_readonly(sql)


def test_funnel_and_counts_group_by_person() -> None:
    sql, _ = funnel(["site_visit", "purchase"], 60)
    assert "GROUP BY person" in sql
    assert "customer_key," not in sql.split("funnel_events AS")[1]
    sql, _ = counts()
    assert "uniqExact(person) AS customers" in sql
    assert "uniqExact(customer_key)" not in sql


# ---- identifiers come from the registry only -------------------------------------------

INJECTED = "channel) OR 1=1 --"


def test_a_field_from_outside_never_reaches_sql_text() -> None:
    # an envelope field is a column: a name that is none is refused where it is made
    with pytest.raises(FunnelSpecError, match="not an envelope field"):
        Field(INJECTED, envelope=True)
    # any other name is a property: read with JSONExtractString, its name bound
    spec = parse_funnel(["purchase"], breakdown=f'"{INJECTED}"')
    sql, params = funnel_query(spec)
    assert INJECTED not in sql and INJECTED in params.values()
    # a Field forced past its own check still stops at the table registry
    field = Field("channel", envelope=True)
    object.__setattr__(field, "name", INJECTED)
    forced = FunnelSpec((FunnelStep("purchase", (StepFilter(field, "=", "x"),)),))
    with pytest.raises(UnknownColumnError, match="no column"):
        funnel_query(forced)


def test_columns_come_only_from_the_registry() -> None:
    with pytest.raises(TypeError, match="table registry"):
        Column(TOUCHPOINTS, "channel")
    with pytest.raises(UnknownColumnError):
        column(TOUCHPOINTS, INJECTED)
    with pytest.raises(UnknownColumnError):
        column("touchpoints; DROP TABLE x", "channel")
    assert str(column(TOUCHPOINTS, "channel")) == "channel"
    assert column(TOUCHPOINTS, "revenue") == column(TOUCHPOINTS, "revenue")
    # the people fragment takes Columns, not names
    with pytest.raises(TypeError):
        people(["channel"], [])  # type: ignore[list-item]
    assert "e.channel AS channel" in people([column(TOUCHPOINTS, "channel")], [])
