"""The synthetic workload: determinism, realism, and that every message is what it claims."""

from __future__ import annotations

import re
import uuid
from collections import Counter
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import orjson
import pytest

from journey.workload import (
    CHANNELS,
    DLQ_REASONS,
    TOUCHPOINT_TYPES,
    Workload,
    generate,
    replay_helpdesk,
)

START = datetime(2024, 5, 1, 6, 30, tzinfo=UTC)
END = START + timedelta(days=30)
# The real data sets live beside the repository, in shared/, never inside it.
HELPDESK = Path(__file__).resolve().parents[4] / "shared/data/helpdesk_tickets/Helpdesk.csv"

# The EVENTS.md catalogue, transcribed by hand so the generator is checked against
# the contract rather than against itself.
EVENTS_MD_CHANNELS = {
    "web", "mobile_app", "email", "phone", "chat", "social", "in_person", "self_service",
    "community", "advertising", "mail_fax", "sms",
}  # fmt: skip
REQUIRED: dict[str, set[str]] = {
    "ad_impression": {"campaign"},
    "ad_click": {"campaign"},
    "email_sent": {"campaign"},
    "email_opened": {"campaign"},
    "email_clicked": {"campaign"},
    "site_visit": {"url"},
    "page_view": {"url"},
    "product_view": {"product_id"},
    "search": {"query"},
    "add_to_cart": {"product_id", "quantity"},
    "checkout_started": {"cart_value", "currency"},
    "purchase": {"order_id", "revenue", "currency"},
    "payment_failed": {"reason"},
    "refund": {"order_id", "amount", "currency"},
    "delivery_failed": {"order_id"},
    "support_contact": {"topic"},
    "agent_response": set(),
    "escalation": {"to"},
    "case_resolved": set(),
    "case_reopened": set(),
    "kb_article_view": {"article_id"},
    "chatbot_session": {"handed_off", "resolved"},
    "ivr_session": {"transferred_to_agent", "abandoned"},
    "survey_response": {"survey", "score"},
    "review": {"rating"},
    "social_mention": {"sentiment"},
    "community_post": {"thread_id", "kind"},
    "subscription_started": {"plan"},
    "subscription_changed": {"from_plan", "to_plan"},
    "subscription_cancelled": {"plan"},
    "billing_inquiry": set(),
    "account_updated": set(),
    "store_visit": {"store_id"},
    "appointment": {"kind", "status"},
    "identify": set(),
}
SERVICE = {
    "support_contact", "agent_response", "escalation", "case_resolved", "case_reopened",
    "billing_inquiry",
}  # fmt: skip
ENVELOPE = ("event_id", "schema_version", "type", "occurred_at", "channel")
SCORES = {"csat": range(1, 6), "nps": range(11), "ces": range(1, 8)}
ENUMS = {
    ("social_mention", "sentiment"): {"positive", "neutral", "negative"},
    ("community_post", "kind"): {"question", "answer", "comment"},
    ("appointment", "status"): {"booked", "attended", "missed"},
    ("support_contact", "direction"): {"inbound", "outbound"},
}
BOOLS = {
    ("chatbot_session", "handed_off"), ("chatbot_session", "resolved"),
    ("ivr_session", "transferred_to_agent"), ("ivr_session", "abandoned"),
    ("kb_article_view", "helpful"), ("support_contact", "abandoned"),
    ("social_mention", "public"),
}  # fmt: skip
MONEY = {"checkout_started": "cart_value", "purchase": "revenue", "refund": "amount"}
RFC3339 = re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d+)?(Z|[+-]\d\d:\d\d)")
NAIVE = re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d+)?")


