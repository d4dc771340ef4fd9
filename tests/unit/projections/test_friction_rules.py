"""The friction rules as plain calls: hand-built journeys with hand-computed findings."""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterable
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from typing import Any

import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from projections.friction import RULES, FrictionConfig, FrictionState, detect, expire, next_deadline
from projections.friction.config import (
    DAY,
    HOUR,
    MINUTE,
    ChannelHoppingConfig,
    CheckoutAbandonedConfig,
    RepeatContactConfig,
    SlaBreachConfig,
)
from projections.friction.rules import (
    KIND_IN_ID,
    Finding,
    detect_failed_outcome,
    detect_unreachable_help,
)
from projections.friction.signal import signal_of
from projections.friction.state import CaseTrack, Mark, PendingCheckout
from schemas.codec import validate_touchpoint
from schemas.friction import Severity, friction_id_for
from schemas.touchpoint import Touchpoint
from tests.unit.schemas.examples import EXAMPLE_TYPES, example

START = datetime(2024, 3, 1, 9, 0, tzinfo=UTC)
CONFIG = FrictionConfig()
CUSTOMER = "cust-1"
H = 60  # minutes
D = 24 * H

LOW, MEDIUM, HIGH, CRITICAL = Severity.LOW, Severity.MEDIUM, Severity.HIGH, Severity.CRITICAL


def eid(n: int) -> str:
    return str(uuid.UUID(int=n))


def ms(minute: float) -> int:
    """Epoch milliseconds of `minute` minutes after START."""
    return int(START.timestamp() * 1000) + round(minute * MINUTE)


def touchpoint(
    type_name: str,
    minute: float,
    n: int,
    *,
    case_id: str | None = None,
    channel: str | None = None,
    customer: str = CUSTOMER,
    drop: Iterable[str] = (),
    **properties: Any,
) -> Touchpoint:
    """The example touchpoint of `type_name`, `minute` minutes after START, event id `n`."""
    data = example(
        type_name,
        event_id=eid(n),
        occurred_at=(START + timedelta(minutes=minute)).isoformat(),
        customer_id=customer,
    )
    data["properties"].update(properties)
    for name in drop:
        del data["properties"][name]
    if case_id is not None:
        data["case_id"] = case_id
    if channel is not None:
        data["channel"] = channel
    return validate_touchpoint(data)


def contact(minute: float, n: int, case_id: str = "c1", channel: str = "phone",
            **properties: Any) -> Touchpoint:
    """An inbound support contact (the example waited 95 s and was not abandoned)."""
    return touchpoint("support_contact", minute, n, case_id=case_id, channel=channel,
                      **properties)


def run(events: Iterable[Touchpoint], config: FrictionConfig = CONFIG,
        state: FrictionState | None = None) -> tuple[FrictionState, list[Finding]]:
    found: list[Finding] = []
    for tp in events:
        state, more = detect(state, tp, config)
        found.extend(more)
    assert state is not None
    return state, found


def of_rule(found: Iterable[Finding], rule: str) -> list[Finding]:
    return [f for f in found if f.rule == rule]


def facts(found: Iterable[Finding]) -> list[tuple[Any, ...]]:
    """Everything of a finding but its message."""
    return [(f.rule, f.kind, f.severity, f.occurred_at, f.evidence, f.case_id, f.channel)
            for f in found]


def expired(state: FrictionState, minute: float,
            config: FrictionConfig = CONFIG) -> tuple[FrictionState, list[Finding]]:
    """expire() at `minute`, for a state that must survive it."""
    after, found = expire(state, ms(minute), config)
    assert after is not None
    return after, found


# --- repeat_contact -------------------------------------------------------------------


def test_second_and_third_contact_about_one_case() -> None:
    _, found = run([contact(0, 1), contact(30, 2), contact(60, 3)])
    assert facts(of_rule(found, "repeat_contact")) == [
        ("repeat_contact", "case", MEDIUM, ms(30), (eid(1), eid(2)), "c1", "phone"),
        ("repeat_contact", "case", HIGH, ms(60), (eid(1), eid(3)), "c1", "phone"),
    ]
    messages = [f.message for f in of_rule(found, "repeat_contact")]
    assert "Contact number 2 about case c1" in messages[0]
    assert "Contact number 3 about case c1" in messages[1]


def test_the_first_contact_is_no_repeat() -> None:
    _, found = run([contact(0, 1)])
    assert found == []


def test_outbound_contact_does_not_count_as_a_repeat() -> None:
    _, found = run([contact(0, 1), contact(10, 2, direction="outbound")])
    assert of_rule(found, "repeat_contact") == []
    # ... nor in the count: the next inbound contact is the second, not the third
    _, found = run([contact(0, 1), contact(10, 2, direction="outbound"), contact(20, 3)])
    assert facts(of_rule(found, "repeat_contact")) == [
        ("repeat_contact", "case", MEDIUM, ms(20), (eid(1), eid(3)), "c1", "phone"),
    ]


def test_contact_without_direction_is_inbound() -> None:
    _, found = run([contact(0, 1, drop=["direction"]), contact(10, 2, drop=["direction"])])
    assert facts(of_rule(found, "repeat_contact")) == [
        ("repeat_contact", "case", MEDIUM, ms(10), (eid(1), eid(2)), "c1", "phone"),
    ]


def test_billing_inquiry_is_a_contact() -> None:
    _, found = run([touchpoint("billing_inquiry", 0, 1, case_id="c1"), contact(5, 2)])
    assert facts(of_rule(found, "repeat_contact")) == [
        ("repeat_contact", "case", MEDIUM, ms(5), (eid(1), eid(2)), "c1", "phone"),
    ]


def test_contact_about_a_different_case_is_no_repeat() -> None:
    _, found = run([contact(0, 1, "c1", topic="delivery"), contact(5, 2, "c2", topic="billing")])
    assert of_rule(found, "repeat_contact") == []


def test_new_case_about_the_topic_of_an_open_case() -> None:
    _, found = run([contact(0, 1, "c1", topic="delivery"),
                    contact(3 * D, 2, "c2", topic="delivery", channel="email")])
    assert facts(of_rule(found, "repeat_contact")) == [
        ("repeat_contact", "topic", MEDIUM, ms(3 * D), (eid(1), eid(2)), "c2", "email"),
    ]
    assert "case c1" in found[0].message


