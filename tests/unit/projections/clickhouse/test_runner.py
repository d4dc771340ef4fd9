"""The runner's values as JSON data, without an engine."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from projections.clickhouse.runner import (
    Answer,
    QueryFailedError,
    Runner,
    jsonable,
    refused_token,
    worker_headers,
)


def test_jsonable() -> None:
    from decimal import Decimal
    from uuid import UUID

    moment = datetime(2024, 5, 1, 12, 0, 0, 123000, tzinfo=UTC)
    uid = UUID(int=1)
    assert jsonable(moment) == "2024-05-01T12:00:00.123000+00:00"
    assert jsonable(Decimal("19.9900")) == "19.9900"
    assert jsonable(uid) == str(uid)
    assert jsonable((1, [b"ab", None], {"k": Decimal(1)})) == [1, ["ab", None], {"k": "1"}]
    assert jsonable(b"\xff") == "/w=="


def test_an_answer_unpacks_as_columns_and_rows() -> None:
    answer = Answer(["a", "b"], [[1, "x"], [2, "y"]], ["UInt8", "String"])
    columns, rows = answer
    assert (columns, rows) == (["a", "b"], [[1, "x"], [2, "y"]])
    assert answer[1] == rows and answer.records() == [{"a": 1, "b": "x"}, {"a": 2, "b": "y"}]


def test_a_runner_has_one_warehouse() -> None:
    with pytest.raises(ValueError, match="not both"):
        Runner()
    # a refused statement never reaches out (no worker, no warehouse at this DSN)
    runner = Runner(dsn="chdb:///nonexistent/warehouse", worker_url="http://127.0.0.1:9")
    with pytest.raises(QueryFailedError, match="not DROP"):
        runner.run("DROP TABLE touchpoints")


def test_the_token_travels_and_a_refusal_says_how_to_fix_it() -> None:
    assert worker_headers(("t-1", "t-2")) == {"Authorization": "Bearer t-1"}
    assert worker_headers(()) == {}
    assert "wants a bearer token" in str(refused_token("http://w", ()))
    assert "refused the token" in str(refused_token("http://w", ("t",)))
