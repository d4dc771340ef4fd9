"""Seeded synthetic touchpoint workload (valid, bad, duplicate messages) for demo and benchmarks."""

from __future__ import annotations

import csv
import gc
import random
import uuid
from collections import Counter
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path
from typing import Any, Final, NamedTuple

import orjson

Event = dict[str, Any]

# Kept here rather than imported from `schemas/` so the generator stays usable (and
# testable) on its own; the unit tests check these against the EVENTS.md catalogue.
CHANNELS: Final = (
    "web", "mobile_app", "email", "phone", "chat", "social", "in_person",
    "self_service", "community", "advertising", "mail_fax", "sms",
)  # fmt: skip
TOUCHPOINT_TYPES: Final = (
    "ad_impression", "ad_click", "email_sent", "email_opened", "email_clicked",
    "site_visit", "page_view", "product_view", "search", "add_to_cart", "checkout_started",
    "purchase", "payment_failed", "refund", "delivery_failed",
    "support_contact", "agent_response", "escalation", "case_resolved", "case_reopened",
    "kb_article_view", "chatbot_session", "ivr_session",
    "survey_response", "review", "social_mention", "community_post",
    "subscription_started", "subscription_changed", "subscription_cancelled",
    "billing_inquiry", "account_updated", "store_visit", "appointment", "identify",
)  # fmt: skip
DLQ_REASONS: Final = (
    "payload_too_large", "invalid_json", "not_an_object", "unknown_type", "missing_field",
    "invalid_field", "naive_timestamp", "future_timestamp", "missing_identity",
    "missing_case_id", "unsupported_schema_version",
)  # fmt: skip

WINDOW: Final = timedelta(days=30)
MAX_PAYLOAD_BYTES: Final = 64 * 1024
# Far-future events sit at least this long after the window's end. The validator
# rejects occurred_at > now + 24 h, so they stay "future" as long as the
# validating clock is earlier than window end + 3 days (see Expectation.validate_before).
FUTURE_GAP: Final = timedelta(days=4)
LATE_RATIO: Final = 0.03

_SEC: Final = 1_000
_MIN: Final = 60 * _SEC
_HOUR: Final = 60 * _MIN
_DAY: Final = 24 * _HOUR
_WINDOW_MS: Final = int(WINDOW.total_seconds()) * _SEC
# Stores, the contact centre and the post room log local (CEST) time with an
# offset; everything else logs UTC with Z. Both are valid RFC 3339.
_LOCAL_TZ: Final = timezone(timedelta(hours=2))
_LOCAL_CHANNELS: Final = frozenset({"in_person", "mail_fax", "phone"})

_SOURCE: Final = {
    "web": "web-sdk", "mobile_app": "app-sdk", "email": "esp", "phone": "contact-centre",
    "chat": "chat-widget", "social": "social-listening", "in_person": "pos",
    "self_service": "help-centre", "community": "forum", "advertising": "ad-server",
    "mail_fax": "mailroom", "sms": "sms-gateway",
}  # fmt: skip
_CAMPAIGNS: Final = (
    "spring_sale", "new_arrivals", "loyalty_week", "retarget_cart", "brand_video",
    "back_to_school", "free_shipping", "vip_preview",
)  # fmt: skip
_CATEGORIES: Final = ("shoes", "jackets", "bags", "accessories", "home", "sport", "kids")
_SEARCHES: Final = (
    "running shoes", "rain jacket", "leather bag", "gift ideas", "size guide", "return policy",
    "winter boots", "yoga mat", "kids sneakers", "wallet",
)  # fmt: skip
_STORES: Final = ("ST-BER-01", "ST-HAM-02", "ST-MUC-03", "ST-KOE-04", "ST-FRA-05")
_PLANS: Final = {"basic": 9.99, "plus": 19.99, "premium": 39.99}
_TOPICS: Final = (
    "order_status", "delivery", "returns", "product_question", "technical", "account",
    "billing", "complaint",
)  # fmt: skip
_SERVICE_CHANNELS: Final = ("phone", "chat", "email", "social", "in_person", "mail_fax")
_SERVICE_WEIGHTS: Final = (36, 22, 22, 8, 8, 4)


class Message(NamedTuple):
    """One record for `touchpoints.ingest`, with what the validator should make of it."""

    key: bytes | None
    value: bytes
    reason: str | None = None  # the DLQ reason code, for a deliberately bad message
    duplicate: bool = False  # a producer retry: same bytes as an earlier message


@dataclass(frozen=True, slots=True)
class Expectation:
    """What the pipeline's counters must show after consuming the whole workload.

    Exact, provided the validator's clock lies in [validate_after, validate_before).
    """

    messages: int  # everything sent: valid + dlq + duplicates
    valid: int  # unique valid touchpoints -> `touchpoints`
    duplicates: int  # retries to be dropped by event_id
    dlq: int  # -> `touchpoints.dlq`
    dlq_by_reason: Mapping[str, int]  # every reason code, zero included
    customers: int  # distinct canonical customers, after every identify is applied
    identified_customers: int  # distinct customer_id values
    anonymous_visitors: int  # anonymous_ids never linked to a customer
    late: int  # valid events sent up to hours after their neighbours in time
    by_type: Mapping[str, int]  # valid unique events per type
    by_channel: Mapping[str, int]  # valid unique events per channel
    first_occurred_at: datetime | None
    last_occurred_at: datetime | None
    validate_after: datetime  # earlier, the newest in-window events would look future
    validate_before: datetime  # later, the far-future bad events would be accepted


@dataclass(frozen=True, slots=True)
class Workload:
    """Messages in send order, the valid events behind them, and the expected counts."""

    seed: int
    start: datetime
    messages: list[Message]
    events: list[Event] = field(repr=False)  # valid unique events, in send order
    expectation: Expectation

    def records(self) -> Iterator[tuple[bytes | None, bytes]]:
        """(key, value) pairs in send order, ready for a producer."""
        for message in self.messages:
            yield message.key, message.value


@dataclass(slots=True)
class _Person:
    customer_id: str | None
    anonymous_id: str | None
    linked: bool = False  # an identify has tied anonymous_id to customer_id
    plan: str | None = None