def test_topic_repeat_names_the_latest_open_case_on_the_topic() -> None:
    _, found = run([contact(0, 1, "c1"), contact(1 * D, 2, "c2"), contact(2 * D, 3, "c3")])
    assert [f.evidence for f in of_rule(found, "repeat_contact")] == [
        (eid(1), eid(2)), (eid(2), eid(3))]


def test_new_case_about_the_topic_of_a_resolved_case_is_no_repeat() -> None:
    _, found = run([contact(0, 1, "c1"), touchpoint("case_resolved", 30, 2, case_id="c1"),
                    contact(2 * H, 3, "c2")])
    assert of_rule(found, "repeat_contact") == []


def test_resolved_case_is_closed_even_when_sla_breach_is_off() -> None:
    config = replace(CONFIG, sla_breach=SlaBreachConfig(enabled=False))
    _, found = run([contact(0, 1, "c1"), touchpoint("case_resolved", 30, 2, case_id="c1"),
                    contact(2 * H, 3, "c2")], config)
    assert found == []


def test_a_reopened_case_is_open_again_for_the_topic_rule() -> None:
    _, found = run([contact(0, 1, "c1"), touchpoint("case_resolved", 30, 2, case_id="c1"),
                    touchpoint("case_reopened", 60, 3, case_id="c1"), contact(2 * H, 4, "c2")])
    assert facts(of_rule(found, "repeat_contact")) == [
        ("repeat_contact", "topic", MEDIUM, ms(2 * H), (eid(1), eid(4)), "c2", "phone"),
    ]


def test_new_case_about_the_topic_after_the_window_is_no_repeat() -> None:
    _, inside = run([contact(0, 1, "c1"), contact(7 * D - 1, 2, "c2")])
    _, after = run([contact(0, 1, "c1"), contact(7 * D + 1, 2, "c2")])
    assert [f.kind for f in of_rule(inside, "repeat_contact")] == ["topic"]
    assert of_rule(after, "repeat_contact") == []


def test_topic_window_comes_from_the_config() -> None:
    config = replace(CONFIG, repeat_contact=RepeatContactConfig(topic_window=1 * D))
    _, found = run([contact(0, 1, "c1"), contact(2 * D, 2, "c2")], config)
    assert of_rule(found, "repeat_contact") == []


# --- sla_breach -------------------------------------------------------------------------

FIRST_RESPONSE = [("chat", 10), ("email", 24 * H), ("phone", 1 * H), ("web", 24 * H)]
RESOLUTION = [("chat", 24 * H), ("email", 72 * H), ("phone", 24 * H), ("web", 72 * H)]


@pytest.mark.parametrize(("channel", "limit"), FIRST_RESPONSE)
def test_first_response_inside_the_deadline_is_no_breach(channel: str, limit: int) -> None:
    state, _ = run([contact(0, 1, channel=channel),
                    touchpoint("agent_response", limit - 1, 2, case_id="c1")])
    _, found = expired(state, limit + 1)
    assert found == []


@pytest.mark.parametrize(("channel", "limit"), FIRST_RESPONSE)
def test_first_response_after_the_deadline_is_a_breach_at_the_deadline(
        channel: str, limit: int) -> None:
    state, found = run([contact(0, 1, channel=channel),
                        touchpoint("agent_response", limit + 1, 2, case_id="c1")])
    assert found == []  # a breach is only reported by expire()
    assert next_deadline(state, CONFIG) == ms(limit)
    state, found = expired(state, limit - 1 / 60_000)  # one ms before the deadline
    assert found == []
    state, found = expired(state, limit)
    assert facts(found) == [
        ("sla_breach", "first_response", MEDIUM, ms(limit), (eid(1),), "c1", channel)]
    assert f"({channel})" in found[0].message
    _, again = expired(state, limit + 10)
    assert again == []


def test_no_response_at_all_is_a_breach() -> None:
    state, _ = run([contact(0, 1, channel="chat")])
    _, found = expired(state, 11)
    assert facts(found) == [("sla_breach", "first_response", MEDIUM, ms(10), (eid(1),), "c1",
                             "chat")]


@pytest.mark.parametrize("response", ["outbound_contact", "case_resolved"])
def test_outbound_contact_and_resolution_are_first_responses(response: str) -> None:
    answer = (contact(5, 2, direction="outbound", channel="email") if response ==
              "outbound_contact" else touchpoint("case_resolved", 5, 2, case_id="c1"))
    state, _ = run([contact(0, 1, channel="chat"), answer])
    _, found = expired(state, 11)
    assert found == []


def test_response_on_another_case_does_not_answer() -> None:
    state, _ = run([contact(0, 1, "c1", channel="chat"), contact(1, 2, "c2", topic="other"),
                    touchpoint("agent_response", 5, 3, case_id="c2")])
    _, found = expired(state, 11)
    assert facts(found) == [("sla_breach", "first_response", MEDIUM, ms(10), (eid(1),), "c1",
                             "chat")]


def test_a_later_contact_does_not_restart_the_first_response_clock() -> None:
    state, _ = run([contact(0, 1, channel="chat"), contact(8, 2, channel="chat")])
    _, found = expired(state, 10)
    assert [(f.kind, f.occurred_at) for f in found] == [("first_response", ms(10))]


@pytest.mark.parametrize(("channel", "limit"), RESOLUTION)
def test_resolution_inside_the_deadline_is_no_breach(channel: str, limit: int) -> None:
    state, _ = run([contact(0, 1, channel=channel),
                    touchpoint("agent_response", 1, 2, case_id="c1"),
                    touchpoint("case_resolved", limit - 1, 3, case_id="c1")])
    _, found = expired(state, limit + 1)
    assert found == []


