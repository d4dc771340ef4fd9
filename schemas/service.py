"""Property models of service touchpoints: contacts and the life of a support case."""

from typing import Literal

from schemas.envelope import TouchpointProperties
from schemas.values import Amount


class SupportContactProperties(TouchpointProperties):
    """A call, email, chat, social message, desk visit or fax about a case."""

    topic: str
    direction: Literal["inbound", "outbound"] | None = None
    wait_seconds: Amount | None = None
    handle_seconds: Amount | None = None
    agent_id: str | None = None
    abandoned: bool | None = None


class AgentResponseProperties(TouchpointProperties):
    """The company answered the case."""

    agent_id: str | None = None


class EscalationProperties(TouchpointProperties):
    """The case was handed to a supervisor or specialist team."""

    to: str
    reason: str | None = None


class CaseResolvedProperties(TouchpointProperties):
    """The case was closed as resolved."""

    resolution: str | None = None


class CaseReopenedProperties(TouchpointProperties):
    """A resolved case was opened again."""

    reason: str | None = None


class BillingInquiryProperties(TouchpointProperties):
    """The customer asked about a bill (a service event, so it has a case)."""

    invoice_id: str | None = None
