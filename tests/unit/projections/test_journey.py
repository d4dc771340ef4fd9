"""The journey projection as plain calls: hand-built journeys with hand-computed answers."""

from __future__ import annotations

import uuid
from collections.abc import Iterable, Sequence
from datetime import UTC, datetime, timedelta
from typing import Any

import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from projections.journey import (
    JourneyConfig,
    JourneyState,
    Stage,
    StageSignal,
    Transition,
    advance_stage,
    apply_touchpoint,
    is_churned_by_inactivity,
    merge_journeys,
    read_signal,
    stage_as_of,
    window_transitions,
)
from schemas.codec import validate_touchpoint
from schemas.touchpoint import Touchpoint
from tests.unit.schemas.examples import example

START = datetime(2024, 3, 1, 9, 0, tzinfo=UTC)
CONFIG = JourneyConfig()

A, C, P, R, V, X = (
    Stage.AWARENESS,
    Stage.CONSIDERATION,
    Stage.PURCHASE,
    Stage.RETENTION,
    Stage.ADVOCACY,
    Stage.CHURNED,
)


def event_id(n: int) -> str:
    # Same width for every n, so text order is number order (the window's tie-break).
    return str(uuid.UUID(int=n))


def touchpoint(
    type_name: str,
    minute: float,
    n: int,
    *,
    customer: str | None = "cust-1",
    anonymous: str | None = None,
    case_id: str | None = None,
    **properties: Any,
) -> Touchpoint:
    """The example touchpoint of `type_name`, `minute` minutes after START, event id `n`."""
    data = example(
        type_name,
        event_id=event_id(n),
        occurred_at=(START + timedelta(minutes=minute)).isoformat(),
    )
    data["properties"].update(properties)
    if customer is None:
        del data["customer_id"]
    else:
        data["customer_id"] = customer
    if anonymous is not None:
        data["anonymous_id"] = anonymous
    if case_id is not None:
        data["case_id"] = case_id
    return validate_touchpoint(data)


def run(
    events: Iterable[Touchpoint],
    config: JourneyConfig = CONFIG,
    *,
    customer_key: str | None = None,
    start: JourneyState | None = None,
) -> tuple[JourneyState, dict[str, Transition]]:
    """Apply events in the given order: the final state and the net transitions.

    The net transitions are what a downstream table holds after storing every
    added transition and deleting every retracted one.
    """
    state = start
    net: dict[str, Transition] = {}
    for tp in events:
        update = apply_touchpoint(state, tp, config, customer_key=customer_key)
        absorb(net, update.transitions, update.retracted)
        state = update.state
    assert state is not None
    return state, net


def absorb(
    net: dict[str, Transition], added: Sequence[Transition], retracted: Sequence[Transition]
) -> None:
    for gone in retracted:
        assert net.pop(gone.transition_id) == gone, "retracted a transition never stored"
    for new in added:
        assert new.transition_id not in net, "added a transition already stored"
        net[new.transition_id] = new


def steps(transitions: Iterable[Transition]) -> list[tuple[Stage | None, Stage, str | None, str]]:
    ordered = sorted(transitions, key=lambda t: (t.occurred_at, t.event_id))
    return [(t.from_stage, t.to_stage, t.from_type, t.to_type) for t in ordered]


def in_event_order(events: Iterable[Touchpoint]) -> list[Touchpoint]:
    return sorted(events, key=lambda tp: (tp.occurred_at, tp.event_id))


# --- the stage rule -----------------------------------------------------------

S = StageSignal


