"""The one codec every edge uses: bytes <-> touchpoints (orjson + pydantic).

`decode_touchpoint` turns any bytes into a `Touchpoint` or raises
`InvalidTouchpointError` - never anything else - whose `reason` is one of:

=============================  ==========================================================
``payload_too_large``          more than MAX_TOUCHPOINT_BYTES bytes
``invalid_json``               not JSON, or not UTF-8
``not_an_object``              JSON, but not an object
``unknown_type``               `type` is not in the catalogue
``missing_field``              a required field or property is absent (or null)
``invalid_field``              a field or property has the wrong type, format or range
``naive_timestamp``            a timestamp without UTC offset
``future_timestamp``           occurred_at more than 24 h after the validation time
``missing_identity``           neither customer_id nor anonymous_id (identify: not both)
``missing_case_id``            a service event without case_id
``unsupported_schema_version`` schema_version is an integer other than 1
=============================  ==========================================================
"""

from collections.abc import Mapping
from datetime import UTC, datetime
from enum import StrEnum
from typing import Any, Final

import orjson
from pydantic import BaseModel, ValidationError
from pydantic_core import ErrorDetails

from schemas.catalogue import CATALOGUE, TouchpointKind
from schemas.envelope import NOW_CONTEXT_KEY, SCHEMA_VERSION, Envelope
from schemas.touchpoint import TOUCHPOINT_MODELS, Touchpoint

MAX_TOUCHPOINT_BYTES: Final = 64 * 1024

_JSON_OPTIONS: Final = orjson.OPT_UTC_Z
# Optional envelope fields (default None) are left out of the wire form when None.
_OPTIONAL_ENVELOPE_FIELDS: Final = tuple(
    name
    for name, field in Envelope.model_fields.items()
    if not field.is_required() and field.default is None
)


class Reason(StrEnum):
    """Machine-readable reasons a touchpoint is refused (see the module docstring)."""

    PAYLOAD_TOO_LARGE = "payload_too_large"
    INVALID_JSON = "invalid_json"
    NOT_AN_OBJECT = "not_an_object"
    UNKNOWN_TYPE = "unknown_type"
    MISSING_FIELD = "missing_field"
    INVALID_FIELD = "invalid_field"
    NAIVE_TIMESTAMP = "naive_timestamp"
    FUTURE_TIMESTAMP = "future_timestamp"
    MISSING_IDENTITY = "missing_identity"
    MISSING_CASE_ID = "missing_case_id"
    UNSUPPORTED_SCHEMA_VERSION = "unsupported_schema_version"


class InvalidTouchpointError(ValueError):
    """Bytes or data that are not a valid touchpoint, and why."""

    def __init__(self, reason: str, detail: str, field: str | None = None) -> None:
        super().__init__(f"{reason}: {detail}")
        self.reason = reason
        self.detail = detail
        self.field = field

    def __reduce__(self) -> tuple[Any, ...]:
        return (type(self), (self.reason, self.detail, self.field))


# Pydantic error types that the models raise under a reason's own name.
_OWN_REASONS: Final = frozenset(
    {
        Reason.NAIVE_TIMESTAMP,
        Reason.FUTURE_TIMESTAMP,
        Reason.MISSING_IDENTITY,
        Reason.UNSUPPORTED_SCHEMA_VERSION,
    }
)
_GENERIC_REASONS: Final = frozenset({Reason.MISSING_FIELD, Reason.INVALID_FIELD})
_IDENTITY_FIELDS: Final = (("customer_id",), ("anonymous_id",))


def _is_absent(error: ErrorDetails) -> bool:
    if error["type"] == "missing":
        return True
    # An explicit null where a value is required reads as "not given"; deeper
    # nulls (inside a list, say) are just wrong values.
    loc = error["loc"]
    return error.get("input", ...) is None and (
        len(loc) == 1 or (len(loc) == 2 and loc[0] == "properties")
    )


def _refusal(error: ErrorDetails, kind: TouchpointKind) -> InvalidTouchpointError:
    loc = error["loc"]
    field = ".".join(str(part) for part in loc) or None
    message = error["msg"].rstrip(".")
    if error["type"] in _OWN_REASONS:
        return InvalidTouchpointError(Reason(error["type"]), f"{message}.", field)
    if _is_absent(error):
        if loc == ("case_id",) and kind.requires_case_id:
            return InvalidTouchpointError(
                Reason.MISSING_CASE_ID, f"Every {kind.name} event must carry a case_id.", field
            )
        if loc in _IDENTITY_FIELDS and kind.requires_both_ids:
            return InvalidTouchpointError(
                Reason.MISSING_IDENTITY,
                f"Every {kind.name} event needs both customer_id and anonymous_id.",
                field,
            )
        return InvalidTouchpointError(
            Reason.MISSING_FIELD, f"Required field '{field}' is missing or null.", field
        )
    return InvalidTouchpointError(
        Reason.INVALID_FIELD, f"Field '{field}' is invalid: {message}.", field
    )


def _most_specific(error: ValidationError, kind: TouchpointKind) -> InvalidTouchpointError:
    refusals = [_refusal(details, kind) for details in error.errors(include_url=False)]
    for refusal in refusals:
        if refusal.reason not in _GENERIC_REASONS:
            return refusal
    return refusals[0]


