"""Planted friction: small journeys that hold a known friction each, and near misses.

Every scenario is one customer of its own, so what the detectors report for those
customers must equal `PlantedFriction.expected` exactly: no more, no less. The
expected ids are spelled here from the documented evidence of each rule (EVENTS.md:
rule + customer key + triggering event ids; an SLA breach adds its kind), not by
running the rules. With the default thresholds (projections/friction/config.py).

The last events are watermark pushers, one per partition of `touchpoints`, dated
after every deadline plus the allowed lateness, so deadlines fire although the
planted customers send nothing more.
"""

from __future__ import annotations

import random
import uuid
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

from schemas.friction import friction_id_for
from streams.kafka import DefaultPartitioner

Event = dict[str, Any]


@dataclass(frozen=True, slots=True)
class Expected:
    rule: str
    customer_key: str
    evidence: tuple[str, ...]
    kind: str
    severity: str

    @property
    def friction_id(self) -> str:
        return friction_id_for(self.rule, self.customer_key, self.evidence,
                               self.kind if self.rule == "sla_breach" else None)


@dataclass
class PlantedFriction:
    events: list[Event] = field(default_factory=list)
    expected: list[Expected] = field(default_factory=list)
    customers: set[str] = field(default_factory=set)

    def ids(self) -> set[str]:
        return {e.friction_id for e in self.expected}

    def by_rule(self) -> dict[str, int]:
        counts: dict[str, int] = {}
        for e in self.expected:
            counts[e.rule] = counts.get(e.rule, 0) + 1
        return dict(sorted(counts.items()))


class _Plan:
    def __init__(self, prefix: str, start: datetime, rng: random.Random) -> None:
        self.prefix = prefix
        self.start = start
        self.rng = rng
        self.out = PlantedFriction()
        self.n = 0

    def customer(self, what: str) -> str:
        self.n += 1
        key = f"{self.prefix}-{what}-{self.n}"
        self.out.customers.add(key)
        return key

    def emit(self, who: str, type_: str, minutes: float, channel: str = "web",
             case: str | None = None, **properties: Any) -> str:
        event_id = str(uuid.UUID(int=self.rng.getrandbits(128), version=4))
        at = self.start + timedelta(minutes=minutes)
        event: Event = {
            "event_id": event_id, "schema_version": 1, "type": type_,
            "occurred_at": at.isoformat().replace("+00:00", "Z"), "channel": channel,
            "customer_id": who, "properties": properties,
        }
        if case is not None:
            event["case_id"] = case
        self.out.events.append(event)
        return event_id

    def expect(self, rule: str, who: str, evidence: Iterable[str], kind: str,
               severity: str) -> None:
        self.out.expected.append(Expected(rule, who, tuple(evidence), kind, severity))

    def answered_case(self, who: str, minutes: float, channel: str = "email",
                      topic: str = "order", case: str | None = None) -> tuple[str, str]:
        """A contact answered after 5 minutes and resolved after an hour: no friction."""
        case = case or f"{who}-case-{self.n}-{minutes:g}"
        first = self.emit(who, "support_contact", minutes, channel, case, topic=topic,
                          direction="inbound")
        self.emit(who, "agent_response", minutes + 5, channel, case)
        self.emit(who, "case_resolved", minutes + 60, channel, case, resolution="fixed")
        return case, first


H = 60
D = 24 * 60


def _repeat_contact(p: _Plan, day: float) -> None:
    t = day * D
    who = p.customer("repeat")
    case = f"{who}-k"
    first = p.emit(who, "support_contact", t, "email", case, topic="invoice", direction="inbound")
    p.emit(who, "agent_response", t + 10, "email", case)
    second = p.emit(who, "support_contact", t + 2 * H, "email", case, topic="invoice")
    p.emit(who, "case_resolved", t + 3 * H, "email", case)
    p.expect("repeat_contact", who, (first, second), "case", "medium")
    # near misses: an outbound follow-up and a second case on another topic
    near = p.customer("repeat-near")
    case = f"{near}-k"
    p.emit(near, "support_contact", t, "email", case, topic="invoice")
    p.emit(near, "agent_response", t + 10, "email", case)
    p.emit(near, "support_contact", t + H, "email", case, topic="invoice", direction="outbound")
    p.emit(near, "case_resolved", t + 2 * H, "email", case)
    p.answered_case(near, t + 3 * H, topic="delivery")
    # the same topic on a new case while the first is open
    topic = p.customer("repeat-topic")
    a = f"{topic}-a"
    first = p.emit(topic, "support_contact", t, "email", a, topic="delivery")
    p.emit(topic, "agent_response", t + 5, "email", a)
    b = f"{topic}-b"
    second = p.emit(topic, "support_contact", t + D, "email", b, topic="delivery")
    p.emit(topic, "agent_response", t + D + 5, "email", b)
    p.emit(topic, "case_resolved", t + 2 * D, "email", a)
    p.emit(topic, "case_resolved", t + 2 * D, "email", b)
    p.expect("repeat_contact", topic, (first, second), "topic", "medium")


