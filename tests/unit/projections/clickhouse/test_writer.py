"""Touchpoint records to insert columns, without an engine."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone
from decimal import Decimal
from enum import StrEnum
from typing import Any, cast

import orjson
import pytest

from projections.clickhouse.client import Warehouse
from projections.clickhouse.tables import MIGRATIONS, TOUCHPOINT_INSERT_COLUMNS, TOUCHPOINTS
from projections.clickhouse.writer import insert_touchpoints_json, touchpoint_columns

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


class RecordingWarehouse:
    """Takes the writer's inserts instead of an engine."""

    def __init__(self, *, knows: frozenset[str] = frozenset()) -> None:
        self.knows = knows
        self.raw: list[dict[str, Any]] = []
        self.columnar: list[dict[str, Any]] = []

    def knows_setting(self, name: str) -> bool:
        return name in self.knows

    def insert_raw(self, table: str, data: bytes, fmt: str = "JSONEachRow", **kw: Any) -> None:
        self.raw.append({"table": table, "data": data, "fmt": fmt, **kw})

    def insert(self, table: str, columns: Any, column_names: Any, **kw: Any) -> int:
        named = dict(zip(column_names, columns, strict=True))
        self.columnar.append({"table": table, "columns": named, **kw})
        return len(columns[0])


def stored(**overrides: Any) -> bytes:
    """A record as the validator writes it: the two stamps last."""
    record = touchpoint(**overrides)
    stamps = {k: record.pop(k) for k in ("received_at", "customer_key") if k in record}
    return orjson.dumps({**record, **stamps})


def test_validator_records_go_to_clickhouse_as_they_are() -> None:
    warehouse = RecordingWarehouse(knows=frozenset({"input_format_column_name_matching_mode"}))
    batch = [stored(), stored(event_id="e2")]
    assert insert_touchpoints_json(cast(Warehouse, warehouse), batch, dedup_token="t/0/1-2") == 2
    assert warehouse.columnar == []
    (call,) = warehouse.raw
    assert call["table"] == TOUCHPOINTS
    assert call["fmt"] == "JSONEachRow"
    assert call["data"] == batch[0] + b"\n" + batch[1]
    assert list(call["column_names"]) == [name for name, _ in TOUCHPOINT_INSERT_COLUMNS]
    assert call["settings"] == {
        "input_format_json_read_objects_as_strings": 1,
        "date_time_input_format": "best_effort",
        "input_format_skip_unknown_fields": 1,
        "input_format_defaults_for_omitted_fields": 1,
        "input_format_null_as_default": 1,
        "input_format_allow_errors_num": 0,
        "input_format_allow_errors_ratio": 0,
        "input_format_column_name_matching_mode": "match_case",
        "insert_deduplication_token": "t/0/1-2",
    }


def test_an_engine_without_name_matching_modes_is_not_sent_one() -> None:
    warehouse = RecordingWarehouse()
    insert_touchpoints_json(cast(Warehouse, warehouse), [stored()])
    assert "input_format_column_name_matching_mode" not in warehouse.raw[0]["settings"]
    assert "insert_deduplication_token" not in warehouse.raw[0]["settings"]


def _without(*names: str) -> bytes:
    record = touchpoint()
    for name in names:
        del record[name]
    return orjson.dumps(record)


@pytest.mark.parametrize(
    "odd",
    [
        pytest.param(_without("customer_key"), id="no customer_key"),
        pytest.param(_without("received_at"), id="no received_at"),
        pytest.param(stored(customer_key=""), id="empty customer_key"),
        pytest.param(stored(customer_key=None), id="null customer_key"),
        pytest.param(stored(customer_key='c"1'), id="quote in customer_key"),
        pytest.param(orjson.dumps(touchpoint()), id="stamps not last"),
        pytest.param(stored() + b" ", id="trailing space"),
        pytest.param(stored()[:-1] + b',"extra":1}', id="extra field after the stamps"),
        pytest.param(
            orjson.dumps(
                {
                    **touchpoint(received_at=None, customer_key=None),
                    "properties": {"received_at": "2024-05-01T00:00:01Z", "customer_key": "z"},
                }
            ),
            id="stamps only inside properties",
        ),
    ],
)
def test_other_records_are_decoded_and_written_as_columns(odd: bytes) -> None:
    warehouse = RecordingWarehouse()
    assert insert_touchpoints_json(cast(Warehouse, warehouse), [stored(), odd]) == 2
    assert warehouse.raw == []
    (call,) = warehouse.columnar
    # the columnar writer's fallbacks: customer_id for a missing or empty key
    assert call["columns"]["customer_key"][1] == (orjson.loads(odd).get("customer_key") or "c1")
    assert call["columns"]["event_id"] == [touchpoint()["event_id"]] * 2


def test_nothing_to_write() -> None:
    warehouse = RecordingWarehouse()
    assert insert_touchpoints_json(cast(Warehouse, warehouse), []) == 0
    assert warehouse.raw == warehouse.columnar == []


def test_undecodable_unstamped_records_raise() -> None:
    with pytest.raises(ValueError):
        insert_touchpoints_json(cast(Warehouse, RecordingWarehouse()), [b"not json"])