@pytest.mark.parametrize(("channel", "limit"), RESOLUTION)
def test_resolution_after_the_deadline_is_a_breach_at_the_deadline(
        channel: str, limit: int) -> None:
    state, _ = run([contact(0, 1, channel=channel),
                    touchpoint("agent_response", 1, 2, case_id="c1"),
                    touchpoint("case_resolved", limit + 1, 3, case_id="c1")])
    state, found = expired(state, limit - 1 / 60_000)
    assert found == []
    state, found = expired(state, limit)
    assert facts(found) == [
        ("sla_breach", "resolution", HIGH, ms(limit), (eid(1),), "c1", channel)]
    _, again = expired(state, limit + 1)
    assert again == []


def test_never_resolved_is_a_resolution_breach() -> None:
    state, _ = run([contact(0, 1), touchpoint("agent_response", 5, 2, case_id="c1")])
    state, found = expired(state, 24 * H - 1)
    assert found == []
    _, found = expired(state, 24 * H)
    assert facts(found) == [("sla_breach", "resolution", HIGH, ms(24 * H), (eid(1),), "c1",
                             "phone")]


def test_reopen_starts_a_new_resolution_deadline() -> None:
    state, _ = run([contact(0, 1), touchpoint("agent_response", 5, 2, case_id="c1"),
                    touchpoint("case_resolved", 1 * H, 3, case_id="c1"),
                    touchpoint("case_reopened", 2 * D, 4, case_id="c1")])
    due = 2 * D + 24 * H  # the case's channel (phone) decides, not the reopen's (chat)
    assert next_deadline(state, CONFIG) == ms(due)
    state, found = expired(state, due - 1 / 60_000)
    assert found == []
    state, found = expired(state, due)
    assert facts(found) == [("sla_breach", "resolution", HIGH, ms(due), (eid(4),), "c1",
                             "phone")]
    _, again = expired(state, due + 1)
    assert again == []


def test_reopened_case_resolved_in_time_has_no_breach() -> None:
    state, _ = run([contact(0, 1), touchpoint("agent_response", 5, 2, case_id="c1"),
                    touchpoint("case_resolved", 1 * H, 3, case_id="c1"),
                    touchpoint("case_reopened", 2 * D, 4, case_id="c1"),
                    touchpoint("case_resolved", 2 * D + 2 * H, 5, case_id="c1")])
    _, found = expired(state, 10 * D)
    assert found == []


def test_both_breaches_of_one_case_have_different_ids() -> None:
    state, _ = run([contact(0, 1)])
    state, first = expired(state, 1 * H)
    _, second = expired(state, 24 * H)
    found = first + second
    assert facts(found) == [
        ("sla_breach", "first_response", MEDIUM, ms(1 * H), (eid(1),), "c1", "phone"),
        ("sla_breach", "resolution", HIGH, ms(24 * H), (eid(1),), "c1", "phone"),
    ]
    assert "sla_breach" in KIND_IN_ID
    ids = {friction_id_for(f.rule, CUSTOMER, f.evidence,
                           f.kind if f.rule in KIND_IN_ID else None) for f in found}
    assert len(ids) == 2
    # the kind is what keeps them apart: the evidence alone is the same
    assert len({friction_id_for(f.rule, CUSTOMER, f.evidence) for f in found}) == 1


def test_both_breaches_at_once_when_the_watermark_jumps() -> None:
    state, _ = run([contact(0, 1)])
    _, found = expired(state, 30 * H)
    assert [(f.kind, f.occurred_at) for f in found] == [
        ("first_response", ms(1 * H)), ("resolution", ms(24 * H))]


def test_first_response_deadline_from_the_config() -> None:
    config = replace(CONFIG, sla_breach=SlaBreachConfig(
        first_response={**SlaBreachConfig().first_response, "chat": 5 * MINUTE}))
    state, _ = run([contact(0, 1, channel="chat")], config)
    _, found = expired(state, 5, config)
    assert [(f.kind, f.occurred_at) for f in found] == [("first_response", ms(5))]


# --- unreachable_help -----------------------------------------------------------------


def test_contact_abandoned_in_the_queue() -> None:
    _, found = run([contact(0, 1, abandoned=True, wait_seconds=2000)])
    assert facts(of_rule(found, "unreachable_help")) == [
        ("unreachable_help", "queue_abandoned", HIGH, ms(0), (eid(1),), "c1", "phone")]


@pytest.mark.parametrize(("channel", "limit_seconds"),
                         [("phone", 600), ("chat", 300), ("email", 1800)])
def test_long_wait_just_above_the_limit(channel: str, limit_seconds: int) -> None:
    _, above = run([contact(0, 1, channel=channel, wait_seconds=limit_seconds + 1)])
    assert facts(of_rule(above, "unreachable_help")) == [
        ("unreachable_help", "long_wait", MEDIUM, ms(0), (eid(1),), "c1", channel)]
    for wait in (limit_seconds, limit_seconds - 1, 0):
        _, found = run([contact(0, 1, channel=channel, wait_seconds=wait)])
        assert of_rule(found, "unreachable_help") == [], wait


def test_contact_without_wait_is_fine() -> None:
    _, found = run([contact(0, 1, drop=["wait_seconds", "abandoned"])])
    assert found == []


def test_ivr_abandoned_versus_transferred() -> None:
    _, abandoned = run([touchpoint("ivr_session", 0, 1, abandoned=True,
                                   transferred_to_agent=False)])
    assert facts(abandoned) == [
        ("unreachable_help", "ivr_abandoned", MEDIUM, ms(0), (eid(1),), None, "phone")]
    _, transferred = run([touchpoint("ivr_session", 0, 1, abandoned=False,
                                     transferred_to_agent=True)])
    assert transferred == []


@pytest.mark.parametrize(("handed_off", "resolved", "fires"),
                         [(False, False, True), (True, False, False), (False, True, False),
                          (True, True, False)])
def test_chatbot_dead_end(handed_off: bool, resolved: bool, fires: bool) -> None:
    _, found = run([touchpoint("chatbot_session", 0, 1, handed_off=handed_off,
                               resolved=resolved)])
    expected = [("unreachable_help", "chatbot_dead_end", MEDIUM, ms(0), (eid(1),), None,
                 "chat")]
    assert facts(found) == (expected if fires else [])


# --- escalation -------------------------------------------------------------------------


