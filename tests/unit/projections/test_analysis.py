"""The journey analysis builders and their CLI checks, without an engine."""

from __future__ import annotations

import json
import re
from datetime import UTC, datetime

import pytest

from journey.cli import main
from journey.cli.analysis import sankey, summarize_properties
from projections.clickhouse import analysis
from projections.clickhouse.analysis import (
    Period,
    customer_identity_sql,
    customer_timeline_sql,
    paths_sql,
    retention_sql,
    touchpoint_flows_sql,
)
from projections.clickhouse.readonly import check_readonly
from projections.clickhouse.tables import TOUCHPOINTS

HOSTILE = "x'; DROP TABLE touchpoints; --"
Built = tuple[str, dict[str, object]]


def assert_bound(built: Built, name: str, value: object) -> str:
    """The value travels as parameter `name`, never as SQL text; returns the SQL."""
    sql, params = built
    assert params[name] == value
    assert HOSTILE not in sql and "DROP" not in sql
    assert re.search(rf"\{{{name}:[A-Za-z0-9()]+\}}", sql), name
    check_readonly(sql)  # the analysis statements pass the analysts' read-only gate
    return sql


# ---- binding ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("built", "name", "value"),
    [
        (paths_sql(start_at=HOSTILE), "anchor", HOSTILE),
        (paths_sql(end_at=HOSTILE), "anchor", HOSTILE),
        (paths_sql(exclude=[HOSTILE, "identify"]), "exclude", [HOSTILE, "identify"]),
        (touchpoint_flows_sql(conversion=HOSTILE), "conversion", HOSTILE),
        (touchpoint_flows_sql(exclude=[HOSTILE]), "exclude", [HOSTILE]),
        (retention_sql(cohort_event=HOSTILE), "cohort_event", HOSTILE),
        (retention_sql(return_event=HOSTILE), "return_event", HOSTILE),
        (customer_timeline_sql(HOSTILE), "customer", HOSTILE),
        (customer_identity_sql(HOSTILE), "customer", HOSTILE),
    ],
)
def test_user_values_are_bound(built: Built, name: str, value: object) -> None:
    assert_bound(built, name, value)


def test_numbers_and_times_are_bound() -> None:
    since = datetime(2024, 1, 1, tzinfo=UTC)
    until = datetime(2024, 3, 1)  # naive reads as UTC
    sql = assert_bound(paths_sql(top=7, max_length=3, since=since, until=until), "max_length", 3)
    _, params = paths_sql(top=7, max_length=3, since=since, until=until)
    assert params["top"] == 7
    assert params["since"] == "2024-01-01T00:00:00+00:00"
    assert params["until"] == "2024-03-01T00:00:00+00:00"
    assert "LIMIT {top:UInt32}" in sql and "2024" not in sql
    sql = assert_bound(retention_sql(periods=5), "periods", 5)
    assert "{periods:UInt16}" in sql
    assert_bound(touchpoint_flows_sql(top=3), "top", 3)
    assert_bound(customer_timeline_sql("c-1", limit=9), "limit", 9)


# ---- shapes ----------------------------------------------------------------------------


def test_every_builder_reads_deduplicated_touchpoints_and_stitches_people() -> None:
    for sql, params in (
        paths_sql(),
        touchpoint_flows_sql(),
        retention_sql(),
        customer_timeline_sql("c-1"),
        customer_identity_sql("c-1"),
    ):
        assert f"FROM {TOUCHPOINTS} FINAL" in sql
        assert f"FROM {TOUCHPOINTS} " not in sql.replace(f"FROM {TOUCHPOINTS} FINAL", "")
        assert params["identify_type"] == "identify"
        assert "argMin(customer_id, (occurred_at, event_id))" in sql


def test_paths_shape() -> None:
    sql, params = paths_sql()
    # one time-ordered array per person, ties by event_id
    assert "arraySort(groupArray((occurred_at, event_id, type)))" in sql
    assert "GROUP BY person" in sql
    assert "arrayCompact(types)" in sql
    assert "GROUP BY path" in sql and "ORDER BY people DESC, path" in sql
    assert "count() / sum(count()) OVER () AS share" in sql
    assert "anchor" not in params and "exclude" not in params
    assert "arraySlice(steps, 1, {max_length:UInt16})" in sql

    sql, params = paths_sql(start_at="site_visit", collapse_repeats=False)
    assert "arrayCompact" not in sql
    assert "indexOf(steps, {anchor:String})" in sql
    assert "arraySlice(steps, anchor_at, {max_length:UInt16})" in sql
    assert "WHERE anchor_at > 0" in sql

    sql, _ = paths_sql(end_at="purchase", exclude=["identify"])
    assert "toInt64(anchor_at) - {max_length:UInt16} + 1" in sql
    assert "least(anchor_at, {max_length:UInt16})" in sql
    # collapsing comes after the exclusion: a, identify, a is one step
    assert "arrayCompact(arrayFilter(t -> NOT has({exclude:Array(String)}, t), types))" in sql