class _Simulator:
    """Emits each person's journey as timed events; times are ms after the window start."""

    def __init__(self, rng: random.Random, id_space: uuid.UUID | None = None) -> None:
        self.rng = rng
        self.id_space = id_space
        self.pending: list[tuple[int, Event]] = []
        self.case_seq = 0
        self.order_seq = 0
        self.sent_non_utf8 = False
        self.products = [
            (
                f"P{n:04d}",
                round(rng.choice((9, 19, 29, 49, 79, 119, 189)) + 0.99, 2),
                rng.choice(_CATEGORIES),
            )
            for n in range(1, 161)
        ]

    # -- primitives ---------------------------------------------------------------

    def uuid(self) -> str:
        drawn = uuid.UUID(int=self.rng.getrandbits(128), version=4)
        if self.id_space is None:
            return str(drawn)
        return str(uuid.uuid5(self.id_space, str(drawn)))

    def token(self, prefix: str) -> str:
        return f"{prefix}-{self.rng.getrandbits(48):012x}"

    def emit(
        self,
        t: int,
        type_: str,
        channel: str,
        who: Mapping[str, str],
        properties: Event,
        *,
        session: str | None = None,
        case: str | None = None,
    ) -> bool:
        # Journeys simply run off the end of the window: a case still open, an
        # order not yet delivered. That is what a live system sees too.
        if t >= _WINDOW_MS:
            return False
        event: Event = {
            "event_id": self.uuid(),
            "schema_version": 1,
            "type": type_,
            "occurred_at": None,  # formatted once the send order is known
            "channel": channel,
            **who,
        }
        if session is not None:
            event["session_id"] = session
        if case is not None:
            event["case_id"] = case
        event["source"] = _SOURCE[channel]
        event["properties"] = properties
        self.pending.append((t, event))
        return True

    def jitter(self, low_s: float, high_s: float) -> int:
        return int(self.rng.uniform(low_s, high_s) * _SEC)

    def start_time(self, span: int = 0, earliest: int = 0) -> int:
        latest = max(earliest + 1, _WINDOW_MS - span)
        return self.rng.randrange(earliest, latest)

    # -- people ---------------------------------------------------------------------

    def person(self, number: int) -> None:
        rng = self.rng
        roll = rng.random()
        customer_id = f"C{number:06d}"
        if roll < 0.14:
            self.bouncer(_Person(None, self.token("anon")))
        elif roll < 0.44:
            self.prospect(_Person(None, self.token("anon")), customer_id)
        else:
            anonymous = self.token("anon") if rng.random() < 0.6 else None
            self.existing(_Person(customer_id, anonymous))

    def bouncer(self, p: _Person) -> None:
        """Sees ads, maybe glances at the site, never signs up."""
        t = self.start_time(3 * _DAY)
        who = {"anonymous_id": p.anonymous_id or ""}
        for _ in range(self.rng.randint(1, 4)):
            self.ad(t, who, click=False)
            t += self.jitter(600, 20 * 3600)
        if self.rng.random() < 0.35:
            session = self.token("s")
            self.ad(t, who, click=True)
            self.emit(
                t + 2 * _SEC,
                "site_visit",
                "web",
                who,
                {
                    "url": "https://shop.example/",
                    "utm_source": "display",
                    "utm_medium": "cpc",
                    "utm_campaign": self.rng.choice(_CAMPAIGNS),
                },
                session=session,
            )
            self.emit(
                t + self.jitter(10, 90),
                "page_view",
                "web",
                who,
                {"url": "https://shop.example/sale"},
                session=session,
            )

    def prospect(self, p: _Person, customer_id: str) -> None:
        """Ad-driven funnel over a few days; signs up at checkout or for the newsletter."""
        rng = self.rng
        t = self.start_time(7 * _DAY)
        who = {"anonymous_id": p.anonymous_id or ""}
        campaign = rng.choice(_CAMPAIGNS)
        for _ in range(rng.randint(1, 3)):
            self.ad(t, who, click=False, campaign=campaign)
            t += self.jitter(1800, 30 * 3600)
        if rng.random() < 0.4:
            return
        if rng.random() < 0.55:
            self.ad(t, who, click=True, campaign=campaign)
            t += 3 * _SEC
        else:
            t += self.jitter(3600, 2 * 86400)  # comes back later on their own
        channel = "mobile_app" if rng.random() < 0.3 else "web"
        t = self.shop(p, t, channel, signup_id=customer_id, campaign=campaign)
        if p.customer_id is None and rng.random() < 0.3:
            p.customer_id = customer_id  # newsletter sign-up instead of an order
            self.identify(t + self.jitter(30, 600), p, channel, signup=True)
        if p.customer_id is not None:
            self.after_signup(p, t)

    def after_signup(self, p: _Person, since: int) -> None:
        rng = self.rng
        for _ in range(rng.randint(1, 3)):
            self.email_campaign(p, self.start_time(2 * _DAY, since + _HOUR))
        if rng.random() < 0.35:
            channel = "mobile_app" if rng.random() < 0.4 else "web"
            self.shop(p, self.start_time(_DAY, since + _DAY), channel)
        if rng.random() < 0.15:
            self.support_case(p, self.start_time(4 * _DAY, since + _HOUR))
        if rng.random() < 0.1:
            self.account_updated(p, self.start_time(0, since + _HOUR))

    def existing(self, p: _Person) -> None:
        """A known customer: campaigns, shopping, service, feedback, subscription, stores."""
        rng = self.rng
        plan: list[tuple[int, str]] = []
        plan += [(self.start_time(3 * _DAY), "email") for _ in range(rng.randint(1, 5))]
        plan += [(self.start_time(_DAY), "shop") for _ in range(rng.choice((0, 1, 1, 2, 2, 3)))]
        chances = (
            (0.4, "case"),
            (0.15, "case"),
            (0.25, "self_service"),
            (0.22, "nps"),
            (0.08, "social"),
            (0.08, "community"),
            (0.3, "subscription"),
            (0.2, "store"),
            (0.1, "appointment"),
            (0.15, "account"),
            (0.25, "retarget"),
        )
        for chance, kind in chances:
            if rng.random() < chance:
                plan.append((self.start_time(5 * _DAY), kind))
        if p.anonymous_id is not None and rng.random() < 0.3:
            plan.append((self.start_time(_DAY), "retarget"))
        plan.sort()  # in time order, so sign-in and plan changes carry forward
        for t, kind in plan:
            self.episode(p, t, kind)

    def episode(self, p: _Person, t: int, kind: str) -> None:
        rng = self.rng
        if kind == "email":
            self.email_campaign(p, t)
        elif kind == "shop":
            self.shop(p, t, "mobile_app" if rng.random() < 0.4 else "web")
        elif kind == "case":
            self.support_case(p, t)
        elif kind == "self_service":
            self.self_service(p, t)
        elif kind == "nps":
            self.survey(p, t, "nps", rng.choice(("email", "sms", "web")))
        elif kind == "social":
            self.social_mention(p, t)
        elif kind == "community":
            self.community(p, t)
        elif kind == "subscription":
            self.subscription(p, t)
        elif kind == "store":
            self.store(p, t)
        elif kind == "appointment":
            self.appointment(p, t)
        elif kind == "account":
            self.account_updated(p, t)
        elif kind == "retarget" and p.anonymous_id is not None:
            for _ in range(rng.randint(1, 3)):
                self.ad(t, {"anonymous_id": p.anonymous_id}, click=False)
                t += self.jitter(600, 8 * 3600)

    # -- episodes ---------------------------------------------------------------------

    def known(self, p: _Person) -> dict[str, str]:
        return {"customer_id": p.customer_id or ""}

    def ad(self, t: int, who: Mapping[str, str], *, click: bool, campaign: str = "") -> None:
        campaign = campaign or self.rng.choice(_CAMPAIGNS)
        ad_id = f"ad-{self.rng.randint(1, 40):03d}"
        if click:
            self.emit(t, "ad_click", "advertising", who, {"campaign": campaign, "ad_id": ad_id})
        else:
            placement = self.rng.choice(("search", "social_feed", "video", "news_site"))
            self.emit(
                t,
                "ad_impression",
                "advertising",
                who,
                {"campaign": campaign, "ad_id": ad_id, "placement": placement},
            )

    def identify(self, t: int, p: _Person, channel: str, *, signup: bool) -> None:
        both = {"customer_id": p.customer_id or "", "anonymous_id": p.anonymous_id or ""}
        traits = {"signup": signup, "newsletter": self.rng.random() < 0.5}
        if self.emit(t, "identify", channel, both, {"traits": traits}):
            p.linked = True

    def shop(
        self,
        p: _Person,
        t: int,
        channel: str,
        *,
        signup_id: str | None = None,
        campaign: str | None = None,
    ) -> int:
        """One browsing session down the funnel; returns when it ended."""
        rng = self.rng
        session = self.token("s")
        base = "https://shop.example" if channel == "web" else "app://shop"
        # Browsing starts anonymous until the customer signs in (or signs up).
        anonymous = p.anonymous_id is not None and (p.customer_id is None or not p.linked)
        who = {"anonymous_id": p.anonymous_id or ""} if anonymous else self.known(p)
        visit: Event = {"url": f"{base}/"}
        if campaign:
            visit |= {"utm_source": "display", "utm_medium": "cpc", "utm_campaign": campaign}
        elif rng.random() < 0.4:
            visit["referrer"] = rng.choice(("https://www.google.com/", "https://news.example/"))
        self.emit(t, "site_visit", channel, who, visit, session=session)

        def sign_in(at: int) -> None:
            nonlocal who
            if not anonymous or p.linked:
                return
            if p.customer_id is None:
                p.customer_id = signup_id
            if p.customer_id is None:
                return
            self.identify(at, p, channel, signup=signup_id is not None)
            who = self.known(p)

        if anonymous and p.customer_id is not None and rng.random() < 0.5:
            t += self.jitter(5, 40)
            sign_in(t)
        for _ in range(rng.choice((0, 1, 1, 2))):
            t += self.jitter(5, 120)
            self.emit(
                t,
                "page_view",
                channel,
                who,
                {"url": f"{base}/{rng.choice(_CATEGORIES)}"},
                session=session,
            )
        if rng.random() < 0.4:
            t += self.jitter(5, 60)
            self.emit(t, "search", channel, who, {"query": rng.choice(_SEARCHES)}, session=session)
        viewed = rng.sample(self.products, rng.randint(1, 4))
        for product_id, price, category in viewed:
            t += self.jitter(10, 180)
            self.emit(
                t,
                "product_view",
                channel,
                who,
                {"product_id": product_id, "price": price, "currency": "EUR", "category": category},
                session=session,
            )
        if rng.random() > 0.5:
            return t
        cart = viewed[: rng.randint(1, len(viewed))]
        lines = []
        for product_id, price, _ in cart:
            quantity = rng.choice((1, 1, 1, 2, 3))
            lines.append((product_id, price, quantity))
            t += self.jitter(10, 120)
            self.emit(
                t,
                "add_to_cart",
                channel,
                who,
                {"product_id": product_id, "quantity": quantity, "price": price, "currency": "EUR"},
                session=session,
            )
        if rng.random() < 0.25:
            return t  # abandoned cart
        t += self.jitter(20, 300)
        sign_in(t)
        if anonymous and not p.linked:
            return t  # a guest who will not sign in leaves at the login wall
        value = round(sum(price * qty for _, price, qty in lines), 2)
        t += self.jitter(5, 60)
        self.emit(
            t,
            "checkout_started",
            channel,
            who,
            {"cart_value": value, "currency": "EUR"},
            session=session,
        )
        self.order_seq += 1
        order_id = f"O{self.order_seq:07d}"
        if rng.random() < 0.1:
            t += self.jitter(20, 120)
            reason = rng.choice(("card_declined", "insufficient_funds", "3ds_failed"))
            self.emit(
                t,
                "payment_failed",
                channel,
                who,
                {"reason": reason, "order_id": order_id},
                session=session,
            )
            if rng.random() < 0.5:
                return t
        if rng.random() < 0.2:
            return t  # left during payment
        t += self.jitter(20, 240)
        items = [{"product_id": pid, "quantity": qty, "price": price} for pid, price, qty in lines]
        if self.emit(
            t,
            "purchase",
            channel,
            who,
            {"order_id": order_id, "revenue": value, "currency": "EUR", "items": items},
            session=session,
        ):
            self.after_purchase(p, t, order_id, value, lines[0][0])
        return t

    def after_purchase(self, p: _Person, t: int, order_id: str, value: float, product: str) -> None:
        rng = self.rng
        who = self.known(p)
        roll = rng.random()
        if roll < 0.07:
            failed = t + self.jitter(2 * 86400, 4 * 86400)
            self.emit(
                failed,
                "delivery_failed",
                "sms",
                who,
                {
                    "order_id": order_id,
                    "reason": rng.choice(("not_at_home", "address_unknown", "damaged")),
                },
            )
            end = self.support_case(p, failed + self.jitter(600, 86400), topic="delivery")
            if rng.random() < 0.5:
                self.refund(end + self.jitter(600, 86400), who, order_id, value, "delivery_failed")
        elif roll < 0.12:
            back = t + self.jitter(5 * 86400, 12 * 86400)
            self.refund(back, who, order_id, value, rng.choice(("wrong_size", "not_as_described")))
        if rng.random() < 0.12:
            later = t + self.jitter(4 * 86400, 10 * 86400)
            rating = rng.choices((1, 2, 3, 4, 5), (6, 6, 12, 30, 46))[0]
            self.emit(
                later,
                "review",
                "web",
                who,
                {
                    "rating": rating,
                    "product_id": product,
                    "text": "Good value." if rating >= 4 else "Not what I expected.",
                },
            )
        if rng.random() < 0.1:
            self.survey(p, t + self.jitter(86400, 3 * 86400), "csat", "email")

    def refund(self, t: int, who: Mapping[str, str], order_id: str, value: float, why: str) -> None:
        self.emit(
            t,
            "refund",
            "web",
            who,
            {"order_id": order_id, "amount": value, "currency": "EUR", "reason": why},
        )

    def email_campaign(self, p: _Person, t: int) -> None:
        rng = self.rng
        who = self.known(p)
        campaign = rng.choice(_CAMPAIGNS)
        self.emit(t, "email_sent", "email", who, {"campaign": campaign})
        if rng.random() > 0.45:
            return
        t += self.jitter(600, 36 * 3600)
        self.emit(t, "email_opened", "email", who, {"campaign": campaign})
        if rng.random() > 0.35:
            return
        t += self.jitter(5, 300)
        url = f"https://shop.example/{campaign}"
        self.emit(t, "email_clicked", "email", who, {"campaign": campaign, "url": url})
        session = self.token("s")
        t += 2 * _SEC
        self.emit(
            t,
            "site_visit",
            "web",
            who,
            {
                "url": url,
                "utm_source": "newsletter",
                "utm_medium": "email",
                "utm_campaign": campaign,
            },
            session=session,
        )
        product_id, price, category = rng.choice(self.products)
        self.emit(
            t + self.jitter(10, 120),
            "product_view",
            "web",
            who,
            {"product_id": product_id, "price": price, "currency": "EUR", "category": category},
            session=session,
        )

    def support_case(self, p: _Person, t: int, *, topic: str | None = None) -> int:
        """One issue from first contact to resolution (or not); returns the last event time."""
        rng = self.rng
        who = self.known(p)
        self.case_seq += 1
        case = f"CS{self.case_seq:07d}"
        topic = topic or rng.choice(_TOPICS)
        channel = rng.choices(_SERVICE_CHANNELS, _SERVICE_WEIGHTS)[0]
        if channel == "phone" and rng.random() < 0.15:
            # An abandoned call first: the IVR queue loses the customer once.
            self.emit(
                t,
                "ivr_session",
                "self_service",
                who,
                {"transferred_to_agent": True, "abandoned": True, "menu_path": ["main", topic]},
            )
            t += self.jitter(30, 600)
            self.emit(
                t,
                "support_contact",
                "phone",
                who,
                {
                    "topic": topic,
                    "direction": "inbound",
                    "abandoned": True,
                    "wait_seconds": rng.randint(300, 1500),
                },
                case=case,
            )
            t += self.jitter(1800, 6 * 3600)
        contacts = 1 + (rng.random() < 0.3) + (rng.random() < 0.1)
        for n in range(contacts):
            if n and rng.random() < 0.4:
                channel = rng.choices(_SERVICE_CHANNELS, _SERVICE_WEIGHTS)[0]  # channel hopping
            t = self.contact(t, who, case, topic, channel)
            if n == 0 and rng.random() < 0.15:
                t += self.jitter(300, 86400)
                self.emit(
                    t,
                    "escalation",
                    channel,
                    who,
                    {
                        "to": rng.choice(("supervisor", "technical_team", "billing_team")),
                        "reason": rng.choice(("complex", "angry_customer", "policy")),
                    },
                    case=case,
                )
            if n + 1 < contacts:
                t += self.jitter(3600, 3 * 86400)
        if rng.random() < 0.15:
            t += self.jitter(3600, 86400)  # the company calls back proactively
            self.emit(
                t,
                "support_contact",
                "phone",
                who,
                {
                    "topic": topic,
                    "direction": "outbound",
                    "handle_seconds": rng.randint(60, 600),
                    "agent_id": self.agent(),
                },
                case=case,
            )
        if rng.random() > 0.85:
            return t  # still open at the end of the window
        t += self.jitter(600, 3 * 86400)
        self.emit(
            t,
            "case_resolved",
            channel,
            who,
            {"resolution": rng.choice(("answered", "fixed", "replaced", "refunded"))},
            case=case,
        )
        if rng.random() < 0.08:
            t += self.jitter(86400, 4 * 86400)
            self.emit(t, "case_reopened", channel, who, {"reason": "issue_returned"}, case=case)
            t = self.contact(t + self.jitter(60, 3600), who, case, topic, channel)
            t += self.jitter(3600, 86400)
            self.emit(t, "case_resolved", channel, who, {"resolution": "fixed"}, case=case)
        if rng.random() < 0.4:
            kind = "csat" if rng.random() < 0.75 else "ces"
            self.survey(p, t + self.jitter(600, 86400), kind, rng.choice(("email", "sms")), case)
        return t

    def contact(self, t: int, who: Mapping[str, str], case: str, topic: str, channel: str) -> int:
        rng = self.rng
        agent = self.agent()
        if channel == "chat" and rng.random() < 0.5:
            handed_off = rng.random() < 0.6
            self.emit(
                t,
                "chatbot_session",
                "chat",
                who,
                {"handed_off": handed_off, "resolved": False, "intent": topic},
            )
            t += self.jitter(20, 120)
        if channel == "phone":
            self.emit(
                t,
                "ivr_session",
                "self_service",
                who,
                {"transferred_to_agent": True, "abandoned": False, "menu_path": ["main", topic]},
            )
            t += self.jitter(10, 60)
        properties: Event = {"topic": topic, "direction": "inbound"}
        if channel in ("phone", "chat"):
            properties |= {
                "wait_seconds": rng.randint(5, 900),
                "agent_id": agent,
                "handle_seconds": rng.randint(60, 1800),
                "abandoned": False,
            }
        self.emit(t, "support_contact", channel, who, properties, case=case)
        # Live channels answer within the contact; written ones take hours.
        if channel in ("phone", "chat", "in_person"):
            t += self.jitter(30, 600)
        else:
            t += self.jitter(1800, 48 * 3600)
        self.emit(t, "agent_response", channel, who, {"agent_id": agent}, case=case)
        return t

    def agent(self) -> str:
        return f"agent-{self.rng.randint(1, 60):03d}"

    def survey(self, p: _Person, t: int, kind: str, channel: str, case: str | None = None) -> None:
        rng = self.rng
        if kind == "nps":
            score = rng.choices(range(11), (2, 1, 2, 2, 3, 4, 6, 10, 20, 25, 25))[0]
        elif kind == "csat":
            score = rng.choices(range(1, 6), (6, 7, 13, 34, 40))[0]
        else:
            score = rng.choices(range(1, 8), (3, 5, 8, 14, 25, 25, 20))[0]
        properties: Event = {"survey": kind, "score": score}
        if case is not None:
            properties["case_id"] = case
        if rng.random() < 0.2:
            properties["comment"] = "Thanks!" if score >= 4 else "Took far too long."
        self.emit(t, "survey_response", channel, self.known(p), properties)

    def self_service(self, p: _Person, t: int) -> None:
        rng = self.rng
        who = self.known(p)
        for _ in range(rng.randint(1, 3)):
            article = f"KB-{rng.randint(1, 120):04d}"
            self.emit(
                t,
                "kb_article_view",
                "self_service",
                who,
                {"article_id": article, "helpful": rng.random() < 0.6},
            )
            t += self.jitter(30, 400)
        if rng.random() < 0.4:
            handed_off = rng.random() < 0.3
            self.emit(
                t,
                "chatbot_session",
                "self_service",
                who,
                {
                    "handed_off": handed_off,
                    "resolved": not handed_off and rng.random() < 0.6,
                    "intent": rng.choice(_TOPICS),
                },
            )
            if handed_off:
                self.support_case(p, t + self.jitter(30, 300))

    def social_mention(self, p: _Person, t: int) -> None:
        rng = self.rng
        sentiment = rng.choices(("positive", "neutral", "negative"), (4, 3, 3))[0]
        text = {
            "positive": "Love my new shoes!",
            "neutral": "Anyone tried their app?",
            "negative": "Still waiting for my order...",
        }[sentiment]
        self.emit(
            t,
            "social_mention",
            "social",
            self.known(p),
            {"sentiment": sentiment, "text": text, "public": rng.random() < 0.8},
        )
        if sentiment == "negative" and rng.random() < 0.5:
            self.support_case(p, t + self.jitter(600, 86400))

    def community(self, p: _Person, t: int) -> None:
        rng = self.rng
        who = self.known(p)
        thread = f"T{rng.randint(1, 400):05d}"
        self.emit(
            t,
            "community_post",
            "community",
            who,
            {"thread_id": thread, "kind": rng.choice(("question", "answer"))},
        )
        for _ in range(rng.choice((0, 0, 1, 2))):
            t += self.jitter(600, 2 * 86400)
            self.emit(
                t, "community_post", "community", who, {"thread_id": thread, "kind": "comment"}
            )

    def subscription(self, p: _Person, t: int) -> None:
        rng = self.rng
        who = self.known(p)
        channel = rng.choice(("web", "mobile_app"))
        if rng.random() < 0.5:
            p.plan = rng.choice(tuple(_PLANS))
            self.emit(
                t,
                "subscription_started",
                channel,
                who,
                {"plan": p.plan, "mrr": _PLANS[p.plan], "currency": "EUR"},
            )
            t += self.jitter(86400, 10 * 86400)
        plan = p.plan or rng.choice(tuple(_PLANS))
        if rng.random() < 0.35:
            self.case_seq += 1
            case = f"CS{self.case_seq:07d}"
            ch = rng.choices(("phone", "email", "mail_fax", "chat"), (4, 4, 1, 2))[0]
            self.emit(
                t,
                "billing_inquiry",
                ch,
                who,
                {"invoice_id": f"INV-{rng.randint(1, 99999):05d}"},
                case=case,
            )
            t += self.jitter(600, 2 * 86400)
            self.emit(t, "agent_response", ch, who, {"agent_id": self.agent()}, case=case)
            t += self.jitter(600, 86400)
            self.emit(t, "case_resolved", ch, who, {"resolution": "explained"}, case=case)
            t += self.jitter(3600, 3 * 86400)
        if rng.random() < 0.3:
            new = rng.choice([name for name in _PLANS if name != plan])
            self.emit(t, "subscription_changed", channel, who, {"from_plan": plan, "to_plan": new})
            plan = p.plan = new
            t += self.jitter(86400, 5 * 86400)
        if rng.random() < 0.15:
            ch = rng.choice((channel, "phone"))
            self.emit(
                t,
                "subscription_cancelled",
                ch,
                who,
                {"plan": plan, "reason": rng.choice(("too_expensive", "not_used", "service"))},
            )

    def store(self, p: _Person, t: int) -> None:
        rng = self.rng
        who = self.known(p)
        store_id = rng.choice(_STORES)
        self.emit(t, "store_visit", "in_person", who, {"store_id": store_id})
        if rng.random() < 0.45:
            product_id, price, _ = rng.choice(self.products)
            self.order_seq += 1
            order_id = f"O{self.order_seq:07d}"
            self.emit(
                t + self.jitter(300, 1800),
                "purchase",
                "in_person",
                who,
                {
                    "order_id": order_id,
                    "revenue": price,
                    "currency": "EUR",
                    "items": [{"product_id": product_id, "quantity": 1, "price": price}],
                },
            )
        elif rng.random() < 0.2:
            self.case_seq += 1  # a question at the service desk
            case = f"CS{self.case_seq:07d}"
            self.emit(
                t + self.jitter(60, 600),
                "support_contact",
                "in_person",
                who,
                {"topic": rng.choice(_TOPICS), "direction": "inbound"},
                case=case,
            )
            self.emit(
                t + self.jitter(700, 1500),
                "case_resolved",
                "in_person",
                who,
                {"resolution": "answered"},
                case=case,
            )

    def appointment(self, p: _Person, t: int) -> None:
        rng = self.rng
        who = self.known(p)
        kind = rng.choice(("fitting", "repair", "styling"))
        self.emit(
            t,
            "appointment",
            rng.choice(("web", "phone", "sms")),
            who,
            {"kind": kind, "status": "booked"},
        )
        status = "attended" if rng.random() < 0.8 else "missed"
        self.emit(
            t + self.jitter(86400, 6 * 86400),
            "appointment",
            "in_person",
            who,
            {"kind": kind, "status": status},
        )

    def account_updated(self, p: _Person, t: int) -> None:
        fields = self.rng.sample(("address", "email", "phone", "payment_method", "consent"), 2)
        self.emit(
            t,
            "account_updated",
            self.rng.choice(("web", "mobile_app")),
            self.known(p),
            {"fields": sorted(fields)},
        )

    # -- bad input ------------------------------------------------------------------------

    def bad(self, reason: str, customers: list[str], end: datetime, base: datetime) -> Message:
        """One deliberately broken message whose only defect gives `reason`."""
        rng = self.rng
        customer = rng.choice(customers) if customers else "C000000"
        t = rng.randrange(_WINDOW_MS)
        event = self.specimen(customer, rng.choice(("page_view", "purchase", "survey")))
        event["occurred_at"] = _rfc3339(base, t, event["channel"])
        key: bytes | None = customer.encode()
        if reason == "payload_too_large":
            event = self.specimen(customer, "review")
            event["occurred_at"] = _rfc3339(base, t, "web")
            # A customer pasted a whole document into the review box.
            phrase = "The sole came off after two weeks and nobody answers my emails. "
            event["properties"]["text"] = phrase * rng.randint(1100, 1500)
        elif reason == "invalid_json":
            raw = _encode(event)
            if not self.sent_non_utf8:
                # A producer writing Latin-1: 'ö' becomes a lone 0xF6 byte.
                self.sent_non_utf8 = True
                event["properties"] = {"query": "Größe 42 Übergröße"}
                event["type"] = "search"
                return Message(key, orjson.dumps(event).decode().encode("latin-1"), reason)
            return Message(key, raw[: rng.randrange(1, len(raw) - 1)], reason)  # truncated
        elif reason == "not_an_object":
            shapes: list[Any] = [[event], [event, event], "page_view", 42]
            return Message(None, _encode(rng.choice(shapes)), reason)
        elif reason == "unknown_type":
            event["type"] = rng.choice(("coupon_redeemed", "wishlist_added", "video_played"))
        elif reason == "missing_field":
            self.drop_field(event)
        elif reason == "invalid_field":
            self.spoil_field(event, customer)
        elif reason == "naive_timestamp":
            event["occurred_at"] = (
                (base + timedelta(milliseconds=t))
                .replace(tzinfo=None)
                .isoformat(timespec=rng.choice(("seconds", "milliseconds")))
            )
        elif reason == "future_timestamp":
            ahead = end + FUTURE_GAP + timedelta(milliseconds=rng.randrange(10 * _DAY))
            event["occurred_at"] = _rfc3339(ahead, 0, event["channel"])
        elif reason == "missing_identity":
            del event["customer_id"]
            key = None
        elif reason == "unsupported_schema_version":
            event["schema_version"] = rng.choice((0, 2))  # a producer ahead of (or behind) us
        elif reason == "missing_case_id":
            event = self.specimen(customer, "support_contact")
            event["occurred_at"] = _rfc3339(base, t, event["channel"])
            del event["case_id"]
        else:
            raise ValueError(f"unknown DLQ reason {reason!r}")
        return Message(key, _encode(event), reason)

    def specimen(self, customer: str, kind: str) -> Event:
        """A valid event of a few shapes, as the starting point of a broken one."""
        rng = self.rng
        product_id, price, _ = rng.choice(self.products)
        channel, type_, case = "web", kind, None
        properties: Event = {}
        if kind == "page_view":
            properties = {"url": "https://shop.example/sale"}
        elif kind == "purchase":
            self.order_seq += 1
            properties = {"order_id": f"O{self.order_seq:07d}", "revenue": price, "currency": "EUR"}
        elif kind == "survey":
            type_, channel = "survey_response", "email"
            properties = {"survey": "nps", "score": rng.randint(0, 10)}
        elif kind == "review":
            properties = {"rating": rng.randint(1, 5), "product_id": product_id}
        elif kind == "support_contact":
            channel = rng.choices(_SERVICE_CHANNELS, _SERVICE_WEIGHTS)[0]
            self.case_seq += 1
            case = f"CS{self.case_seq:07d}"
            properties = {"topic": rng.choice(_TOPICS), "direction": "inbound"}
        event: Event = {
            "event_id": self.uuid(),
            "schema_version": 1,
            "type": type_,
            "occurred_at": None,
            "channel": channel,
            "customer_id": customer,
        }
        if case is not None:
            event["case_id"] = case
        event["source"] = _SOURCE[channel]
        event["properties"] = properties
        return event

    def drop_field(self, event: Event) -> None:
        rng = self.rng
        choice = rng.randrange(4)
        if choice == 0:
            del event[rng.choice(("event_id", "occurred_at", "channel"))]
        elif event["type"] == "purchase":
            del event["properties"][rng.choice(("revenue", "currency", "order_id"))]
        elif event["type"] == "survey_response":
            del event["properties"]["score"]
        else:
            del event["properties"]["url"]

    def spoil_field(self, event: Event, customer: str) -> None:
        rng = self.rng
        choice = rng.randrange(5)
        if choice == 0:
            event["channel"] = rng.choice(("telepathy", "whatsapp", "fax"))
        elif choice == 1:
            event["event_id"] = rng.choice(("12345", "not-a-uuid", "order-77"))
        elif choice == 2:
            event["customer_id"] = customer * 40  # far beyond 128 characters
        elif event["type"] == "survey_response":
            event["properties"]["score"] = rng.choice((11, 12, -1))  # NPS is 0-10
        elif event["type"] == "purchase":
            event["properties"]["revenue"] = "lots"
        else:
            event["type"] = "review"  # a review whose rating is off the 1-5 scale
            event["properties"] = {"rating": rng.choice((0, 6, 10))}


