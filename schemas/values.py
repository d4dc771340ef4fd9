"""Value types shared by the contract models: ids, timestamps, money, counts."""

import re
from datetime import UTC, datetime
from typing import Annotated, Any, Final

from pydantic import BeforeValidator, Field, Strict, StringConstraints, WithJsonSchema
from pydantic_core import PydanticCustomError

# ASCII classes on purpose: `\d` would also match other scripts' digits in Python and Rust.
RFC3339_PATTERN: Final = (
    r"^[0-9]{4}-[0-9]{2}-[0-9]{2}[Tt][0-9]{2}:[0-9]{2}:[0-9]{2}(\.[0-9]+)?"
    r"([Zz]|[+-][0-9]{2}:[0-9]{2})$"
)
UUID_PATTERN: Final = (
    r"^[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}$"
)
CURRENCY_PATTERN: Final = r"^[A-Z]{3}$"

# Same grammar as RFC3339_PATTERN but with the offset optional, so a naive
# timestamp can be told apart from a malformed one.
_TIMESTAMP_TEXT = re.compile(
    r"[0-9]{4}-[0-9]{2}-[0-9]{2}[Tt][0-9]{2}:[0-9]{2}:[0-9]{2}(?:\.[0-9]+)?"
    r"(?P<offset>[Zz]|[+-][0-9]{2}:[0-9]{2})?"
)


def _aware(value: datetime) -> datetime:
    if value.utcoffset() is None:
        raise PydanticCustomError(
            "naive_timestamp", "Timestamp has no UTC offset; add 'Z' or '+hh:mm'"
        )
    try:
        # Every consumer compares event times across offsets: an instant that
        # cannot be expressed in UTC (year 1 or 9999 at the edge) would crash them.
        value.astimezone(UTC)
    except OverflowError:
        raise PydanticCustomError(
            "timestamp_range", "Timestamp cannot be represented in UTC"
        ) from None
    return value


def parse_timestamp(value: Any) -> datetime:
    """Accept RFC 3339 text with an offset, or an aware datetime built in Python."""
    if isinstance(value, str):
        match = _TIMESTAMP_TEXT.fullmatch(value)
        if match is None:
            raise PydanticCustomError(
                "timestamp_format", "Timestamp must be RFC 3339, e.g. 2024-05-01T12:00:00Z"
            )
        if match["offset"] is None:
            raise PydanticCustomError(
                "naive_timestamp", "Timestamp has no UTC offset; add 'Z' or '+hh:mm'"
            )
        # fromisoformat in 3.11 reads 'Z' and any number of fraction digits
        # (beyond microseconds they are truncated) but not lowercase 't'/'z'.
        try:
            parsed = datetime.fromisoformat(value.upper())
        except ValueError:
            raise PydanticCustomError(
                "timestamp_format", "Timestamp is not a real date and time"
            ) from None
        return _aware(parsed)
    if isinstance(value, datetime):
        return _aware(value)
    raise PydanticCustomError("timestamp_type", "Timestamp must be an RFC 3339 string")


def _to_utc(value: Any) -> datetime:
    return parse_timestamp(value).astimezone(UTC)


_TIMESTAMP_SCHEMA: Final = {"type": "string", "format": "date-time", "pattern": RFC3339_PATTERN}

Timestamp = Annotated[datetime, BeforeValidator(parse_timestamp), WithJsonSchema(_TIMESTAMP_SCHEMA)]
"""An instant with its original UTC offset kept (local time of day stays visible)."""

UtcTimestamp = Annotated[datetime, BeforeValidator(_to_utc), WithJsonSchema(_TIMESTAMP_SCHEMA)]
"""An instant normalised to UTC: processing times set by our own services."""

UuidText = Annotated[
    str,
    StringConstraints(pattern=UUID_PATTERN, to_lower=True),
    WithJsonSchema({"type": "string", "format": "uuid", "pattern": UUID_PATTERN}),
]
"""A UUID in its canonical hyphenated lowercase text form (uppercase input is folded)."""

IdentityText = Annotated[str, StringConstraints(min_length=1, max_length=128)]
"""A customer or anonymous id."""

Currency = Annotated[str, StringConstraints(pattern=CURRENCY_PATTERN)]
"""An ISO 4217 style three-letter uppercase currency code."""


def integral(value: Any) -> Any:
    """Turn an integral float into an int: JSON Schema counts 3.0 as an integer too.

    Constrained integers list their bounds *before* this validator, e.g.
    ``Annotated[int, Strict(), Field(ge=1), BeforeValidator(integral)]``:
    bounds placed after it would still hold but vanish from the JSON Schema.
    """
    if type(value) is float and value.is_integer():
        return int(value)
    return value


JsonInt = Annotated[int, Strict(), BeforeValidator(integral)]
"""A JSON integer: no booleans, no numeric strings, integral floats accepted."""

MAX_AMOUNT = 1e12
Amount = Annotated[float, Strict(), Field(ge=0, le=MAX_AMOUNT, allow_inf_nan=False)]
"""A non-negative JSON number up to a trillion (money amounts, durations in seconds).

The bound keeps every amount inside the warehouse's Decimal(18, 4) columns: a larger
one would be accepted here and then fail every insert of its batch."""
