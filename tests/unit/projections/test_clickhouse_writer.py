"""Touchpoint records to insert columns, without an engine."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone
from decimal import Decimal
from enum import StrEnum
from typing import Any

import orjson
import pytest

from projections.clickhouse.tables import MIGRATIONS, TOUCHPOINT_INSERT_COLUMNS
from projections.clickhouse.writer import touchpoint_columns

MS_2024_05_01 = int(datetime(2024, 5, 1, tzinfo=UTC).timestamp()) * 1000


def touchpoint(**overrides: Any) -> dict[str, Any]:
    record: dict[str, Any] = {
        "event_id": "7d3f2b9e-0000-4000-8000-000000000001",
        "schema_version": 1,
        "type": "purchase",
        "occurred_at": "2024-05-01T00:00:00.250Z",
        "received_at": "2024-05-01T00:00:01Z",
        "channel": "web",
        "customer_id": "c1",
        "customer_key": "c1",
        "properties": {"order_id": "o1", "revenue": 19.99, "currency": "EUR"},
    }
    record.update(overrides)
    return record


def test_columns_follow_the_registry() -> None:
    columns = touchpoint_columns([touchpoint(), touchpoint(event_id="e2")])
    assert list(columns) == [name for name, _ in TOUCHPOINT_INSERT_COLUMNS]
    assert all(len(values) == 2 for values in columns.values())
    assert columns["event_id"] == ["7d3f2b9e-0000-4000-8000-000000000001", "e2"]
    assert columns["occurred_at"] == [MS_2024_05_01 + 250] * 2
    assert columns["received_at"] == [MS_2024_05_01 + 1000] * 2
    assert columns["anonymous_id"] == ["", ""]
    assert columns["session_id"] == ["", ""]
    assert orjson.loads(columns["properties"][0]) == touchpoint()["properties"]


@pytest.mark.parametrize(
    "value",
    [
        "2024-05-01T02:00:00.250+02:00",
        "2024-05-01T00:00:00.250Z",
        "2024-05-01t00:00:00.250z",
        "2024-05-01T00:00:00.250999999Z",
        "2024-05-01 00:00:00.250+00:00",
        datetime(2024, 5, 1, 0, 0, 0, 250000, tzinfo=UTC),
        datetime(2024, 5, 1, 3, 0, 0, 250999, tzinfo=timezone(timedelta(hours=3))),
        datetime(2024, 5, 1, 0, 0, 0, 250000),  # naive: taken as UTC
    ],
)
def test_timestamps_become_utc_milliseconds(value: Any) -> None:
    assert touchpoint_columns([touchpoint(occurred_at=value)])["occurred_at"] == [
        MS_2024_05_01 + 250
    ]


def test_model_dump_values() -> None:
    class Kind(StrEnum):
        purchase = "purchase"

    record = touchpoint(
        type=Kind.purchase,
        properties={"revenue": Decimal("19.990"), "items": ("a", "b")},
        session_id=None,
    )
    columns = touchpoint_columns([record])
    assert columns["type"] == ["purchase"]
    assert columns["session_id"] == [""]
    assert orjson.loads(columns["properties"][0]) == {"revenue": "19.990", "items": ["a", "b"]}


def test_properties_as_given_text_or_absent() -> None:
    raw = '{"b": 1, "a": 2}'
    columns = touchpoint_columns([touchpoint(properties=raw), touchpoint(properties=None)])
    assert columns["properties"] == [raw, "{}"]


def test_customer_key_falls_back_to_the_ids() -> None:
    records = [
        touchpoint(customer_key=None, customer_id="c9"),
        touchpoint(customer_key=None, customer_id=None, anonymous_id="a9"),
    ]
    assert touchpoint_columns(records)["customer_key"] == ["c9", "a9"]


def test_missing_received_at_is_the_write_time() -> None:
    record = touchpoint()
    del record["received_at"]
    before = datetime.now(UTC)
    (received,) = touchpoint_columns([record])["received_at"]
    assert (
        int(before.timestamp() * 1000) - 1 <= received <= int(datetime.now(UTC).timestamp() * 1000)
    )


def test_missing_event_id_is_refused() -> None:
    record = touchpoint()
    del record["event_id"]
    with pytest.raises(ValueError, match="cannot be written: KeyError"):
        touchpoint_columns([record])


@pytest.mark.parametrize(
    "override", [{"occurred_at": "yesterday"}, {"properties": {"x": object()}}]
)
def test_bad_record_names_the_event(override: dict[str, Any]) -> None:
    with pytest.raises(ValueError, match="'e-bad' cannot be written"):
        touchpoint_columns([touchpoint(event_id="e-bad", **override)])


def test_migrations_are_numbered_in_order() -> None:
    assert [m.version for m in MIGRATIONS] == list(range(1, len(MIGRATIONS) + 1))
    assert all(m.statements and m.name for m in MIGRATIONS)
