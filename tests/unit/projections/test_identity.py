"""Identity links as plain calls: who owns an anonymous id, whatever the arrival order."""

from __future__ import annotations

import uuid
from collections.abc import Iterable
from datetime import UTC, datetime, timedelta

import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from projections.identity import (
    CLAIMANT_LIMIT,
    IdentityLinks,
    LinkOutcome,
    link_identity,
    resolve_customer_key,
)
from schemas.codec import validate_touchpoint
from schemas.touchpoint import Touchpoint
from tests.unit.schemas.examples import example

START = datetime(2024, 3, 1, 9, 0, tzinfo=UTC)


def identify(customer: str, minute: int, n: int, anonymous: str = "anon-9") -> Touchpoint:
    return validate_touchpoint(
        example(
            "identify",
            event_id=str(uuid.UUID(int=n)),
            occurred_at=(START + timedelta(minutes=minute)).isoformat(),
            customer_id=customer,
            anonymous_id=anonymous,
        )
    )


def link_all(
    claims: Iterable[Touchpoint],
) -> tuple[IdentityLinks, list[LinkOutcome]]:
    state: IdentityLinks | None = None
    outcomes = []
    for claim in claims:
        state, outcome = link_identity(state, claim)
        outcomes.append(outcome)
    assert state is not None
    return state, outcomes


def test_the_first_identify_links() -> None:
    state, outcome = link_identity(None, identify("cust-1", 5, 1))
    assert outcome is LinkOutcome.LINKED
    assert (state.anonymous_id, state.customer_id) == ("anon-9", "cust-1")
    assert (state.linked_at, state.event_id) == (
        START + timedelta(minutes=5),
        str(uuid.UUID(int=1)),
    )
    assert state.conflicts == 0


def test_the_same_customer_again_changes_no_owner() -> None:
    first = identify("cust-1", 5, 1)
    state, outcomes = link_all([first, identify("cust-1", 9, 2), first])
    assert outcomes == [LinkOutcome.LINKED, LinkOutcome.ALREADY_LINKED, LinkOutcome.ALREADY_LINKED]
    assert (state.customer_id, state.event_id, state.conflicts) == ("cust-1", first.event_id, 0)


def test_an_earlier_claim_by_the_owner_moves_the_link_time_back() -> None:
    state, outcomes = link_all([identify("cust-1", 9, 2), identify("cust-1", 5, 1)])
    assert outcomes == [LinkOutcome.LINKED, LinkOutcome.ALREADY_LINKED]
    assert state.linked_at == START + timedelta(minutes=5)


def test_a_later_claim_by_another_customer_is_a_conflict() -> None:
    state, outcomes = link_all(
        [identify("cust-1", 5, 1), identify("cust-2", 6, 2), identify("cust-3", 7, 3)]
    )
    assert outcomes == [LinkOutcome.LINKED, LinkOutcome.CONFLICT, LinkOutcome.CONFLICT]
    assert state.customer_id == "cust-1"
    assert state.conflicts == 2


def test_an_earlier_claim_arriving_late_takes_the_id_over() -> None:
    owner, _ = link_identity(None, identify("cust-2", 6, 2))

    state, outcome = link_identity(owner, identify("cust-1", 5, 1))

    assert outcome is LinkOutcome.RELINKED
    # The caller still holds `owner`: the customer whose data moves to the new owner.
    assert (owner.customer_id, state.customer_id) == ("cust-2", "cust-1")
    assert state.linked_at == START + timedelta(minutes=5)
    assert state.conflicts == 1


def test_claims_at_the_same_instant_go_to_the_smaller_event_id() -> None:
    state, outcomes = link_all([identify("cust-2", 5, 2), identify("cust-1", 5, 1)])
    assert outcomes == [LinkOutcome.LINKED, LinkOutcome.RELINKED]
    assert state.customer_id == "cust-1"


claim_plans = st.lists(
    st.tuples(st.sampled_from(["cust-1", "cust-2", "cust-3"]), st.integers(0, 10)),
    min_size=1,
    max_size=10,
)


@settings(max_examples=200, deadline=None)
@given(plan=claim_plans, data=st.data())
def test_replays_and_live_agree_whatever_the_arrival_order(
    plan: list[tuple[str, int]], data: st.DataObject
) -> None:
    claims = [identify(customer, minute, n + 1) for n, (customer, minute) in enumerate(plan)]
    in_event_order = sorted(claims, key=lambda tp: (tp.occurred_at, tp.event_id))
    earliest = in_event_order[0]

    expected, outcomes = link_all(in_event_order)
    state, _ = link_all(data.draw(st.permutations(claims)))

    assert state == expected
    assert (state.customer_id, state.event_id) == (earliest.customer_id, earliest.event_id)
    assert state.conflicts == sum(tp.customer_id != earliest.customer_id for tp in claims)
    # In event order the first claim links and nothing is ever relinked.
    assert LinkOutcome.RELINKED not in outcomes


def test_claimants_beyond_the_limit_are_only_summed() -> None:
    claims = [identify(f"cust-{n}", n, n) for n in range(1, CLAIMANT_LIMIT + 4)]
    state, outcomes = link_all(claims)
    assert outcomes.count(LinkOutcome.CONFLICT) == CLAIMANT_LIMIT + 2
    assert len(state.claims) == CLAIMANT_LIMIT
    assert state.unlisted_claims == 3
    assert state.conflicts == CLAIMANT_LIMIT + 2


def test_only_identify_events_link() -> None:
    visit = validate_touchpoint(example("site_visit", anonymous_id="anon-9"))
    with pytest.raises(ValueError, match="not an identify"):
        link_identity(None, visit)
    state, _ = link_identity(None, identify("cust-1", 5, 1))
    with pytest.raises(ValueError, match="about anon-8"):
        link_identity(state, identify("cust-1", 6, 2, anonymous="anon-8"))


def test_the_links_round_trip_through_json() -> None:
    state, _ = link_all(
        [identify("cust-2", 6, 2), identify("cust-1", 5, 1), identify("cust-3", 7, 3)]
    )
    stored = orjson.loads(orjson.dumps(state.to_dict()))
    assert stored["conflicts"] == 2
    assert IdentityLinks.from_dict(stored) == state


@pytest.mark.parametrize(
    ("customer_id", "anonymous_id", "owner", "expected"),
    [
        ("cust-1", None, None, "cust-1"),
        ("cust-1", "anon-9", "cust-2", "cust-1"),  # the event's own customer_id comes first
        (None, "anon-9", "cust-2", "cust-2"),
        (None, "anon-9", None, "anon-9"),
    ],
)
def test_the_customer_key_of_a_touchpoint(
    customer_id: str | None, anonymous_id: str | None, owner: str | None, expected: str
) -> None:
    data = example("page_view", anonymous_id=anonymous_id, customer_id=customer_id)
    data = {name: value for name, value in data.items() if value is not None}
    assert resolve_customer_key(validate_touchpoint(data), owner) == expected
