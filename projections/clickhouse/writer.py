"""Turns batches of normalised touchpoints (and read-model rows) into one insert each.

Touchpoints go in either as columns built here or, from the `touchpoints` topic, as the
validator's JSON records that ClickHouse parses itself; both land identically.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping, Sequence
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from enum import Enum
from typing import Any

import orjson

from projections.clickhouse.client import Warehouse
from projections.clickhouse.tables import (
    FRICTION,
    READ_MODEL_COLUMNS,
    TOUCHPOINT_INSERT_COLUMNS,
    TOUCHPOINTS,
)

_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_ONE_MS = timedelta(milliseconds=1)
_COLUMN_NAMES = tuple(name for name, _ in TOUCHPOINT_INSERT_COLUMNS)
_COLUMN_TYPES = tuple(type_ for _, type_ in TOUCHPOINT_INSERT_COLUMNS)
# The validator ends every record with its two stamps, both non-empty strings. A record
# that ends otherwise predates the stamps, came from elsewhere or has extra top-level
# fields: its batch takes the columnar path, which fills in missing stamps (see
# touchpoint_columns). Inside a JSON string every quote is escaped, so this matches keys
# only, and a tail that closes the record belongs to its top-level object.
_RECEIVED_AT_MARK = b'"received_at":"'
_STAMPED_TAIL = re.compile(rb'"received_at":"[^"]+","customer_key":"[^"]+"}')
# How ClickHouse must read those records so that they land exactly as touchpoint_columns()
# puts them (an integration test compares both paths row by row).
_JSON_SETTINGS: dict[str, Any] = {
    # properties is an object on the wire and its JSON text in the table; ClickHouse
    # copies the object's bytes, and the validator's orjson text is what
    # orjson.dumps(orjson.loads(...)) gives back, so JSONExtract* sees the same string.
    "input_format_json_read_objects_as_strings": 1,
    # RFC 3339 with Z or an offset and up to six fraction digits; the extra digits are
    # cut, as the columnar writer floors to milliseconds (no time is before 1970).
    "date_time_input_format": "best_effort",
    # The envelope keeps extra top-level fields; the table has no column for them.
    "input_format_skip_unknown_fields": 1,
    # An absent or null optional id becomes the column's '' as in the columnar writer.
    "input_format_defaults_for_omitted_fields": 1,
    "input_format_null_as_default": 1,
    # A server profile may allow bad rows; the sink must never drop one unnoticed.
    "input_format_allow_errors_num": 0,
    "input_format_allow_errors_ratio": 0,
}
# Newer engines (default 'auto') match a field name ignoring case when it has no exact
# match, so an extra top-level field "Properties" collides with `properties` and fails
# the batch. Engines without the setting always match case.
_NAME_MATCHING = "input_format_column_name_matching_mode"
# RFC 3339 allows a lower-case t/z and any number of fraction digits; fromisoformat
# takes at most six, so the rest is cut before the second attempt.
_RFC3339 = re.compile(r"^(\d{4}-\d\d-\d\d)[Tt ](\d\d:\d\d:\d\d)(\.\d+)?([Zz]|[+-]\d\d:?\d\d)?$")


def _text(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, str):
        return value
    if isinstance(value, Enum):
        return str(value.value)
    return str(value)


def _parse_timestamp(text: str) -> datetime:
    try:
        return datetime.fromisoformat(text)
    except ValueError:
        match = _RFC3339.match(text.strip())
        if match is None:
            raise
        date, time, fraction, offset = match.groups()
        fraction = (fraction or "")[:7]
        offset = "+00:00" if offset in (None, "Z", "z") else offset
        return datetime.fromisoformat(f"{date}T{time}{fraction}{offset}")


def _epoch_millis(value: Any) -> int:
    """Milliseconds since the epoch, UTC: DateTime64(3) ticks, inserted as plain ints.

    Integer ticks are exact and skip the driver's float timestamp() conversion, which
    would also read a naive datetime as local time. Naive values (the validator rejects
    them on the wire) are taken as UTC.
    """
    if value.__class__ is str:
        try:
            moment = datetime.fromisoformat(value)
        except ValueError:
            moment = _parse_timestamp(value)
    elif isinstance(value, datetime):
        moment = value
    else:
        moment = _parse_timestamp(_text(value))
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return (moment - _EPOCH) // _ONE_MS


def _json_default(value: Any) -> Any:
    # model_dump() leaves Decimal money as Decimal; a JSON string keeps every digit and
    # JSONExtract(..., 'Decimal(...)') reads strings and numbers alike.
    if isinstance(value, Decimal):
        return str(value)
    if isinstance(value, set | frozenset | tuple):
        return list(value)
    raise TypeError(f"cannot store a {type(value).__name__} in touchpoint properties")


def _properties_json(value: Any) -> str:
    if value.__class__ is dict:
        return orjson.dumps(value, default=_json_default).decode()
    if value is None:
        return "{}"
    if isinstance(value, str):
        return value
    if isinstance(value, bytes | bytearray):
        return value.decode()
    return orjson.dumps(value, default=_json_default).decode()


def touchpoint_columns(touchpoints: Iterable[Mapping[str, Any]]) -> dict[str, list[Any]]:
    """Columns for the `touchpoints` insert, keyed by column name, in table order.

    Each item is a normalised touchpoint as a mapping: the decoded JSON of the
    `touchpoints` topic or a model_dump(); timestamps as RFC 3339 strings or datetimes.
    A missing customer_key falls back to customer_id, then anonymous_id; a missing
    received_at to the time of this call.
    """
    event_id: list[str] = []
    schema_version: list[int] = []
    type_: list[str] = []
    occurred_at: list[int] = []
    received_at: list[int] = []
    channel: list[str] = []
    customer_key: list[str] = []
    customer_id: list[str] = []
    anonymous_id: list[str] = []
    session_id: list[str] = []
    case_id: list[str] = []
    source: list[str] = []
    properties: list[str] = []
    now_ms: int | None = None
    # The loop is the writer's hot path: plain strings (the usual case) skip _text().
    for item in touchpoints:
        get = item.get
        try:
            v = item["event_id"]
            event_id.append(v if v.__class__ is str else _text(v))
            schema_version.append(int(get("schema_version") or 1))
            v = item["type"]
            type_.append(v if v.__class__ is str else _text(v))
            occurred_at.append(_epoch_millis(item["occurred_at"]))
            v = get("received_at")
            if v is None:
                if now_ms is None:
                    now_ms = _epoch_millis(datetime.now(UTC))
                received_at.append(now_ms)
            else:
                received_at.append(_epoch_millis(v))
            v = get("channel")
            channel.append(v if v.__class__ is str else _text(v))
            v = get("customer_id")
            cid = v if v.__class__ is str else _text(v)
            v = get("anonymous_id")
            aid = v if v.__class__ is str else _text(v)
            v = get("customer_key")
            customer_key.append((v if v.__class__ is str else _text(v)) or cid or aid)
            customer_id.append(cid)
            anonymous_id.append(aid)
            v = get("session_id")
            session_id.append(v if v.__class__ is str else _text(v))
            v = get("case_id")
            case_id.append(v if v.__class__ is str else _text(v))
            v = get("source")
            source.append(v if v.__class__ is str else _text(v))
            properties.append(_properties_json(get("properties")))
        except (KeyError, ValueError, TypeError) as exc:
            raise ValueError(
                f"touchpoint {get('event_id')!r} cannot be written: {type(exc).__name__}: {exc}"
            ) from exc
    columns = (
        event_id,
        schema_version,
        type_,
        occurred_at,
        received_at,
        channel,
        customer_key,
        customer_id,
        anonymous_id,
        session_id,
        case_id,
        source,
        properties,
    )
    return dict(zip(_COLUMN_NAMES, columns, strict=True))


def insert_touchpoints(
    warehouse: Warehouse,
    batch: Sequence[Mapping[str, Any]],
    *,
    dedup_token: str | None = None,
) -> int:
    """Write a batch as one columnar insert; returns the number of rows sent.

    Idempotent: the table deduplicates on event_id, so a batch written twice reads back
    once through FINAL. Passing `dedup_token` (e.g. topic/partition/first-last offsets)
    also makes a retried insert of that token a no-op at insert time.
    """
    if not batch:
        return 0
    columns = touchpoint_columns(batch)
    settings = {"insert_deduplication_token": dedup_token} if dedup_token else None
    return warehouse.insert(
        TOUCHPOINTS,
        list(columns.values()),
        _COLUMN_NAMES,
        column_types=_COLUMN_TYPES,
        settings=settings,
    )


def _stamped_by_validator(payload: bytes) -> bool:
    # Searched from the end, not parsed: the point of the JSON path is that Python never
    # decodes the record.
    at = payload.rfind(_RECEIVED_AT_MARK)
    return at >= 0 and _STAMPED_TAIL.fullmatch(payload, at) is not None


def insert_touchpoints_json(
    warehouse: Warehouse,
    payloads: Sequence[bytes],
    *,
    dedup_token: str | None = None,
) -> int:
    """Write the `touchpoints` topic's records (JSON bytes, one touchpoint each) as one
    insert that ClickHouse parses; returns the number of records sent.

    Same rows as insert_touchpoints() on the decoded records, without decoding them in
    Python. A batch with a record that does not end in the validator's received_at and
    customer_key stamps (or has extra top-level fields after them) is decoded and
    written by insert_touchpoints() instead, so it gets that writer's fallbacks. An
    undecodable record fails the whole insert (the sink then drops it).
    """
    if not payloads:
        return 0
    if not all(_stamped_by_validator(p) for p in payloads):
        return insert_touchpoints(
            warehouse, [orjson.loads(p) for p in payloads], dedup_token=dedup_token
        )
    settings = dict(_JSON_SETTINGS)
    if warehouse.knows_setting(_NAME_MATCHING):
        settings[_NAME_MATCHING] = "match_case"
    if dedup_token:
        settings["insert_deduplication_token"] = dedup_token
    # One record per line is JSONEachRow; orjson never writes a raw newline inside one.
    warehouse.insert_raw(
        TOUCHPOINTS, b"\n".join(payloads), column_names=_COLUMN_NAMES, settings=settings
    )
    return len(payloads)


def _column_value(type_: str, value: Any) -> Any:
    if type_.startswith("DateTime64"):
        return _epoch_millis(value)
    if type_.startswith("Nullable(") or value is not None:
        return value
    # an absent value of a non-nullable column: that type's zero
    if type_.startswith(("Map(",)):
        return {}
    if type_.startswith("Array("):
        return []
    if "String" in type_:
        return ""
    return 0


def insert_records(warehouse: Warehouse, table: str, records: Sequence[Mapping[str, Any]]) -> int:
    """Write read-model rows (JSON-shaped dicts named like READ_MODEL_COLUMNS) as one insert."""
    if not records:
        return 0
    spec = READ_MODEL_COLUMNS[table]
    columns = [[_column_value(t, r.get(name)) for r in records] for name, t in spec]
    return warehouse.insert(
        table, columns, [n for n, _ in spec], column_types=[t for _, t in spec]
    )


def insert_records_json(warehouse: Warehouse, table: str, payloads: Sequence[bytes]) -> int:
    """insert_records() for a read-model topic's records as they come (JSON bytes)."""
    return insert_records(warehouse, table, [orjson.loads(p) for p in payloads])


def insert_friction_json(warehouse: Warehouse, payloads: Sequence[bytes]) -> int:
    """The `friction` topic's records as `friction` rows: a retraction (status retracted)
    becomes a deleted row, and each record's detection time its version, so the newest
    record of a friction id is the one FINAL shows (or hides)."""
    rows = []
    for payload in payloads:
        record = orjson.loads(payload)
        record["version"] = _epoch_millis(record["detected_at"])
        record["is_deleted"] = 1 if record.get("status") == "retracted" else 0
        rows.append(record)
    return insert_records(warehouse, FRICTION, rows)