@pytest.mark.parametrize(
    ("current", "signal", "has_purchased", "expected"),
    [
        # row 1: a cancellation churns from anywhere
        (None, S.CANCELLATION, False, X),
        (V, S.CANCELLATION, True, X),
        # row 2: only a purchase brings a churned customer back
        (X, S.PURCHASE, True, R),
        (X, S.PURCHASE, False, P),
        (X, S.ACTIVITY, True, X),
        (X, S.PROMOTER, True, X),
        (X, S.CHECKOUT, True, X),
        (X, S.EXPOSURE, True, X),
        # row 3: marketing only moves a newcomer
        (None, S.EXPOSURE, False, A),
        (A, S.EXPOSURE, False, A),
        (C, S.EXPOSURE, False, C),
        (P, S.EXPOSURE, True, P),
        (R, S.EXPOSURE, True, R),
        (V, S.EXPOSURE, True, V),
        # row 4: before the first purchase
        (None, S.ACTIVITY, False, C),
        (A, S.ACTIVITY, False, C),
        (A, S.CHECKOUT, False, P),
        (C, S.PURCHASE, False, P),
        (P, S.PURCHASE, False, P),
        (P, S.ACTIVITY, False, C),
        (C, S.PROMOTER, False, C),
        (C, S.DETRACTOR, False, C),
        # row 5: after the first purchase
        (P, S.ACTIVITY, True, R),
        (P, S.PURCHASE, True, R),
        (P, S.CHECKOUT, True, R),
        (R, S.PURCHASE, True, R),
        (R, S.PROMOTER, True, V),
        (P, S.PROMOTER, True, V),
        (R, S.DETRACTOR, True, R),
        (V, S.ACTIVITY, True, V),
        (V, S.PURCHASE, True, V),
        (V, S.PROMOTER, True, V),
        (V, S.DETRACTOR, True, R),
    ],
)
def test_the_stage_rule(
    current: Stage | None, signal: StageSignal, has_purchased: bool, expected: Stage
) -> None:
    assert advance_stage(current, signal, has_purchased=has_purchased) is expected


@pytest.mark.parametrize(
    ("type_name", "properties", "signal"),
    [
        ("ad_impression", {}, S.EXPOSURE),
        ("ad_click", {}, S.EXPOSURE),
        ("email_sent", {}, S.EXPOSURE),
        ("email_opened", {}, S.EXPOSURE),
        ("email_clicked", {}, S.EXPOSURE),
        ("site_visit", {}, S.ACTIVITY),
        ("kb_article_view", {}, S.ACTIVITY),
        ("support_contact", {}, S.ACTIVITY),
        ("identify", {}, S.ACTIVITY),
        ("checkout_started", {}, S.CHECKOUT),
        ("purchase", {}, S.PURCHASE),
        ("subscription_started", {}, S.PURCHASE),
        ("subscription_cancelled", {}, S.CANCELLATION),
        ("survey_response", {"survey": "nps", "score": 9}, S.PROMOTER),
        ("survey_response", {"survey": "nps", "score": 10}, S.PROMOTER),
        ("survey_response", {"survey": "nps", "score": 8}, S.ACTIVITY),
        ("survey_response", {"survey": "nps", "score": 7}, S.ACTIVITY),
        ("survey_response", {"survey": "nps", "score": 6}, S.DETRACTOR),
        ("survey_response", {"survey": "nps", "score": 0}, S.DETRACTOR),
        ("survey_response", {"survey": "csat", "score": 5}, S.ACTIVITY),
        ("survey_response", {"survey": "csat", "score": 3}, S.ACTIVITY),
        ("survey_response", {"survey": "csat", "score": 2}, S.DETRACTOR),
        ("survey_response", {"survey": "ces", "score": 1}, S.ACTIVITY),
        ("review", {"rating": 5}, S.PROMOTER),
        ("review", {"rating": 4}, S.ACTIVITY),
        ("review", {"rating": 3}, S.ACTIVITY),
        ("review", {"rating": 2}, S.DETRACTOR),
        ("review", {"rating": 1}, S.DETRACTOR),
        ("social_mention", {"sentiment": "positive"}, S.PROMOTER),
        ("social_mention", {"sentiment": "neutral"}, S.ACTIVITY),
        ("social_mention", {"sentiment": "negative"}, S.DETRACTOR),
    ],
)
def test_what_a_touchpoint_signals(
    type_name: str, properties: dict[str, Any], signal: StageSignal
) -> None:
    tp = touchpoint(type_name, 0, 1, **properties)
    assert read_signal(tp) is signal
    # The rule takes the touchpoint itself as well as its signal.
    assert advance_stage(None, tp, has_purchased=False) is advance_stage(
        None, signal, has_purchased=False
    )


