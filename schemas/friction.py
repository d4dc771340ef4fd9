"""The friction event published on the `friction` topic, and its deterministic id."""

import uuid
from collections.abc import Iterable
from enum import StrEnum
from typing import Final, Literal

import orjson
from pydantic import BaseModel, ConfigDict, Field

from schemas.envelope import Channel
from schemas.values import Timestamp, UtcTimestamp, UuidText

FRICTION_NAMESPACE: Final = uuid.UUID("f65520d2-333e-43a1-b55c-983bea23caca")
"""UUIDv5 namespace of friction ids. Never change it: stored ids would stop matching."""


class Severity(StrEnum):
    """How much a friction hurts the customer."""

    LOW = "low"
    MEDIUM = "medium"
    HIGH = "high"
    CRITICAL = "critical"


class FrictionEvent(BaseModel):
    """A moment where the journey got harder for the customer."""

    model_config = ConfigDict(extra="allow", frozen=True)

    friction_id: UuidText = Field(description="friction_id_for(rule, customer_key, evidence).")
    rule: str = Field(min_length=1, description="The rule that found it, e.g. repeat_contact.")
    kind: str | None = Field(
        default=None,
        description="The rule's variant, e.g. first_response or resolution for sla_breach.",
    )
    severity: Severity
    customer_key: str = Field(min_length=1, description="Canonical customer.")
    occurred_at: Timestamp = Field(
        description="Event time of the last triggering event, or the deadline of a breach."
    )
    detected_at: UtcTimestamp = Field(description="Processing time, UTC.")
    stage: str = Field(description="The customer's journey stage at detection.")
    case_id: str | None = None
    channel: Channel | None = None
    evidence: list[UuidText] = Field(description="event_ids of the triggering touchpoints.")
    message: str = Field(description="One human-readable sentence.")
    status: Literal["detected", "retracted"] = Field(
        default="detected",
        description="detected: the friction holds (a later record of the same friction_id "
        "replaces an earlier one); retracted: late evidence disproved it (wire format 1.1).",
    )


def friction_id_for(rule: str, customer_key: str, evidence_event_ids: Iterable[str],
                    kind: str | None = None) -> str:
    """The deterministic id of a friction: UUIDv5 of rule, customer key and evidence.

    The event ids are lowercased, de-duplicated and sorted first, so the id does
    not depend on the order in which the triggering events arrived (replays and
    out-of-order delivery find the same friction again). `kind` separates two
    variants of one rule on the same evidence (a case that misses both its
    first-response and its resolution deadline); without it the id is the plain
    [rule, customer_key, evidence] of EVENTS.md.
    """
    evidence = sorted({event_id.lower() for event_id in evidence_event_ids})
    # A JSON array keeps the parts apart whatever characters they contain.
    parts: list[object] = [rule, customer_key, evidence]
    if kind is not None:
        parts.append(kind)
    name = orjson.dumps(parts).decode("utf-8")
    return str(uuid.uuid5(FRICTION_NAMESPACE, name))
