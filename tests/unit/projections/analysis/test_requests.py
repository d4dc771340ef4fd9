"""Questions asked as text (the HTTP API): analyses by name, options parsed into specs."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import pytest

from projections.analysis.kpis import Deadline
from projections.analysis.requests import ANALYSES, AnalysisRequestError, analysis_request
from projections.clickhouse.builders import build
from projections.clickhouse.sql import Statement


def analysis_sql(name: str, options: Mapping[str, str],
                 fixed: Mapping[str, Any] | None = None) -> Statement:
    """The statement the HTTP API runs for an analysis request."""
    return build(analysis_request(name, options, fixed))


def test_every_analysis_builds_with_no_options_but_the_customer() -> None:
    for name in ANALYSES:
        options = {"customer": "c-1"} if name == "customer" else {}
        sql, _ = analysis_sql(name, options)
        assert "SELECT" in sql


def test_options_are_parsed_and_bound() -> None:
    sql, params = analysis_sql(
        "paths",
        {
            "end_at": "purchase",
            "top": "5",
            "collapse_repeats": "false",
            "since": "2026-01-01T00:00:00Z",
        },
    )
    assert params["top"] == 5
    assert "purchase" not in sql  # bound, not pasted


@pytest.mark.parametrize(
    ("name", "options", "message"),
    [
        ("nope", {}, "no analysis 'nope'"),
        ("paths", {"bogus": "1"}, "takes no option bogus"),
        ("paths", {"top": "many"}, "paths:"),
        ("paths", {"collapse_repeats": "maybe"}, "not a boolean"),
        ("customer", {}, "customer needs"),
        ("retention", {"period": "fortnight"}, "retention:"),
    ],
)
def test_bad_requests_say_what_is_wrong(name: str, options: dict[str, str], message: str) -> None:
    with pytest.raises(AnalysisRequestError, match=message):
        analysis_sql(name, options)


def test_the_servers_fixed_arguments_reach_the_builder() -> None:
    tight = {"chat": Deadline(60, 600)}
    _, params = analysis_sql("kpis", {"by": "channel"},
                               {"deadlines": tight, "default_deadline": Deadline(120, 1200)})
    assert (params["sla_channels"], params["sla_first_response"], params["sla_resolution"],
            params["sla_default_first_response"]) == (["chat"], [60], [600], 120)
    _, default_params = analysis_sql("kpis", {"by": "channel"})
    assert "chat" in default_params["sla_channels"]
    assert default_params["sla_default_first_response"] == 24 * 3600  # the rule's default
    with pytest.raises(AnalysisRequestError, match="no option deadlines"):
        analysis_sql("kpis", {"deadlines": "chat=1s/1s"})


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
