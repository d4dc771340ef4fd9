"""The catalogue of touchpoint types: the one place that lists them."""

from collections.abc import Mapping
from dataclasses import dataclass
from enum import StrEnum
from types import MappingProxyType
from typing import Final

from schemas import (
    commerce,
    community,
    feedback,
    identity,
    in_person,
    marketing,
    self_service,
    service,
    subscription,
)
from schemas.envelope import TouchpointProperties


class BusinessArea(StrEnum):
    """The part of the business a touchpoint belongs to."""

    MARKETING = "marketing"
    COMMERCE = "commerce"
    SERVICE = "service"
    SELF_SERVICE = "self_service"
    FEEDBACK = "feedback"
    COMMUNITY = "community"
    SUBSCRIPTION = "subscription"
    IN_PERSON = "in_person"
    IDENTITY = "identity"


@dataclass(frozen=True, slots=True)
class TouchpointKind:
    """What the contract says about one touchpoint type."""

    name: str
    area: BusinessArea
    properties: type[TouchpointProperties]
    description: str

    @property
    def requires_case_id(self) -> bool:
        return self.area is BusinessArea.SERVICE

    @property
    def requires_both_ids(self) -> bool:
        # Only identify links the two ids, so only identify needs both.
        return self.area is BusinessArea.IDENTITY


_A = BusinessArea
# billing_inquiry is listed under "subscription and account" in EVENTS.md but is
# a service event there too (case_id required); its area is service so that
# "needs a case" and "is service" never disagree.
_KINDS: Final = (
    TouchpointKind(
        "ad_impression",
        _A.MARKETING,
        marketing.AdImpressionProperties,
        "An ad was shown to the customer.",
    ),
    TouchpointKind(
        "ad_click", _A.MARKETING, marketing.AdClickProperties, "The customer clicked an ad."
    ),
    TouchpointKind(
        "email_sent", _A.MARKETING, marketing.EmailProperties, "A campaign email was sent."
    ),
    TouchpointKind(
        "email_opened", _A.MARKETING, marketing.EmailProperties, "A campaign email was opened."
    ),
    TouchpointKind(
        "email_clicked",
        _A.MARKETING,
        marketing.EmailProperties,
        "A link in a campaign email was clicked.",
    ),
    TouchpointKind(
        "site_visit", _A.COMMERCE, commerce.SiteVisitProperties, "A visit to the site or app began."
    ),
    TouchpointKind(
        "page_view", _A.COMMERCE, commerce.PageViewProperties, "A page or screen was viewed."
    ),
    TouchpointKind(
        "product_view", _A.COMMERCE, commerce.ProductViewProperties, "A product page was viewed."
    ),
    TouchpointKind(
        "search", _A.COMMERCE, commerce.SearchProperties, "The customer searched the site or app."
    ),
    TouchpointKind(
        "add_to_cart", _A.COMMERCE, commerce.AddToCartProperties, "A product was added to the cart."
    ),
    TouchpointKind(
        "checkout_started",
        _A.COMMERCE,
        commerce.CheckoutStartedProperties,
        "The customer started checking out a cart.",
    ),
    TouchpointKind(
        "purchase", _A.COMMERCE, commerce.PurchaseProperties, "An order was placed and paid."
    ),
    TouchpointKind(
        "payment_failed", _A.COMMERCE, commerce.PaymentFailedProperties, "A payment attempt failed."
    ),
    TouchpointKind(
        "refund", _A.COMMERCE, commerce.RefundProperties, "Money was paid back for an order."
    ),
    TouchpointKind(
        "delivery_failed",
        _A.COMMERCE,
        commerce.DeliveryFailedProperties,
        "An order could not be delivered.",
    ),
    TouchpointKind(
        "support_contact",
        _A.SERVICE,
        service.SupportContactProperties,
        "A call, email, chat, social message, desk visit or fax about a case.",
    ),
    TouchpointKind(
        "agent_response",
        _A.SERVICE,
        service.AgentResponseProperties,
        "The company answered the case.",
    ),
    TouchpointKind(
        "escalation",
        _A.SERVICE,
        service.EscalationProperties,
        "The case was handed to a supervisor or specialist team.",
    ),
    TouchpointKind(
        "case_resolved",
        _A.SERVICE,
        service.CaseResolvedProperties,
        "The case was closed as resolved.",
    ),
    TouchpointKind(
        "case_reopened",
        _A.SERVICE,
        service.CaseReopenedProperties,
        "A resolved case was opened again.",
    ),
    TouchpointKind(
        "billing_inquiry",
        _A.SERVICE,
        service.BillingInquiryProperties,
        "The customer asked about a bill.",
    ),
    TouchpointKind(
        "kb_article_view",
        _A.SELF_SERVICE,
        self_service.KbArticleViewProperties,
        "A help-centre article was read.",
    ),
    TouchpointKind(
        "chatbot_session",
        _A.SELF_SERVICE,
        self_service.ChatbotSessionProperties,
        "A conversation with a bot ended.",
    ),
    TouchpointKind(
        "ivr_session",
        _A.SELF_SERVICE,
        self_service.IvrSessionProperties,
        "A call through the phone menu ended.",
    ),
    TouchpointKind(
        "survey_response",
        _A.FEEDBACK,
        feedback.SurveyResponseProperties,
        "An answer to a CSAT, NPS or CES survey.",
    ),
    TouchpointKind(
        "review", _A.FEEDBACK, feedback.ReviewProperties, "A product or service review."
    ),
    TouchpointKind(
        "social_mention",
        _A.FEEDBACK,
        feedback.SocialMentionProperties,
        "The company or product was mentioned on social media.",
    ),
    TouchpointKind(
        "community_post",
        _A.COMMUNITY,
        community.CommunityPostProperties,
        "The customer wrote in the community forum.",
    ),
    TouchpointKind(
        "subscription_started",
        _A.SUBSCRIPTION,
        subscription.SubscriptionStartedProperties,
        "A subscription began.",
    ),
    TouchpointKind(
        "subscription_changed",
        _A.SUBSCRIPTION,
        subscription.SubscriptionChangedProperties,
        "The customer moved to another plan.",
    ),
    TouchpointKind(
        "subscription_cancelled",
        _A.SUBSCRIPTION,
        subscription.SubscriptionCancelledProperties,
        "A subscription was cancelled.",
    ),
    TouchpointKind(
        "account_updated",
        _A.SUBSCRIPTION,
        subscription.AccountUpdatedProperties,
        "Account details were changed.",
    ),
    TouchpointKind(
        "store_visit", _A.IN_PERSON, in_person.StoreVisitProperties, "The customer visited a store."
    ),
    TouchpointKind(
        "appointment",
        _A.IN_PERSON,
        in_person.AppointmentProperties,
        "An appointment was booked, attended or missed.",
    ),
    TouchpointKind(
        "identify",
        _A.IDENTITY,
        identity.IdentifyProperties,
        "An anonymous id now belongs to a known customer.",
    ),
)

CATALOGUE: Final[Mapping[str, TouchpointKind]] = MappingProxyType(
    {kind.name: kind for kind in _KINDS}
)
"""Touchpoint type name -> what the contract says about it, in EVENTS.md order."""

TOUCHPOINT_TYPES: Final[tuple[str, ...]] = tuple(CATALOGUE)

SERVICE_TYPES: Final[frozenset[str]] = frozenset(
    kind.name for kind in _KINDS if kind.requires_case_id
)
"""Types that must carry a case_id."""


def area_of(type_name: str) -> BusinessArea:
    """The business area of a touchpoint type (KeyError for an unknown type)."""
    return CATALOGUE[type_name].area
