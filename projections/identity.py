"""Identity links as pure code: which customer an anonymous id belongs to.

The earliest claim in event time wins (ties: the smaller event_id), so a replay
and the live stream agree whatever order identify events arrive in. A later claim
by another customer is a conflict: counted, never followed. An identify that
arrives late but happened before the kept link takes the anonymous id over
(RELINKED); the caller still holds the state it passed in, whose `customer_id` is
the previous owner whose data has to move. Claims are counted per customer up to
CLAIMANT_LIMIT customers; claims of further ones are summed as conflicts (even
if one of them became the owner).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, replace
from datetime import datetime
from enum import StrEnum
from typing import Any, Final

from schemas.touchpoint import Touchpoint, identity_key


class LinkOutcome(StrEnum):
    """What one identify event did to the link of its anonymous id."""

    LINKED = "linked"
    """The first claim: the anonymous id now belongs to the customer."""
    ALREADY_LINKED = "already_linked"
    """The owner claimed it again: nothing moves (the earliest link time is kept)."""
    CONFLICT = "conflict"
    """Another customer claimed it later in event time: the owner stays, counted."""
    RELINKED = "relinked"
    """Another customer claimed it earlier in event time: ownership moves to them."""


IDENTIFY_TYPE: Final = "identify"
"""The touchpoint type that links an anonymous id to a customer (EVENTS.md, Identity)."""

CLAIMANT_LIMIT: Final = 32
"""Claimants counted one by one per anonymous id; claims of further ones are only summed."""


@dataclass(frozen=True, slots=True)
class IdentityLinks:
    """The owner of one anonymous id, the identify event that made it so, and every claim."""

    anonymous_id: str
    customer_id: str
    linked_at: datetime
    event_id: str
    claims: Mapping[str, int]
    """Customer id -> identify events that claimed this anonymous id (owner included)."""
    unlisted_claims: int = 0
    """Claims by customers beyond CLAIMANT_LIMIT, which `claims` does not list."""

    @property
    def conflicts(self) -> int:
        """Claims by customers other than the owner (a redelivered claim counts again).

        Counted per claimant, so the number does not depend on arrival order as
        long as at most CLAIMANT_LIMIT customers claim the id.
        """
        rivals = sum(n for customer, n in self.claims.items() if customer != self.customer_id)
        return rivals + self.unlisted_claims

    @property
    def claim(self) -> tuple[datetime, str]:
        return (self.linked_at, self.event_id)

    def to_dict(self) -> dict[str, Any]:
        return {
            "anonymous_id": self.anonymous_id,
            "customer_id": self.customer_id,
            "linked_at": self.linked_at.isoformat(),
            "event_id": self.event_id,
            "claims": dict(self.claims),
            "unlisted_claims": self.unlisted_claims,
            "conflicts": self.conflicts,
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> IdentityLinks:
        """The state `to_dict` wrote (`conflicts` is recomputed, not read)."""
        return cls(
            anonymous_id=data["anonymous_id"],
            customer_id=data["customer_id"],
            linked_at=datetime.fromisoformat(data["linked_at"]),
            event_id=data["event_id"],
            claims=dict(data["claims"]),
            unlisted_claims=data["unlisted_claims"],
        )


def link_identity(
    state: IdentityLinks | None, identify: Touchpoint
) -> tuple[IdentityLinks, LinkOutcome]:
    """Apply one identify event to the link of its anonymous id."""
    if identify.type != IDENTIFY_TYPE:
        raise ValueError(f"touchpoint {identify.event_id} is a {identify.type}, not an identify")
    customer_id, anonymous_id = identify.customer_id, identify.anonymous_id
    if customer_id is None or anonymous_id is None:
        raise ValueError(f"identify {identify.event_id} needs both customer_id and anonymous_id")
    if state is None:
        first = IdentityLinks(
            anonymous_id=anonymous_id,
            customer_id=customer_id,
            linked_at=identify.occurred_at,
            event_id=identify.event_id,
            claims={customer_id: 1},
        )
        return first, LinkOutcome.LINKED
    if state.anonymous_id != anonymous_id:
        raise ValueError(
            f"identify {identify.event_id} is about {anonymous_id}, not {state.anonymous_id}"
        )
    earlier = (identify.occurred_at, identify.event_id) < state.claim
    counted = _count_claim(state, customer_id)
    if earlier:
        # The earliest claim names the owner, whoever made it; for the same owner
        # this only moves the link time back, so the result is order-free.
        relinked = replace(
            counted,
            customer_id=customer_id,
            linked_at=identify.occurred_at,
            event_id=identify.event_id,
        )
        if customer_id == state.customer_id:
            return relinked, LinkOutcome.ALREADY_LINKED
        return relinked, LinkOutcome.RELINKED
    if customer_id == state.customer_id:
        return counted, LinkOutcome.ALREADY_LINKED
    return counted, LinkOutcome.CONFLICT


def _count_claim(state: IdentityLinks, customer_id: str) -> IdentityLinks:
    claims = dict(state.claims)
    if customer_id in claims or len(claims) < CLAIMANT_LIMIT:
        claims[customer_id] = claims.get(customer_id, 0) + 1
        return replace(state, claims=claims)
    return replace(state, unlisted_claims=state.unlisted_claims + 1)


def resolve_customer_key(tp: Touchpoint, owner: str | None) -> str:
    """The customer a touchpoint belongs to.

    `owner` is the linked customer of tp.anonymous_id (None when unlinked): the
    event's own customer_id comes first, then that owner, then the anonymous id.
    """
    if tp.customer_id is not None:
        return tp.customer_id
    if owner is not None and tp.anonymous_id is not None:
        return owner
    return identity_key(tp)