def test_flows_shape() -> None:
    sql, params = touchpoint_flows_sql()
    assert params["conversion"] == "purchase"
    assert "ARRAY JOIN arrayZip(arrayPopBack(steps), arrayPopFront(steps)) AS pair" in sql
    # converted is read from the whole journey, before any exclusion
    assert "has(types, {conversion:String}) AS converted" in sql
    assert "GROUP BY source, target" in sql
    assert "ORDER BY transitions DESC, source, target" in sql
    assert "LIMIT" not in sql and "top" not in params
    sql, params = touchpoint_flows_sql(top=5, collapse_repeats=False)
    assert "LIMIT {top:UInt32}" in sql and params["top"] == 5
    assert "arrayCompact" not in sql


@pytest.mark.parametrize(
    ("period", "start", "add"),
    [(Period.week, "toMonday", "addWeeks"), (Period.month, "toStartOfMonth", "addMonths")],
)
def test_retention_shape(period: Period, start: str, add: str) -> None:
    since = datetime(2024, 1, 1, tzinfo=UTC)
    until = datetime(2024, 6, 1, tzinfo=UTC)
    sql, params = retention_sql(period=period, since=since, until=until)
    assert f"{start}(occurred_at) AS cohort" in sql
    assert f"dateDiff('{period.value}', cohort, {start}(t))" in sql
    assert f"{add}(cohort, k) <= horizon" in sql
    assert "minIf(occurred_at, type = {cohort_event:String}) AS entered_at" in sql
    assert "groupArray(occurred_at) AS returns" in sql  # any touchpoint returns
    assert "arrayFilter(t -> t >= occurred_at, returns)" in sql
    assert "sumForEach(" in sql
    # since selects the cohorts (by entry); until bounds every read
    entrants = sql[sql.index("entrants AS (") : sql.index("members AS (")]
    members = sql[sql.index("members AS (") : sql.index("cohorts AS (")]
    assert "{until:String}" in entrants and "{since:String}" not in entrants
    assert "{since:String}" in members
    horizon = sql[: sql.index("AS horizon")]
    assert "{until:String}" in horizon[horizon.rindex("(SELECT") :]
    assert params["since"] == since.isoformat() and params["until"] == until.isoformat()


def test_retention_with_a_return_type_reads_only_the_two_types() -> None:
    sql, _ = retention_sql(return_event="site_visit")
    assert "groupArrayIf(occurred_at, type = {return_event:String})" in sql
    assert "type IN ({cohort_event:String}, {return_event:String})" in sql
    # the horizon is the latest touchpoint of any type
    horizon = sql[: sql.index("AS horizon")]
    assert "return_event" not in horizon[horizon.rindex("(SELECT") :]


def test_timeline_shape() -> None:
    sql, params = customer_timeline_sql("a-1", limit=50)
    assert params["customer"] == "a-1" and params["limit"] == 50
    assert "subject AS (" in sql
    assert "WHERE person = (SELECT person FROM subject)" in sql
    # newest entries kept, shown oldest first; total counted before the limit
    assert "ORDER BY occurred_at DESC, event_id DESC\n    LIMIT {limit:UInt32}" in sql
    assert sql.rstrip().endswith("ORDER BY occurred_at, event_id")
    assert "count() OVER () AS total" in sql
    assert "'touchpoint' AS entry" in sql


def test_timeline_takes_further_entry_sources(monkeypatch: pytest.MonkeyPatch) -> None:
    def stage_changes() -> str:
        return "SELECT occurred_at, 'stage_change' AS entry FROM somewhere"

    monkeypatch.setattr(analysis, "_TIMELINE_SOURCES", (*analysis._TIMELINE_SOURCES, stage_changes))
    sql, _ = customer_timeline_sql("c-1")
    entries = sql[sql.index("entries AS (") :]
    assert "UNION ALL" in entries and "'stage_change' AS entry" in entries


# ---- argument checks -------------------------------------------------------------------