def _encode(value: Any) -> bytes:
    # orjson's result keeps its whole working buffer (~4 KiB for a 400-byte event);
    # an exact-size copy cuts a 50k-message workload from ~200 MB to ~30 MB.
    return memoryview(orjson.dumps(value)).tobytes()


def _rfc3339(base: datetime, t: int, channel: str) -> str:
    moment = base + timedelta(milliseconds=t)
    if channel in _LOCAL_CHANNELS:
        return moment.astimezone(_LOCAL_TZ).isoformat(timespec="milliseconds")
    return moment.isoformat(timespec="milliseconds")[:-6] + "Z"


def _normalise_start(start: datetime) -> datetime:
    if start.tzinfo is None or start.utcoffset() is None:
        raise ValueError(
            "start must be timezone-aware (e.g. datetime.now(UTC) - timedelta(days=30))"
        )
    start = start.astimezone(UTC)
    # Whole seconds, rounded up, so no millisecond-formatted event precedes `start`.
    if start.microsecond:
        start = start.replace(microsecond=0) + timedelta(seconds=1)
    return start


def _share(count: int, rng: random.Random) -> dict[str, int]:
    """Split `count` bad messages over the reasons: each one at least once when possible."""
    weights = (2, 15, 6, 10, 15, 16, 12, 8, 8, 8, 3)  # oversized payloads are costly, keep few
    reasons = list(DLQ_REASONS)
    shares = dict.fromkeys(reasons, 0)
    if count < len(reasons):
        rng.shuffle(reasons)
        for reason in reasons[:count]:
            shares[reason] = 1
        return shares
    for reason in reasons:
        shares[reason] = 1
    for reason in rng.choices(DLQ_REASONS, weights, k=count - len(reasons)):
        shares[reason] += 1
    return shares