def _sla_breach(p: _Plan, day: float) -> None:
    t = day * D
    late = p.customer("sla-late")
    case = f"{late}-k"
    first = p.emit(late, "support_contact", t, "chat", case, topic="login")
    p.emit(late, "agent_response", t + 30, "chat", case)  # chat: 10 minutes
    p.emit(late, "case_resolved", t + H, "chat", case)
    p.expect("sla_breach", late, (first,), "first_response", "medium")
    near = p.customer("sla-near")
    case = f"{near}-k"
    p.emit(near, "support_contact", t, "chat", case, topic="login")
    p.emit(near, "agent_response", t + 9, "chat", case)  # a minute inside
    p.emit(near, "case_resolved", t + H, "chat", case)
    # never resolved, and the customer never writes again: only the watermark fires it
    silent = p.customer("sla-silent")
    case = f"{silent}-k"
    first = p.emit(silent, "support_contact", t, "email", case, topic="refund")
    p.emit(silent, "agent_response", t + H, "email", case)
    p.expect("sla_breach", silent, (first,), "resolution", "high")


def _unreachable_help(p: _Plan, day: float) -> None:
    t = day * D
    who = p.customer("unreachable")
    case = f"{who}-k"
    dropped = p.emit(who, "support_contact", t, "phone", case, topic="bill", abandoned=True,
                     wait_seconds=300)
    p.emit(who, "support_contact", t + 30, "phone", case, topic="bill", direction="outbound")
    p.emit(who, "case_resolved", t + 40, "phone", case)
    p.expect("unreachable_help", who, (dropped,), "queue_abandoned", "high")
    ivr = p.emit(who, "ivr_session", t + 2 * H, "phone", transferred_to_agent=False,
                 abandoned=True)
    p.expect("unreachable_help", who, (ivr,), "ivr_abandoned", "medium")
    bot = p.emit(who, "chatbot_session", t + 3 * H, "chat", handed_off=False, resolved=False)
    p.expect("unreachable_help", who, (bot,), "chatbot_dead_end", "medium")
    near = p.customer("unreachable-near")
    p.emit(near, "chatbot_session", t, "chat", handed_off=True, resolved=False)
    p.emit(near, "ivr_session", t + H, "phone", transferred_to_agent=True, abandoned=False)


def _escalation(p: _Plan, day: float) -> None:
    t = day * D
    who = p.customer("escalation")
    case = f"{who}-k"
    p.emit(who, "support_contact", t, "email", case, topic="defect")
    p.emit(who, "agent_response", t + 10, "email", case)
    esc = p.emit(who, "escalation", t + H, "email", case, to="tier2")
    p.emit(who, "case_resolved", t + 2 * H, "email", case)
    p.expect("escalation", who, (esc,), "first", "medium")


def _failed_outcome(p: _Plan, day: float) -> None:
    t = day * D
    who = p.customer("failed")
    paid = p.emit(who, "payment_failed", t, "web", reason="card declined")
    p.expect("failed_outcome", who, (paid,), "payment_failed", "high")
    lost = p.emit(who, "delivery_failed", t + H, "web", order_id="o-1")
    p.expect("failed_outcome", who, (lost,), "delivery_failed", "high")
    back = p.emit(who, "refund", t + 2 * H, "web", order_id="o-1", amount=20, currency="EUR")
    p.expect("failed_outcome", who, (back,), "refund", "medium")


def _checkout_abandoned(p: _Plan, day: float) -> None:
    t = day * D
    who = p.customer("checkout")
    left = p.emit(who, "checkout_started", t, "web", cart_value=80, currency="EUR")
    p.expect("checkout_abandoned", who, (left,), "checkout", "low")
    near = p.customer("checkout-near")
    p.emit(near, "checkout_started", t, "web", cart_value=80, currency="EUR")
    p.emit(near, "purchase", t + D - 1, "web", order_id="o-2", revenue=80, currency="EUR")


