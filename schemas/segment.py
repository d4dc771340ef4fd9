"""Segment's tracking API mapped onto the touchpoint contract, as pure functions.

`segment_touchpoint` turns one Segment call (track, identify, page, screen, alias, group)
into a candidate touchpoint dict. It judges only what is Segment's own shape - a message
that is no object, a call type Segment does not have, a track without an event name -
and raises `InvalidTouchpointError` for those; everything else is the codec's to judge,
exactly as the validator will (docs/SEGMENT.md has the whole mapping).
"""

from __future__ import annotations

import re
import uuid
from collections.abc import Callable, Mapping
from datetime import datetime
from typing import Any, Final

import orjson
from pydantic import BaseModel, ConfigDict, Field
from pydantic_core import PydanticCustomError

from schemas.catalogue import CATALOGUE
from schemas.codec import InvalidTouchpointError, Reason
from schemas.envelope import SCHEMA_VERSION, Channel
from schemas.values import parse_timestamp

SEGMENT_NAMESPACE: Final = uuid.UUID("a5e74443-bd3c-4604-b012-49ba938d8657")
"""uuid5 namespace of the event ids made from Segment messageIds that are not UUIDs."""

CALLS: Final = ("track", "identify", "page", "screen", "alias", "group")
SHORT_PATHS: Final = {call[0]: call for call in CALLS}
"""analytics.js posts each call to its first letter: /v1/t, /v1/i, /v1/p, ..."""

GENERIC_TRACK: Final = "track"
"""The touchpoint type of a track call whose name is no known touchpoint type."""
DEFAULT_CURRENCY: Final = "USD"
"""Segment's e-commerce spec reads amounts without a currency as US dollars."""
SOURCE: Final = "segment"
STAGE: Final = "segment"
"""The dead-letter stage of a Segment call refused before or after its mapping."""

# A message's own fields that say nothing about the event itself: left out of the
# content an event id is derived from when there is no messageId, so a retry (new
# sentAt) gets the same id.
_TRANSPORT_FIELDS: Final = frozenset({"sentAt", "writeKey", "_metadata"})
_SEGMENT_CHANNELS: Final = {"browser": Channel.WEB, "mobile": Channel.MOBILE_APP}
_CHANNELS: Final = frozenset(channel.value for channel in Channel)


def event_id_of(message: Mapping[str, Any]) -> str:
    """The touchpoint's event_id: the messageId when it is a UUID, else a uuid5 of it.

    Without a messageId the id is a uuid5 of the message's content, so that a client
    resending the same message is recognised as a repeat.
    """
    message_id = message.get("messageId")
    if isinstance(message_id, str) and message_id:
        try:
            return str(uuid.UUID(message_id))
        except ValueError:
            return str(uuid.uuid5(SEGMENT_NAMESPACE, message_id))
    if isinstance(message_id, int) and not isinstance(message_id, bool):
        return str(uuid.uuid5(SEGMENT_NAMESPACE, str(message_id)))
    content = {k: v for k, v in message.items() if k not in _TRANSPORT_FIELDS}
    canonical = orjson.dumps(content, option=orjson.OPT_SORT_KEYS).decode()
    return str(uuid.uuid5(SEGMENT_NAMESPACE, canonical))


def _instant(value: Any) -> datetime | None:
    try:
        return parse_timestamp(value)
    except PydanticCustomError:
        return None


def occurred_at_of(message: Mapping[str, Any], received_at: datetime,
                   sent_at: Any = None) -> Any:
    """Event time with the client's clock skew taken out, Segment's rule:
    `receivedAt - (sentAt - originalTimestamp)`.

    The client's time is `originalTimestamp`, else `timestamp`; `sentAt` is the
    message's own, else `sent_at` (a batch's). Without a client time the event
    happened when it was received; without a readable sentAt the client's time is
    taken as it is. A client time that is no RFC 3339 instant is passed on unchanged
    for the codec to refuse (naive_timestamp, invalid_field).
    """
    original = message.get("originalTimestamp")
    if original is None:
        original = message.get("timestamp")
    if original is None:
        return received_at.isoformat()
    when = _instant(original)
    if when is None:
        return original
    sent = _instant(message.get("sentAt", sent_at))
    if sent is None:
        return original
    try:
        # when + (receivedAt - sentAt) keeps the client's UTC offset (its local time).
        return (when + (received_at - sent)).isoformat()
    except OverflowError:
        return original


