"""Paths, flows, retention and timelines on real chDB, checked against a brute-force reference."""

from __future__ import annotations

import itertools
import json
import random
import uuid
from collections import Counter
from datetime import UTC, date, datetime, timedelta
from typing import Any

import pytest

from journey.cli import main
from journey.cli.analysis import DEFAULT_TOP_FLOWS
from projections.analysis.paths import FlowsSpec, PathsSpec
from projections.analysis.retention import Period, RetentionSpec
from projections.analysis.timeline import CustomerSpec
from projections.clickhouse.builders.paths import flows_query, paths_query
from projections.clickhouse.builders.retention import retention_query
from projections.clickhouse.builders.timeline import identity_query, timeline_query
from projections.clickhouse.client import Warehouse
from projections.clickhouse.readonly import run_readonly
from projections.clickhouse.sql import Statement
from projections.clickhouse.tables import FRICTION
from projections.clickhouse.writer import insert_records, insert_touchpoints
from schemas.catalogue import CATALOGUE
from tests.ports import free_port

pytestmark = pytest.mark.integration

T0 = datetime(2024, 5, 1, 9, 0, tzinfo=UTC)  # a Wednesday
MIN = timedelta(minutes=1)
DAY = timedelta(days=1)
Record = dict[str, Any]
# (occurred_at, event_id, type): the order a journey is walked in
Event = tuple[datetime, str, str]




def paths(**options: Any) -> Statement:
    return paths_query(PathsSpec(**options))


def flows(**options: Any) -> Statement:
    return flows_query(FlowsSpec(**options))


def retention(**options: Any) -> Statement:
    return retention_query(RetentionSpec(**options))


def timeline(customer: str, **options: Any) -> Statement:
    return timeline_query(CustomerSpec(customer, **options))


def identity(customer: str) -> Statement:
    return identity_query(CustomerSpec(customer))


# ---- records ---------------------------------------------------------------------------


def event(
    type_: str,
    at: datetime,
    *,
    customer: str | None = None,
    anonymous: str | None = None,
    event_id: str | None = None,
    **extra: Any,
) -> Record:
    return {
        "event_id": event_id or str(uuid.uuid4()),
        "schema_version": 1,
        "type": type_,
        "occurred_at": at.isoformat(),
        "channel": extra.pop("channel", "web"),
        "customer_id": customer,
        "anonymous_id": anonymous,
        # as the validator stores it today: the customer id, else the anonymous id
        "customer_key": customer or anonymous,
        "properties": extra.pop("properties", {}),
        **extra,
    }


def journey(customer: str, *steps: tuple[timedelta, str]) -> list[Record]:
    return [event(type_, T0 + offset, customer=customer) for offset, type_ in steps]


def seq(customer: str, *types: str, start: datetime = T0) -> list[Record]:
    """One touchpoint a minute, in the order given."""
    return [event(t, start + i * MIN, customer=customer) for i, t in enumerate(types)]


# ---- the reference: plain Python, no SQL -----------------------------------------------


def _at(record: Record) -> datetime:
    return datetime.fromisoformat(record["occurred_at"])


def people_of(
    records: list[Record], *, since: datetime | None = None, until: datetime | None = None
) -> dict[str, list[Event]]:
    """Each person's events in walking order. An anonymous id belongs to the customer of
    its earliest identify (ties: the smaller event_id) whenever that identify happened; a
    repeated event_id is one event."""
    unique = {r["event_id"]: r for r in records}
    first_claim: dict[str, tuple[tuple[datetime, str], str]] = {}
    for r in unique.values():
        if r["type"] == "identify" and r["anonymous_id"] and r["customer_id"]:
            key = (_at(r), r["event_id"])
            known = first_claim.get(r["anonymous_id"])
            if known is None or key < known[0]:
                first_claim[r["anonymous_id"]] = (key, r["customer_id"])
    people: dict[str, list[Event]] = {}
    for r in unique.values():
        at = _at(r)
        if (since is not None and at < since) or (until is not None and at >= until):
            continue
        anonymous = r["anonymous_id"] or ""
        if r["customer_id"]:
            person = r["customer_id"]
        elif anonymous in first_claim:
            person = first_claim[anonymous][1]
        else:
            person = anonymous or r["customer_key"]
        people.setdefault(person, []).append((at, r["event_id"], r["type"]))
    return {person: sorted(events) for person, events in people.items()}


def steps_of(events: list[Event], collapse: bool, exclude: tuple[str, ...] = ()) -> list[str]:
    types = [t for _, _, t in events if t not in exclude]
    if not collapse:
        return types
    return [t for i, t in enumerate(types) if i == 0 or types[i - 1] != t]


