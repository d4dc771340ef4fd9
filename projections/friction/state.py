"""What the friction rules remember about one customer, bounded, as plain immutable data.

Times are epoch milliseconds of event time. Every part is bounded: cases by
`max_cases` (the least recently touched go first) and `case_ttl`, checkouts by
`max_checkouts`, purchases by `_PURCHASES_KEPT`, early answers by `EARLY_KEPT` and
`case_ttl`, and the whole state is forgotten
after `customer_ttl` without activity and without anything pending.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any, Final

_PURCHASES_KEPT: Final = 10
EARLY_KEPT: Final = 20


@dataclass(frozen=True, slots=True)
class CaseTrack:
    """One support case as the rules see it."""

    case_id: str
    opened_at: int
    channel: str
    topic: str | None
    first_event: str  # the event that opened the case (its first inbound contact)
    contacts: int = 1  # inbound contacts so far
    # the first inbound contact on each channel: channel -> event id
    channels: tuple[tuple[str, str], ...] = ()
    first_response_due: int | None = None  # None = answered in time, or already breached
    resolution_due: int | None = None  # None = resolved in time, or already breached
    resolution_from: str = ""  # the event that started the resolution clock
    resolved: bool = False
    escalations: int = 0
    last_at: int = 0
    reopened_by: str = ""  # an inbound contact that came after the case was resolved

    def channel_ids(self) -> dict[str, str]:
        return dict(self.channels)

    def to_dict(self) -> dict[str, Any]:
        return {
            "case_id": self.case_id, "opened_at": self.opened_at, "channel": self.channel,
            "topic": self.topic, "first_event": self.first_event, "contacts": self.contacts,
            "channels": [list(c) for c in self.channels],
            "first_response_due": self.first_response_due,
            "resolution_due": self.resolution_due, "resolution_from": self.resolution_from,
            "resolved": self.resolved, "escalations": self.escalations, "last_at": self.last_at,
            "reopened_by": self.reopened_by,
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> CaseTrack:
        return cls(
            case_id=data["case_id"], opened_at=data["opened_at"], channel=data["channel"],
            topic=data["topic"], first_event=data["first_event"], contacts=data["contacts"],
            channels=tuple((c, e) for c, e in data["channels"]),
            first_response_due=data["first_response_due"],
            resolution_due=data["resolution_due"], resolution_from=data["resolution_from"],
            resolved=data["resolved"], escalations=data["escalations"], last_at=data["last_at"],
            reopened_by=data.get("reopened_by", ""),
        )


@dataclass(frozen=True, slots=True)
class EarlyAnswer:
    """A response or resolution processed before its case's first contact (arrival out of
    event-time order): kept until the case opens, so the case's clocks see it."""

    case_id: str
    at: int
    resolves: bool  # a case_resolved, else a first response


@dataclass(frozen=True, slots=True)
class PendingCheckout:
    """A checkout that has not yet been followed by a purchase."""

    at: int
    event_id: str
    cart_value: float
    due: int
    channel: str | None = None  # where the checkout started


@dataclass(frozen=True, slots=True)
class Mark:
    """A remembered moment: when and which event (a contact, a friction's evidence)."""

    at: int
    event_id: str


@dataclass(frozen=True, slots=True)
class FrictionState:
    """Everything the rules keep about one customer key."""

    stage: str | None = None
    has_purchased: bool = False
    last_seen: int = 0
    cases: tuple[CaseTrack, ...] = ()
    checkouts: tuple[PendingCheckout, ...] = ()
    purchases: tuple[int, ...] = ()  # recent purchase times, for late checkouts
    early: tuple[EarlyAnswer, ...] = ()  # answers to cases not opened yet
    last_contact: Mark | None = None
    last_friction: Mark | None = None

    def case(self, case_id: str) -> CaseTrack | None:
        for case in self.cases:
            if case.case_id == case_id:
                return case
        return None

    def with_case(self, case: CaseTrack, limit: int) -> FrictionState:
        """The state with `case` replaced or added, keeping at most `limit` cases: over the
        bound, cases with no deadline pending go first, least recently touched first, so
        a pending breach is dropped only when every kept case has one."""
        others = [c for c in self.cases if c.case_id != case.case_id]
        if len(others) >= limit:
            others.sort(key=lambda c: (c.first_response_due is not None
                                       or c.resolution_due is not None, c.last_at, c.case_id))
            others = others[len(others) - (limit - 1):] if limit > 1 else []
        others.append(case)
        return replace(self, cases=tuple(others))

    def with_early(self, answer: EarlyAnswer) -> FrictionState:
        kept = sorted((*self.early, answer), key=lambda e: (e.at, e.case_id, e.resolves))
        return replace(self, early=tuple(kept[-EARLY_KEPT:]))

    def early_for(self, case_id: str, since: int) -> list[EarlyAnswer]:
        return [e for e in self.early if e.case_id == case_id and e.at >= since]

    def with_purchase(self, at: int) -> FrictionState:
        kept = tuple(sorted((*self.purchases, at))[-_PURCHASES_KEPT:])
        return replace(self, purchases=kept)

    def to_dict(self) -> dict[str, Any]:
        return {
            "stage": self.stage, "has_purchased": self.has_purchased,
            "last_seen": self.last_seen, "cases": [c.to_dict() for c in self.cases],
            "checkouts": [[c.at, c.event_id, c.cart_value, c.due, c.channel]
                          for c in self.checkouts],
            "purchases": list(self.purchases),
            "early": [[e.case_id, e.at, e.resolves] for e in self.early],
            "last_contact": _mark_dict(self.last_contact),
            "last_friction": _mark_dict(self.last_friction),
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> FrictionState:
        return cls(
            stage=data["stage"], has_purchased=data["has_purchased"],
            last_seen=data["last_seen"],
            cases=tuple(CaseTrack.from_dict(c) for c in data["cases"]),
            checkouts=tuple(PendingCheckout(*c) for c in data["checkouts"]),
            purchases=tuple(data["purchases"]),
            early=tuple(EarlyAnswer(c, a, r) for c, a, r in data.get("early", ())),
            last_contact=_mark_from(data["last_contact"]),
            last_friction=_mark_from(data["last_friction"]),
        )



def _mark_dict(mark: Mark | None) -> list[Any] | None:
    return None if mark is None else [mark.at, mark.event_id]


def _mark_from(data: list[Any] | None) -> Mark | None:
    return None if data is None else Mark(data[0], data[1])