def generate(
    customers: int = 3000,
    seed: int = 7,
    *,
    start: datetime,
    bad_ratio: float = 0.01,
    duplicate_ratio: float = 0.005,
    late_ratio: float = LATE_RATIO,
    id_space: uuid.UUID | None = None,
) -> Workload:
    """Simulate `customers` people over the 30 days from `start` (about 16 events each).

    `id_space` gives the event ids of a run their own namespace (UUIDv5 of the drawn
    ones): the same seed sent twice into one home is then a new workload, not a repeat.

    Deterministic in (customers, seed, start, ratios); reads no clock. Every valid
    event lies in [start, start + 30 days], so with start = now - 30 days none is in
    the future; far-future bad events lie at least 4 days after the window, which
    keeps them "future" only while the validating clock is before window end + 3 days.
    The demo must therefore pass a start within the last ~30 days.
    """
    if customers < 0:
        raise ValueError("customers must be >= 0")
    for name, ratio in (
        ("bad_ratio", bad_ratio),
        ("duplicate_ratio", duplicate_ratio),
        ("late_ratio", late_ratio),
    ):
        if not 0.0 <= ratio < 1.0:
            raise ValueError(f"{name} must be in [0, 1)")
    base = _normalise_start(start)
    # The build allocates ~50k dicts and creates no reference cycles; left on, the
    # cyclic collector rescans all of them again and again (about half the run time).
    collecting = gc.isenabled()
    gc.disable()
    try:
        return _build(customers, seed, base, bad_ratio, duplicate_ratio, late_ratio, id_space)
    finally:
        if collecting:
            gc.enable()