# --- a whole journey ------------------------------------------------------------


def full_journey() -> list[Touchpoint]:
    return [
        touchpoint("ad_impression", 0, 1),
        touchpoint("email_opened", 1, 2),
        touchpoint("site_visit", 2, 3),
        touchpoint("product_view", 3, 4),
        touchpoint("checkout_started", 4, 5),
        touchpoint("purchase", 5, 6),
        touchpoint("support_contact", 6, 7, case_id="case-1"),
        touchpoint("case_resolved", 7, 8, case_id="case-1"),
        touchpoint("survey_response", 8, 9, survey="nps", score=10),
        touchpoint("purchase", 9, 10, order_id="o-2"),
        touchpoint("review", 10, 11, rating=1),
        touchpoint("subscription_cancelled", 11, 12),
        touchpoint("email_sent", 12, 13),
    ]


FULL_JOURNEY_STEPS = [
    (None, A, None, "ad_impression"),
    (A, C, "email_opened", "site_visit"),
    (C, P, "product_view", "checkout_started"),
    (P, R, "purchase", "support_contact"),
    (R, V, "case_resolved", "survey_response"),
    (V, R, "purchase", "review"),
    (R, X, "review", "subscription_cancelled"),
]


def test_a_journey_through_every_stage() -> None:
    state, net = run(full_journey())

    assert steps(net.values()) == FULL_JOURNEY_STEPS
    assert state.stage is X
    assert [entry.stage for entry in state.recent] == [A, A, C, C, P, P, R, R, V, V, R, X, X]
    assert state.version == state.touchpoints == 13
    assert state.first_seen == START
    assert state.last_seen == START + timedelta(minutes=12)
    assert state.last_active == START + timedelta(minutes=11)  # a sent email is not activity
    assert state.purchases == 2
    assert state.revenue == {"EUR": 79.96}
    assert state.refunds == {}
    assert state.by_type["purchase"] == 2
    assert state.by_channel == {
        "advertising": 1,
        "email": 3,
        "web": 5,
        "mobile_app": 1,
        "phone": 3,
    }
    assert state.open_cases == frozenset()
    assert state.last_nps is not None
    assert (state.last_nps.score, state.last_nps.event_id) == (10, event_id(9))
    assert state.last_csat is None


def test_each_transition_names_its_event() -> None:
    _, net = run(full_journey())
    churn = next(t for t in net.values() if t.to_stage is X)
    assert (churn.customer_key, churn.event_id) == ("cust-1", event_id(12))
    assert churn.occurred_at == START + timedelta(minutes=11)
    assert churn.to_dict()["from_stage"] == "retention"


def test_transition_ids_are_deterministic_and_distinct() -> None:
    _, first = run(full_journey())
    _, again = run(full_journey())
    assert first.keys() == again.keys()
    assert len(set(first)) == len(FULL_JOURNEY_STEPS)
    for transition_id in first:
        assert uuid.UUID(transition_id).version == 5


def test_an_abandoned_checkout_goes_back_to_consideration() -> None:
    state, net = run(
        [
            touchpoint("product_view", 0, 1),
            touchpoint("checkout_started", 1, 2),
            touchpoint("product_view", 2, 3),
        ]
    )
    assert state.stage is C
    assert steps(net.values()) == [
        (None, C, None, "product_view"),
        (C, P, "product_view", "checkout_started"),
        (P, C, "checkout_started", "product_view"),
    ]


# --- event time -----------------------------------------------------------------