@pytest.mark.parametrize(
    ("call", "message"),
    [
        (lambda: paths_sql(start_at="a", end_at="b"), "not both"),
        (lambda: paths_sql(start_at=""), "start_at needs a touchpoint type"),
        (lambda: paths_sql(top=0), "top must be at least 1, got 0"),
        (lambda: paths_sql(max_length=0), "max_length must be between 1 and 50"),
        (lambda: paths_sql(max_length=51), "max_length must be between 1 and 50"),
        (lambda: paths_sql(end_at="purchase", exclude=["purchase"]), "excluded"),
        (lambda: touchpoint_flows_sql(conversion=""), "conversion needs"),
        (lambda: touchpoint_flows_sql(top=0), "top must be at least 1"),
        (lambda: retention_sql(periods=-1), "periods must be between 0 and 120"),
        (lambda: retention_sql(periods=121), "periods must be between 0 and 120"),
        (lambda: retention_sql(cohort_event=""), "cohort_event needs"),
        (lambda: retention_sql(return_event=""), "return_event needs"),
        (lambda: customer_timeline_sql(""), "customer id or an anonymous id"),
        (lambda: customer_timeline_sql("c", limit=0), "limit must be at least 1"),
        (lambda: customer_identity_sql(""), "customer id or an anonymous id"),
    ],
)
def test_builders_refuse_bad_arguments(call: object, message: str) -> None:
    with pytest.raises(ValueError, match=re.escape(message)):
        call()  # type: ignore[operator]


def test_retention_refuses_an_unknown_period() -> None:
    with pytest.raises(ValueError):
        retention_sql(period="day")  # type: ignore[arg-type]


def run(argv: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    code = 0
    try:
        main(argv)
    except SystemExit as exc:
        code = int(exc.code or 0)
    out, err = capsys.readouterr()
    return code, out, err


@pytest.mark.parametrize(
    ("argv", "code", "message"),
    [
        (["paths", "--start-at", "site_visit", "--end-at", "purchase"], 1, "not both"),
        (["paths", "--start-at", "purchse"], 1, "did you mean purchase?"),
        (["paths", "--end-at", HOSTILE], 1, "is not a touchpoint type"),
        (["paths", "--exclude", "nope"], 1, "--exclude: 'nope' is not a touchpoint type"),
        (["paths", "--top", "0"], 2, "'--top'"),
        (["paths", "--max-length", "51"], 2, "'--max-length'"),
        (["paths", "--since", "yesterday"], 2, "is not a date or time"),
        (
            ["paths", "--since", "2024-05-02", "--until", "2024-05-01T00:00:00Z"],
            1,
            "--since must be earlier than --until",
        ),
        (["paths", "--format", "xml"], 2, "'--format'"),
        (["paths", "--start-at", "purchase", "--exclude", "purchase"], 1, "excluded"),
        (["flows", "--conversion", "buy"], 1, "--conversion: 'buy' is not a touchpoint type"),
        (["flows", "--top", "0"], 2, "'--top'"),
        (["retention", "--return-event", "everything"], 1, "--return-event"),
        (["retention", "--cohort-event", "signup"], 1, "--cohort-event"),
        (["retention", "--period", "day"], 2, "'--period'"),
        (["retention", "--periods", "121"], 2, "'--periods'"),
        (["customer", ""], 1, "give a customer id or an anonymous id"),
        (["customer", "c-1", "--limit", "0"], 2, "'--limit'"),
        (["customer", "c-1", "--format", "csv"], 2, "'--format'"),
    ],
)
def test_cli_refuses_bad_options_in_one_line(
    argv: list[str], code: int, message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    # every one is refused before any warehouse or worker is reached
    got, out, err = run(argv, capsys)
    assert got == code, err
    assert out == ""
    assert len(err.strip().splitlines()) == 1, err
    assert err.startswith("error: ") and message in err


# ---- presentation ----------------------------------------------------------------------


def test_summary_puts_the_required_properties_first() -> None:
    properties = json.dumps(
        {"items": [1, 2], "currency": "EUR", "revenue": "19.99", "order_id": "o-1", "gift": True}
    )
    assert summarize_properties("purchase", properties) == (
        "order_id=o-1, revenue=19.99, currency=EUR, items=[2], gift=true"
    )
    assert summarize_properties("unknown_type", {"a": {"b": 1}}) == "a={…}"
    assert summarize_properties("page_view", "not json") == "not json"
    long = summarize_properties("page_view", {"url": "x" * 200})
    assert len(long) == 72 and long.endswith("…")


def test_sankey_names_nodes_once_in_order_of_the_links() -> None:
    flows = [
        {"source": "a", "target": "b", "transitions": 5, "people": 4,
         "converted_transitions": 2, "converted_people": 2},
        {"source": "b", "target": "a", "transitions": 3, "people": 3,
         "converted_transitions": 0, "converted_people": 0},
        {"source": "b", "target": "c", "transitions": 1, "people": 1,
         "converted_transitions": 1, "converted_people": 1},
    ]  # fmt: skip
    data = sankey(flows, "purchase")
    assert data["nodes"] == [{"name": "a"}, {"name": "b"}, {"name": "c"}]
    assert data["links"][0] == {
        "source": "a", "target": "b", "value": 5, "people": 4, "converted": 2,
        "converted_people": 2,
    }  # fmt: skip
    assert data["conversion"] == "purchase"