def _build(
    customers: int,
    seed: int,
    base: datetime,
    bad_ratio: float,
    duplicate_ratio: float,
    late_ratio: float,
    id_space: uuid.UUID | None = None,
) -> Workload:
    end = base + WINDOW
    rng = random.Random(seed)
    sim = _Simulator(rng, id_space)
    for number in range(1, customers + 1):
        sim.person(number)

    # Send order: event time, except a few events a producer buffered for a while.
    timed: list[tuple[int, int, int, Event]] = []
    late = 0
    for seq, (t, event) in enumerate(sim.pending):
        delay = 0
        if rng.random() < late_ratio:
            delay = rng.randrange(_MIN, 6 * _HOUR)
            late += 1
        event["occurred_at"] = _rfc3339(base, t, event["channel"])
        timed.append((t + delay, seq, t, event))
    timed.sort(key=lambda item: (item[0], item[1]))
    events = [item[3] for item in timed]

    # Slots: valid messages at integer positions, retries shortly after their
    # original, bad messages anywhere. Ties break on the insertion number.
    slots: list[tuple[float, int, Message]] = []
    for position, event in enumerate(events):
        who: str = event.get("customer_id") or event["anonymous_id"]
        slots.append((position, len(slots), Message(who.encode(), _encode(event))))
    n_valid = len(events)
    n_duplicates = min(round(duplicate_ratio * n_valid), n_valid)
    for position in sorted(rng.sample(range(n_valid), n_duplicates)):
        original = slots[position][2]
        retry = original._replace(duplicate=True)
        slots.append((position + rng.randint(1, 200) - 0.5, len(slots), retry))
    customer_ids = sorted({e["customer_id"] for e in events if "customer_id" in e})
    shares = _share(round(bad_ratio * n_valid), rng)
    for reason, count in shares.items():
        for _ in range(count):
            bad = sim.bad(reason, customer_ids, end, base)
            slots.append((rng.uniform(-0.5, n_valid), len(slots), bad))
    slots.sort(key=lambda slot: (slot[0], slot[1]))
    messages = [slot[2] for slot in slots]

    # Canonical customers: a customer_id, or an anonymous_id no identify ever linked.
    linked = {e["anonymous_id"] for e in events if e["type"] == "identify"}
    anonymous = {
        e["anonymous_id"] for e in events if "anonymous_id" in e and e["anonymous_id"] not in linked
    }
    times = [item[2] for item in timed]
    first = base + timedelta(milliseconds=min(times)) if times else None
    last = base + timedelta(milliseconds=max(times)) if times else None
    expectation = Expectation(
        messages=len(messages),
        valid=n_valid,
        duplicates=n_duplicates,
        dlq=sum(shares.values()),
        dlq_by_reason=shares,
        customers=len(customer_ids) + len(anonymous),
        identified_customers=len(customer_ids),
        anonymous_visitors=len(anonymous),
        late=late,
        by_type=dict(sorted(Counter(e["type"] for e in events).items())),
        by_channel=dict(sorted(Counter(e["channel"] for e in events).items())),
        first_occurred_at=first,
        last_occurred_at=last,
        # Bad events also carry in-window times, up to the window's end.
        validate_after=end - timedelta(hours=24),
        validate_before=end + FUTURE_GAP - timedelta(hours=24),
    )
    return Workload(seed, base, messages, events, expectation)