def _validation_context(now: datetime | None) -> dict[str, datetime] | None:
    if now is None:
        return None
    if now.utcoffset() is None:
        raise ValueError("now must be an aware datetime")
    return {NOW_CONTEXT_KEY: now}


def validate_touchpoint(data: Any, *, now: datetime | None = None) -> Touchpoint:
    """Validate decoded JSON (or a dict built in Python) as a touchpoint.

    With `now` (an aware datetime), occurred_at may be at most 24 h after it;
    without, the future check is skipped (replays of already validated events).
    """
    return _validate(data, _validation_context(now))


def _validate(data: Any, context: dict[str, datetime] | None) -> Touchpoint:
    if not isinstance(data, Mapping):
        raise InvalidTouchpointError(
            Reason.NOT_AN_OBJECT, f"A touchpoint is a JSON object, not {_json_kind(data)}."
        )
    version = data.get("schema_version")
    # Checked before the type: a later version may well bring types unknown here.
    if type(version) is int and version != SCHEMA_VERSION:
        raise InvalidTouchpointError(
            Reason.UNSUPPORTED_SCHEMA_VERSION,
            f"schema_version {version} is not supported; this contract is version 1.",
            "schema_version",
        )
    type_name = data.get("type")
    if type_name is None:
        raise InvalidTouchpointError(
            Reason.MISSING_FIELD, "Required field 'type' is missing or null.", "type"
        )
    if not isinstance(type_name, str):
        raise InvalidTouchpointError(
            Reason.INVALID_FIELD, "Field 'type' is invalid: it must be a string.", "type"
        )
    model = TOUCHPOINT_MODELS.get(type_name)
    if model is None:
        raise InvalidTouchpointError(
            Reason.UNKNOWN_TYPE,
            f"Type {type_name[:80]!r} is not in the touchpoint catalogue.",
            "type",
        )
    try:
        return model.model_validate(data, context=context)
    except ValidationError as error:
        raise _most_specific(error, CATALOGUE[type_name]) from error


def _json_kind(value: Any) -> str:
    if isinstance(value, list):
        return "an array"
    if isinstance(value, str):
        return "a string"
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    return "a number"


def _parse(raw: bytes) -> Any:
    try:
        return orjson.loads(raw)
    except orjson.JSONDecodeError as error:
        raise InvalidTouchpointError(
            Reason.INVALID_JSON, f"Not valid UTF-8 JSON: {error}."
        ) from None


def _check_size(size: int) -> None:
    if size > MAX_TOUCHPOINT_BYTES:
        raise InvalidTouchpointError(
            Reason.PAYLOAD_TOO_LARGE,
            f"The payload is {size} bytes; at most {MAX_TOUCHPOINT_BYTES} are accepted.",
        )


def decode_touchpoint(raw: bytes, *, now: datetime) -> Touchpoint:
    """Decode one message of the ingest topic; raises only InvalidTouchpointError."""
    context = _validation_context(now)
    _check_size(len(raw))
    return _validate(_parse(raw), context)


def decode_parsed_touchpoint(data: Any, *, size: int, now: datetime) -> Touchpoint:
    """decode_touchpoint of `size` bytes whose JSON was already parsed into `data`
    (items of an array body, say): the same checks, without parsing them again."""
    context = _validation_context(now)
    _check_size(size)
    return _validate(data, context)


def decode_stored_touchpoint(raw: bytes) -> Touchpoint:
    """Decode one event of the normalised `touchpoints` topic (already validated once).

    No size or future check: normalisation adds bytes, and replays run long after.
    """
    return _validate(_parse(raw), None)


def _wire_form(tp: Touchpoint) -> dict[str, Any]:
    # exclude_unset writes properties back exactly as given: an optional property
    # the producer left out stays out instead of becoming a null on the event store.
    data = tp.model_dump(exclude_unset=True)
    for name in _OPTIONAL_ENVELOPE_FIELDS:
        if name in data and data[name] is None:
            del data[name]
    data.setdefault("properties", {})
    return data


def encode_touchpoint(tp: Touchpoint) -> bytes:
    """The wire form: absent optional envelope fields omitted, properties as given."""
    return orjson.dumps(_wire_form(tp), option=_JSON_OPTIONS)


def normalise(tp: Touchpoint, *, received_at: datetime, customer_key: str) -> Touchpoint:
    """A copy of `tp` as the validator stores it, with received_at (UTC) and customer_key."""
    if received_at.utcoffset() is None:
        raise ValueError("received_at must be an aware datetime")
    # model_copy skips validation: both values come from our own validator.
    return tp.model_copy(
        update={"received_at": received_at.astimezone(UTC), "customer_key": customer_key}
    )


def _jsonable(value: Any) -> Any:
    if isinstance(value, Touchpoint):
        return _wire_form(value)
    if isinstance(value, BaseModel):
        return value.model_dump()
    raise TypeError(f"{type(value).__name__} is not JSON serialisable")


def encode_json(obj: Any) -> bytes:
    """JSON bytes of any value orjson knows, or of pydantic models anywhere inside it."""
    return orjson.dumps(obj, default=_jsonable, option=_JSON_OPTIONS)


def decode_json(raw: bytes | bytearray | memoryview | str) -> Any:
    """Parse JSON; raises orjson.JSONDecodeError (a ValueError) on bad input."""
    return orjson.loads(raw)
