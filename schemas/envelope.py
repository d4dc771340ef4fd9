"""The touchpoint envelope: fields and rules every touchpoint type shares."""

from datetime import UTC, datetime, timedelta
from enum import StrEnum
from typing import Annotated, Any, Final, Self

from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    ValidationInfo,
    WithJsonSchema,
    field_validator,
    model_validator,
)
from pydantic_core import PydanticCustomError

from schemas.values import IdentityText, JsonInt, Timestamp, UtcTimestamp, UuidText

SCHEMA_VERSION: Final = 1
NOW_CONTEXT_KEY: Final = "now"
"""Validation context key holding the aware datetime that the future check compares to."""
MAX_FUTURE_SKEW: Final = timedelta(hours=24)


class Channel(StrEnum):
    """Where a touchpoint happened."""

    WEB = "web"
    MOBILE_APP = "mobile_app"
    EMAIL = "email"
    PHONE = "phone"
    CHAT = "chat"
    SOCIAL = "social"
    IN_PERSON = "in_person"
    SELF_SERVICE = "self_service"
    COMMUNITY = "community"
    ADVERTISING = "advertising"
    MAIL_FAX = "mail_fax"
    SMS = "sms"


class TouchpointProperties(BaseModel):
    """Type-specific properties; unknown extra properties are kept as given."""

    # strict: JSON true is not the string "true", and "12" is not the number 12.
    model_config = ConfigDict(extra="allow", frozen=True, strict=True)


def _only_version_1(value: int) -> int:
    if value != SCHEMA_VERSION:
        raise PydanticCustomError(
            "unsupported_schema_version",
            "schema_version {version} is not supported; this contract is version 1",
            {"version": value},
        )
    return value


SchemaVersion = Annotated[
    JsonInt,
    AfterValidator(_only_version_1),
    WithJsonSchema({"type": "integer", "const": SCHEMA_VERSION}),
]


def _identity_rule(schema: dict[str, Any]) -> None:
    # JSON Schema side of the missing_identity rule: a null id does not count.
    schema["anyOf"] = [
        {"required": [name], "properties": {name: {"type": "string"}}}
        for name in ("customer_id", "anonymous_id")
    ]


EARLIEST_OCCURRED_AT = datetime(1970, 1, 1, tzinfo=UTC)


class Envelope(BaseModel):
    """The fields of EVENTS.md shared by every touchpoint type."""

    model_config = ConfigDict(extra="allow", frozen=True, json_schema_extra=_identity_rule)

    event_id: UuidText = Field(description="Producer-assigned idempotency key.")
    schema_version: SchemaVersion = Field(description="Wire format version; always 1.")
    type: str = Field(description="The touchpoint type, one of the catalogue.")
    occurred_at: Timestamp = Field(description="Event time, RFC 3339 with offset or Z.")
    channel: Channel = Field(description="Where the touchpoint happened.")
    customer_id: IdentityText | None = Field(default=None, description="Known customer.")
    anonymous_id: IdentityText | None = Field(
        default=None, description="Device, cookie or caller id before identification."
    )
    session_id: str | None = Field(default=None, description="Web or app session.")
    case_id: str | None = Field(default=None, description="Support case or ticket id.")
    source: str | None = Field(default=None, description="The producing system.")
    properties: TouchpointProperties = Field(description="Type-specific properties.")
    received_at: UtcTimestamp | None = Field(
        default=None, description="Set by the validator: processing time, UTC."
    )
    customer_key: str | None = Field(
        default=None, description="Set by the validator: canonical customer id."
    )

    @field_validator("occurred_at")
    @classmethod
    def _not_far_future(cls, value: datetime, info: ValidationInfo) -> datetime:
        # The clock is the caller's: the validator passes `now`, replays pass none.
        if value < EARLIEST_OCCURRED_AT:
            # The warehouse stores event time as DateTime64 from the Unix epoch on; an
            # older time would stall the sink, so it is refused at the door.
            raise PydanticCustomError(
                "timestamp_too_early", "occurred_at is before 1970-01-01T00:00:00Z"
            )
        context = info.context
        now = context.get(NOW_CONTEXT_KEY) if isinstance(context, dict) else None
        if now is not None and value - now > MAX_FUTURE_SKEW:
            raise PydanticCustomError(
                "future_timestamp",
                "occurred_at is more than 24 hours after the time of validation",
            )
        return value

    @model_validator(mode="after")
    def _has_identity(self) -> Self:
        if self.customer_id is None and self.anonymous_id is None:
            raise PydanticCustomError(
                "missing_identity", "Neither customer_id nor anonymous_id is given"
            )
        return self
