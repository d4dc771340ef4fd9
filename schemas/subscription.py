"""Property models of subscription and account touchpoints."""

from pydantic import Field

from schemas.envelope import TouchpointProperties
from schemas.values import Amount, Currency


class SubscriptionStartedProperties(TouchpointProperties):
    """A subscription began."""

    plan: str
    mrr: Amount | None = Field(default=None, description="Monthly recurring revenue.")
    currency: Currency | None = None


class SubscriptionChangedProperties(TouchpointProperties):
    """The customer moved to another plan."""

    from_plan: str
    to_plan: str


class SubscriptionCancelledProperties(TouchpointProperties):
    """A subscription was cancelled."""

    plan: str
    reason: str | None = None


class AccountUpdatedProperties(TouchpointProperties):
    """Account details were changed."""

    fields: list[str] | None = Field(default=None, description="Names of the changed fields.")