def test_first_and_repeated_escalation_of_a_case() -> None:
    _, found = run([contact(0, 1), touchpoint("escalation", 10, 2, case_id="c1"),
                    touchpoint("escalation", 20, 3, case_id="c1", to="legal"),
                    touchpoint("escalation", 30, 4, case_id="c1")])
    assert facts(of_rule(found, "escalation")) == [
        ("escalation", "first", MEDIUM, ms(10), (eid(2),), "c1", "phone"),
        ("escalation", "repeated", HIGH, ms(20), (eid(3),), "c1", "phone"),
        ("escalation", "repeated", HIGH, ms(30), (eid(4),), "c1", "phone"),
    ]
    assert "legal" in found[1].message


def test_escalations_of_different_cases_are_each_first() -> None:
    _, found = run([contact(0, 1, "c1"), contact(1, 2, "c2", topic="other"),
                    touchpoint("escalation", 10, 3, case_id="c1"),
                    touchpoint("escalation", 20, 4, case_id="c2")])
    assert [(f.kind, f.severity, f.case_id) for f in of_rule(found, "escalation")] == [
        ("first", MEDIUM, "c1"), ("first", MEDIUM, "c2")]


# --- failed_outcome ---------------------------------------------------------------------


@pytest.mark.parametrize(("type_name", "severity", "reason"),
                         [("payment_failed", HIGH, "card_declined"),
                          ("delivery_failed", HIGH, "address_not_found"),
                          ("refund", MEDIUM, "size")])
def test_failed_outcomes(type_name: str, severity: Severity, reason: str) -> None:
    _, found = run([touchpoint(type_name, 0, 1)])
    assert facts(found) == [("failed_outcome", type_name, severity, ms(0), (eid(1),), None,
                             "web")]
    assert reason in found[0].message


def test_failed_outcome_without_reason() -> None:
    _, found = run([touchpoint("delivery_failed", 0, 1, drop=["reason"])])
    assert found[0].message == "A delivery failed."


@pytest.mark.parametrize(
    "type_name",
    [t for t in EXAMPLE_TYPES if t not in ("payment_failed", "delivery_failed", "refund")])
def test_other_types_are_no_failed_outcome(type_name: str) -> None:
    tp = touchpoint(type_name, 0, 1)
    assert detect_failed_outcome(FrictionState(), signal_of(tp), CONFIG.failed_outcome) == (
        FrictionState(), [])


@pytest.mark.parametrize("type_name", ["ad_impression", "ad_click", "email_opened",
                                       "site_visit", "page_view", "product_view", "search",
                                       "add_to_cart", "purchase", "kb_article_view",
                                       "community_post", "subscription_started",
                                       "subscription_changed", "account_updated",
                                       "store_visit", "appointment", "identify"])
def test_plain_touchpoints_are_no_friction(type_name: str) -> None:
    state, found = run([touchpoint(type_name, 0, 1)])
    assert found == []
    _, found = expire(state, ms(100 * D), CONFIG)
    assert found == []


# --- checkout_abandoned -----------------------------------------------------------------


def test_checkout_without_purchase_is_abandoned_at_the_deadline() -> None:
    state, found = run([touchpoint("checkout_started", 0, 1)])
    assert found == []
    assert next_deadline(state, CONFIG) == ms(24 * H)
    state, found = expired(state, 24 * H - 1 / 60_000)
    assert found == []
    state, found = expired(state, 24 * H)
    assert facts(found) == [("checkout_abandoned", "checkout", LOW, ms(24 * H), (eid(1),),
                             None, "web")]  # where the checkout started
    assert "39.98" in found[0].message
    _, again = expired(state, 48 * H)
    assert again == []


def test_purchase_inside_the_deadline_prevents_abandonment() -> None:
    state, _ = run([touchpoint("checkout_started", 0, 1), touchpoint("purchase", 24 * H - 1, 2)])
    _, found = expired(state, 48 * H)
    assert found == []


def test_purchase_after_the_deadline_does_not_prevent_abandonment() -> None:
    state, _ = run([touchpoint("checkout_started", 0, 1), touchpoint("purchase", 24 * H + 1, 2)])
    _, found = expired(state, 48 * H)
    assert [f.evidence for f in found] == [(eid(1),)]


def test_purchase_processed_before_its_checkout_prevents_abandonment() -> None:
    state, _ = run([touchpoint("purchase", 30, 2), touchpoint("checkout_started", 0, 1)])
    _, found = expired(state, 48 * H)
    assert found == []


def test_purchase_before_the_checkout_in_event_time_does_not_prevent_it() -> None:
    state, _ = run([touchpoint("purchase", 0, 1), touchpoint("checkout_started", 30, 2)])
    _, found = expired(state, 48 * H)
    assert [(f.occurred_at, f.evidence) for f in found] == [(ms(30 + 24 * H), (eid(2),))]


def test_restarted_checkout_continues_the_attempt() -> None:
    state, _ = run([touchpoint("checkout_started", 0, 1), touchpoint("checkout_started", 2 * H, 2)])
    state, found = expired(state, 24 * H)
    assert found == []
    _, found = expired(state, 26 * H)
    assert facts(found) == [("checkout_abandoned", "checkout", LOW, ms(26 * H), (eid(2),),
                             None, "web")]


def test_restarted_checkout_bought_in_time() -> None:
    state, _ = run([touchpoint("checkout_started", 0, 1), touchpoint("checkout_started", 2 * H, 2),
                    touchpoint("purchase", 25 * H, 3)])
    _, found = expired(state, 72 * H)
    assert found == []


@pytest.mark.parametrize(("cart_value", "severity"),
                         [(199.99, LOW), (200, MEDIUM), (1500.5, MEDIUM)])
def test_high_cart_value_is_more_severe(cart_value: float, severity: Severity) -> None:
    state, _ = run([touchpoint("checkout_started", 0, 1, cart_value=cart_value)])
    _, found = expired(state, 24 * H)
    assert [f.severity for f in found] == [severity]


def test_pending_checkouts_are_bounded() -> None:
    config = replace(CONFIG, max_checkouts=3)
    state, _ = run([touchpoint("checkout_started", i * 2 * D, i + 1) for i in range(5)], config)
    assert [c.event_id for c in state.checkouts] == [eid(3), eid(4), eid(5)]


