"""The dead-letter record written to `touchpoints.dlq` for input that was refused."""

import base64
import binascii
from datetime import datetime
from typing import Literal, Self

from pydantic import BaseModel, ConfigDict, Field, model_validator

from schemas.codec import InvalidTouchpointError
from schemas.values import UtcTimestamp

RawEncoding = Literal["utf-8", "base64"]

# A dead letter must itself fit in a Kafka record (1 MiB by default) even when the
# refused payload was huge and JSON escaping inflates it up to six times; past this
# many bytes only a prefix is kept. The whole original stays readable at its source
# topic, partition and offset.
MAX_RAW_BYTES = 128 * 1024


class DeadLetterError(BaseModel):
    """Why the message was refused, and at which stage."""

    model_config = ConfigDict(frozen=True)

    reason: str = Field(description="Machine-readable reason code, e.g. invalid_json.")
    detail: str = Field(description="One human-readable sentence.")
    field: str | None = Field(default=None, description="Dotted path of the offending field.")
    stage: str = Field(description="The processing stage that refused it, e.g. validate.")


class DeadLetter(BaseModel):
    """A refused message: the error, the original bytes and where they were read."""

    model_config = ConfigDict(frozen=True)

    error: DeadLetterError
    raw: str = Field(description="The original bytes: UTF-8 text, or base64 if not UTF-8.")
    raw_encoding: RawEncoding = Field(description="How `raw` holds the original bytes.")
    raw_size: int | None = Field(
        default=None, ge=0, description="Size of the original message in bytes."
    )
    raw_truncated: bool = Field(
        default=False,
        description="True when `raw` holds only the first bytes of an over-long message.",
    )
    topic: str = Field(description="Topic the message was read from.")
    partition: int = Field(ge=0)
    offset: int = Field(ge=0)
    received_at: UtcTimestamp = Field(description="When the message was refused, UTC.")

    @model_validator(mode="after")
    def _raw_is_decodable(self) -> Self:
        self.raw_bytes()
        return self

    @classmethod
    def from_error(
        cls,
        raw: bytes,
        error: InvalidTouchpointError,
        *,
        topic: str,
        partition: int,
        offset: int,
        received_at: datetime,
        stage: str = "validate",
    ) -> Self:
        """Record `raw` as refused by `error` at `stage`."""
        text: str
        encoding: RawEncoding
        size = len(raw)
        raw = bytes(raw[:MAX_RAW_BYTES])
        try:
            # Strict UTF-8 (no surrogates), so encoding the text gives back `raw` exactly.
            text, encoding = bytes(raw).decode("utf-8"), "utf-8"
        except UnicodeDecodeError:
            text, encoding = base64.b64encode(raw).decode("ascii"), "base64"
        return cls(
            error=DeadLetterError(
                reason=error.reason, detail=error.detail, field=error.field, stage=stage
            ),
            raw=text,
            raw_encoding=encoding,
            raw_size=size,
            raw_truncated=size > MAX_RAW_BYTES,
            topic=topic,
            partition=partition,
            offset=offset,
            received_at=received_at,
        )

    def raw_bytes(self) -> bytes:
        """The original message bytes (their first MAX_RAW_BYTES if `raw_truncated`)."""
        if self.raw_encoding == "utf-8":
            return self.raw.encode("utf-8")
        try:
            return base64.b64decode(self.raw, validate=True)
        except binascii.Error as error:
            raise ValueError(f"raw is not valid base64: {error}") from None