def defects(raw: bytes, *, latest: datetime = END) -> set[str]:
    """Every way `raw` breaks EVENTS.md, as DLQ reason codes (empty: a valid touchpoint)."""
    found: set[str] = set()
    if len(raw) > 64 * 1024:
        found.add("payload_too_large")
    try:
        event = orjson.loads(raw)
    except orjson.JSONDecodeError:
        return found | {"invalid_json"}
    if not isinstance(event, dict):
        return found | {"not_an_object"}
    type_ = event.get("type")
    found |= {"missing_field" for name in ENVELOPE if name not in event}
    if type_ is not None and type_ not in REQUIRED:
        found.add("unknown_type")
    if "event_id" in event and not _is_uuid(event["event_id"]):
        found.add("invalid_field")
    version = event.get("schema_version", 1)
    if isinstance(version, bool) or not isinstance(version, int):
        found.add("invalid_field")
    elif version != 1:
        found.add("unsupported_schema_version")
    if "channel" in event and event["channel"] not in EVENTS_MD_CHANNELS:
        found.add("invalid_field")
    if "occurred_at" in event:
        found |= _timestamp_defects(event["occurred_at"], latest)
    ids = [event.get(name) for name in ("customer_id", "anonymous_id")]
    if all(value is None for value in ids):
        found.add("missing_identity")
    for value in ids:
        if value is not None and not (isinstance(value, str) and 1 <= len(value) <= 128):
            found.add("invalid_field")
    if type_ == "identify" and None in ids:
        found.add("missing_identity")
    if type_ in SERVICE and not event.get("case_id"):
        found.add("missing_case_id")
    if type_ in REQUIRED:
        properties = event.get("properties", {})
        if not isinstance(properties, dict):
            found.add("invalid_field")
        else:
            if REQUIRED[type_] - properties.keys():
                found.add("missing_field")
            found |= _property_defects(type_, properties)
    return found


def _is_uuid(value: Any) -> bool:
    try:
        uuid.UUID(value)
    except (ValueError, TypeError, AttributeError):
        return False
    return isinstance(value, str) and len(value) == 36


def _timestamp_defects(value: Any, latest: datetime) -> set[str]:
    if not isinstance(value, str):
        return {"invalid_field"}
    if RFC3339.fullmatch(value):
        moment = datetime.fromisoformat(value)
        return {"future_timestamp"} if moment > latest + timedelta(hours=48) else set()
    return {"naive_timestamp"} if NAIVE.fullmatch(value) else {"invalid_field"}


def _property_defects(type_: str, properties: dict[str, Any]) -> set[str]:
    bad = False
    if type_ == "survey_response" and "score" in properties:
        scale = SCORES.get(properties.get("survey", ""))
        bad |= scale is None or properties["score"] not in scale
    if type_ == "review" and "rating" in properties:
        bad |= properties["rating"] not in range(1, 6)
    for (owner, name), allowed in ENUMS.items():
        if owner == type_ and name in properties:
            bad |= properties[name] not in allowed
    for owner, name in BOOLS:
        if owner == type_ and name in properties:
            bad |= not isinstance(properties[name], bool)
    if type_ in MONEY and MONEY[type_] in properties:
        amount = properties[MONEY[type_]]
        bad |= isinstance(amount, bool) or not isinstance(amount, int | float) or amount < 0
    if "currency" in properties:
        bad |= not re.fullmatch(r"[A-Z]{3}", str(properties["currency"]))
    if type_ == "add_to_cart" and "quantity" in properties:
        bad |= not isinstance(properties["quantity"], int) or properties["quantity"] < 1
    return {"invalid_field"} if bad else set()


@pytest.fixture(scope="module")
def workload() -> Workload:
    return generate(start=START)


@pytest.fixture(scope="module")
def small() -> Workload:
    return generate(300, seed=11, start=START, bad_ratio=0.05, duplicate_ratio=0.02)


def test_same_seed_gives_the_same_bytes_and_another_seed_does_not() -> None:
    first = generate(400, seed=3, start=START)
    again = generate(400, seed=3, start=START)
    other = generate(400, seed=4, start=START)
    assert first.messages == again.messages
    assert orjson.dumps(first.events) == orjson.dumps(again.events)
    assert first.expectation == again.expectation
    assert [m.value for m in first.messages] != [m.value for m in other.messages]
    assert {m.value for m in first.messages}.isdisjoint(m.value for m in other.messages)


def test_default_size_is_about_50k_events_for_3000_customers(workload: Workload) -> None:
    expected = workload.expectation
    assert 45_000 <= expected.valid <= 55_000
    per_person = Counter(
        e.get("customer_id") or e["anonymous_id"] for e in workload.events
    ).values()
    assert max(per_person) > 3 * min(per_person)  # journeys vary in length