def test_a_late_event_retracts_what_it_changes() -> None:
    ad = touchpoint("ad_impression", 0, 1)
    view = touchpoint("product_view", 1, 2)
    checkout = touchpoint("checkout_started", 2, 3)
    state, _ = run([ad, checkout])

    update = apply_touchpoint(state, view, CONFIG)

    # Before: ad (awareness) -> checkout (purchase). The view now sits between them.
    assert steps(update.transitions) == [
        (A, C, "ad_impression", "product_view"),
        (C, P, "product_view", "checkout_started"),
    ]
    assert steps(update.retracted) == [(A, P, "ad_impression", "checkout_started")]
    assert [entry.event_id for entry in update.state.recent] == [
        event_id(1),
        event_id(2),
        event_id(3),
    ]


def test_a_late_event_without_effect_changes_nothing_emitted() -> None:
    state, _ = run(
        [
            touchpoint("site_visit", 0, 1),
            touchpoint("site_visit", 2, 2),
            touchpoint("purchase", 5, 3),
        ]
    )
    # Between the two visits: the purchase still follows a site visit.
    update = apply_touchpoint(state, touchpoint("product_view", 1, 4), CONFIG)
    assert update.transitions == update.retracted == ()
    assert update.state.stage is P


def test_a_late_cancellation_turns_what_followed() -> None:
    state, net = run(
        [
            touchpoint("purchase", 0, 1),
            touchpoint("site_visit", 2, 2),
            touchpoint("review", 3, 3, rating=5),
        ]
    )
    assert state.stage is V
    update = apply_touchpoint(state, touchpoint("subscription_cancelled", 1, 4), CONFIG)
    absorb(net, update.transitions, update.retracted)
    # Churned customers stay churned until they buy again.
    assert update.state.stage is X
    assert steps(net.values()) == [
        (None, P, None, "purchase"),
        (P, X, "purchase", "subscription_cancelled"),
    ]


def test_duplicates_are_ignored() -> None:
    events = full_journey()
    state, _ = run(events)
    for tp in (events[0], events[6], events[-1]):
        update = apply_touchpoint(state, tp, CONFIG)
        assert update.duplicate
        assert update.state is state
        assert update.transitions == update.retracted == ()


# A menu of touchpoints for generated journeys: every stage signal, money, cases.
MENU: list[tuple[str, dict[str, Any]]] = [
    ("ad_impression", {}),
    ("email_sent", {}),
    ("site_visit", {}),
    ("product_view", {}),
    ("checkout_started", {}),
    ("purchase", {}),
    ("subscription_started", {}),
    ("refund", {}),
    ("support_contact", {}),
    ("case_resolved", {}),
    ("case_reopened", {}),
    ("survey_response", {"survey": "nps", "score": 10}),
    ("survey_response", {"survey": "nps", "score": 3}),
    ("survey_response", {"survey": "csat", "score": 1}),
    ("review", {"rating": 5}),
    ("social_mention", {"sentiment": "negative"}),
    ("subscription_cancelled", {}),
    ("identify", {}),
]

planned_events = st.lists(
    st.tuples(
        st.integers(0, len(MENU) - 1),
        st.integers(0, 40),  # minutes: ties are likely, and broken by event_id
        st.sampled_from(["case-1", "case-2"]),
    ),
    min_size=1,
    max_size=14,
)


def build(
    plan: Sequence[tuple[int, int, str]], first_n: int = 1, **identity: Any
) -> list[Touchpoint]:
    return [
        touchpoint(MENU[kind][0], minute, first_n + i, case_id=case, **identity, **MENU[kind][1])
        for i, (kind, minute, case) in enumerate(plan)
    ]


@settings(max_examples=150, deadline=None)
@given(plan=planned_events, data=st.data())
def test_arrival_order_does_not_matter_within_the_window(
    plan: list[tuple[int, int, str]], data: st.DataObject
) -> None:
    events = build(plan)
    expected_state, expected_net = run(in_event_order(events))

    arrival = data.draw(st.permutations(events))
    repeats = data.draw(st.lists(st.sampled_from(events), max_size=4))
    positions = data.draw(
        st.lists(st.integers(0, len(arrival)), min_size=len(repeats), max_size=len(repeats))
    )
    for repeat, position in zip(repeats, positions, strict=True):
        arrival.insert(position, repeat)
    state, net = run(arrival)

    assert state == expected_state
    assert net.keys() == expected_net.keys()
    assert set(window_transitions(state)) == set(expected_net.values())


