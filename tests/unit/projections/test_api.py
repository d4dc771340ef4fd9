"""The analysis registry of the HTTP API: names and options parsed from query strings."""

from __future__ import annotations

import pytest

from projections.clickhouse.api import ANALYSES, AnalysisRequestError, analysis_sql


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
    from projections.clickhouse.cx import Deadline

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