# --- negative_feedback ------------------------------------------------------------------


@pytest.mark.parametrize(("survey", "score", "fires"),
                         [("csat", 1, True), ("csat", 2, True), ("csat", 3, False),
                          ("nps", 0, True), ("nps", 6, True), ("nps", 7, False),
                          ("nps", 10, False), ("ces", 5, True), ("ces", 7, True),
                          ("ces", 4, False)])
def test_survey_scores(survey: str, score: int, fires: bool) -> None:
    _, found = run([touchpoint("survey_response", 0, 1, survey=survey, score=score)])
    expected = [("negative_feedback", survey, MEDIUM, ms(0), (eid(1),), "case-7", "email")]
    assert facts(found) == (expected if fires else [])


def test_survey_case_from_the_envelope_wins() -> None:
    _, found = run([touchpoint("survey_response", 0, 1, case_id="c9", survey="csat", score=1)])
    assert [f.case_id for f in found] == ["c9"]
    _, found = run([touchpoint("survey_response", 0, 1, drop=["case_id"], survey="csat",
                               score=1)])
    assert [f.case_id for f in found] == [None]


@pytest.mark.parametrize(("rating", "fires"), [(1, True), (2, True), (3, False), (5, False)])
def test_review_rating(rating: int, fires: bool) -> None:
    _, found = run([touchpoint("review", 0, 1, rating=rating)])
    expected = [("negative_feedback", "review", HIGH, ms(0), (eid(1),), None, "web")]
    assert facts(found) == (expected if fires else [])


@pytest.mark.parametrize(("sentiment", "public", "severity"),
                         [("negative", True, HIGH), ("negative", None, HIGH),
                          ("negative", False, MEDIUM), ("neutral", True, None),
                          ("positive", True, None)])
def test_social_mention(sentiment: str, public: bool | None, severity: Severity | None) -> None:
    _, found = run([touchpoint("social_mention", 0, 1, sentiment=sentiment, public=public)])
    expected = [("negative_feedback", "social", severity, ms(0), (eid(1),), None, "social")]
    assert facts(found) == (expected if severity else [])


# --- channel_hopping --------------------------------------------------------------------


def test_one_case_on_more_and_more_channels() -> None:
    _, found = run([contact(0, 1, channel="phone"), contact(10, 2, channel="email"),
                    contact(20, 3, channel="phone"), contact(30, 4, channel="chat"),
                    contact(40, 5, channel="email")])
    assert facts(of_rule(found, "channel_hopping")) == [
        ("channel_hopping", "2_channels", MEDIUM, ms(10), (eid(1), eid(2)), "c1", "email"),
        ("channel_hopping", "3_channels", HIGH, ms(30), (eid(1), eid(2), eid(4)), "c1",
         "chat"),
    ]
    assert "phone, email, chat" in of_rule(found, "channel_hopping")[1].message


def test_two_cases_on_two_channels_are_no_hopping() -> None:
    _, found = run([contact(0, 1, "c1", channel="phone", topic="delivery"),
                    contact(10, 2, "c2", channel="email", topic="billing")])
    assert found == []


def test_outbound_contact_on_a_new_channel_is_no_hopping() -> None:
    _, found = run([contact(0, 1, channel="phone"),
                    contact(10, 2, channel="email", direction="outbound")])
    assert of_rule(found, "channel_hopping") == []


def test_channel_hopping_thresholds_from_the_config() -> None:
    config = replace(CONFIG, channel_hopping=ChannelHoppingConfig(min_channels=3, severe_from=4))
    _, found = run([contact(0, 1, channel="phone"), contact(10, 2, channel="email"),
                    contact(20, 3, channel="chat"), contact(30, 4, channel="sms")], config)
    assert [(f.kind, f.severity, f.occurred_at) for f in of_rule(found, "channel_hopping")] == [
        ("3_channels", MEDIUM, ms(20)), ("4_channels", HIGH, ms(30))]


# --- cancellation_after_contact ---------------------------------------------------------


def answered_contact() -> list[Touchpoint]:
    """A phone contact answered and resolved in time: a contact, but no friction."""
    return [contact(0, 1), touchpoint("agent_response", 5, 2, case_id="c1"),
            touchpoint("case_resolved", 30, 3, case_id="c1")]


def test_cancellation_29_days_after_a_contact() -> None:
    _, found = run([*answered_contact(), touchpoint("subscription_cancelled", 29 * D, 9)])
    assert facts(found) == [("cancellation_after_contact", "after_contact", HIGH, ms(29 * D),
                             (eid(9), eid(1)), None, "phone")]


def test_cancellation_31_days_after_a_contact_is_unrelated() -> None:
    _, found = run([*answered_contact(), touchpoint("subscription_cancelled", 31 * D, 9)])
    assert found == []


def test_cancellation_after_friction_is_critical() -> None:
    _, found = run([*answered_contact(), touchpoint("payment_failed", 2 * D, 4),
                    touchpoint("subscription_cancelled", 10 * D, 9)])
    assert facts(of_rule(found, "cancellation_after_contact")) == [
        ("cancellation_after_contact", "after_friction", CRITICAL, ms(10 * D),
         (eid(9), eid(4)), None, "phone")]


def test_cancellation_after_a_breach_found_by_expire_is_critical() -> None:
    state, _ = run([contact(0, 1, channel="chat")])
    state, breach = expired(state, 10)
    assert [f.kind for f in breach] == ["first_response"]
    _, found = run([touchpoint("subscription_cancelled", 1 * D, 9)], state=state)
    assert facts(found) == [("cancellation_after_contact", "after_friction", CRITICAL,
                             ms(1 * D), (eid(9), eid(1)), None, "phone")]


def test_contact_after_the_cancellation_in_event_time_does_not_count() -> None:
    _, found = run([contact(5 * D, 1, drop=["wait_seconds"]),
                    touchpoint("subscription_cancelled", 3 * D, 9)])
    assert found == []


def test_outbound_contact_before_a_cancellation_does_not_count() -> None:
    _, found = run([contact(0, 1, direction="outbound"),
                    touchpoint("subscription_cancelled", 1 * D, 9)])
    assert found == []