def expected_paths(
    records: list[Record],
    *,
    start_at: str | None = None,
    end_at: str | None = None,
    max_length: int = 6,
    collapse: bool = True,
    top: int = 20,
    exclude: tuple[str, ...] = (),
    since: datetime | None = None,
    until: datetime | None = None,
) -> list[tuple[list[str], str, int, float]]:
    counts: Counter[tuple[str, ...]] = Counter()
    for events in people_of(records, since=since, until=until).values():
        steps = steps_of(events, collapse, exclude)
        if start_at is not None:
            if start_at not in steps:
                continue
            first = steps.index(start_at)
            path = steps[first : first + max_length]
        elif end_at is not None:
            if end_at not in steps:
                continue
            last = steps.index(end_at)
            path = steps[max(0, last - max_length + 1) : last + 1]
        else:
            if not steps:
                continue
            path = steps[:max_length]
        counts[tuple(path)] += 1
    total = sum(counts.values())
    ranked = sorted(counts.items(), key=lambda item: (-item[1], list(item[0])))[:top]
    return [(list(p), " > ".join(p), n, n / total) for p, n in ranked]


def expected_flows(
    records: list[Record],
    *,
    conversion: str = "purchase",
    collapse: bool = True,
    exclude: tuple[str, ...] = (),
    top: int | None = None,
) -> list[tuple[str, str, int, int, int, int]]:
    transitions: Counter[tuple[str, str]] = Counter()
    converted_transitions: Counter[tuple[str, str]] = Counter()
    people: dict[tuple[str, str], set[str]] = {}
    converted_people: dict[tuple[str, str], set[str]] = {}
    for person, events in people_of(records).items():
        converted = any(t == conversion for _, _, t in events)
        steps = steps_of(events, collapse, exclude)
        for pair in itertools.pairwise(steps):
            transitions[pair] += 1
            people.setdefault(pair, set()).add(person)
            if converted:
                converted_transitions[pair] += 1
                converted_people.setdefault(pair, set()).add(person)
    rows = [
        (
            a, b, n, len(people[(a, b)]), converted_transitions[(a, b)],
            len(converted_people.get((a, b), ())),
        )
        for (a, b), n in transitions.items()
    ]  # fmt: skip
    rows.sort(key=lambda row: (-row[2], row[0], row[1]))
    return rows if top is None else rows[:top]


def period_start(day: date, period: Period) -> date:
    if period is Period.week:
        return day - timedelta(days=day.weekday())
    return day.replace(day=1)


def period_number(cohort: date, day: date, period: Period) -> int:
    start = period_start(day, period)
    if period is Period.week:
        return (start - cohort).days // 7
    return (start.year - cohort.year) * 12 + start.month - cohort.month


