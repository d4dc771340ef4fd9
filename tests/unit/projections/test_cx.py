"""The CX builders' options, parameter binding and result shaping, without a warehouse."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from projections.clickhouse.api import AnalysisRequestError, analysis_sql
from projections.clickhouse.cx import (
    DEFAULT_DEADLINE,
    KPI_COLUMNS,
    Deadline,
    Dimension,
    friction_impact_sql,
    impact_funnel,
    kpi_flat,
    kpi_records,
    kpis_sql,
    parse_deadlines,
    parse_grouping,
    split_steps,
)
from projections.clickhouse.funnels import FunnelSpecError
from projections.clickhouse.readonly import check_readonly


@pytest.mark.parametrize(
    ("text", "dimensions"),
    [
        ("channel", (Dimension.channel,)),
        ("week", (Dimension.week,)),
        (" channel , week ", (Dimension.channel, Dimension.week)),
        ("day,channel", (Dimension.day, Dimension.channel)),
        ("total", ()),
        ("", ()),
    ],
)
def test_groupings(text: str, dimensions: tuple[Dimension, ...]) -> None:
    assert parse_grouping(text) == dimensions


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("nonsense", "cannot group by 'nonsense'"),
        ("channel,channel", "given twice"),
        ("day,week", "one period at most"),
        ("channel;DROP TABLE touchpoints", "cannot group by"),
    ],
)
def test_bad_groupings(text: str, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        parse_grouping(text)


def test_dimensions_shape_the_grouping() -> None:
    sql, _ = kpis_sql(by=[Dimension.channel, Dimension.week])
    assert "channel AS channel" in sql and "toMonday(at) AS period" in sql
    assert "GROUP BY channel, period" in sql and "ORDER BY channel, period" in sql
    total, _ = kpis_sql(by=[])
    assert "GROUP BY" not in total.split("FROM kpi_units")[-1]
    check_readonly(sql)
    with pytest.raises(ValueError):
        kpis_sql(by=["week", "month"])


def test_kpi_values_are_bound() -> None:
    since = datetime(2024, 5, 1, tzinfo=UTC)
    sql, params = kpis_sql(
        since=since,
        until=datetime(2024, 6, 1),
        deadlines={"chat": Deadline(300, 3600), "phone": (60, 7200)},
        default_deadline=(100, 200),
    )
    assert "2024" not in sql and "3600" not in sql and "'chat'" not in sql
    assert params["since"] == "2024-05-01T00:00:00+00:00"
    assert params["until"] == "2024-06-01T00:00:00+00:00"
    assert params["sla_channels"] == ["chat", "phone"]
    assert params["sla_first_response"] == [300, 60]
    assert params["sla_resolution"] == [3600, 7200]
    assert (params["sla_default_first_response"], params["sla_default_resolution"]) == (100, 200)


def test_deadlines_must_be_positive() -> None:
    with pytest.raises(ValueError, match="positive"):
        Deadline(0, 10)
    with pytest.raises(ValueError, match="positive"):
        kpis_sql(deadlines={"chat": (10, -1)})


def test_split_steps_keeps_filters_whole() -> None:
    assert split_steps('site_visit, purchase[revenue>5,currency="E,UR"],refund') == [
        "site_visit", 'purchase[revenue>5,currency="E,UR"]', "refund",
    ]  # fmt: skip
    assert split_steps(" , ") == []


def test_impact_binds_funnel_filters_and_rules() -> None:
    hostile = "x'); DROP TABLE touchpoints; --"
    spec = impact_funnel([f'checkout_started[topic="{hostile}"]', "purchase"], window="7d")
    sql, params = friction_impact_sql(
        spec, since=datetime(2024, 5, 1), rules=[hostile], retention_from_days=7,
        retention_to_days=14, revenue_days=30,
    )  # fmt: skip
    assert hostile not in sql and "DROP" not in sql
    assert hostile in params.values() and [hostile] in params.values()
    assert params["impact_rules"] == [hostile]
    assert (params["retention_from_days"], params["retention_to_days"]) == (7, 14)
    assert params["since"] == "2024-05-01T00:00:00+00:00"
    check_readonly(sql)


def test_impact_defaults_and_checks() -> None:
    spec = impact_funnel()
    assert [s.type for s in spec.steps] == ["checkout_started", "purchase"]
    _, params = friction_impact_sql()
    assert params["impact_last_required"] == 2
    _, params = friction_impact_sql(impact_funnel(["site_visit", "purchase", "?refund"]))
    assert params["impact_last_required"] == 2
    with pytest.raises(ValueError, match="end after it starts"):
        friction_impact_sql(retention_from_days=30, retention_to_days=30)
    with pytest.raises(ValueError, match="between 0 and"):
        friction_impact_sql(revenue_days=100_000)
    with pytest.raises(ValueError, match="before --until"):
        friction_impact_sql(since=datetime(2024, 6, 1), until=datetime(2024, 5, 1))
    with pytest.raises(FunnelSpecError, match="unknown touchpoint type"):
        impact_funnel(["checkout", "purchase"])


def test_api_serves_kpis_and_impact() -> None:
    sql, params = analysis_sql("kpis", {"by": "channel,week", "since": "2024-05-01T00:00:00Z"})
    assert "toMonday(at) AS period" in sql and params["since"].startswith("2024-05-01")
    sql, params = analysis_sql(
        "impact",
        {"funnel": "site_visit,purchase[revenue>50]", "window": "7d", "rules": "sla_breach",
         "retention_from_days": "10", "retention_to_days": "40", "revenue_days": "20"},
    )  # fmt: skip
    assert params["impact_rules"] == ["sla_breach"] and params["revenue_days"] == 20
    assert 7 * 86400 * 1000 in params.values()
    assert "50" not in sql
    for name, options, message in [
        ("kpis", {"by": "nonsense"}, "kpis: cannot group by"),
        ("kpis", {"deadlines": "x"}, "takes no option deadlines"),
        ("impact", {"funnel": "site_visit,purchse"}, "did you mean purchase"),
        ("impact", {"revenue_days": "many"}, "impact:"),
        ("impact", {"window": "forever"}, "impact: window"),
    ]:
        with pytest.raises(AnalysisRequestError, match=message):
            analysis_sql(name, options)


def test_kpi_shaping() -> None:
    columns = ["channel", *KPI_COLUMNS]
    row = ["chat", 4, 2, 1, 1.0, 0, None, 0, float("nan"), 1, 1.0, 60.0, 90.0, 600.0, 700.0,
           1, 1.0, 0.5, 0.5, {"sla_breach": 2}, {"sla_breach": 500.0}]  # fmt: skip
    other = ["web", 2, *([0] * 17), {"checkout_abandoned": 1}, {"checkout_abandoned": 500.0}]
    records = kpi_records(columns, [row, other])
    assert records[0]["ces"] is None and records[0]["nps"] is None
    flat_columns, flat_rows = kpi_flat(records)
    assert flat_columns[-4:] == [
        "frictions.checkout_abandoned", "frictions.sla_breach",
        "friction_per_1000.checkout_abandoned", "friction_per_1000.sla_breach",
    ]  # fmt: skip
    assert flat_rows[0][-4:] == [0, 2, None, 500.0]
    assert flat_rows[1][-4:] == [1, 0, 500.0, None]
    assert "frictions" not in flat_columns and flat_columns[0] == "channel"


def test_deadline_texts() -> None:
    named, default = parse_deadlines(["chat=5m/4h", "default=1h/2d", "phone=30m/8h"])
    assert named == {"chat": Deadline(300, 4 * 3600), "phone": Deadline(1800, 8 * 3600)}
    assert default == Deadline(3600, 2 * 86400)
    assert parse_deadlines([]) == ({}, DEFAULT_DEADLINE)
    for bad, message in [
        ("chat", "CHANNEL="),
        ("chat=5m", "CHANNEL="),
        ("=5m/1h", "CHANNEL="),
        ("chat=5x/1h", "chat: first response"),
        ("chat=1m/0s", "resolution"),
    ]:
        with pytest.raises(ValueError, match=message):
            parse_deadlines([bad])