@settings(max_examples=100, deadline=None)
@given(
    plan=st.lists(
        st.tuples(st.integers(0, len(MENU) - 1), st.integers(0, 60), st.just("case-1")),
        min_size=5,
        max_size=20,
    ),
    limit=st.integers(2, 5),
    data=st.data(),
)
def test_late_events_are_exact_while_they_land_in_the_window(
    plan: list[tuple[int, int, str]], limit: int, data: st.DataObject
) -> None:
    # Each event arrives at most limit-1 places late, so at most limit-1 newer
    # events came before it: it still lands in (or right before) the window.
    config = JourneyConfig(recent_limit=limit)
    events = in_event_order(build(plan))
    delays = data.draw(
        st.lists(st.integers(0, limit - 1), min_size=len(events), max_size=len(events))
    )
    arrival = [events[i] for i in sorted(range(len(events)), key=lambda i: (i + delays[i], i))]

    expected_state, expected_net = run(events, config)
    state, net = run(arrival, config)

    assert len(state.recent) == min(limit, len(events))
    assert state == expected_state
    assert net.keys() == expected_net.keys()


def test_an_event_older_than_the_window_counts_exactly_and_keeps_the_chain_consistent() -> None:
    config = JourneyConfig(recent_limit=3)
    visits = [touchpoint("site_visit", 10 + i, 1 + i) for i in range(4)]
    state, emitted = run(visits, config)
    assert (state.checkpoint.stage, state.checkpoint.last_type) == (C, "site_visit")

    update = apply_touchpoint(state, touchpoint("purchase", 0, 9), config)

    # Counts are exact: the purchase happened, before all four visits.
    assert (update.state.purchases, update.state.touchpoints) == (1, 5)
    assert update.state.first_seen == START
    assert update.before_window
    # Its place in the path (before the folded visit at minute 10) is out of reach: it
    # emits no transition of its own, but the customer has bought, so the visits in
    # the window are retention now.
    assert (update.state.checkpoint.stage, update.state.checkpoint.has_purchased) == (C, True)
    assert update.state.checkpoint.last_occurred_at == START + timedelta(minutes=10)
    assert update.state.stage is R
    assert steps(update.transitions) == [(C, R, "site_visit", "site_visit")]
    assert update.retracted == ()
    # The stored chain in event time is one path: each from_stage the previous to_stage.
    chain = sorted((*emitted.values(), *update.transitions), key=lambda t: t.occurred_at)
    assert [t.from_stage for t in chain[1:]] == [t.to_stage for t in chain[:-1]]
    assert window_transitions(update.state) == update.transitions


def test_open_cases_follow_event_time() -> None:
    events = [
        touchpoint("support_contact", 0, 1, case_id="case-1"),
        touchpoint("case_resolved", 5, 2, case_id="case-1"),
        touchpoint("billing_inquiry", 1, 3, case_id="case-2"),
        touchpoint("case_resolved", 2, 4, case_id="case-2"),
        touchpoint("case_reopened", 3, 5, case_id="case-2"),
        touchpoint("escalation", 4, 6, case_id="case-3"),
    ]
    for order in (events, events[::-1]):
        state, _ = run(order)
        # case-1 resolved after its contact; case-2 reopened after it was resolved;
        # an escalation alone does not open a case.
        assert state.open_cases == frozenset({"case-2"})


