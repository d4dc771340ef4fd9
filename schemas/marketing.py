"""Property models of marketing touchpoints: ads and campaign emails."""

from pydantic import Field

from schemas.envelope import TouchpointProperties


class AdImpressionProperties(TouchpointProperties):
    """An ad was shown to the customer."""

    campaign: str
    ad_id: str | None = None
    placement: str | None = None


class AdClickProperties(TouchpointProperties):
    """The customer clicked an ad."""

    campaign: str
    ad_id: str | None = None


class EmailProperties(TouchpointProperties):
    """A campaign email was sent, opened or clicked."""

    campaign: str
    url: str | None = Field(default=None, description="The clicked or featured link.")