def test_every_channel_and_every_type_appears(workload: Workload) -> None:
    assert set(CHANNELS) == EVENTS_MD_CHANNELS
    assert set(TOUCHPOINT_TYPES) == set(REQUIRED)
    assert set(workload.expectation.by_channel) == EVENTS_MD_CHANNELS
    assert set(workload.expectation.by_type) == set(REQUIRED)
    # Every service channel of DOMAIN.md carries support contacts.
    contact_channels = {e["channel"] for e in workload.events if e["type"] == "support_contact"}
    assert {"phone", "chat", "email", "social", "in_person", "mail_fax"} <= contact_channels


def test_valid_events_satisfy_the_contract(workload: Workload) -> None:
    for message in workload.messages:
        if message.reason is None:
            assert defects(message.value) == set(), message.value[:300]
            assert len(message.value) <= 64 * 1024


def test_valid_events_lie_in_the_30_day_window(small: Workload) -> None:
    start = datetime(2024, 5, 1, 6, 30, 12, 345678, tzinfo=UTC)
    events = generate(200, seed=5, start=start).events
    moments = [datetime.fromisoformat(e["occurred_at"]) for e in events]
    assert start <= min(moments) and max(moments) <= start + timedelta(days=30)
    offsets = {e["occurred_at"][-6:] if e["occurred_at"][-1] != "Z" else "Z" for e in events}
    assert offsets == {"Z", "+02:00"}  # both RFC 3339 spellings are exercised


def test_bad_messages_have_exactly_the_defect_they_are_tagged_with(workload: Workload) -> None:
    bad = [m for m in workload.messages if m.reason is not None]
    assert {m.reason for m in bad} == set(DLQ_REASONS)
    for message in bad:
        assert defects(message.value) == {message.reason}, message.value[:300]


def test_bad_messages_are_the_promised_shapes(workload: Workload) -> None:
    by_reason: dict[str, list[bytes]] = {}
    for message in workload.messages:
        if message.reason is not None:
            by_reason.setdefault(message.reason, []).append(message.value)
    assert all(len(raw) > 65_536 for raw in by_reason["payload_too_large"])
    undecodable = 0
    for raw in by_reason["invalid_json"]:
        with pytest.raises(orjson.JSONDecodeError):
            orjson.loads(raw)
        try:
            raw.decode("utf-8")
        except UnicodeDecodeError:
            undecodable += 1
    assert undecodable == 1
    assert any(isinstance(orjson.loads(raw), list) for raw in by_reason["not_an_object"])
    for raw in by_reason["naive_timestamp"]:
        assert datetime.fromisoformat(orjson.loads(raw)["occurred_at"]).tzinfo is None
    for raw in by_reason["future_timestamp"]:
        moment = datetime.fromisoformat(orjson.loads(raw)["occurred_at"])
        assert moment >= END + timedelta(days=4)
    for raw in by_reason["missing_case_id"]:
        event = orjson.loads(raw)
        assert event["type"] == "support_contact" and "case_id" not in event
    for raw in by_reason["missing_identity"]:
        event = orjson.loads(raw)
        assert "customer_id" not in event and "anonymous_id" not in event
    purchases = [orjson.loads(raw) for raw in by_reason["missing_field"]]
    assert any(e.get("type") == "purchase" for e in purchases)


def test_expectations_add_up(workload: Workload, small: Workload) -> None:
    for load in (workload, small):
        expected = load.expectation
        messages = load.messages
        assert expected.messages == len(messages)
        assert expected.messages == expected.valid + expected.dlq + expected.duplicates
        assert expected.dlq == sum(expected.dlq_by_reason.values())
        assert set(expected.dlq_by_reason) == set(DLQ_REASONS)
        assert Counter(m.reason for m in messages if m.reason) == +Counter(expected.dlq_by_reason)
        assert sum(m.duplicate for m in messages) == expected.duplicates
        assert sum(expected.by_type.values()) == expected.valid
        assert sum(expected.by_channel.values()) == expected.valid
        valid = [m for m in messages if m.reason is None and not m.duplicate]
        assert len(valid) == expected.valid == len(load.events)
        ids = {orjson.loads(m.value)["event_id"] for m in valid}
        assert len(ids) == expected.valid  # no accidental duplicates
        assert [orjson.loads(m.value) for m in valid] == load.events
        assert expected.dlq == round(0.01 * expected.valid) or load is small
        assert expected.identified_customers + expected.anonymous_visitors == expected.customers