def test_money_is_kept_per_currency() -> None:
    state, _ = run(
        [
            touchpoint("purchase", 0, 1, revenue=10.10, currency="EUR"),
            touchpoint("purchase", 1, 2, revenue=20.20, currency="EUR", order_id="o-2"),
            touchpoint("purchase", 2, 3, revenue=5.0, currency="USD", order_id="o-3"),
            touchpoint("refund", 3, 4, amount=0.1, currency="EUR"),
            touchpoint("refund", 4, 5, amount=0.2, currency="EUR"),
        ]
    )
    assert state.revenue == {"EUR": 30.3, "USD": 5.0}
    assert state.refunds == {"EUR": 0.3}


def test_the_last_survey_scores_are_the_latest_in_event_time() -> None:
    late_low = touchpoint("survey_response", 0, 1, survey="csat", score=1)
    early_high = touchpoint("survey_response", 5, 2, survey="csat", score=5)
    state, _ = run([early_high, late_low])
    assert state.last_csat is not None
    assert (state.last_csat.score, state.last_csat.at) == (5, START + timedelta(minutes=5))
    assert state.last_nps is None


# --- bounds -----------------------------------------------------------------------

BOUNDED_TYPES = ["site_visit", "support_contact", "purchase", "email_sent", "case_resolved"]


def many_events(count: int) -> list[Touchpoint]:
    return [
        touchpoint(
            BOUNDED_TYPES[i % len(BOUNDED_TYPES)],
            i,
            i + 1,
            case_id=f"case-{i}",
            anonymous=f"anon-{i % 97}",
        )
        for i in range(count)
    ]


@pytest.mark.parametrize("reverse", [False, True], ids=["in order", "all late"])
def test_the_state_stays_bounded(reverse: bool) -> None:
    events = many_events(10_000)
    if reverse:
        events.reverse()
    config = JourneyConfig(recent_limit=50, case_limit=20, anonymous_id_limit=20)

    state, _ = run(events, config)

    assert (state.version, state.touchpoints) == (10_000, 10_000)
    assert state.by_type["purchase"] == state.purchases == 2_000
    assert len(state.recent) == 50
    assert len(state.cases) == 20
    assert len(state.anonymous_ids) == 20
    # The newest by event time are kept, whatever the arrival order.
    assert state.recent[-1].event_id == event_id(10_000)
    assert [entry.occurred_at for entry in state.recent] == sorted(
        entry.occurred_at for entry in state.recent
    )
    assert "case-9951" in state.cases
    assert "case-9949" not in state.cases
    small, _ = run(many_events(200), config)
    assert len(orjson.dumps(state.to_dict())) <= len(orjson.dumps(small.to_dict())) + 200


# --- identity resolution ------------------------------------------------------------


def test_an_anonymous_journey_merges_into_the_customer() -> None:
    anonymous, anonymous_net = run(
        [
            touchpoint("ad_impression", 0, 1, customer=None, anonymous="anon-9"),
            touchpoint("site_visit", 1, 2, customer=None, anonymous="anon-9"),
            touchpoint("product_view", 2, 3, customer=None, anonymous="anon-9"),
        ]
    )
    customer, customer_net = run(
        [
            touchpoint("identify", 3, 4),
            touchpoint("checkout_started", 4, 5),
            touchpoint("purchase", 5, 6),
        ]
    )
    assert anonymous.customer_key == "anon-9"
    assert steps(customer_net.values()) == [
        (None, C, None, "identify"),
        (C, P, "identify", "checkout_started"),
    ]

    update = merge_journeys(customer, anonymous, CONFIG)

    merged = update.state
    assert merged.customer_key == "cust-1"
    assert merged.version == merged.touchpoints == 6
    assert [entry.event_id for entry in merged.recent] == [event_id(n) for n in range(1, 7)]
    assert merged.first_seen == START
    assert merged.stage is P
    assert set(merged.anonymous_ids) == {"anon-9"}
    # The anonymous key's transitions go, and so does the customer's entry at identify.
    assert {t.transition_id for t in update.retracted} == {
        *anonymous_net,
        next(t.transition_id for t in customer_net.values() if t.to_type == "identify"),
    }
    assert steps(update.transitions) == [
        (None, A, None, "ad_impression"),
        (A, C, "ad_impression", "site_visit"),
    ]
    assert all(t.customer_key == "cust-1" for t in update.transitions)