def channel_of(call: str, context: Mapping[str, Any]) -> str:
    """context.channel when it names one of ours (or browser/mobile), else mobile_app for
    screen calls and app contexts, else web."""
    given = context.get("channel")
    if isinstance(given, str):
        if given in _CHANNELS:
            return given
        if given in _SEGMENT_CHANNELS:
            return _SEGMENT_CHANNELS[given].value
    if call == "screen" or isinstance(context.get("app"), Mapping):
        return Channel.MOBILE_APP.value
    return Channel.WEB.value


def _identity(value: Any) -> Any:
    if value is None or value == "":
        return None
    if isinstance(value, int) and not isinstance(value, bool):
        return str(value)  # Segment's libraries accept numeric ids
    return value


def _text_id(value: Any) -> Any:
    if isinstance(value, int) and not isinstance(value, bool):
        return str(value)
    return value


def _first(props: Mapping[str, Any], *names: str) -> Any:
    for name in names:
        value = props.get(name)
        if value is not None:
            return value
    return None


def _with(props: Mapping[str, Any], **ours: Any) -> dict[str, Any]:
    # Segment's own properties are kept as the contract's extra properties; ours are
    # added where Segment names them differently, never over a value given under our name.
    out = dict(props)
    for name, value in ours.items():
        if value is not None and out.get(name) is None:
            out[name] = value
    return out


def _with_ids(props: dict[str, Any], *names: str) -> dict[str, Any]:
    # Segment's ids are strings; its libraries let numbers through, ours do not.
    for name in names:
        if name in props:
            props[name] = _text_id(props[name])
    return props


def _product_id(props: Mapping[str, Any]) -> Any:
    return _first(props, "product_id", "sku", "id")


def _money(props: Mapping[str, Any], amount_field: str, *names: str) -> dict[str, Any]:
    amount = _first(props, *names)
    return _with(props, **{amount_field: amount},
                 currency=DEFAULT_CURRENCY if amount is not None else None)


def _products_searched(props: Mapping[str, Any]) -> dict[str, Any]:
    return _with(props)


def _product_viewed(props: Mapping[str, Any]) -> dict[str, Any]:
    return _with_ids(_with(props, product_id=_product_id(props)), "product_id")


def _product_added(props: Mapping[str, Any]) -> dict[str, Any]:
    # Segment's quantity is optional: one product was added.
    return _with_ids(_with(props, product_id=_product_id(props), quantity=1), "product_id")


def _checkout_started(props: Mapping[str, Any]) -> dict[str, Any]:
    return _money(props, "cart_value", "value", "total", "revenue")


def _order_completed(props: Mapping[str, Any]) -> dict[str, Any]:
    products = props.get("products")
    return _with_ids(_with(_money(props, "revenue", "revenue", "total", "value"),
                           items=products if isinstance(products, list) else None), "order_id")


def _order_refunded(props: Mapping[str, Any]) -> dict[str, Any]:
    return _with_ids(_money(props, "amount", "total", "revenue", "value"), "order_id")


_Mapper = Callable[[Mapping[str, Any]], dict[str, Any]]

ECOMMERCE: Final[Mapping[str, tuple[str, _Mapper]]] = {
    "products searched": ("search", _products_searched),
    "product viewed": ("product_view", _product_viewed),
    "product added": ("add_to_cart", _product_added),
    "checkout started": ("checkout_started", _checkout_started),
    "order completed": ("purchase", _order_completed),
    "order refunded": ("refund", _order_refunded),
}
"""Segment e-commerce spec events (by normalised name) -> our type and property mapping.
Spec events missing here (Product Clicked, Payment Info Entered, Cart Viewed, ...) have
no touchpoint type of their own and become generic `track` touchpoints."""


