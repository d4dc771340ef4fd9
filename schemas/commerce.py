"""Property models of web, app and commerce touchpoints: browsing, carts, orders."""

from typing import Annotated, Any

from pydantic import BeforeValidator, Field, Strict

from schemas.envelope import TouchpointProperties
from schemas.values import Amount, Currency, integral

Quantity = Annotated[int, Strict(), Field(ge=1), BeforeValidator(integral)]


class SiteVisitProperties(TouchpointProperties):
    """A visit to the site or app began."""

    url: str
    referrer: str | None = None
    utm_source: str | None = None
    utm_medium: str | None = None
    utm_campaign: str | None = None


class PageViewProperties(TouchpointProperties):
    """A page or screen was viewed."""

    url: str


class ProductViewProperties(TouchpointProperties):
    """A product page was viewed."""

    product_id: str
    price: Amount | None = None
    currency: Currency | None = None
    category: str | None = None


class SearchProperties(TouchpointProperties):
    """The customer searched the site or app."""

    query: str


class AddToCartProperties(TouchpointProperties):
    """A product was added to the cart."""

    product_id: str
    quantity: Quantity
    price: Amount | None = None
    currency: Currency | None = None


class CheckoutStartedProperties(TouchpointProperties):
    """The customer started checking out a cart."""

    cart_value: Amount
    currency: Currency


class PurchaseProperties(TouchpointProperties):
    """An order was placed and paid."""

    order_id: str
    revenue: Amount
    currency: Currency
    items: list[dict[str, Any]] | None = Field(
        default=None, description="Line items, one object each (product_id, quantity, ...)."
    )


class PaymentFailedProperties(TouchpointProperties):
    """A payment attempt failed."""

    reason: str
    order_id: str | None = None


class RefundProperties(TouchpointProperties):
    """Money was paid back for an order."""

    order_id: str
    amount: Amount
    currency: Currency
    reason: str | None = None


class DeliveryFailedProperties(TouchpointProperties):
    """An order could not be delivered."""

    order_id: str
    reason: str | None = None