def test_ratios_are_respected(small: Workload) -> None:
    expected = small.expectation
    assert expected.dlq == round(0.05 * expected.valid)
    assert expected.duplicates == round(0.02 * expected.valid)


def test_duplicates_resend_earlier_bytes_with_the_same_key(small: Workload) -> None:
    seen: dict[bytes, bytes | None] = {}
    for message in small.messages:
        if message.duplicate:
            assert message.value in seen and seen[message.value] == message.key
        elif message.reason is None:
            seen[message.value] = message.key


def test_customer_counts_follow_identity_links(workload: Workload) -> None:
    linked = {
        e["anonymous_id"]: e["customer_id"] for e in workload.events if e["type"] == "identify"
    }
    keys = {
        e.get("customer_id") or linked.get(e["anonymous_id"], e["anonymous_id"])
        for e in workload.events
    }
    expected = workload.expectation
    assert len(keys) == expected.customers
    assert expected.identified_customers == len({k for k in keys if k.startswith("C")})
    assert expected.identified_customers > 1500 and expected.anonymous_visitors > 300
    assert len(linked) > 500


def test_keys_are_the_customer_or_anonymous_id(workload: Workload) -> None:
    for message in workload.messages:
        if message.reason is None:
            event = orjson.loads(message.value)
            assert message.key == (event.get("customer_id") or event["anonymous_id"]).encode()


def test_some_events_arrive_late_but_most_in_time_order(workload: Workload) -> None:
    latest = datetime.min.replace(tzinfo=UTC)
    behind = 0
    for event in workload.events:
        moment = datetime.fromisoformat(event["occurred_at"])
        behind += moment < latest
        latest = max(latest, moment)
    expected = workload.expectation
    assert 0.01 * expected.valid < expected.late < 0.05 * expected.valid
    assert 0 < behind < 0.1 * expected.valid


def test_funnel_narrows_within_seven_days(workload: Workload) -> None:
    linked = {
        e["anonymous_id"]: e["customer_id"] for e in workload.events if e["type"] == "identify"
    }
    journeys: dict[str, list[tuple[datetime, str]]] = {}
    for e in workload.events:
        key = e.get("customer_id") or linked.get(e["anonymous_id"], e["anonymous_id"])
        journeys.setdefault(key, []).append((datetime.fromisoformat(e["occurred_at"]), e["type"]))
    steps = ("ad_impression", "site_visit", "add_to_cart", "purchase")
    reached = [0] * len(steps)
    for journey in journeys.values():
        level, began = 0, None
        for moment, type_ in sorted(journey):
            if level == len(steps) or type_ != steps[level]:
                continue
            if began is not None and moment - began > timedelta(days=7):
                break
            began = began or moment
            level += 1
        for step in range(level):
            reached[step] += 1
    assert reached[0] > reached[1] > reached[2] > reached[3] >= 100, reached


def test_service_journeys_have_cases_surveys_and_friction(workload: Workload) -> None:
    cases: dict[str, list[dict[str, Any]]] = {}
    for e in workload.events:
        if "case_id" in e:
            cases.setdefault(e["case_id"], []).append(e)
    contacts = [sum(x["type"] == "support_contact" for x in events) for events in cases.values()]
    assert sum(n > 1 for n in contacts) > 50  # repeat contacts
    hopped = [
        events
        for events in cases.values()
        if len({x["channel"] for x in events if x["type"] == "support_contact"}) > 1
    ]
    assert len(hopped) > 20  # channel hopping
    abandoned = [
        e
        for e in workload.events
        if e["type"] == "support_contact" and e["properties"].get("abandoned")
    ]
    assert len(abandoned) > 20
    surveys = Counter(
        e["properties"]["survey"] for e in workload.events if e["type"] == "survey_response"
    )
    assert set(surveys) == {"csat", "nps", "ces"}