def spec_name(event: str) -> str:
    """'Order Completed', 'order_completed' and 'order completed' are one spec event."""
    return re.sub(r"[\s_]+", " ", event.strip()).lower()


def track_type(event: str) -> str:
    """The touchpoint type a track call of this name becomes."""
    spec = ECOMMERCE.get(spec_name(event))
    if spec is not None:
        return spec[0]
    if event in CATALOGUE:
        return event
    return GENERIC_TRACK


def _track(message: Mapping[str, Any], props: Any) -> tuple[str, Any]:
    event = message.get("event")
    if event is None or event == "":
        raise InvalidTouchpointError(
            Reason.MISSING_FIELD, "A Segment track call needs an event name.", "event")
    if not isinstance(event, str):
        raise InvalidTouchpointError(
            Reason.INVALID_FIELD, "Field 'event' is invalid: it must be a string.", "event")
    if not isinstance(props, Mapping):
        return track_type(event), props
    spec = ECOMMERCE.get(spec_name(event))
    if spec is not None:
        return spec[0], spec[1](props)
    if event in CATALOGUE:
        return event, dict(props)
    return GENERIC_TRACK, {**props, "event": event}


def _page(message: Mapping[str, Any], props: Any, context: Mapping[str, Any],
          screen: bool) -> Any:
    if not isinstance(props, Mapping):
        return props
    name = message.get("name")
    page = context.get("page")
    url = props.get("url")
    if url is None and isinstance(page, Mapping):
        url = page.get("url")
    if url is None and screen and isinstance(name, str):
        url = f"screen:{name}"  # an app screen has no URL: its name stands for it
    return _with(props, url=url, name=name, category=message.get("category"))


def _traits(message: Mapping[str, Any], context: Mapping[str, Any]) -> Any:
    traits = message.get("traits")
    return context.get("traits") if traits is None else traits


def _account_updated(traits: Any, **extra: Any) -> dict[str, Any]:
    props: dict[str, Any] = {}
    if isinstance(traits, Mapping):
        props["fields"] = sorted(str(name) for name in traits)
    if traits is not None:
        props["traits"] = traits
    props.update({k: v for k, v in extra.items() if v is not None})
    return props