# -- the real help-desk log -------------------------------------------------------------

_HELPDESK_NAMESPACE: Final = uuid.uuid5(uuid.NAMESPACE_URL, "journey-engine/helpdesk-replay")
# Activities that are the help desk working on the ticket; after a resolution they
# mean the ticket was reopened.
_HELPDESK_WORK: Final = {
    "Assign seriousness": ("agent_response", None),
    "Take in charge ticket": ("agent_response", None),
    "Resolve SW anomaly": ("agent_response", None),
    "Insert ticket": ("support_contact", None),
    "Require upgrade": ("escalation", "upgrade_team"),
    "Create SW anomaly": ("escalation", "development"),
    "Schedule intervention": ("escalation", "field_service"),
}
# Activities that end the ticket; only the first one after work counts as a resolution.
_HELPDESK_END: Final = {
    "Resolve ticket": "resolved",
    "RESOLVED": "resolved",
    "Closed": "closed",
    "VERIFIED": "verified",
    "INVALID": "invalid",
    "DUPLICATE": "duplicate",
}


def _helpdesk_steps(
    case: str, activity: str, agent: str, opened: set[str], resolved: set[str]
) -> list[tuple[str, str, Event]]:
    """The touchpoints (event_id suffix, type, properties) one log row stands for.

    A ticket's first row, whatever its activity, is the moment the ticket was opened:
    the customer's contact, and nothing else - the log does not say when the help desk
    first answered, so that row is no response (which would make every first response
    take 0 s) and no second contact (which would invent a repeat contact).
    """
    if case not in opened:
        opened.add(case)
        return [("", "support_contact", {"topic": "software", "direction": "inbound",
                                          "activity": activity})]
    steps: list[tuple[str, str, Event]] = []
    if activity in _HELPDESK_WORK:
        type_, target = _HELPDESK_WORK[activity]
        if case in resolved:
            resolved.discard(case)
            steps.append(("|reopened", "case_reopened", {"reason": activity}))
        if type_ == "support_contact":
            steps.append(("", type_, {"topic": "software", "direction": "inbound"}))
        elif type_ == "escalation":
            steps.append(("", type_, {"to": target, "reason": activity, "agent_id": agent}))
        else:
            steps.append(("", type_, {"agent_id": agent, "activity": activity}))
    elif activity in _HELPDESK_END and case not in resolved:
        resolved.add(case)
        steps.append(("", "case_resolved", {"resolution": _HELPDESK_END[activity]}))
    return steps


