"""The KPI and friction-impact builders: the SQL their specs become, values bound."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import pytest

from projections.analysis.funnel import FunnelSpec, FunnelSpecError
from projections.analysis.impact import ImpactSpec, impact_funnel
from projections.analysis.kpis import Deadline, Dimension, KpiSpec
from projections.clickhouse.builders.impact import impact_query
from projections.clickhouse.builders.kpis import kpis_query
from projections.clickhouse.readonly import check_readonly
from projections.clickhouse.sql import Statement


def kpis(**options: Any) -> Statement:
    return kpis_query(KpiSpec(**options))


def impact(funnel: FunnelSpec | None = None, **options: Any) -> Statement:
    return impact_query(ImpactSpec(funnel, **options))


def test_dimensions_shape_the_grouping() -> None:
    sql, _ = kpis(by=[Dimension.channel, Dimension.week])
    assert "channel AS channel" in sql and "toMonday(at) AS period" in sql
    assert "GROUP BY channel, period" in sql and "ORDER BY channel, period" in sql
    total, _ = kpis(by=[])
    assert "GROUP BY" not in total.split("FROM kpi_units")[-1]
    check_readonly(sql)
    with pytest.raises(ValueError):
        kpis(by=["week", "month"])


def test_kpi_values_are_bound() -> None:
    since = datetime(2024, 5, 1, tzinfo=UTC)
    sql, params = kpis(
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


def test_impact_binds_funnel_filters_and_rules() -> None:
    hostile = "x'); DROP TABLE touchpoints; --"
    spec = impact_funnel([f'checkout_started[topic="{hostile}"]', "purchase"], window="7d")
    sql, params = impact(
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
    _, params = impact()
    assert params["impact_last_required"] == 2
    _, params = impact(impact_funnel(["site_visit", "purchase", "?refund"]))
    assert params["impact_last_required"] == 2
    with pytest.raises(ValueError, match="end after it starts"):
        impact(retention_from_days=30, retention_to_days=30)
    with pytest.raises(ValueError, match="between 0 and"):
        impact(revenue_days=100_000)
    with pytest.raises(ValueError, match="before --until"):
        impact(since=datetime(2024, 6, 1), until=datetime(2024, 5, 1))
    with pytest.raises(FunnelSpecError, match="unknown touchpoint type"):
        impact_funnel(["checkout", "purchase"])


def test_the_kpis_bind_the_friction_rules_definition_of_a_response() -> None:
    # one rule, one place: the SQL binds the sets the friction rules read
    from projections.friction.signal import CONTACT_TYPES, FIRST_RESPONSE_TYPES, OUTBOUND

    sql, params = kpis()
    assert params["first_response_types"] == sorted(FIRST_RESPONSE_TYPES)
    assert "case_resolved" in params["first_response_types"]
    assert params["contact_types"] == sorted(CONTACT_TYPES)
    assert params["outbound"] == OUTBOUND
    assert "'case_resolved'" not in sql and "'agent_response'" not in sql
    _, params = impact()
    assert params["contact_types"] == sorted(CONTACT_TYPES)