def _negative_feedback(p: _Plan, day: float) -> None:
    t = day * D
    who = p.customer("feedback")
    for i, (survey, score) in enumerate([("csat", 1), ("nps", 3), ("ces", 6)]):
        e = p.emit(who, "survey_response", t + i * H, "email", survey=survey, score=score)
        p.expect("negative_feedback", who, (e,), survey, "medium")
    e = p.emit(who, "review", t + 4 * H, "web", rating=1)
    p.expect("negative_feedback", who, (e,), "review", "high")
    e = p.emit(who, "social_mention", t + 5 * H, "social", sentiment="negative", public=True)
    p.expect("negative_feedback", who, (e,), "social", "high")
    near = p.customer("feedback-near")
    p.emit(near, "survey_response", t, "email", survey="csat", score=3)
    p.emit(near, "survey_response", t + H, "email", survey="nps", score=7)
    p.emit(near, "social_mention", t + 2 * H, "social", sentiment="neutral")


def _channel_hopping(p: _Plan, day: float) -> None:
    t = day * D
    who = p.customer("hopping")
    case = f"{who}-k"
    first = p.emit(who, "support_contact", t, "email", case, topic="broken")
    p.emit(who, "agent_response", t + 5, "email", case)
    second = p.emit(who, "support_contact", t + H, "phone", case, topic="broken")
    p.emit(who, "case_resolved", t + 2 * H, "phone", case)
    p.expect("channel_hopping", who, (first, second), "2_channels", "medium")
    p.expect("repeat_contact", who, (first, second), "case", "medium")


def _cancellation(p: _Plan, day: float) -> None:
    t = day * D
    who = p.customer("cancel")
    p.emit(who, "subscription_started", t - 2 * D, "web", plan="pro")
    _, contact = p.answered_case(who, t)
    cancel = p.emit(who, "subscription_cancelled", t + 10 * D, "web", plan="pro")
    p.expect("cancellation_after_contact", who, (cancel, contact), "after_contact", "high")
    angry = p.customer("cancel-friction")
    p.emit(angry, "subscription_started", t - 2 * D, "web", plan="pro")
    failed = p.emit(angry, "payment_failed", t, "web", reason="expired card")
    p.expect("failed_outcome", angry, (failed,), "payment_failed", "high")
    cancel = p.emit(angry, "subscription_cancelled", t + 2 * D, "web", plan="pro")
    p.expect("cancellation_after_contact", angry, (cancel, failed), "after_friction", "critical")
    near = p.customer("cancel-near")
    p.emit(near, "subscription_started", t - 2 * D, "web", plan="pro")
    p.answered_case(near, t)
    p.emit(near, "subscription_cancelled", t + 40 * D, "web", plan="pro")


SCENARIOS = (_repeat_contact, _sla_breach, _unreachable_help, _escalation, _failed_outcome,
             _checkout_abandoned, _negative_feedback, _channel_hopping, _cancellation)
SPAN_DAYS = 45  # the scenarios' events fall in [start, start + SPAN_DAYS)
PUSH_AFTER_DAYS = 50  # the watermark pushers' day


def plant_friction(start: datetime, *, rounds: int = 1, prefix: str | None = None,
                   partitions: int = 4, seed: int = 7) -> PlantedFriction:
    """`rounds` copies of every scenario from `start`, then one pusher per partition.

    Every event lies in [start, start + PUSH_AFTER_DAYS days]; give a start at least that
    long ago (the validator refuses events more than a day in the future).
    """
    rng = random.Random(seed)
    plan = _Plan(prefix or f"fr-{uuid.UUID(int=rng.getrandbits(128)).hex[:8]}",
                 start.astimezone(UTC), rng)
    for round_ in range(rounds):
        for i, scenario in enumerate(SCENARIOS):
            scenario(plan, day=(round_ * 0.37 + i * 0.5) % 3)
    partitioner = DefaultPartitioner()
    everyone = list(range(partitions))
    covered: set[int] = set()
    n = 0
    while len(covered) < partitions:
        key = f"{plan.prefix}-watermark-{n}"
        n += 1
        partition = partitioner(key.encode(), everyone, everyone)
        if partition in covered:
            continue
        covered.add(partition)
        plan.emit(key, "page_view", PUSH_AFTER_DAYS * D, "web", url="/")
    return plan.out