def _helpdesk_event(row_id: str, case: str, type_: str, properties: Event) -> Event:
    return {
        "event_id": str(uuid.uuid5(_HELPDESK_NAMESPACE, row_id)),
        "schema_version": 1,
        "type": type_,
        "occurred_at": None,  # set once the shift to `end` is known
        "channel": "email",
        "customer_id": f"HD-{case}",
        "case_id": case,
        "source": "helpdesk-log",
        "properties": properties,
    }


def replay_helpdesk(path: str | Path, *, end: datetime | None = None) -> Iterator[Event]:
    """Map the Helpdesk process-mining log (one row per ticket activity) to service touchpoints.

    The log has no customer or channel, so each ticket's requester becomes customer
    `HD-<case>` and every event is on `email`. A ticket's first row is the customer's
    contact (only that: see `_helpdesk_steps`); later work rows become agent_response
    or escalation, the first closing row case_resolved, and work after a resolution a
    case_reopened. `Wait` rows are not
    touchpoints. event_id is a UUIDv5 of the row, so the source's exact duplicate rows
    yield duplicate events, as a retrying producer would. With `end`, the log is
    shifted so its last event lands there; events come out in time order.
    """
    with Path(path).open(newline="", encoding="utf-8") as handle:
        rows = [
            (
                row["case:concept:name"],
                row["concept:name"],
                row["org:resource"],
                row["time:timestamp"],
            )
            for row in csv.DictReader(handle)
        ]
    moments = [datetime.fromisoformat(stamp).astimezone(UTC) for *_, stamp in rows]

    out: list[tuple[datetime, int, Event]] = []
    opened: set[str] = set()
    resolved: set[str] = set()
    for (case, activity, resource, stamp), moment in zip(rows, moments, strict=True):
        agent = "agent-" + resource.removeprefix("Value ").strip()
        row_id = f"{case}|{activity}|{resource}|{stamp}"
        for suffix, type_, properties in _helpdesk_steps(case, activity, agent, opened, resolved):
            event = _helpdesk_event(row_id + suffix, case, type_, properties)
            out.append((moment, len(out), event))
    out.sort(key=lambda item: (item[0], item[1]))
    shift = end.astimezone(UTC) - out[-1][0] if end is not None and out else timedelta(0)
    for moment, _, event in out:
        event["occurred_at"] = (moment + shift).isoformat().replace("+00:00", "Z")
        yield event
