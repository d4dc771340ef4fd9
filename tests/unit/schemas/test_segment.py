"""Segment calls onto touchpoints: each call type, the e-commerce spec, ids, timestamps."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from schemas.codec import InvalidTouchpointError, decode_touchpoint
from schemas.segment import (
    SEGMENT_NAMESPACE,
    event_id_of,
    occurred_at_of,
    segment_touchpoint,
    spec_name,
)
from schemas.touchpoint import Touchpoint

RECEIVED = datetime(2024, 5, 1, 12, 0, 6, tzinfo=UTC)


def call(kind: str | None, message: dict[str, Any], **defaults: Any) -> dict[str, Any]:
    return segment_touchpoint(message, call=kind, received_at=RECEIVED, defaults=defaults)


def decoded(touchpoint: dict[str, Any]) -> Touchpoint:
    return decode_touchpoint(orjson.dumps(touchpoint), now=RECEIVED)


def track(event: str, properties: dict[str, Any], **extra: Any) -> dict[str, Any]:
    return call("track", {"userId": "u-1", "event": event, "properties": properties,
                          "messageId": "m-1", **extra})


# -- ids -----------------------------------------------------------------------------

def test_a_uuid_message_id_is_the_event_id_in_canonical_form() -> None:
    mid = str(uuid.uuid4())
    assert event_id_of({"messageId": mid.upper()}) == mid


def test_any_other_message_id_becomes_its_uuid5() -> None:
    assert event_id_of({"messageId": "ajs-next-1f2e"}) == str(
        uuid.uuid5(SEGMENT_NAMESPACE, "ajs-next-1f2e"))
    assert event_id_of({"messageId": 42}) == str(uuid.uuid5(SEGMENT_NAMESPACE, "42"))
    assert event_id_of({"messageId": "a"}) != event_id_of({"messageId": "b"})


def test_without_message_id_a_resent_message_keeps_its_id() -> None:
    first = {"event": "Signed Up", "userId": "u", "sentAt": "2024-05-01T12:00:00Z"}
    again = {**first, "sentAt": "2024-05-01T12:05:00Z", "writeKey": "k"}
    other = {**first, "event": "Logged In"}
    assert event_id_of(first) == event_id_of(again) != event_id_of(other)
    uuid.UUID(event_id_of(first))


# -- timestamps ----------------------------------------------------------------------

def test_clock_skew_is_taken_out() -> None:
    # The device's clock runs an hour fast: it says the event happened at 13:00:00 and
    # was sent at 13:00:05; the collector received it at 12:00:06.
    message = {"originalTimestamp": "2024-05-01T13:00:00Z", "sentAt": "2024-05-01T13:00:05Z"}
    assert datetime.fromisoformat(occurred_at_of(message, RECEIVED)) == datetime(
        2024, 5, 1, 12, 0, 1, tzinfo=UTC)


def test_the_client_offset_is_kept() -> None:
    message = {"timestamp": "2024-05-01T15:00:00+02:00", "sentAt": "2024-05-01T13:00:06Z"}
    got = datetime.fromisoformat(occurred_at_of(message, RECEIVED))
    assert got.utcoffset() == timedelta(hours=2)
    assert got == datetime(2024, 5, 1, 13, 0, 0, tzinfo=UTC) - timedelta(hours=1)


def test_original_timestamp_wins_over_timestamp() -> None:
    message = {"originalTimestamp": "2024-05-01T11:00:00Z", "timestamp": "2024-05-01T09:00:00Z"}
    assert occurred_at_of(message, RECEIVED) == "2024-05-01T11:00:00Z"


def test_without_sent_at_the_client_time_is_taken_as_it_is() -> None:
    assert occurred_at_of({"timestamp": "2024-04-30T08:00:00Z"}, RECEIVED) == (
        "2024-04-30T08:00:00Z")


def test_a_batch_sent_at_applies_to_its_items() -> None:
    message = {"timestamp": "2024-05-01T12:00:00Z"}
    got = occurred_at_of(message, RECEIVED, sent_at="2024-05-01T12:00:03Z")
    assert datetime.fromisoformat(got) == datetime(2024, 5, 1, 12, 0, 3, tzinfo=UTC)


def test_without_client_time_it_happened_when_received() -> None:
    assert datetime.fromisoformat(occurred_at_of({}, RECEIVED)) == RECEIVED


def test_an_unreadable_client_time_is_left_for_the_codec_to_refuse() -> None:
    for value, reason in (("yesterday", "invalid_field"),
                          ("2024-05-01T12:00:00", "naive_timestamp")):
        touchpoint = call("page", {"anonymousId": "a", "timestamp": value,
                                   "sentAt": "2024-05-01T12:00:00Z",
                                   "properties": {"url": "https://x/"}})
        assert touchpoint["occurred_at"] == value
        with pytest.raises(InvalidTouchpointError) as refused:
            decoded(touchpoint)
        assert refused.value.reason == reason


# -- call types ----------------------------------------------------------------------

def test_track_of_a_catalogue_type_keeps_it() -> None:
    tp = decoded(call("track", {
        "userId": "u-1", "event": "support_contact", "context": {"channel": "phone"},
        "properties": {"topic": "billing", "case_id": "case-9", "direction": "inbound"}}))
    assert (tp.type, tp.channel, tp.case_id) == ("support_contact", "phone", "case-9")
    assert tp.properties.model_dump(exclude_unset=True) == {
        "topic": "billing", "direction": "inbound"}


def test_track_of_an_unknown_name_is_a_generic_track_touchpoint() -> None:
    tp = track("Video Played", {"video": "intro", "seconds": 12})
    assert tp["type"] == "track"
    assert tp["properties"] == {"video": "intro", "seconds": 12, "event": "Video Played"}


def test_track_without_an_event_name_is_refused() -> None:
    for message, reason in (({"userId": "u"}, "missing_field"),
                            ({"userId": "u", "event": 3}, "invalid_field")):
        with pytest.raises(InvalidTouchpointError) as refused:
            call("track", message)
        assert (refused.value.reason, refused.value.field) == (reason, "event")


def test_identify_with_both_ids_links_them() -> None:
    tp = decoded(call("identify", {"userId": "c-7", "anonymousId": "cookie-1",
                                   "traits": {"email": "a@b.test"}}))
    assert (tp.type, tp.customer_id, tp.anonymous_id) == ("identify", "c-7", "cookie-1")
    assert tp.properties.model_dump(exclude_unset=True) == {"traits": {"email": "a@b.test"}}


def test_identify_of_one_id_is_an_account_update() -> None:
    tp = decoded(call("identify", {"userId": 1042, "traits": {"plan": "pro", "email": "e"}}))
    assert (tp.type, tp.customer_id) == ("account_updated", "1042")
    assert tp.properties.model_dump(exclude_unset=True) == {
        "fields": ["email", "plan"], "traits": {"plan": "pro", "email": "e"}}


def test_page_takes_its_url_from_properties_or_context() -> None:
    given_url = decoded(call("page", {"anonymousId": "a", "name": "Home",
                                      "properties": {"url": "https://shop.test/",
                                                     "title": "Shop"}}))
    assert (given_url.type, given_url.channel) == ("page_view", "web")
    assert given_url.properties.model_dump(exclude_unset=True) == {
        "url": "https://shop.test/", "title": "Shop", "name": "Home"}
    from_context = decoded(call("page", {"anonymousId": "a", "context": {
        "page": {"url": "https://shop.test/help"}}}))
    assert from_context.properties.model_dump()["url"] == "https://shop.test/help"


def test_page_without_any_url_is_refused_by_the_codec() -> None:
    with pytest.raises(InvalidTouchpointError) as refused:
        decoded(call("page", {"anonymousId": "a"}))
    assert (refused.value.reason, refused.value.field) == ("missing_field", "properties.url")


def test_screen_is_an_app_page_view() -> None:
    tp = decoded(call("screen", {"userId": "u", "name": "Basket"}))
    assert (tp.type, tp.channel) == ("page_view", "mobile_app")
    assert tp.properties.model_dump()["url"] == "screen:Basket"


def test_alias_is_an_identity_link_from_the_previous_id() -> None:
    tp = decoded(call("alias", {"userId": "c-7", "previousId": "cookie-1",
                                "anonymousId": "other"}))
    assert (tp.type, tp.customer_id, tp.anonymous_id) == ("identify", "c-7", "cookie-1")


def test_group_is_an_account_update_naming_the_group() -> None:
    tp = decoded(call("group", {"userId": "u", "groupId": 77, "traits": {"name": "Acme"}}))
    assert tp.type == "account_updated"
    assert tp.properties.model_dump(exclude_unset=True) == {
        "fields": ["group_id"], "group_id": "77", "traits": {"name": "Acme"}}


def test_batch_items_say_their_type_and_inherit_context_and_sent_at() -> None:
    tp = call(None, {"type": "page", "anonymousId": "a", "timestamp": "2024-05-01T12:00:00Z",
                     "properties": {"url": "u"}},
              context={"channel": "mobile", "library": {"name": "analytics-python"}},
              sentAt="2024-05-01T12:00:03Z")
    assert (tp["type"], tp["channel"], tp["source"]) == (
        "page_view", "mobile_app", "segment/analytics-python")
    assert datetime.fromisoformat(tp["occurred_at"]) == RECEIVED - timedelta(seconds=3)


@pytest.mark.parametrize(("message", "reason"), [
    ({"anonymousId": "a"}, "missing_field"),
    ({"type": "teleport"}, "unknown_type"),
    ({"type": ["track"]}, "unknown_type"),
])
def test_batch_items_that_are_no_segment_call(message: dict[str, Any], reason: str) -> None:
    with pytest.raises(InvalidTouchpointError) as refused:
        call(None, message)
    assert refused.value.reason == reason


def test_a_message_that_is_no_object_is_refused() -> None:
    with pytest.raises(InvalidTouchpointError) as refused:
        segment_touchpoint([1], call="track", received_at=RECEIVED)
    assert refused.value.reason == "not_an_object"


def test_neither_user_nor_anonymous_id_is_the_codecs_missing_identity() -> None:
    with pytest.raises(InvalidTouchpointError) as refused:
        decoded(call("page", {"userId": "", "properties": {"url": "u"}}))
    assert refused.value.reason == "missing_identity"


# -- channels ------------------------------------------------------------------------

@pytest.mark.parametrize(("kind", "context", "channel"), [
    ("track", {"channel": "browser"}, "web"),
    ("track", {"channel": "mobile"}, "mobile_app"),
    ("track", {"channel": "server"}, "web"),
    ("track", {"channel": "email"}, "email"),
    ("track", {"app": {"name": "Shop"}}, "mobile_app"),
    ("screen", {}, "mobile_app"),
    ("track", {}, "web"),
])
def test_channel(kind: str, context: dict[str, Any], channel: str) -> None:
    tp = call(kind, {"userId": "u", "event": "X", "name": "S", "context": context})
    assert tp["channel"] == channel


# -- e-commerce spec -----------------------------------------------------------------

def test_product_viewed() -> None:
    tp = decoded(track("Product Viewed", {"sku": "G-32", "price": 18.99, "currency": "EUR",
                                          "category": "Games", "name": "Monopoly"}))
    assert tp.type == "product_view"
    assert tp.properties.model_dump(exclude_unset=True) == {
        "sku": "G-32", "product_id": "G-32", "price": 18.99, "currency": "EUR",
        "category": "Games", "name": "Monopoly"}


def test_product_added_is_one_product_unless_told() -> None:
    one = decoded(track("Product Added", {"product_id": "p-1", "price": 5}))
    three = decoded(track("Product Added", {"product_id": 7, "quantity": 3}))
    assert (one.type, one.properties.model_dump()["quantity"]) == ("add_to_cart", 1)
    assert three.properties.model_dump()["quantity"] == 3
    assert three.properties.model_dump()["product_id"] == "7"


def test_checkout_started_values_the_cart_in_usd_unless_told() -> None:
    tp = decoded(track("Checkout Started", {"order_id": "o-1", "value": 30.0, "revenue": 25.0}))
    assert tp.type == "checkout_started"
    props = tp.properties.model_dump()
    assert (props["cart_value"], props["currency"]) == (30.0, "USD")


def test_order_completed_is_a_purchase() -> None:
    products = [{"product_id": "p-1", "quantity": 1, "price": 25.0}]
    tp = decoded(track("Order Completed", {"order_id": 5031, "total": 27.5, "revenue": 25.0,
                                           "currency": "EUR", "products": products}))
    assert tp.type == "purchase"
    props = tp.properties.model_dump()
    assert (props["order_id"], props["revenue"], props["currency"]) == ("5031", 25.0, "EUR")
    assert props["items"] == products
    by_total = decoded(track("Order Completed", {"order_id": "o", "total": 27.5}))
    assert by_total.properties.model_dump()["revenue"] == 27.5


def test_order_refunded_is_a_refund() -> None:
    tp = decoded(track("Order Refunded", {"order_id": "o-9", "total": 30}))
    props = tp.properties.model_dump()
    assert (tp.type, props["amount"], props["currency"]) == ("refund", 30, "USD")


def test_products_searched_is_a_search() -> None:
    assert decoded(track("Products Searched", {"query": "boots"})).type == "search"


def test_spec_names_in_snake_case_are_the_same_events() -> None:
    assert spec_name("order_completed") == spec_name(" Order  Completed") == "order completed"
    assert decoded(track("order_completed", {"order_id": "o", "revenue": 1})).type == (
        "purchase")


def test_spec_events_without_a_type_of_ours_stay_named_tracks() -> None:
    tp = track("Payment Info Entered", {"checkout_id": "c", "payment_method": "card"})
    assert tp["type"] == "track"
    assert tp["properties"]["event"] == "Payment Info Entered"


def test_a_spec_event_missing_what_we_need_is_the_codecs_missing_field() -> None:
    with pytest.raises(InvalidTouchpointError) as refused:
        decoded(track("Order Completed", {"revenue": 10}))
    assert (refused.value.reason, refused.value.field) == ("missing_field",
                                                           "properties.order_id")


def test_values_given_under_our_names_are_not_overwritten() -> None:
    tp = decoded(track("Checkout Started", {"cart_value": 12.0, "value": 99.0,
                                            "currency": "GBP"}))
    props = tp.properties.model_dump()
    assert (props["cart_value"], props["currency"]) == (12.0, "GBP")


# -- any input -----------------------------------------------------------------------

json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-10**6, 10**6) | st.floats(allow_nan=False,
                                                                        allow_infinity=False)
    | st.text(max_size=12),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=8), inner,
                                                                max_size=3),
    max_leaves=8)
segment_fields = st.fixed_dictionaries({}, optional={
    "type": st.sampled_from(["track", "identify", "page", "screen", "alias", "group", "x"]),
    "event": st.sampled_from(["Order Completed", "Product Added", "Video Played", ""])
    | json_values,
    "userId": st.text(max_size=5) | json_values, "anonymousId": st.text(max_size=5),
    "previousId": json_values, "groupId": json_values, "messageId": json_values,
    "timestamp": st.sampled_from(["2024-05-01T11:00:00Z", "2024-05-01T11:00:00"]) | json_values,
    "sentAt": st.sampled_from(["2024-05-01T12:00:00+01:00"]) | json_values,
    "originalTimestamp": json_values, "properties": json_values, "traits": json_values,
    "context": json_values, "name": json_values,
})


@settings(max_examples=300, deadline=None)
@given(message=segment_fields | json_values,
       kind=st.sampled_from([None, "track", "identify", "page", "screen", "alias", "group"]))
def test_any_message_maps_or_is_refused_with_a_reason(message: Any, kind: str | None) -> None:
    try:
        touchpoint = segment_touchpoint(message, call=kind, received_at=RECEIVED)
        decoded(touchpoint)
    except InvalidTouchpointError as refused:
        assert refused.reason
