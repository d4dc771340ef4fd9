"""What the friction rules read of a touchpoint: a small, serialisable record.

The rules keep a customer's recent touchpoints so that a late one can be put in its
place in event time and the friction found again (`projections.friction.timeline`).
Whole touchpoints would be large and slow to decode; a `FrictionSignal` holds only
the fields some rule reads, and turns into compact JSON and back.
"""

from __future__ import annotations

from dataclasses import dataclass, fields
from typing import Any, Final

from projections.journey import StageSignal, read_signal
from schemas.commerce import CheckoutStartedProperties
from schemas.feedback import ReviewProperties, SocialMentionProperties, SurveyResponseProperties
from schemas.self_service import ChatbotSessionProperties, IvrSessionProperties
from schemas.service import SupportContactProperties
from schemas.touchpoint import Touchpoint

# What counts as a customer's contact and as the company's first response about a case:
# the one definition, read by the friction rules here and bound into the KPI SQL
# (projections/clickhouse/sql.py). A support_contact is a contact unless its direction is
# outbound, and then it is a response.
SUPPORT_CONTACT: Final = "support_contact"
OUTBOUND: Final = "outbound"
CONTACT_TYPES: Final = frozenset({"billing_inquiry"})
FIRST_RESPONSE_TYPES: Final = frozenset({"agent_response", "case_resolved"})


@dataclass(frozen=True, slots=True)
class FrictionSignal:
    """One touchpoint as the rules see it. Times are epoch milliseconds of event time."""

    event_id: str
    type: str
    at: int
    channel: str
    case_id: str | None = None
    stage_signal: str = StageSignal.ACTIVITY.value
    # service
    direction: str | None = None  # support_contact: inbound, outbound or unset (inbound)
    topic: str | None = None  # support_contact's topic ("billing" for a billing inquiry)
    abandoned: bool | None = None  # support_contact (in the queue) or ivr_session
    wait_seconds: float | None = None
    handed_off: bool | None = None  # chatbot_session
    resolved: bool | None = None  # chatbot_session
    to: str | None = None  # escalation
    reason: str | None = None  # payment_failed, delivery_failed, refund
    # commerce
    cart_value: float | None = None  # checkout_started
    # feedback
    survey: str | None = None
    score: int | None = None
    about_case: str | None = None  # the case a survey is about
    rating: int | None = None
    sentiment: str | None = None
    public: bool | None = None

    @property
    def order(self) -> tuple[int, str]:
        """Event-time order; the event id breaks ties so every order is total."""
        return (self.at, self.event_id)

    @property
    def is_contact(self) -> bool:
        """An inbound support contact (direction inbound or unset) or a billing inquiry."""
        if self.type in CONTACT_TYPES:
            return True
        return self.type == SUPPORT_CONTACT and self.direction != OUTBOUND

    @property
    def is_first_response(self) -> bool:
        """An agent response, a resolution or an outbound contact: the company answered."""
        if self.type in FIRST_RESPONSE_TYPES:
            return True
        return self.type == SUPPORT_CONTACT and self.direction == OUTBOUND

    def to_dict(self) -> dict[str, Any]:
        """Only the fields that are set: most touchpoints need five or six."""
        data: dict[str, Any] = {}
        for f in fields(self):
            value = getattr(self, f.name)
            if value is not None and (f.name != "stage_signal"
                                      or value != StageSignal.ACTIVITY.value):
                data[f.name] = value
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> FrictionSignal:
        return cls(**data)


def signal_of(tp: Touchpoint) -> FrictionSignal:
    """The fields of `tp` that some friction rule reads."""
    props = tp.properties
    extra: dict[str, Any] = {}
    if isinstance(props, SupportContactProperties):
        extra = {"direction": props.direction, "topic": props.topic,
                 "abandoned": props.abandoned,
                 "wait_seconds": None if props.wait_seconds is None
                 else float(props.wait_seconds)}
    elif tp.type == "billing_inquiry":
        extra = {"topic": "billing"}
    elif isinstance(props, IvrSessionProperties):
        extra = {"abandoned": props.abandoned}
    elif isinstance(props, ChatbotSessionProperties):
        extra = {"handed_off": props.handed_off, "resolved": props.resolved}
    elif isinstance(props, CheckoutStartedProperties):
        extra = {"cart_value": float(props.cart_value)}
    elif isinstance(props, SurveyResponseProperties):
        extra = {"survey": props.survey, "score": props.score, "about_case": props.case_id}
    elif isinstance(props, ReviewProperties):
        extra = {"rating": props.rating}
    elif isinstance(props, SocialMentionProperties):
        extra = {"sentiment": props.sentiment, "public": props.public}
    elif tp.type == "escalation":
        extra = {"to": getattr(props, "to", None)}
    if tp.type in ("payment_failed", "delivery_failed", "refund"):
        extra["reason"] = getattr(props, "reason", None)
    return FrictionSignal(
        event_id=str(tp.event_id), type=tp.type,
        at=int(tp.occurred_at.timestamp() * 1000), channel=tp.channel.value,
        case_id=tp.case_id, stage_signal=read_signal(tp).value, **extra)