def test_small_and_empty_workloads() -> None:
    empty = generate(0, start=START)
    assert empty.messages == [] and empty.expectation.customers == 0
    tiny = generate(5, seed=1, start=START, bad_ratio=0.1)
    assert tiny.expectation.dlq == round(0.1 * tiny.expectation.valid)
    assert len(set(tiny.expectation.dlq_by_reason.values()) - {0, 1}) == 0


def test_start_must_be_aware_and_ratios_sane() -> None:
    with pytest.raises(ValueError, match="timezone-aware"):
        generate(10, start=datetime(2024, 5, 1))  # naive on purpose
    with pytest.raises(ValueError, match="bad_ratio"):
        generate(10, start=START, bad_ratio=1.5)


def test_clock_bounds_bracket_the_window(workload: Workload) -> None:
    expected = workload.expectation
    assert expected.validate_after <= END - timedelta(hours=24)
    assert expected.validate_before >= END + timedelta(days=3)
    assert expected.first_occurred_at is not None and expected.first_occurred_at >= START


@pytest.mark.skipif(not HELPDESK.exists(), reason="help-desk log not available")
def test_helpdesk_replay_maps_tickets_to_service_touchpoints() -> None:
    end = datetime(2024, 6, 1, tzinfo=UTC)
    events = list(replay_helpdesk(HELPDESK, end=end))
    counts = Counter(e["type"] for e in events)
    assert {"support_contact", "agent_response", "escalation", "case_resolved"} <= set(counts)
    assert counts["case_resolved"] >= 4500  # about one per ticket
    for event in events:
        assert defects(orjson.dumps(event), latest=end) == set(), event
    moments = [datetime.fromisoformat(e["occurred_at"]) for e in events]
    assert moments == sorted(moments) and max(moments) == end
    ids = Counter(e["event_id"] for e in events)
    assert 0 < sum(n - 1 for n in ids.values()) <= 127  # the source's duplicate rows
    # The log has one "Insert ticket" at most per ticket and no customer contact after
    # the first row: one contact per ticket, and no first response at the moment of it.
    contacts = Counter(e["case_id"] for e in events if e["type"] == "support_contact")
    assert set(contacts.values()) == {1}
    opened = {e["case_id"]: e["occurred_at"] for e in events if e["type"] == "support_contact"}
    first_answer: dict[str, str] = {}
    for e in events:
        if e["type"] in ("agent_response", "case_resolved"):
            first_answer.setdefault(e["case_id"], e["occurred_at"])
    instant = sum(1 for case, at in first_answer.items() if at == opened[case])
    assert instant < len(first_answer) / 10, "first responses are not all at 0 s"
    assert [e["event_id"] for e in replay_helpdesk(HELPDESK)] != []


def _codec() -> Any:
    from schemas import codec

    return codec


@pytest.mark.parametrize("clock", ["validate_after", "validate_before"])
def test_the_real_codec_agrees_with_every_tag(workload: Workload, clock: str) -> None:
    codec = _codec()
    expected = workload.expectation
    now = getattr(expected, clock)
    if clock == "validate_before":
        now -= timedelta(milliseconds=1)  # the bound itself is excluded
    accepted = 0
    for message in workload.messages:
        if message.reason is None:
            codec.decode_touchpoint(message.value, now=now)
            accepted += 1
        else:
            with pytest.raises(codec.InvalidTouchpointError) as caught:
                codec.decode_touchpoint(message.value, now=now)
            assert caught.value.reason == message.reason, message.value[:300]
    assert accepted == expected.valid + expected.duplicates


@pytest.mark.skipif(not HELPDESK.exists(), reason="help-desk log not available")
def test_the_real_codec_accepts_the_helpdesk_replay() -> None:
    codec = _codec()
    end = datetime(2024, 6, 1, tzinfo=UTC)
    for event in replay_helpdesk(HELPDESK, end=end):
        codec.decode_touchpoint(orjson.dumps(event), now=end)
