"""Hand-written valid touchpoints, one per catalogue type, with every property filled in."""

import copy
from datetime import UTC, datetime
from typing import Any

NOW = datetime(2024, 5, 1, 12, 0, tzinfo=UTC)
OCCURRED_AT = "2024-05-01T13:30:00.250+02:00"
EVENT_ID = "0b5f8e9c-6a51-4f0e-9d3c-6a2b7c1d9e01"

# type -> (channel, properties). Written from EVENTS.md by hand, not from the catalogue,
# so a type or property dropped from the models shows up as a failing test.
_BY_TYPE: dict[str, tuple[str, dict[str, Any]]] = {
    "ad_impression": (
        "advertising",
        {"campaign": "spring-sale", "ad_id": "ad-1", "placement": "homepage-banner"},
    ),
    "ad_click": ("advertising", {"campaign": "spring-sale", "ad_id": "ad-1"}),
    "email_sent": ("email", {"campaign": "welcome", "url": "https://shop.example/welcome"}),
    "email_opened": ("email", {"campaign": "welcome", "url": "https://shop.example/welcome"}),
    "email_clicked": ("email", {"campaign": "welcome", "url": "https://shop.example/welcome"}),
    "site_visit": (
        "web",
        {
            "url": "https://shop.example/",
            "referrer": "https://search.example/?q=shoes",
            "utm_source": "newsletter",
            "utm_medium": "email",
            "utm_campaign": "welcome",
        },
    ),
    "page_view": ("web", {"url": "https://shop.example/help"}),
    "product_view": (
        "mobile_app",
        {"product_id": "sku-1", "price": 19.99, "currency": "EUR", "category": "shoes"},
    ),
    "search": ("web", {"query": "running shoes"}),
    "add_to_cart": (
        "web",
        {"product_id": "sku-1", "quantity": 2, "price": 19.99, "currency": "EUR"},
    ),
    "checkout_started": ("web", {"cart_value": 39.98, "currency": "EUR"}),
    "purchase": (
        "web",
        {
            "order_id": "o-100",
            "revenue": 39.98,
            "currency": "EUR",
            "items": [{"product_id": "sku-1", "quantity": 2}],
        },
    ),
    "payment_failed": ("web", {"reason": "card_declined", "order_id": "o-100"}),
    "refund": ("web", {"order_id": "o-100", "amount": 19.99, "currency": "EUR", "reason": "size"}),
    "delivery_failed": ("web", {"order_id": "o-100", "reason": "address_not_found"}),
    "support_contact": (
        "phone",
        {
            "topic": "delivery",
            "direction": "inbound",
            "wait_seconds": 95,
            "handle_seconds": 310.5,
            "agent_id": "agent-3",
            "abandoned": False,
        },
    ),
    "agent_response": ("email", {"agent_id": "agent-3"}),
    "escalation": ("phone", {"to": "tier2", "reason": "refund above limit"}),
    "case_resolved": ("phone", {"resolution": "refund issued"}),
    "case_reopened": ("chat", {"reason": "refund never arrived"}),
    "billing_inquiry": ("mail_fax", {"invoice_id": "inv-2024-07"}),
    "kb_article_view": ("self_service", {"article_id": "kb-12", "helpful": True}),
    "chatbot_session": (
        "chat",
        {"handed_off": True, "resolved": False, "intent": "where_is_my_order"},
    ),
    "ivr_session": (
        "phone",
        {"transferred_to_agent": True, "abandoned": False, "menu_path": ["billing", "2"]},
    ),
    "survey_response": (
        "email",
        {"survey": "nps", "score": 3, "comment": "slow delivery", "case_id": "case-7"},
    ),
    "review": ("web", {"rating": 2, "text": "Too small.", "product_id": "sku-1"}),
    "social_mention": (
        "social",
        {"sentiment": "negative", "text": "still waiting @shop", "public": True},
    ),
    "community_post": ("community", {"thread_id": "t-5", "kind": "question"}),
    "subscription_started": ("web", {"plan": "plus", "mrr": 9.0, "currency": "EUR"}),
    "subscription_changed": ("web", {"from_plan": "plus", "to_plan": "basic"}),
    "subscription_cancelled": ("phone", {"plan": "basic", "reason": "too expensive"}),
    "account_updated": ("web", {"fields": ["email", "address"]}),
    "store_visit": ("in_person", {"store_id": "store-berlin-1"}),
    "appointment": ("in_person", {"kind": "fitting", "status": "booked"}),
    "identify": ("web", {"traits": {"email": "ada@example.com", "plan": "plus"}}),
}

EXAMPLE_TYPES = tuple(_BY_TYPE)

# From EVENTS.md: the service events, which must carry a case_id.
CONTRACT_SERVICE_TYPES = frozenset(
    {
        "support_contact",
        "agent_response",
        "escalation",
        "case_resolved",
        "case_reopened",
        "billing_inquiry",
    }
)


def properties_of(type_name: str) -> dict[str, Any]:
    """A fresh copy of the example properties of a type."""
    return copy.deepcopy(_BY_TYPE[type_name][1])


def example(type_name: str, **overrides: Any) -> dict[str, Any]:
    """A valid touchpoint of `type_name` as decoded JSON; `overrides` replace fields."""
    channel, properties = _BY_TYPE[type_name]
    event: dict[str, Any] = {
        "event_id": EVENT_ID,
        "schema_version": 1,
        "type": type_name,
        "occurred_at": OCCURRED_AT,
        "channel": channel,
        "customer_id": "cust-42",
        "session_id": "sess-1",
        "source": "unit-test",
        "properties": copy.deepcopy(properties),
    }
    if type_name in CONTRACT_SERVICE_TYPES:
        event["case_id"] = "case-7"
    if type_name == "identify":
        event["anonymous_id"] = "anon-9"
    event.update(overrides)
    return event


def wrong_value_for(value: Any) -> Any:
    """A JSON value of a different kind than `value` (an object for anything but objects)."""
    return "not an object" if isinstance(value, dict) else {"unexpected": "object"}