def test_billing_inquiry_before_a_cancellation_counts() -> None:
    _, found = run([touchpoint("billing_inquiry", 0, 1, case_id="b1"),
                    touchpoint("subscription_cancelled", 1 * D, 9)])
    assert facts(found) == [("cancellation_after_contact", "after_contact", HIGH, ms(1 * D),
                             (eid(9), eid(1)), None, "phone")]


def test_cancellation_without_any_contact() -> None:
    _, found = run([touchpoint("purchase", 0, 1), touchpoint("subscription_cancelled", 1 * D, 9)])
    assert found == []


# --- every rule fires, and reports nothing when disabled ------------------------------

# rule -> (touchpoints, watermark minute for expire)
SCENARIOS: dict[str, tuple[Callable[[], list[Touchpoint]], float]] = {
    "repeat_contact": (lambda: [contact(0, 1), contact(5, 2)], 0),
    "sla_breach": (lambda: [contact(0, 1)], 2 * D),
    "unreachable_help": (lambda: [contact(0, 1, abandoned=True)], 0),
    "escalation": (lambda: [contact(0, 1), touchpoint("escalation", 5, 2, case_id="c1")], 0),
    "failed_outcome": (lambda: [touchpoint("payment_failed", 0, 1)], 0),
    "checkout_abandoned": (lambda: [touchpoint("checkout_started", 0, 1)], 2 * D),
    "negative_feedback": (lambda: [touchpoint("review", 0, 1, rating=1)], 0),
    "channel_hopping": (lambda: [contact(0, 1), contact(5, 2, channel="email")], 0),
    "cancellation_after_contact": (
        lambda: [*answered_contact(), touchpoint("subscription_cancelled", 1 * D, 9)], 0),
}


def scenario_findings(rule: str, config: FrictionConfig) -> list[Finding]:
    events, watermark = SCENARIOS[rule]
    state, found = run(events(), config)
    _, more = expire(state, ms(watermark), config)
    return found + more


def test_every_rule_has_a_scenario() -> None:
    assert set(SCENARIOS) == set(RULES)


@pytest.mark.parametrize("rule", RULES)
def test_rule_fires_when_enabled(rule: str) -> None:
    assert of_rule(scenario_findings(rule, CONFIG), rule) != []


@pytest.mark.parametrize("rule", RULES)
def test_disabled_rule_reports_nothing(rule: str) -> None:
    config = replace(CONFIG, **{rule: replace(getattr(CONFIG, rule), enabled=False)})
    assert of_rule(scenario_findings(rule, config), rule) == []


def test_everything_disabled_reports_nothing() -> None:
    config = replace(CONFIG, **{r: replace(getattr(CONFIG, r), enabled=False) for r in RULES})
    for rule in RULES:
        assert scenario_findings(rule, config) == []


def test_disabled_checkouts_are_not_kept() -> None:
    config = replace(CONFIG, checkout_abandoned=CheckoutAbandonedConfig(enabled=False))
    state, _ = run([touchpoint("checkout_started", 0, 1)], config)
    assert state.checkouts == ()


# --- bounded state ----------------------------------------------------------------------


def test_cases_are_bounded_by_max_cases() -> None:
    n = CONFIG.max_cases + 5
    state, _ = run([contact(i, i + 1, f"c{i}", topic=f"t{i}") for i in range(n)])
    assert len(state.cases) == CONFIG.max_cases
    # the least recently touched go first
    assert {c.case_id for c in state.cases} == {f"c{i}" for i in range(5, n)}


def test_a_touched_case_is_kept_over_an_untouched_one() -> None:
    config = replace(CONFIG, max_cases=2)
    state, _ = run([contact(0, 1, "c1", topic="a"), contact(1, 2, "c2", topic="b"),
                    touchpoint("agent_response", 2, 3, case_id="c1"),
                    contact(3, 4, "c3", topic="c")], config)
    assert [c.case_id for c in state.cases] == ["c1", "c3"]


def test_purchases_are_bounded() -> None:
    state, _ = run([touchpoint("purchase", i, i + 1) for i in range(15)])
    assert state.purchases == tuple(ms(i) for i in range(5, 15))


def test_expire_forgets_a_resolved_case_after_the_topic_window() -> None:
    state, _ = run(answered_contact())
    state, _ = expired(state, 30 + 7 * D - 1)
    assert [c.case_id for c in state.cases] == ["c1"]
    state, found = expired(state, 30 + 7 * D)
    assert found == []
    assert state.cases == ()


def test_expire_forgets_an_open_case_after_case_ttl() -> None:
    state, _ = run([contact(0, 1), touchpoint("agent_response", 5, 2, case_id="c1")])
    state, _ = expired(state, 30 * D - 1)  # reports the resolution breach, keeps the case
    assert [c.case_id for c in state.cases] == ["c1"]
    state, _ = expired(state, 30 * D + 5)
    assert state.cases == ()


def test_expire_forgets_a_customer_with_nothing_left() -> None:
    state, _ = run(answered_contact())
    last_seen = 30
    after, _ = expire(state, ms(last_seen + 90 * D) - 1, CONFIG)
    assert after is not None
    assert after.cases == ()
    after, found = expire(after, ms(last_seen + 90 * D), CONFIG)
    assert after is None
    assert found == []


def test_a_customer_with_a_pending_checkout_is_kept() -> None:
    config = replace(CONFIG, customer_ttl=1 * H)
    state, _ = run([touchpoint("checkout_started", 0, 1)], config)
    after, found = expire(state, ms(2 * H), config)
    assert after is not None
    assert found == []
    assert next_deadline(after, config) == ms(24 * H)
    after, found = expire(after, ms(24 * H), config)
    assert after is None
    assert [f.rule for f in found] == ["checkout_abandoned"]