@settings(max_examples=100, deadline=None)
@given(customer_plan=planned_events, anonymous_plan=planned_events)
def test_a_merge_equals_one_journey_of_all_events(
    customer_plan: list[tuple[int, int, str]], anonymous_plan: list[tuple[int, int, str]]
) -> None:
    customer_events = build(customer_plan)
    anonymous_plan = [step for step in anonymous_plan if MENU[step[0]][0] != "identify"]
    anonymous_events = build(anonymous_plan, first_n=100, customer=None, anonymous="anon-9")
    if not anonymous_events:
        return
    customer, customer_net = run(customer_events)
    anonymous, anonymous_net = run(anonymous_events)

    update = merge_journeys(customer, anonymous, CONFIG)
    net = {**customer_net, **anonymous_net}
    absorb(net, update.transitions, update.retracted)

    single, single_net = run(
        in_event_order([*customer_events, *anonymous_events]), customer_key="cust-1"
    )
    assert update.state == single
    assert net.keys() == single_net.keys()


def test_a_journey_cannot_merge_into_itself() -> None:
    state, _ = run(full_journey())
    with pytest.raises(ValueError, match="into itself"):
        merge_journeys(state, state, CONFIG)


def test_a_routed_key_must_match_the_journey() -> None:
    state, _ = run(full_journey())
    with pytest.raises(ValueError, match="belongs to cust-1"):
        apply_touchpoint(state, touchpoint("site_visit", 20, 99), CONFIG, customer_key="cust-2")
    fresh = apply_touchpoint(
        None,
        touchpoint("site_visit", 0, 1, customer=None, anonymous="anon-1"),
        CONFIG,
        customer_key="cust-7",
    )
    assert fresh.state.customer_key == "cust-7"
    assert set(fresh.state.anonymous_ids) == {"anon-1"}


# --- inactivity -------------------------------------------------------------------


def test_a_customer_churns_after_ninety_quiet_days() -> None:
    state, _ = run([touchpoint("purchase", 0, 1), touchpoint("email_sent", 60 * 24 * 50, 2)])
    quiet_since = START
    assert not is_churned_by_inactivity(state, quiet_since + timedelta(days=89, hours=23))
    assert is_churned_by_inactivity(state, quiet_since + timedelta(days=90))
    assert is_churned_by_inactivity(state, quiet_since + timedelta(days=30), days=30)
    assert stage_as_of(state, quiet_since + timedelta(days=89), CONFIG) is P
    assert stage_as_of(state, quiet_since + timedelta(days=90), CONFIG) is X
    assert state.stage is P  # the stored stage is untouched: churn by silence is a view


def test_a_quiet_prospect_is_not_churned() -> None:
    state, _ = run([touchpoint("product_view", 0, 1)])
    assert not is_churned_by_inactivity(state, START + timedelta(days=400))
    with pytest.raises(ValueError, match="aware"):
        is_churned_by_inactivity(state, datetime(2025, 1, 1))


# --- storage ------------------------------------------------------------------------


def test_the_state_round_trips_through_json() -> None:
    config = JourneyConfig(recent_limit=5)
    events = [
        *full_journey(),
        touchpoint("survey_response", 13, 20, survey="csat", score=4),
        touchpoint("support_contact", 14, 21, case_id="case-9", anonymous="anon-3"),
        touchpoint("refund", 15, 22, amount=5.5, currency="USD"),
    ]
    state, _ = run(events, config)
    assert state.checkpoint.stage is not None

    stored = orjson.loads(orjson.dumps(state.to_dict()))
    restored = JourneyState.from_dict(stored)

    assert restored == state
    assert stored["stage"] == "churned"
    assert stored["open_cases"] == ["case-9"]
    # A restored state carries on exactly like the original.
    more = touchpoint("purchase", 30, 30, order_id="o-9")
    assert apply_touchpoint(restored, more, config) == apply_touchpoint(state, more, config)
