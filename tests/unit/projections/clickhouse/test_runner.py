"""The runner's values as JSON data, without an engine."""

from __future__ import annotations

from datetime import UTC, datetime

from projections.clickhouse.runner import jsonable


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