@pytest.mark.parametrize("config", [
    CONFIG,
    replace(CONFIG, case_ttl=12 * H),  # shorter than the phone resolution deadline
    replace(CONFIG, customer_ttl=1 * H, case_ttl=2 * H),
    replace(CONFIG, sla_breach=SlaBreachConfig(resolution={"default": 60 * DAY})),
], ids=["defaults", "short-case-ttl", "short-customer-ttl", "long-resolution"])
def test_next_deadline_is_after_the_watermark_expire_was_given(config: FrictionConfig) -> None:
    """A scheduler calling expire at next_deadline must always make progress."""
    state: FrictionState | None
    state, _ = run([contact(0, 1, "c1", channel="email"), touchpoint("checkout_started", 5, 2),
                    contact(10, 3, "c2", topic="other"),
                    touchpoint("case_resolved", 20, 4, case_id="c2")], config)
    watermarks: list[int] = []
    while state is not None:
        assert len(watermarks) < 20, watermarks
        watermark = next_deadline(state, config)
        unchanged, nothing = expire(state, watermark - 1, config)
        assert (unchanged, nothing) == (state, [])
        state, _ = expire(state, watermark, config)
        if state is not None:
            assert next_deadline(state, config) > watermark
        watermarks.append(watermark)
    assert watermarks == sorted(watermarks)


# --- state round trip and determinism ---------------------------------------------------


def rich_state() -> FrictionState:
    state, _ = run([
        contact(0, 1, "c1", channel="phone"), contact(5, 2, "c1", channel="email"),
        touchpoint("escalation", 6, 3, case_id="c1"),
        touchpoint("billing_inquiry", 7, 4, case_id="c2"),
        touchpoint("case_resolved", 8, 5, case_id="c2"),
        touchpoint("checkout_started", 9, 6, cart_value=12.5),
        touchpoint("purchase", 10 * D, 7), touchpoint("checkout_started", 11 * D, 8),
        touchpoint("payment_failed", 11 * D, 9),
    ])
    return state


def test_rich_state_has_everything() -> None:
    state = rich_state()
    assert state.stage is not None and state.has_purchased
    assert {c.case_id for c in state.cases} == {"c1", "c2"}
    assert state.checkouts and state.purchases
    assert state.last_contact == Mark(ms(7), eid(4))
    assert state.last_friction == Mark(ms(11 * D), eid(9))
    case = state.case("c1")
    assert case is not None
    assert case.channels == (("phone", eid(1)), ("email", eid(2)))
    assert case.escalations == 1


def test_state_round_trips_through_dicts_and_json() -> None:
    state = rich_state()
    assert FrictionState.from_dict(state.to_dict()) == state
    assert FrictionState.from_dict(orjson.loads(orjson.dumps(state.to_dict()))) == state
    empty = FrictionState()
    assert FrictionState.from_dict(orjson.loads(orjson.dumps(empty.to_dict()))) == empty


def test_hand_built_state_round_trips() -> None:
    state = FrictionState(
        stage="retention", has_purchased=True, last_seen=5,
        cases=(CaseTrack("c", 1, "chat", None, eid(1), 2, (("chat", eid(1)),), 7, None, eid(1),
                         True, 3, 4),),
        checkouts=(PendingCheckout(1, eid(2), 99.5, 10),), purchases=(1, 2),
        last_contact=None, last_friction=Mark(3, eid(3)))
    assert FrictionState.from_dict(orjson.loads(orjson.dumps(state.to_dict()))) == state


def test_detect_is_deterministic() -> None:
    events = [*answered_contact(), contact(40, 4, "c2", channel="chat", wait_seconds=999),
              contact(50, 5, "c2", channel="email"), touchpoint("refund", 60, 6),
              touchpoint("subscription_cancelled", 70, 7)]
    first = run(events)
    second = run(events)
    assert first == second
    assert [f.rule for f in first[1]] == [
        "unreachable_help", "repeat_contact", "channel_hopping",
        "failed_outcome", "cancellation_after_contact"]


# --- property: random journeys ----------------------------------------------------------

SMALL = replace(CONFIG, max_cases=3, max_checkouts=2, case_ttl=1 * DAY, customer_ttl=2 * DAY,
                repeat_contact=RepeatContactConfig(topic_window=12 * HOUR))

Maker = Callable[[float, int, str, str], Touchpoint]
MENU: list[Maker] = [
    lambda m, n, case, ch: contact(m, n, case, channel=ch),
    lambda m, n, case, ch: contact(m, n, case, channel=ch, wait_seconds=900),
    lambda m, n, case, ch: contact(m, n, case, channel=ch, direction="outbound"),
    lambda m, n, case, ch: contact(m, n, case, channel=ch, abandoned=True),
    lambda m, n, case, ch: touchpoint("billing_inquiry", m, n, case_id=case),
    lambda m, n, case, ch: touchpoint("agent_response", m, n, case_id=case),
    lambda m, n, case, ch: touchpoint("case_resolved", m, n, case_id=case),
    lambda m, n, case, ch: touchpoint("case_reopened", m, n, case_id=case),
    lambda m, n, case, ch: touchpoint("escalation", m, n, case_id=case),
    lambda m, n, case, ch: touchpoint("checkout_started", m, n, cart_value=250),
    lambda m, n, case, ch: touchpoint("purchase", m, n),
    lambda m, n, case, ch: touchpoint("payment_failed", m, n),
    lambda m, n, case, ch: touchpoint("survey_response", m, n, survey="csat", score=1),
    lambda m, n, case, ch: touchpoint("social_mention", m, n),
    lambda m, n, case, ch: touchpoint("chatbot_session", m, n, handed_off=False),
    lambda m, n, case, ch: touchpoint("subscription_cancelled", m, n),
    lambda m, n, case, ch: touchpoint("page_view", m, n),
]

steps = st.lists(
    st.one_of(
        st.tuples(st.just("event"), st.integers(0, len(MENU) - 1),
                  st.integers(0, 4 * D),  # minutes: ~4 days, beyond the short TTLs
                  st.sampled_from(["c1", "c2", "c3", "c4"]),
                  st.sampled_from(["phone", "chat", "email"])),
        st.tuples(st.just("expire"), st.integers(0, 6 * D)),
    ),
    max_size=40,
)

Step = tuple[Any, ...]