def add_periods(cohort: date, k: int, period: Period) -> date:
    if period is Period.week:
        return cohort + timedelta(weeks=k)
    months = cohort.month - 1 + k
    return date(cohort.year + months // 12, months % 12 + 1, 1)


def expected_retention(
    records: list[Record],
    *,
    cohort_event: str = "purchase",
    return_event: str | None = None,
    period: Period = Period.week,
    periods: int = 8,
    since: datetime | None = None,
    until: datetime | None = None,
) -> list[tuple[date, int, list[int | None], list[float | None]]]:
    people = people_of(records, until=until)
    seen = [at for events in people.values() for at, _, _ in events]
    horizon = max(seen).date()
    cohorts: dict[date, list[set[int]]] = {}
    for events in people.values():
        entries = [at for at, _, t in events if t == cohort_event]
        if not entries:
            continue
        entered = min(entries)
        if since is not None and entered < since:
            continue
        cohort = period_start(entered.date(), period)
        back = {
            period_number(cohort, at.date(), period)
            for at, _, t in events
            if at >= entered and (return_event is None or t == return_event)
        }
        cohorts.setdefault(cohort, []).append(back)
    rows = []
    for cohort in sorted(cohorts):
        members = cohorts[cohort]
        returned: list[int | None] = [
            sum(1 for back in members if k in back)
            if add_periods(cohort, k, period) <= horizon
            else None
            for k in range(periods + 1)
        ]
        rates = [None if n is None else n / len(members) for n in returned]
        rows.append((cohort, len(members), returned, rates))
    return rows


# ---- the warehouse ---------------------------------------------------------------------
# The warehouse fixtures (one chDB folder per module) come from conftest.py.


def rows(warehouse: Warehouse, built: tuple[str, dict[str, Any]]) -> list[tuple[Any, ...]]:
    return run_readonly(warehouse, *built).rows


def store(warehouse: Warehouse, records: list[Record]) -> None:
    insert_touchpoints(warehouse, records)


# ---- paths -----------------------------------------------------------------------------


def path_records() -> list[Record]:
    ties = T0 + 30 * DAY
    return [
        *seq("p1", "site_visit", "site_visit", "product_view", "add_to_cart", "purchase"),
        *seq("p2", "ad_click", "site_visit", "product_view", "product_view", "purchase",
             "site_visit"),
        *seq("p3", "site_visit", "search", "product_view", "site_visit", "product_view"),
        *seq("p4", "email_opened", "site_visit", "add_to_cart", "add_to_cart", "purchase",
             "purchase"),
        *seq("p5", "site_visit", "product_view", "add_to_cart", "purchase"),
        *seq("p6", "search"),
        *seq("p7", "site_visit", "site_visit"),
        *seq("p8", "purchase", "site_visit", "purchase"),
        # anonymous before the identify, a customer after: one person, c-9
        event("site_visit", T0, anonymous="a-9"),
        event("product_view", T0 + MIN, anonymous="a-9"),
        event("identify", T0 + 2 * MIN, customer="c-9", anonymous="a-9"),
        event("purchase", T0 + 3 * MIN, customer="c-9"),
        # the same instant: event_id decides (site_visit, then add_to_cart)
        event("add_to_cart", ties, customer="p10", event_id="e-b"),
        event("site_visit", ties, customer="p10", event_id="e-a"),
        event("purchase", ties + MIN, customer="p10"),
    ]  # fmt: skip


def test_paths_by_hand(warehouse: Warehouse) -> None:
    records = path_records()
    store(warehouse, records)
    to_purchase = rows(warehouse, paths(end_at="purchase", max_length=3, exclude=["identify"]))
    assert [(r[1], r[2], r[3]) for r in to_purchase] == [
        ("product_view > add_to_cart > purchase", 2, 2 / 7),  # p1, p5
        ("site_visit > add_to_cart > purchase", 2, 2 / 7),  # p4 (collapsed), p10 (tie order)
        ("site_visit > product_view > purchase", 2, 2 / 7),  # p2, c-9 (identify left out)
        ("purchase", 1, 1 / 7),  # p8 starts with it
    ]
    assert to_purchase == expected_paths(
        records, end_at="purchase", max_length=3, exclude=("identify",)
    )


def test_paths_start_and_end_against_the_reference(warehouse: Warehouse) -> None:
    records = path_records()
    store(warehouse, records)
    cases: list[dict[str, Any]] = [
        {},
        {"start_at": "site_visit"},
        {"start_at": "site_visit", "max_length": 2},
        {"start_at": "product_view", "collapse": False},
        {"start_at": "purchase", "max_length": 3},
        {"end_at": "purchase"},
        {"end_at": "purchase", "collapse": False, "max_length": 4},
        {"end_at": "add_to_cart", "max_length": 1},
        {"end_at": "purchase", "top": 2},
        {"start_at": "site_visit", "top": 3, "collapse": False},
        {"exclude": ("site_visit",), "collapse": True},
        {"start_at": "email_opened"},
        {"start_at": "refund"},  # nobody: no rows
    ]
    for case in cases:
        options = {("collapse_repeats" if k == "collapse" else k): v for k, v in case.items()}
        got = rows(warehouse, paths(**options))
        assert got == expected_paths(records, **case), case


def test_collapse_and_max_length_by_hand(warehouse: Warehouse) -> None:
    records = seq("only", "site_visit", "site_visit", "product_view", "product_view", "site_visit")
    store(warehouse, records)
    collapsed = rows(warehouse, paths())
    assert collapsed == [
        (["site_visit", "product_view", "site_visit"], "site_visit > product_view > site_visit", 1,
         1.0),
    ]  # fmt: skip
    raw = rows(warehouse, paths(collapse_repeats=False, max_length=4))
    assert raw[0][0] == ["site_visit", "site_visit", "product_view", "product_view"]
    # the first product_view ends the path
    to_view = rows(
        warehouse, paths(end_at="product_view", max_length=2, collapse_repeats=False)
    )
    assert to_view[0][0] == ["site_visit", "product_view"]
    from_view = rows(warehouse, paths(start_at="product_view", max_length=5))
    assert from_view[0][0] == ["product_view", "site_visit"]


def test_top_paths_order_ties_by_path(warehouse: Warehouse) -> None:
    records = [
        *seq("t1", "search", "purchase"),
        *seq("t2", "search", "purchase"),
        *seq("t3", "ad_click", "purchase"),
        *seq("t4", "ad_click", "purchase"),
        *seq("t5", "site_visit"),
        *seq("t6", "ad_click"),
        *seq("t7", "ad_click", "purchase", "search"),
    ]
    store(warehouse, records)
    got = rows(warehouse, paths(top=3))
    assert [(r[0], r[2]) for r in got] == [
        (["ad_click", "purchase"], 2),
        (["search", "purchase"], 2),
        (["ad_click"], 1),  # before ad_click > purchase > search: a prefix sorts first
    ]
    assert [r[3] for r in got] == [2 / 7, 2 / 7, 1 / 7]  # share of all 7 people, not the top
    assert got == expected_paths(records, top=3)


def test_paths_in_a_time_range(warehouse: Warehouse) -> None:
    records = path_records()
    store(warehouse, records)
    since, until = T0 + 2 * MIN, T0 + 5 * MIN
    got = rows(warehouse, paths(start_at="product_view", since=since, until=until))
    assert got == expected_paths(records, start_at="product_view", since=since, until=until)
    assert got  # the range keeps some


# ---- flows -----------------------------------------------------------------------------


def test_flows_by_hand(warehouse: Warehouse) -> None:
    records = [
        *seq("f1", "site_visit", "site_visit", "add_to_cart", "purchase"),
        *seq("f2", "site_visit", "add_to_cart", "site_visit", "add_to_cart"),
        *seq("f3", "site_visit", "product_view"),
    ]
    store(warehouse, records)
    got = rows(warehouse, flows())
    assert got == [
        ("site_visit", "add_to_cart", 3, 2, 1, 1),
        ("add_to_cart", "purchase", 1, 1, 1, 1),
        ("add_to_cart", "site_visit", 1, 1, 0, 0),
        ("site_visit", "product_view", 1, 1, 0, 0),
    ]
    raw = rows(warehouse, flows(collapse_repeats=False, top=2))
    assert raw == [
        ("site_visit", "add_to_cart", 3, 2, 1, 1),
        ("add_to_cart", "purchase", 1, 1, 1, 1),
    ]
    assert rows(warehouse, flows(collapse_repeats=False)) == expected_flows(
        records, collapse=False
    )
    # converted by another type: f2 added to cart, f3 did not
    by_cart = rows(warehouse, flows(conversion="add_to_cart"))
    assert by_cart == expected_flows(records, conversion="add_to_cart")
    assert ("site_visit", "product_view", 1, 1, 0, 0) in by_cart


def test_flows_against_the_reference(warehouse: Warehouse) -> None:
    records = path_records()
    store(warehouse, records)
    for options in (
        {},
        {"collapse": False},
        {"conversion": "add_to_cart"},
        {"exclude": ("identify", "site_visit")},
        {"top": 3},
    ):
        built = flows(
            conversion=options.get("conversion", "purchase"),
            collapse_repeats=options.get("collapse", True),
            exclude=options.get("exclude", ()),
            top=options.get("top"),
        )
        assert rows(warehouse, built) == expected_flows(records, **options), options


# ---- retention -------------------------------------------------------------------------


def at(day: str, clock: str = "10:00:00") -> datetime:
    return datetime.fromisoformat(f"{day}T{clock}+00:00")


def retention_records() -> list[Record]:
    return [
        # week of 04-29: enters Tuesday; back in week 1 and week 3
        event("purchase", at("2024-04-30"), customer="r1"),
        event("site_visit", at("2024-05-07"), customer="r1"),
        event("purchase", at("2024-05-21"), customer="r1"),
        # enters on the last millisecond of the week; back on the first of the next
        event("purchase", at("2024-05-05", "23:59:59.999"), customer="r2"),
        event("site_visit", at("2024-05-06", "00:00:00"), customer="r2"),
        # week of 05-06: never back
        event("purchase", at("2024-05-08"), customer="r3"),
        # a visit before the first purchase does not count as a return
        event("site_visit", at("2024-05-01"), customer="r4"),
        event("purchase", at("2024-05-02"), customer="r4"),
        event("page_view", at("2024-05-30"), customer="r4"),
        # never purchases: in no cohort
        event("site_visit", at("2024-05-03"), customer="r5"),
        # first purchase in April's week 04-15, again in May
        event("purchase", at("2024-04-20"), customer="r6"),
        event("purchase", at("2024-05-09"), customer="r6"),
        # March cohort (month view): back on April 1st and in June
        event("purchase", at("2024-03-31", "23:00:00"), customer="r7"),
        event("site_visit", at("2024-04-01", "00:30:00"), customer="r7"),
        event("site_visit", at("2024-06-15"), customer="r7"),
        # anonymous visits before the purchase count as the customer's, after it as returns
        event("site_visit", at("2024-05-13"), anonymous="a-8"),
        event("purchase", at("2024-05-14"), customer="r8"),
        event("identify", at("2024-05-14", "10:01:00"), customer="r8", anonymous="a-8"),
        event("site_visit", at("2024-05-28"), anonymous="a-8"),
    ]


def test_weekly_retention_by_hand(warehouse: Warehouse) -> None:
    records = retention_records()
    store(warehouse, records)
    got = rows(warehouse, retention(periods=4))
    # the horizon is 06-15 (r7's visit): every period of these cohorts has begun
    assert [(r[0], r[1], r[2]) for r in got] == [
        (date(2024, 3, 25), 1, [1, 1, 0, 0, 0]),  # r7
        (date(2024, 4, 15), 1, [1, 0, 0, 1, 0]),  # r6: back 05-09, week 3
        (date(2024, 4, 29), 3, [3, 2, 0, 1, 1]),  # r1, r2, r4
        (date(2024, 5, 6), 1, [1, 0, 0, 0, 0]),  # r3
        (date(2024, 5, 13), 1, [1, 0, 1, 0, 0]),  # r8, with a-8's visit of 05-28
    ]
    assert got[2][3] == [1.0, 2 / 3, 0.0, 1 / 3, 1 / 3]
    assert got == expected_retention(records, periods=4)
    # returning by purchase only: r1 in week 3; r6 in week 3
    by_purchase = rows(warehouse, retention(return_event="purchase", periods=4))
    assert [r[2] for r in by_purchase] == [[1, 0, 0, 0, 0], [1, 0, 0, 1, 0], [3, 0, 0, 1, 0],
                                           [1, 0, 0, 0, 0], [1, 0, 0, 0, 0]]  # fmt: skip
    assert by_purchase == expected_retention(records, return_event="purchase", periods=4)


def test_monthly_retention_and_the_horizon(warehouse: Warehouse) -> None:
    records = retention_records()
    store(warehouse, records)
    got = rows(warehouse, retention(period=Period.month, periods=4))
    # the horizon is 06-15: July and later have not begun, so they are NULL, not 0
    assert [(r[0], r[1], r[2]) for r in got] == [
        (date(2024, 3, 1), 1, [1, 1, 0, 1, None]),  # r7: back April 1st and in June
        (date(2024, 4, 1), 2, [2, 2, 0, None, None]),  # r1, r6
        (date(2024, 5, 1), 4, [4, 0, None, None, None]),  # r2, r3, r4, r8
    ]
    assert got == expected_retention(records, period=Period.month, periods=4)
    assert got[0][3] == [1.0, 1.0, 0.0, 1.0, None]


def test_retention_cohorts_in_a_range(warehouse: Warehouse) -> None:
    records = retention_records()
    store(warehouse, records)
    since, until = at("2024-04-29", "00:00:00"), at("2024-05-31", "00:00:00")
    got = rows(warehouse, retention(since=since, until=until, periods=6))
    # r6's first purchase is before the range: no cohort; r7's June visit is past until
    assert [r[0] for r in got] == [date(2024, 4, 29), date(2024, 5, 6), date(2024, 5, 13)]
    assert got == expected_retention(records, since=since, until=until, periods=6)
    for options in (
        {"return_event": "site_visit"},
        {"cohort_event": "site_visit", "period": Period.month, "periods": 3},
        {"periods": 0},
    ):
        built = retention(since=since, until=until, **options)
        assert rows(warehouse, built) == expected_retention(
            records, since=since, until=until, **options
        ), options


# ---- the randomized comparison ---------------------------------------------------------

RANDOM_TYPES = ["site_visit", "product_view", "add_to_cart", "purchase", "support_contact"]


def random_records(seed: int, people: int = 300) -> list[Record]:
    rng = random.Random(seed)
    records: list[Record] = []
    start = at("2024-01-01", "00:00:00")
    for n in range(people):
        customer = f"u{n}"
        anonymous = f"anon-{n}" if rng.random() < 0.4 else None
        moments = sorted(
            start + timedelta(seconds=rng.randrange(0, 150 * 86400))
            for _ in range(rng.randint(1, 9))
        )
        for i, moment in enumerate(moments):
            kind = rng.choices(RANDOM_TYPES, weights=[5, 4, 2, 2, 1])[0]
            if anonymous is not None and i < len(moments) // 2:
                records.append(event(kind, moment, anonymous=anonymous))
            else:
                records.append(event(kind, moment, customer=customer))
        if anonymous is not None and rng.random() < 0.8:
            # some link before, some after the anonymous events; a few never
            when = rng.choice(moments) + timedelta(milliseconds=rng.choice([-1, 1]))
            records.append(event("identify", when, customer=customer, anonymous=anonymous))
    rng.shuffle(records)  # inserted out of order
    return records


def test_paths_and_retention_on_random_people(warehouse: Warehouse) -> None:
    records = random_records(20240501)
    for part in range(0, len(records), 250):
        store(warehouse, records[part : part + 250])
    # the data exercises the stitching: linked anonymous ids merge into their customers
    assert len(people_of(records)) < len({r["customer_key"] for r in records})
    for case in (
        {"top": 15},
        {"start_at": "product_view", "max_length": 4, "top": 25},
        {"end_at": "purchase", "max_length": 3, "top": 1000},
        {"end_at": "purchase", "collapse": False, "top": 30},
        {"start_at": "site_visit", "collapse": False, "max_length": 2, "exclude": ("identify",)},
    ):
        options = {("collapse_repeats" if k == "collapse" else k): v for k, v in case.items()}
        assert rows(warehouse, paths(**options)) == expected_paths(records, **case), case
    assert rows(warehouse, flows()) == expected_flows(records)
    since = at("2024-02-01", "00:00:00")
    for options in (
        {},
        {"period": Period.month, "periods": 4},
        {"return_event": "purchase", "periods": 12},
        {"cohort_event": "add_to_cart", "return_event": "support_contact", "since": since},
        {"period": Period.month, "until": at("2024-04-15", "00:00:00"), "periods": 3},
    ):
        got = rows(warehouse, retention(**options))
        assert got == expected_retention(records, **options), options
        # enough cohorts, and people coming back after period 0, to mean something
        assert len(got) >= 3 and any(n for row in got for n in row[2][1:]), options


# ---- one customer's timeline -----------------------------------------------------------


def timeline_records() -> list[Record]:
    return [
        # c-1 browses as a-1, identifies, buys, and a-1 keeps browsing afterwards
        event("site_visit", T0, anonymous="a-1", properties={"url": "/"}),
        event("product_view", T0 + MIN, anonymous="a-1", properties={"product_id": "p-1"}),
        event("identify", T0 + 2 * MIN, customer="c-1", anonymous="a-1"),
        event("purchase", T0 + 5 * MIN, customer="c-1",
              properties={"order_id": "o-1", "revenue": "19.99", "currency": "EUR"}),
        event("site_visit", T0 + 10 * MIN, anonymous="a-1", properties={"url": "/help"}),
        # a second device, a-2, calls support and identifies later
        event("support_contact", T0 + 20 * MIN, anonymous="a-2", channel="phone",
              case_id="k-1", properties={"topic": "delivery"}),
        event("identify", T0 + 30 * MIN, customer="c-1", anonymous="a-2"),
        # c-x claims a-1 after c-1 did: ignored, a-1 stays c-1's
        event("identify", T0 + 40 * MIN, customer="c-x", anonymous="a-1"),
        event("page_view", T0 + 41 * MIN, customer="c-x", properties={"url": "/x"}),
        # c-y claimed a-3 first; c-1's later claim of it is ignored
        event("identify", T0 + MIN, customer="c-y", anonymous="a-3"),
        event("search", T0 + 3 * MIN, anonymous="a-3", properties={"query": "shoes"}),
        event("identify", T0 + 50 * MIN, customer="c-1", anonymous="a-3"),
        # never identified
        event("ad_impression", T0, anonymous="a-4", properties={"campaign": "spring"}),
    ]  # fmt: skip


def expected_timeline(records: list[Record], person: str, limit: int = 200) -> list[Event]:
    return people_of(records).get(person, [])[-limit:]


def test_timeline_stitches_identities(warehouse: Warehouse) -> None:
    records = timeline_records()
    # out of order: the newest batch first, then the rest, then a retried batch
    store(warehouse, records[6:])
    store(warehouse, records[:6])
    store(warehouse, records[3:5])
    c1 = expected_timeline(records, "c-1")
    assert [t for _, _, t in c1] == [
        "site_visit", "product_view", "identify", "purchase", "site_visit",
        "support_contact", "identify", "identify",
    ]  # fmt: skip
    for requested, person, via_link in (
        ("c-1", "c-1", False),
        ("a-1", "c-1", True),
        ("a-2", "c-1", True),
        ("a-3", "c-y", True),
        ("c-x", "c-x", False),
        ("a-4", "a-4", False),
    ):
        got = rows(warehouse, timeline(requested))
        want = expected_timeline(records, person)
        assert [(r[0], r[6], r[3]) for r in got] == want, requested
        assert {r[1] for r in got} == {"touchpoint"}
        assert {r[7] for r in got} == {len(want)}
        who = rows(warehouse, identity(requested))
        assert who[0][:3] == (requested, person, via_link), requested
    c1_row = dict(zip(
        ("occurred_at", "entry", "channel", "type", "case_id", "properties", "event_id", "total"),
        rows(warehouse, timeline("c-1"))[5], strict=True,
    ))  # fmt: skip
    assert (c1_row["channel"], c1_row["case_id"]) == ("phone", "k-1")
    assert json.loads(c1_row["properties"]) == {"topic": "delivery"}
    who = rows(warehouse, identity("c-1"))[0]
    assert who[3:] == (["a-1", "a-2"], ["a-3"])
    assert rows(warehouse, identity("c-x"))[0][3:] == ([], ["a-1"])
    assert rows(warehouse, timeline("nobody")) == []
    assert rows(warehouse, timeline("x'; DROP TABLE touchpoints; --")) == []


def test_timeline_keeps_the_latest_entries(warehouse: Warehouse) -> None:
    records = timeline_records()
    store(warehouse, records)
    got = rows(warehouse, timeline("a-1", limit=3))
    assert [(r[0], r[6], r[3]) for r in got] == expected_timeline(records, "c-1", limit=3)
    assert [r[7] for r in got] == [8, 8, 8]


def friction_row(customer_key: str, at: datetime, rule: str, kind: str) -> dict[str, Any]:
    return {
        "friction_id": str(uuid.uuid4()), "rule": rule, "kind": kind, "severity": "high",
        "customer_key": customer_key, "occurred_at": at.isoformat(),
        "detected_at": at.isoformat(), "stage": "consideration", "case_id": "k-1",
        "channel": "phone", "evidence": [str(uuid.uuid4())], "message": f"{rule} happened.",
    }


def test_timeline_shows_the_persons_friction(warehouse: Warehouse) -> None:
    store(warehouse, timeline_records())
    mine = [friction_row("c-1", T0 + 6 * MIN, "failed_outcome", "refund"),
            # a friction of a-2 before its identify: a-2 is linked to c-1
            friction_row("a-2", T0 + 25 * MIN, "unreachable_help", "long_wait")]
    theirs = [friction_row("a-3", T0 + 4 * MIN, "negative_feedback", "csat"),  # c-y's
              friction_row("c-x", T0 + 42 * MIN, "escalation", "first")]
    insert_records(warehouse, FRICTION, [*mine, *theirs, mine[0]])  # a repeat: one row
    got = rows(warehouse, timeline("a-1"))
    friction = [r for r in got if r[1] == "friction"]
    assert [(r[0], r[3], r[6]) for r in friction] == [
        (T0 + 6 * MIN, "friction: failed_outcome (refund)", f"{mine[0]['friction_id']}:friction"),
        (T0 + 25 * MIN, "friction: unreachable_help (long_wait)",
         f"{mine[1]['friction_id']}:friction"),
    ]
    assert json.loads(friction[0][5]) == {"severity": "high",
                                          "message": "failed_outcome happened."}
    # interleaved by time with the touchpoints, counted in the total
    times = [r[0] for r in got]
    assert times == sorted(times)
    assert {r[7] for r in got} == {len(expected_timeline(timeline_records(), "c-1")) + 2}
    assert [r[3] for r in rows(warehouse, timeline("c-x"))
            if r[1] == "friction"] == ["friction: escalation (first)"]


# ---- the CLI, in this process on this module's warehouse -------------------------------


@pytest.fixture
def cli(
    warehouse: Warehouse, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> Any:
    # The same folder the fixture holds (chDB shares one engine per folder in a process);
    # a port nobody listens on, so no developer's worker answers instead.
    monkeypatch.setenv("JOURNEY_CLICKHOUSE_DSN", f"chdb://{warehouse.location}")
    monkeypatch.setenv("JOURNEY_WORKER_PORT", str(free_port()))
    monkeypatch.setenv("COLUMNS", "200")

    def run(*argv: str) -> tuple[int, str, str]:
        code = 0
        try:
            main(list(argv))
        except SystemExit as exc:
            code = int(exc.code or 0)
        out, err = capsys.readouterr()
        return code, out, err

    return run


def test_cli_paths_and_flows(warehouse: Warehouse, cli: Any) -> None:
    records = path_records()
    store(warehouse, records)
    code, out, err = cli("paths", "--end-at", "purchase", "--max-length", "3", "-f", "json")
    assert code == 0, err
    want = expected_paths(records, end_at="purchase", max_length=3)
    assert json.loads(out) == {
        "paths": [
            {"path": p, "path_text": text, "people": n, "share": share}
            for p, text, n, share in want
        ]
    }
    code, out, err = cli("paths", "--start-at", "site_visit", "--top", "2", "--show-sql")
    assert code == 0
    assert "site_visit > product_view" in out and "people" in out
    assert "indexOf(steps, {anchor:String})" in err and '"anchor": "site_visit"' in err
    code, out, _ = cli("paths", "-f", "csv", "--no-collapse-repeats", "--top", "1")
    assert out.splitlines()[0] == "path,steps,people,share"
    assert len(out.splitlines()) == 2
    code, out, err = cli("flows", "-f", "json", "--exclude", "identify")
    assert code == 0, err
    data = json.loads(out)
    flows = expected_flows(records, exclude=("identify",))
    assert [(x["source"], x["target"], x["value"], x["converted"]) for x in data["links"]] == [
        (a, b, n, c) for a, b, n, _, c, _ in flows
    ]
    assert {n["name"] for n in data["nodes"]} == {a for f in flows for a in f[:2]}
    code, out, err = cli("flows", "--top", "3")
    assert code == 0, err
    assert "touchpoint flows" in out and "site_visit" in out


def many_flow_records() -> list[Record]:
    """30 customers, each with its own pair of types twice over: 30 flows of 2..31 moves."""
    types = sorted(CATALOGUE)
    records: list[Record] = []
    for n in range(30):
        a, b = types[n], types[n + 1]
        records += seq(f"m{n}", *([a, b] * (n + 2)))
    return records


def test_cli_flows_and_touchpoint_map_show_the_top_flows(warehouse: Warehouse, cli: Any) -> None:
    records = many_flow_records()
    store(warehouse, records)
    want = expected_flows(records)
    assert len(want) > DEFAULT_TOP_FLOWS
    for command in (["flows"], ["map", "--level", "touchpoint"]):
        code, out, err = cli(*command)
        assert code == 0, err
        rows = [ln for ln in out.splitlines() if ln.split()[:2] in ([a, b] for a, b, *_ in want)]
        # the largest flows, largest first
        assert [ln.split()[:3] for ln in rows] == [
            [a, b, str(n)] for a, b, n, *_ in want[:DEFAULT_TOP_FLOWS]
        ]
        assert f"the {DEFAULT_TOP_FLOWS} largest of {len(want)} flows (see --top)" in out
        code, out, err = cli(*command, "--top", "5")
        assert code == 0, err
        assert f"the 5 largest of {len(want)} flows" in out
        # JSON and CSV are data: every flow unless --top says otherwise
        code, out, err = cli(*command, "-f", "json")
        assert len(json.loads(out)["links"]) == len(want)
        code, out, err = cli(*command, "-f", "json", "--top", "4")
        assert [(x["source"], x["target"], x["value"]) for x in json.loads(out)["links"]] == [
            (a, b, n) for a, b, n, *_ in want[:4]
        ]
        code, out, err = cli(*command, "-f", "csv", "--top", "3")
        assert len(out.splitlines()) == 1 + 3


def test_cli_retention(warehouse: Warehouse, cli: Any) -> None:
    records = retention_records()
    store(warehouse, records)
    code, out, err = cli("retention", "--period", "month", "--periods", "4", "-f", "json")
    assert code == 0, err
    data = json.loads(out)
    assert data["period"] == "month" and data["return_event"] == "any"
    want = expected_retention(records, period=Period.month, periods=4)
    assert [(c["cohort"], c["size"], c["returned"], c["retention"]) for c in data["cohorts"]] == [
        (cohort.isoformat(), size, returned, rates) for cohort, size, returned, rates in want
    ]
    code, out, err = cli("retention", "-f", "csv", "--periods", "2", "--return-event", "purchase")
    assert code == 0, err
    lines = out.splitlines()
    assert lines[0] == "cohort,size,period_0,period_1,period_2,rate_0,rate_1,rate_2"
    assert lines[1].startswith("2024-03-25,1,1,0,0,1.0,")
    code, out, err = cli("retention", "--periods", "3")
    assert code == 0, err
    assert "100.0%" in out and "weekly cohorts by first purchase" in out


def test_cli_customer(warehouse: Warehouse, cli: Any) -> None:
    records = timeline_records()
    store(warehouse, records)
    code, out, err = cli("customer", "a-2", "-f", "json")
    assert code == 0, err
    data = json.loads(out)
    assert (data["person"], data["via_link"], data["anonymous_ids"]) == (
        "c-1",
        True,
        ["a-1", "a-2"],
    )
    assert data["ignored_claims"] == ["a-3"]
    assert [e["event_id"] for e in data["entries"]] == [
        e for _, e, _ in expected_timeline(records, "c-1")
    ]
    purchase = next(e for e in data["entries"] if e["type"] == "purchase")
    assert purchase["summary"] == "order_id=o-1, revenue=19.99, currency=EUR"
    code, out, err = cli("customer", "a-1", "--limit", "2")
    assert code == 0, err
    assert "a-1 is an anonymous id linked to customer c-1" in out
    assert "claims ignored" in out and "a-3" in out
    assert "2 entries, the latest of 8" in out
    code, out, err = cli("customer", "nobody")
    assert code == 1 and out == ""
    assert err.strip() == (
        "error: no touchpoints for 'nobody': it is neither a customer id nor an anonymous id "
        "in the warehouse"
    )