def segment_touchpoint(message: Any, *, call: str | None, received_at: datetime,
                       defaults: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """The touchpoint a Segment call stands for (see docs/SEGMENT.md).

    `call` is the endpoint's call type, or None for a batch item (its `type` says);
    `defaults` are a batch's top-level `context` and `sentAt`, which its items inherit.
    Raises InvalidTouchpointError only for what is not a Segment call at all.
    """
    if not isinstance(message, Mapping):
        raise InvalidTouchpointError(
            Reason.NOT_AN_OBJECT, "A Segment call is a JSON object.")
    kind = call if call is not None else message.get("type")
    if kind is None:
        raise InvalidTouchpointError(
            Reason.MISSING_FIELD, "A batch item needs a 'type': track, identify, page, "
            "screen, alias or group.", "type")
    if kind not in CALLS:
        raise InvalidTouchpointError(
            Reason.UNKNOWN_TYPE, f"{str(kind)[:80]!r} is not a Segment call type (track, "
            "identify, page, screen, alias or group).", "type")
    defaults = defaults or {}
    context: Mapping[str, Any] = message.get("context") or {}
    shared = defaults.get("context")
    if isinstance(shared, Mapping) and isinstance(context, Mapping):
        context = {**shared, **context}
    if not isinstance(context, Mapping):
        context = {}
    user_id = _identity(message.get("userId"))
    anonymous_id = _identity(message.get("anonymousId"))
    props: Any = message.get("properties")
    if props is None:
        props = {}
    if kind == "track":
        type_name, props = _track(message, props)
    elif kind in ("page", "screen"):
        type_name, props = "page_view", _page(message, props, context, kind == "screen")
    elif kind == "identify":
        traits = _traits(message, context)
        if user_id is not None and anonymous_id is not None:
            type_name, props = "identify", ({} if traits is None else {"traits": traits})
        else:  # traits of one person, no link: an account update
            type_name, props = "account_updated", _account_updated(traits)
    elif kind == "alias":
        # alias says previousId (a visitor's id) is now userId: an identity link
        previous = _identity(message.get("previousId"))
        anonymous_id = previous if previous is not None else anonymous_id
        type_name, props = "identify", {}
    else:  # group: the person now belongs to an account or company
        type_name, props = "account_updated", _account_updated(
            message.get("traits"), group_id=_text_id(message.get("groupId")))
        props["fields"] = ["group_id"]
    library = context.get("library")
    library_name = library.get("name") if isinstance(library, Mapping) else None
    touchpoint: dict[str, Any] = {
        "event_id": event_id_of(message),
        "schema_version": SCHEMA_VERSION,
        "type": type_name,
        "occurred_at": occurred_at_of(message, received_at, defaults.get("sentAt")),
        "channel": channel_of(kind, context),
        "source": f"{SOURCE}/{library_name}" if isinstance(library_name, str) else SOURCE,
        "properties": props,
    }
    if user_id is not None:
        touchpoint["customer_id"] = user_id
    if anonymous_id is not None:
        touchpoint["anonymous_id"] = anonymous_id
    if isinstance(props, dict):
        case_id = props.pop("case_id", None)
        if case_id is not None:
            touchpoint["case_id"] = _text_id(case_id)
    return touchpoint


# The shapes of Segment's calls, for the collector's OpenAPI document. The mapping above
# reads messages leniently; these models only describe what Segment's clients send.


class SegmentCommon(BaseModel):
    """Fields every Segment call may carry."""

    model_config = ConfigDict(extra="allow")

    messageId: str | None = Field(None, description="Becomes event_id (uuid5 if no UUID).")
    userId: str | None = Field(None, description="Becomes customer_id.")
    anonymousId: str | None = Field(None, description="Becomes anonymous_id.")
    timestamp: str | None = Field(None, description="When it happened, client clock.")
    originalTimestamp: str | None = Field(None, description="Client clock at the call.")
    sentAt: str | None = Field(None, description="Client clock when sent.")
    context: dict[str, Any] | None = Field(None, description="channel, library, page, app...")
    integrations: dict[str, Any] | None = None
    writeKey: str | None = Field(None, description="The write key, as analytics.js sends it.")


class SegmentTrack(SegmentCommon):
    """A track call: an event by name, with properties."""

    event: str
    properties: dict[str, Any] | None = None


class SegmentIdentify(SegmentCommon):
    """An identify call: who the user is, with traits."""

    traits: dict[str, Any] | None = None


class SegmentPage(SegmentCommon):
    """A page call: a web page view."""

    name: str | None = None
    category: str | None = None
    properties: dict[str, Any] | None = None


class SegmentScreen(SegmentPage):
    """A screen call: an app screen view."""


class SegmentAlias(SegmentCommon):
    """An alias call: previousId is now userId."""

    previousId: str
    userId: str | None = None


class SegmentGroup(SegmentCommon):
    """A group call: the user belongs to an account or company."""

    groupId: str
    traits: dict[str, Any] | None = None


class SegmentBatch(BaseModel):
    """A batch of calls, each with its `type`; context and sentAt apply to all."""

    model_config = ConfigDict(extra="allow")

    batch: list[dict[str, Any]] = Field(
        description="Calls, each an object with `type` (track, identify, page, screen, "
        "alias, group) and that call's fields.")
    context: dict[str, Any] | None = None
    sentAt: str | None = None
    writeKey: str | None = None


SEGMENT_MODELS: Final[Mapping[str, type[BaseModel]]] = {
    "track": SegmentTrack,
    "identify": SegmentIdentify,
    "page": SegmentPage,
    "screen": SegmentScreen,
    "alias": SegmentAlias,
    "group": SegmentGroup,
    "batch": SegmentBatch,
}