def replay(plan: list[Step], config: FrictionConfig, *, round_trip: bool) -> list[Any]:
    """Findings and states of a plan; with `round_trip`, the state goes through JSON at
    every step. Checks the invariants on the way."""
    state: FrictionState | None = None
    out: list[Any] = []
    for n, step in enumerate(plan, start=1):
        if step[0] == "event":
            _, which, minute, case, channel = step
            state, found = detect(state, MENU[which](minute, n, case, channel), config)
        else:
            watermark = ms(step[1])
            if state is None:
                continue
            if watermark < next_deadline(state, config):
                assert expire(state, watermark, config) == (state, [])
            state, found = expire(state, watermark, config)
            if state is not None:
                assert next_deadline(state, config) > watermark
        if state is not None:
            assert len(state.cases) <= config.max_cases
            assert len(state.checkouts) <= config.max_checkouts
            again = FrictionState.from_dict(orjson.loads(orjson.dumps(state.to_dict())))
            assert again == state
            if round_trip:
                state = again
        out.append((found, None if state is None else state.to_dict()))
    return out


@settings(max_examples=150, deadline=None)
@given(plan=steps, config=st.sampled_from([CONFIG, SMALL]))
def test_random_journeys_are_deterministic_and_survive_round_trips(
        plan: list[Step], config: FrictionConfig) -> None:
    reference = replay(plan, config, round_trip=False)
    assert replay(plan, config, round_trip=True) == reference
    assert replay(plan, config, round_trip=False) == reference


@settings(max_examples=100, deadline=None)
@given(plan=steps)
def test_unreachable_help_depends_on_the_touchpoint_alone(plan: list[Step]) -> None:
    """A stateless rule: the same touchpoint finds the same, whatever came before."""
    state, _ = run([MENU[s[1]](s[2], n, s[3], s[4])
                    for n, s in enumerate(plan, start=1) if s[0] == "event"],
                   state=FrictionState())
    probe = signal_of(contact(0, 999, abandoned=True))
    after, found = detect_unreachable_help(state, probe, CONFIG.unreachable_help)
    assert after is state
    assert found == detect_unreachable_help(FrictionState(), probe, CONFIG.unreachable_help)[1]


# --- answers that arrive before their case's first contact ----------------------------


def test_an_answer_processed_before_the_contact_still_counts() -> None:
    # Event time: contact at 0, answer at 5, resolved at 30; arrival: answer, resolved, contact.
    state, found = run([touchpoint("agent_response", 5, 2, case_id="c1", channel="chat"),
                        touchpoint("case_resolved", 30, 3, case_id="c1", channel="chat"),
                        contact(0, 1, channel="chat")])
    assert of_rule(found, "sla_breach") == []
    assert state.early == (), "consumed by the case that opened"
    case = state.case("c1")
    assert case is not None and case.resolved
    assert case.first_response_due is None and case.resolution_due is None
    _, late = expired(state, 3 * D)
    assert of_rule(late, "sla_breach") == []


def test_an_early_answer_past_the_deadline_does_not_stop_the_clock() -> None:
    state, _ = run([touchpoint("agent_response", 11, 2, case_id="c1", channel="chat"),
                    contact(0, 1, channel="chat")])
    _, found = expired(state, 11)
    assert facts(found) == [("sla_breach", "first_response", MEDIUM, ms(10), (eid(1),), "c1",
                             "chat")]


def test_an_answer_dated_before_the_contact_is_not_its_response() -> None:
    state, _ = run([touchpoint("agent_response", -5, 2, case_id="c1", channel="chat"),
                    contact(0, 1, channel="chat")])
    _, found = expired(state, 11)
    assert [f.kind for f in found] == ["first_response"]


def test_early_answers_are_bounded_and_forgotten() -> None:
    answers = [touchpoint("agent_response", i, 100 + i, case_id=f"x{i}") for i in range(30)]
    state, _ = run(answers)
    assert len(state.early) == 20
    assert {e.case_id for e in state.early} == {f"x{i}" for i in range(10, 30)}
    assert FrictionState.from_dict(orjson.loads(orjson.dumps(state.to_dict()))) == state
    assert next_deadline(state, CONFIG) == ms(10) + CONFIG.case_ttl
    later, _ = expire(state, ms(40) + CONFIG.case_ttl + CONFIG.customer_ttl, CONFIG)
    assert later is None


# --- a contact about a resolved case reopens it ----------------------------------------


def test_a_contact_after_the_resolution_reopens_the_case() -> None:
    events = [contact(0, 1, channel="email"),
              touchpoint("agent_response", 10, 2, case_id="c1", channel="email"),
              touchpoint("case_resolved", 60, 3, case_id="c1", channel="email"),
              contact(2 * D, 4, channel="email")]
    state, found = run(events)
    assert [f.kind for f in of_rule(found, "repeat_contact")] == ["case"]
    case = state.case("c1")
    assert case is not None and not case.resolved and case.reopened_by == eid(4)
    limit = CONFIG.sla_breach.resolution_ms("email") // MINUTE
    assert case.resolution_due == ms(2 * D + limit)
    _, breaches = expired(state, 2 * D + limit)
    assert facts(breaches) == [("sla_breach", "resolution", HIGH, ms(2 * D + limit),
                                (eid(4),), "c1", "email")]


def test_a_reopened_case_resolved_in_time_has_no_breach() -> None:
    state, _ = run([contact(0, 1, channel="email"),
                    touchpoint("agent_response", 10, 2, case_id="c1", channel="email"),
                    touchpoint("case_resolved", 60, 3, case_id="c1", channel="email"),
                    contact(2 * D, 4, channel="email"),
                    touchpoint("case_resolved", 2 * D + 60, 5, case_id="c1", channel="email")])
    _, breaches = expired(state, 10 * D)
    assert of_rule(breaches, "sla_breach") == []


def test_over_the_case_bound_cases_without_a_deadline_go_first() -> None:
    config = replace(CONFIG, max_cases=2)
    state, _ = run([contact(0, 1, case_id="open-old", channel="email"),  # deadlines pending
                    contact(1, 2, case_id="done", channel="email"),
                    touchpoint("agent_response", 2, 3, case_id="done", channel="email"),
                    touchpoint("case_resolved", 3, 4, case_id="done", channel="email"),
                    contact(4, 5, case_id="new", channel="email")], config)
    assert [c.case_id for c in state.cases] == ["open-old", "new"]
