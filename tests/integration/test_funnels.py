"""Funnels on the real engine, checked against a plain-Python reference of their semantics."""

from __future__ import annotations

import json
import math
import random
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from journey.cli import main
from projections.clickhouse.client import Warehouse
from projections.clickhouse.funnels import (
    Attribution,
    FunnelGroup,
    FunnelOrder,
    FunnelSpec,
    StepFilter,
    dropped_query,
    funnel_query,
    parse_funnel,
    shape_funnel,
    takes_chain_path,
)
from projections.clickhouse.readonly import run_readonly
from projections.clickhouse.tables import TOUCHPOINTS
from projections.clickhouse.writer import insert_touchpoints

pytestmark = pytest.mark.integration

T0 = datetime(2024, 5, 1, 9, 0, tzinfo=UTC)
MIN = timedelta(minutes=1)
EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
Record = dict[str, Any]


# ---- building journeys -----------------------------------------------------------------


def event(person: str, type_: str, at: datetime, **extra: Any) -> Record:
    """A stored touchpoint of a known customer (or, with anonymous=True, of a device)."""
    anonymous = extra.pop("anonymous", False)
    return {
        "event_id": extra.pop("event_id", str(uuid.uuid4())),
        "schema_version": 1,
        "type": type_,
        "occurred_at": at.isoformat().replace("+00:00", "Z"),
        "channel": extra.pop("channel", "web"),
        "customer_id": None if anonymous else person,
        "anonymous_id": person if anonymous else None,
        "customer_key": person,
        "properties": extra.pop("properties", {}),
        **extra,
    }


def identify(customer: str, anonymous_id: str, at: datetime) -> Record:
    return event(customer, "identify", at, anonymous_id=anonymous_id)


def journey(
    person: str, *steps: tuple[float, str] | tuple[float, str, dict[str, Any]]
) -> list[Record]:
    """Events of one person at the given minutes after T0."""
    out = []
    for step in steps:
        minutes, type_ = step[0], step[1]
        extra = dict(step[2]) if len(step) > 2 else {}  # type: ignore[misc]
        out.append(event(person, type_, T0 + timedelta(minutes=minutes), **extra))
    return out


# ---- the reference ---------------------------------------------------------------------
# A direct transcription of the semantics in funnel_query's docstring, over Python lists.


@dataclass(frozen=True)
class Ev:
    ms: int
    event_id: str
    type: str
    record: Record = field(compare=False)


def _ms(record: Record) -> int:
    at = datetime.fromisoformat(record["occurred_at"].replace("Z", "+00:00"))
    return (at - EPOCH) // timedelta(milliseconds=1)


def text_of(record: Record, name: str, envelope: bool) -> str:
    if envelope:
        return str(record.get(name) or "")
    value = (record.get("properties") or {}).get(name)
    if value is None:
        return ""
    if isinstance(value, str):
        return value
    if isinstance(value, bool):
        return "true" if value else "false"
    return json.dumps(value, separators=(",", ":"))


def number_of(text: str) -> float | None:
    try:
        return float(text)
    except ValueError:
        return None


def holds(record: Record, f: StepFilter) -> bool:
    text = text_of(record, f.field.name, f.field.envelope)
    if f.operator == "~":
        return f.value in text
    if f.number is None:
        return text == f.value if f.operator == "=" else text != f.value
    n = number_of(text)
    equal = n is not None and n == f.number
    if f.operator == "=":
        return equal
    if f.operator == "!=":
        return not equal
    if n is None:
        return False
    return {">": n > f.number, ">=": n >= f.number, "<": n < f.number, "<=": n <= f.number}[
        f.operator
    ]


def matches(ev: Ev, type_: str, filters: Sequence[StepFilter]) -> bool:
    return ev.type == type_ and all(holds(ev.record, f) for f in filters)


def people_of(records: list[Record], spec: FunnelSpec) -> dict[str, list[Ev]]:
    """Each person's events in the range, in timeline order, stitched by identify."""
    links: dict[str, str] = {}
    claims = sorted(
        (r for r in records if r["type"] == "identify"), key=lambda r: (_ms(r), r["event_id"])
    )
    for claim in claims:
        links.setdefault(claim["anonymous_id"], claim["customer_id"])
    since = None if spec.since is None else (spec.since - EPOCH) // timedelta(milliseconds=1)
    until = None if spec.until is None else (spec.until - EPOCH) // timedelta(milliseconds=1)
    people: dict[str, list[Ev]] = {}
    for r in records:
        ms = _ms(r)
        if (since is not None and ms < since) or (until is not None and ms >= until):
            continue
        anon = r.get("anonymous_id") or ""
        person = r.get("customer_id") or links.get(anon) or anon or r["customer_key"]
        people.setdefault(person, []).append(Ev(ms, r["event_id"], r["type"], r))
    return {p: sorted(evs, key=lambda e: (e.ms, e.event_id)) for p, evs in people.items()}


def ordered_attempt(tl: list[Ev], i: int, spec: FunnelSpec) -> list[int | None]:
    steps, n = spec.steps, len(spec.steps)
    at: list[int | None] = [None] * n
    at[0], k, tk = i, 1, tl[i].ms
    if n == 1:
        return at
    for j in range(i + 1, len(tl)):
        e = tl[j]
        if e.ms > tl[i].ms + spec.window_seconds * 1000:
            break
        moved = 0
        if e.ms > tk:
            for q in range(k + 1, n + 1):
                step = steps[q - 1]
                within = step.within_seconds
                if matches(e, step.type, step.filters) and (
                    within is None or e.ms - tk <= within * 1000
                ):
                    moved = q
                    break
                if not step.optional:
                    break
        if any(
            matches(e, x.type, x.filters) and x.after_step <= k and x.before_step > max(k, moved)
            for x in spec.exclusions
        ):
            break
        if spec.order is FunnelOrder.strict and e.type != "identify" and not moved:
            break
        if moved:
            at[moved - 1], k, tk = j, moved, e.ms
            if k == n:
                break
    return at


def any_order_attempt(tl: list[Ev], i: int, spec: FunnelSpec) -> list[int | None]:
    at: list[int | None] = [None] * len(spec.steps)
    for j in range(i, len(tl)):
        if tl[j].ms > tl[i].ms + spec.window_seconds * 1000:
            break
        for q, step in enumerate(spec.steps):
            if at[q] is None and matches(tl[j], step.type, step.filters):
                at[q] = j
                break
    return at


def reached_of(at: list[int | None], spec: FunnelSpec) -> list[bool]:
    out, required_so_far = [], True
    for q, step in enumerate(spec.steps):
        out.append(at[q] is not None and required_so_far)
        if not step.optional and at[q] is None:
            required_so_far = False
    return out


@dataclass
class PersonResult:
    reached: list[bool]
    level: int
    since_previous: list[float]
    since_first: list[float]
    breakdown: str
    furthest_ms: int


def person_result(tl: list[Ev], spec: FunnelSpec) -> PersonResult | None:
    first = spec.steps[0]
    if not any(matches(e, first.type, first.filters) for e in tl):
        return None
    if spec.order is FunnelOrder.any:
        starts = [
            j for j, e in enumerate(tl) if any(matches(e, s.type, s.filters) for s in spec.steps)
        ]
        attempts = [any_order_attempt(tl, i, spec) for i in starts]
    else:
        starts = [j for j, e in enumerate(tl) if matches(e, first.type, first.filters)]
        attempts = [ordered_attempt(tl, i, spec) for i in starts]

    def level(at: list[int | None]) -> int:
        return max((q + 1 for q, r in enumerate(reached_of(at, spec)) if r), default=0)

    best = attempts[0]
    for at in attempts[1:]:  # strictly deeper only: ties keep the earliest start
        if level(at) > level(best):
            best = at
    reached = reached_of(best, spec)
    filled = [(q, tl[a].ms) for q, a in enumerate(best) if a is not None]
    completed = [max((ms for s, ms in filled if s <= q), default=0) for q in range(len(best))]
    began = [min((ms for s, ms in filled if s <= q), default=0) for q in range(len(best))]
    since_previous = [0.0] + [(completed[q] - completed[q - 1]) / 1000 for q in range(1, len(best))]
    since_first = [(c - b) / 1000 for c, b in zip(completed, began, strict=True)]
    top = level(best)
    value = ""
    if spec.breakdown is not None:
        name, envelope = spec.breakdown.field.name, spec.breakdown.field.envelope
        touches = [text_of(e.record, name, envelope) for e in tl]
        if spec.breakdown.attribution is Attribution.start:
            value = touches[min(a for a in best if a is not None)]
        elif spec.breakdown.attribution is Attribution.first_touch:
            value = next((t for t in touches if t), "")
        else:
            furthest = max(a for a, r in zip(best, reached, strict=True) if r and a is not None)
            value = next((t for t in reversed(touches[: furthest + 1]) if t), "")
    return PersonResult(
        reached, top, since_previous, since_first, value, completed[top - 1] if top else 0
    )


def reference_people(records: list[Record], spec: FunnelSpec) -> dict[str, PersonResult]:
    results = {p: person_result(tl, spec) for p, tl in people_of(records, spec).items()}
    return {p: r for p, r in results.items() if r is not None}


def percentile(values: list[float], p: float) -> float | None:
    """Linear interpolation between the closest ranks (quantileExactInclusive)."""
    if not values:
        return None
    s = sorted(values)
    pos = (len(s) - 1) * p
    lo = math.floor(pos)
    hi = min(lo + 1, len(s) - 1)
    return s[lo] + (s[hi] - s[lo]) * (pos - lo)


Summary = dict[str | None, list[tuple[int, Any, Any, Any, Any]]]


def expected_summary(records: list[Record], spec: FunnelSpec) -> Summary:
    """Per group (None: everybody): per step, people and the four percentiles."""
    people = reference_people(records, spec)
    groups: dict[str | None, list[PersonResult]] = {None: list(people.values())}
    if spec.breakdown is not None:
        for result in people.values():
            groups.setdefault(result.breakdown, []).append(result)
    summary: Summary = {}
    for name, members in groups.items():
        rows = []
        for q in range(len(spec.steps)):
            at = [m for m in members if m.reached[q]]
            previous = [m.since_previous[q] for m in at] if q else []
            first = [m.since_first[q] for m in at]
            rows.append(
                (
                    len(at),
                    percentile(previous, 0.5),
                    percentile(previous, 0.9),
                    percentile(first, 0.5),
                    percentile(first, 0.9),
                )
            )
        summary[name] = rows
    return summary


def expected_dropped(records: list[Record], spec: FunnelSpec, step: int) -> list[tuple[Any, ...]]:
    before = spec.previous_required(step)
    out = []
    for person, r in sorted(reference_people(records, spec).items()):
        if r.reached[before - 1] and not r.reached[step - 1]:
            at = EPOCH + timedelta(milliseconds=r.furthest_ms)
            out.append((person, r.breakdown, r.level, at))
    return out


def deepest_chain(tl: list[Ev], spec: FunnelSpec) -> int:
    """Brute force for plain ordered funnels: the longest prefix of the steps matched by
    events with strictly increasing times, all within the window of the first."""
    best = 0

    def extend(q: int, last: int, start_ms: int) -> None:
        nonlocal best
        best = max(best, q)
        if q == len(spec.steps):
            return
        step = spec.steps[q]
        for j in range(last + 1, len(tl)):
            e = tl[j]
            within = tl[last].ms < e.ms <= start_ms + spec.window_seconds * 1000
            if within and matches(e, step.type, step.filters):
                extend(q + 1, j, start_ms)

    first = spec.steps[0]
    for i, e in enumerate(tl):
        if matches(e, first.type, first.filters):
            extend(1, i, e.ms)
    return best


# ---- the engine ------------------------------------------------------------------------
# The warehouse fixtures (one chDB folder per module) come from conftest.py.


def funnel_of(warehouse: Warehouse, spec: FunnelSpec) -> list[FunnelGroup]:
    return shape_funnel(spec, run_readonly(warehouse, *funnel_query(spec)).rows)


def summary_of(groups: list[FunnelGroup]) -> Summary:
    return {
        g.breakdown: [
            (
                s.people,
                s.median_seconds_from_previous,
                s.p90_seconds_from_previous,
                s.median_seconds_from_first,
                s.p90_seconds_from_first,
            )
            for s in g.steps
        ]
        for g in groups
    }


def same(actual: Summary, expected: Summary) -> bool:
    if actual.keys() != expected.keys():
        return False
    for key, rows in expected.items():
        for got, want in zip(actual[key], rows, strict=True):
            if got[0] != want[0]:
                return False
            for a, b in zip(got[1:], want[1:], strict=True):
                if (a is None) != (b is None) or (
                    a is not None and not math.isclose(a, b, abs_tol=1e-6)
                ):
                    return False
    return True


def people_at(groups: list[FunnelGroup], breakdown: str | None = None) -> list[int]:
    (group,) = [g for g in groups if g.breakdown == breakdown]
    return [s.people for s in group.steps]


def comparable(rows: Sequence[Sequence[Any]]) -> list[list[Any]]:
    """Rows with NaN as None, so that equal results compare equal."""
    return [
        [[None if x != x else x for x in v] if isinstance(v, list | tuple) else v for v in row]
        for row in rows
    ]


def check_paths(warehouse: Warehouse, spec: FunnelSpec) -> None:
    """For a spec on the chain path: the general walk gives exactly the same rows, for
    the funnel and for every drop-off list."""
    if not takes_chain_path(spec):
        return
    chain = run_readonly(warehouse, *funnel_query(spec)).rows
    walk = run_readonly(warehouse, *funnel_query(spec, general=True)).rows
    assert comparable(chain) == comparable(walk), (spec, chain, walk)
    for step in range(2, len(spec.steps) + 1):
        assert dropped_rows(warehouse, spec, step) == dropped_rows(
            warehouse, spec, step, general=True
        ), (spec, step)


def check(warehouse: Warehouse, records: list[Record], spec: FunnelSpec) -> list[FunnelGroup]:
    """The engine's answer, after asserting it equals the reference's (and, on the chain
    path, the general walk's)."""
    groups = funnel_of(warehouse, spec)
    actual, expected = summary_of(groups), expected_summary(records, spec)
    assert same(actual, expected), (actual, expected)
    check_paths(warehouse, spec)
    return groups


def dropped_rows(
    warehouse: Warehouse,
    spec: FunnelSpec,
    step: int,
    limit: int | None = None,
    *,
    general: bool = False,
) -> list[tuple[Any, ...]]:
    return run_readonly(warehouse, *dropped_query(spec, step, limit=limit, general=general)).rows


# ---- order modes -----------------------------------------------------------------------


def order_records() -> list[Record]:
    return [
        *journey("p1", (0, "site_visit"), (1, "page_view"), (2, "add_to_cart"), (3, "purchase")),
        *journey("p2", (0, "add_to_cart"), (1, "site_visit"), (2, "purchase")),
        *journey("p3", (0, "site_visit"), (1, "add_to_cart"), (2, "purchase")),
        *journey("p4", (0, "site_visit"), (600, "add_to_cart")),
    ]


@pytest.mark.parametrize(
    ("order", "people"),
    [("ordered", [4, 2, 2]), ("strict", [4, 1, 1]), ("any", [4, 3, 3])],
)
def test_order_modes(warehouse: Warehouse, order: str, people: list[int]) -> None:
    records = order_records()
    insert_touchpoints(warehouse, records)
    spec = parse_funnel(["site_visit", "add_to_cart", "purchase"], order=order, window="2h")
    groups = check(warehouse, records, spec)
    assert people_at(groups) == people


def test_strict_order_ignores_identify_but_not_other_events(warehouse: Warehouse) -> None:
    records = [
        *journey(
            "a-1", (0, "site_visit", {"anonymous": True}), (1, "add_to_cart", {"anonymous": True})
        ),
        identify("c-1", "a-1", T0 + 2 * MIN),
        *journey("c-1", (3, "purchase")),
        *journey("c-2", (0, "site_visit"), (1, "add_to_cart"), (2, "search"), (3, "purchase")),
    ]
    insert_touchpoints(warehouse, records)
    spec = parse_funnel(["site_visit", "add_to_cart", "purchase"], order="strict")
    assert people_at(check(warehouse, records, spec)) == [2, 2, 1]


def test_plain_ordered_funnel_is_the_deepest_chain(warehouse: Warehouse) -> None:
    rng = random.Random(7)
    kinds = ["site_visit", "add_to_cart", "purchase", "page_view"]
    records = [
        event(f"r{n}", rng.choice(kinds), T0 + timedelta(minutes=rng.randrange(0, 240)))
        for n in range(60)
        for _ in range(rng.randrange(1, 8))
    ]
    insert_touchpoints(warehouse, records)
    spec = parse_funnel(["site_visit", "add_to_cart", "purchase"], window="1h")
    check(warehouse, records, spec)
    # greedy from every start is optimal when only the window constrains the chain
    for tl in people_of(records, spec).values():
        result = person_result(tl, spec)
        assert (result.level if result else 0) == deepest_chain(tl, spec)


# ---- exclusions, optional steps, repeats, per-step windows -------------------------------


def test_exclusion_ends_an_attempt_and_a_later_start_retries(warehouse: Warehouse) -> None:
    records = [
        *journey(
            "q1", (0, "site_visit"), (1, "add_to_cart"), (2, "support_contact"), (3, "purchase")
        ),
        *journey(
            "q2", (0, "site_visit"), (1, "support_contact"), (2, "add_to_cart"), (3, "purchase")
        ),
        *journey(
            "q3", (0, "site_visit"), (1, "add_to_cart"), (2, "purchase"), (3, "support_contact")
        ),
        *journey(
            "q4",
            (0, "site_visit"),
            (1, "add_to_cart"),
            (2, "support_contact"),
            (3, "site_visit"),
            (4, "add_to_cart"),
            (5, "purchase"),
        ),
    ]
    insert_touchpoints(warehouse, records)
    inline = parse_funnel(["site_visit", "add_to_cart", "!support_contact", "purchase"])
    assert people_at(check(warehouse, records, inline)) == [4, 4, 3]
    assert [r[0] for r in dropped_rows(warehouse, inline, 3)] == ["q1"]
    # the same exclusion as an option, and one over the whole funnel
    option = parse_funnel(
        ["site_visit", "add_to_cart", "purchase"], exclude=["support_contact@2-3"]
    )
    assert people_at(check(warehouse, records, option)) == [4, 4, 3]
    whole = parse_funnel(["site_visit", "add_to_cart", "purchase"], exclude=["support_contact"])
    assert people_at(check(warehouse, records, whole)) == [4, 3, 2]


def test_exclusion_with_a_filter(warehouse: Warehouse) -> None:
    records = [
        *journey(
            "x1", (0, "purchase"), (1, "refund", {"properties": {"amount": 80}}), (2, "review")
        ),
        *journey(
            "x2", (0, "purchase"), (1, "refund", {"properties": {"amount": 5}}), (2, "review")
        ),
    ]
    insert_touchpoints(warehouse, records)
    spec = parse_funnel(["purchase", "!refund[amount>=50]", "review"])
    assert people_at(check(warehouse, records, spec)) == [2, 1]


def test_exclusion_that_overlaps_a_step(warehouse: Warehouse) -> None:
    records = [
        *journey("o1", (0, "purchase"), (1, "refund", {"properties": {"amount": 80}})),
        *journey(
            "o2",
            (0, "purchase"),
            (1, "refund", {"properties": {"amount": 10}}),
            (2, "refund", {"properties": {"amount": 80}}),
        ),
        *journey(
            "o3",
            (0, "site_visit"),
            (1, "product_view", {"properties": {"price": 150}}),
            (2, "purchase"),
        ),
        *journey(
            "o4",
            (0, "site_visit"),
            (1, "product_view", {"properties": {"price": 20}}),
            (2, "purchase"),
        ),
        *journey(
            "o5",
            (0, "site_visit"),
            (1, "product_view", {"properties": {"price": 20}}),
            (2, "product_view", {"properties": {"price": 150}}),
            (3, "purchase"),
        ),
    ]
    insert_touchpoints(warehouse, records)
    # the event that reaches the range's closing step is not "between": o1 converts
    closing = parse_funnel(["purchase", "!refund", "refund[amount>50]"])
    assert people_at(check(warehouse, records, closing)) == [5, 1]
    assert [r[0] for r in dropped_rows(warehouse, closing, 2)] == ["o2", "o3", "o4", "o5"]
    # one that moves the attempt but stays inside the range is: o3 stops at step 1
    inside = parse_funnel(
        ["site_visit", "product_view", "purchase"], exclude=["product_view[price>100]@1-3"]
    )
    assert people_at(check(warehouse, records, inside)) == [3, 2, 1]
    assert [r[0] for r in dropped_rows(warehouse, inside, 3)] == ["o5"]


def test_optional_steps(warehouse: Warehouse) -> None:
    records = [
        *journey("r1", (0, "site_visit"), (1, "product_view"), (2, "add_to_cart")),
        *journey("r2", (0, "site_visit"), (1, "add_to_cart")),
        *journey("r3", (0, "site_visit"), (1, "add_to_cart"), (2, "product_view")),
        *journey("r4", (0, "site_visit"), (1, "product_view")),
    ]
    insert_touchpoints(warehouse, records)
    spec = parse_funnel(["site_visit", "?product_view", "add_to_cart"])
    (everybody,) = check(warehouse, records, spec)
    assert [s.people for s in everybody.steps] == [4, 2, 3]
    cart = everybody.steps[2]
    # conversion and drop-off count from the previous required step (1), not the optional
    assert (cart.conversion_from_previous, cart.dropped) == (0.75, 1)
    assert everybody.steps[1].conversion_from_previous == 0.5
    assert [r[0] for r in dropped_rows(warehouse, spec, 3)] == ["r4"]
    assert [r[0] for r in dropped_rows(warehouse, spec, 2)] == ["r2", "r3"]
    # time from previous for the cart counts from the optional step when it was taken
    assert (cart.median_seconds_from_previous, cart.p90_seconds_from_previous) == (60.0, 60.0)
    strict = parse_funnel(["site_visit", "?product_view", "add_to_cart"], order="strict")
    assert people_at(check(warehouse, records, strict)) == [4, 2, 3]


def test_repeated_types_need_distinct_later_events(warehouse: Warehouse) -> None:
    records = [
        *journey("s1", (0, "page_view"), (1, "page_view"), (2, "purchase")),
        *journey("s2", (0, "page_view"), (1, "page_view"), (2, "page_view"), (3, "purchase")),
        # two views in the same millisecond are no order: only two steps
        *journey("s3", (0, "page_view"), (0, "page_view"), (1, "page_view"), (2, "purchase")),
    ]
    insert_touchpoints(warehouse, records)
    spec = parse_funnel(["page_view", "page_view", "page_view", "purchase"])
    assert people_at(check(warehouse, records, spec)) == [3, 3, 1, 1]
    unordered = parse_funnel(["page_view", "page_view", "purchase"], order="any")
    assert people_at(check(warehouse, records, unordered)) == [3, 3, 3]


def test_per_step_windows(warehouse: Warehouse) -> None:
    records = [
        *journey("w1", (0, "site_visit"), (5, "add_to_cart"), (30, "purchase")),
        *journey("w2", (0, "site_visit"), (15, "add_to_cart"), (20, "purchase")),
        *journey(
            "w3", (0, "site_visit"), (10, "site_visit"), (15, "add_to_cart"), (60, "purchase")
        ),
        *journey("w4", (0, "site_visit"), (5, "add_to_cart"), (66, "purchase")),
    ]
    insert_touchpoints(warehouse, records)
    spec = parse_funnel(["site_visit", "add_to_cart<=10m", "purchase<=1h"])
    assert people_at(check(warehouse, records, spec)) == [4, 3, 2]
    # the bound is inclusive
    assert people_at(funnel_of(warehouse, parse_funnel(["site_visit", "add_to_cart<=15m"]))) == [
        4,
        4,
    ]


def test_more_than_ten_steps(warehouse: Warehouse) -> None:
    kinds = [
        "ad_impression", "ad_click", "email_opened", "email_clicked", "site_visit", "page_view",
        "product_view", "search", "add_to_cart", "checkout_started", "purchase", "review",
    ]  # fmt: skip
    swapped = [*kinds[:5], kinds[6], kinds[5], *kinds[7:]]
    records = [
        *journey("all", *((n, k) for n, k in enumerate(kinds))),
        *journey("eleven", *((n, k) for n, k in enumerate(kinds[:11]))),
        *journey("swapped", *((n, k) for n, k in enumerate(swapped))),
    ]
    insert_touchpoints(warehouse, records)
    spec = parse_funnel(kinds)
    assert people_at(check(warehouse, records, spec)) == [3] * 6 + [2] * 5 + [1]
    twenty = parse_funnel([*kinds, *kinds[:8]])
    check(warehouse, records, twenty)


# ---- storage and identity --------------------------------------------------------------


def test_out_of_order_and_repeated_inserts_give_the_same_answer(warehouse: Warehouse) -> None:
    rng = random.Random(11)
    records = random_records(rng, people=80)
    spec = parse_funnel(
        ["site_visit", "?product_view", "add_to_cart", "purchase"], breakdown="channel"
    )
    insert_touchpoints(warehouse, records)
    in_order = funnel_of(warehouse, spec)
    warehouse.command(f"TRUNCATE TABLE {TOUCHPOINTS}")
    shuffled = records[:]
    rng.shuffle(shuffled)
    for part in (shuffled[::3], shuffled[1::3], shuffled[2::3], shuffled[:50]):  # and a retry
        insert_touchpoints(warehouse, part)
    assert funnel_of(warehouse, spec) == in_order
    check(warehouse, records, spec)


def test_identity_merges_anonymous_and_known_events(warehouse: Warehouse) -> None:
    records = [
        *journey(
            "a-1", (0, "site_visit", {"anonymous": True}), (1, "add_to_cart", {"anonymous": True})
        ),
        identify("c-1", "a-1", T0 + 2 * MIN),
        *journey("c-1", (3, "purchase")),
        # identified only after buying: the earlier anonymous visit still belongs to c-2
        *journey("a-2", (0, "site_visit", {"anonymous": True})),
        *journey("c-2", (1, "add_to_cart"), (2, "purchase")),
        identify("c-2", "a-2", T0 + 30 * MIN),
        # never identified: a person of its own
        *journey(
            "a-3", (0, "site_visit", {"anonymous": True}), (1, "add_to_cart", {"anonymous": True})
        ),
    ]
    insert_touchpoints(warehouse, records)
    spec = parse_funnel(["site_visit", "add_to_cart", "purchase"])
    assert people_at(check(warehouse, records, spec)) == [3, 3, 2]
    assert dropped_rows(warehouse, spec, 3) == [("a-3", "", 2, T0 + MIN)]


def test_time_range(warehouse: Warehouse) -> None:
    records = [
        *journey("t1", (0, "site_visit"), (10, "purchase")),
        *journey("t2", (20, "site_visit"), (30, "purchase")),
    ]
    insert_touchpoints(warehouse, records)
    spec = parse_funnel(["site_visit", "purchase"], since=T0 + 5 * MIN, until=T0 + 25 * MIN)
    assert people_at(check(warehouse, records, spec)) == [1, 0]


# ---- filters ---------------------------------------------------------------------------


def test_filters_on_envelope_and_properties(warehouse: Warehouse) -> None:
    records = [
        *journey(
            "f1",
            (0, "support_contact", {"channel": "phone", "properties": {"topic": "billing issue"}}),
            (1, "purchase", {"properties": {"revenue": 60, "currency": "EUR"}}),
        ),
        *journey(
            "f2",
            (0, "support_contact", {"channel": "chat", "properties": {"topic": "billing"}}),
            (1, "purchase", {"properties": {"revenue": "75.5", "currency": "EUR"}}),
        ),
        *journey(
            "f3",
            (0, "support_contact", {"channel": "phone", "properties": {"topic": "delivery"}}),
            (1, "purchase", {"properties": {"revenue": 20, "currency": "USD"}}),
        ),
    ]
    insert_touchpoints(warehouse, records)
    cases = {
        ("support_contact[channel=phone]", "purchase[revenue>=50]"): [2, 1],
        ("support_contact[topic~bill]", "purchase[revenue>50,currency=EUR]"): [2, 2],
        ("support_contact[channel!=phone]", "purchase[revenue=75.5]"): [1, 1],
        ("support_contact", "purchase[currency!=EUR]"): [3, 1],
        ("support_contact", "purchase[coupon!=X]"): [3, 3],  # missing is not X
        ("support_contact", "purchase[revenue<30]"): [3, 1],
        ("support_contact", 'purchase[coupon=""]'): [3, 3],
        ("support_contact[properties.channel=phone]", "purchase"): [0, 0],
    }
    for steps, people in cases.items():
        spec = parse_funnel(list(steps))
        assert people_at(check(warehouse, records, spec)) == people, steps


def test_hostile_values_are_data(warehouse: Warehouse) -> None:
    hostile = "'; DROP TABLE touchpoints; --"
    records = [
        *journey(
            "h1", (0, "site_visit", {"properties": {"utm_campaign": hostile, 'it\'s "q"': "x"}})
        ),
        *journey("h1", (1, "purchase")),
    ]
    insert_touchpoints(warehouse, records)
    spec = parse_funnel(
        [f'site_visit[utm_campaign="{hostile}"]', r'purchase["it\'s \"q\""!=y]'],
        breakdown='"it\'s \\"q\\""',
    )
    # the purchase has no such property: '' != 'y'
    assert summary_of(funnel_of(warehouse, spec)) == {
        None: [(1, None, None, 0.0, 0.0), (1, 60.0, 60.0, 60.0, 60.0)],
        "x": [(1, None, None, 0.0, 0.0), (1, 60.0, 60.0, 60.0, 60.0)],
    }
    quoted = parse_funnel([r'site_visit["it\'s \"q\""=x]'], breakdown="utm_campaign")
    assert [g.breakdown for g in funnel_of(warehouse, quoted)] == [None, hostile]
    assert int(warehouse.query(f"SELECT count() FROM {TOUCHPOINTS}").scalar()) == 2


# ---- breakdowns and numbers ------------------------------------------------------------


def breakdown_records() -> list[Record]:
    return [
        *journey(
            "b1",
            (0, "site_visit", {"channel": "advertising", "properties": {"utm_campaign": "spring"}}),
            (1, "site_visit", {"channel": "email", "properties": {"utm_campaign": "summer"}}),
            (2, "add_to_cart"),
            (3, "purchase"),
            (4, "site_visit", {"channel": "social", "properties": {"utm_campaign": "autumn"}}),
        ),
        *journey("b2", (0, "site_visit", {"channel": "email"}), (1, "add_to_cart")),
        *journey(
            "b3",
            (0, "page_view", {"properties": {"utm_campaign": "winter"}}),
            (1, "site_visit", {"channel": "email", "properties": {"utm_campaign": "summer"}}),
        ),
    ]


@pytest.mark.parametrize(
    ("field", "attribution", "expected"),
    [
        ("channel", "start", {"advertising": [1, 1, 1], "email": [2, 1, 0]}),
        ("utm_campaign", "first-touch", {"spring": [1, 1, 1], "": [1, 1, 0], "winter": [1, 0, 0]}),
        ("utm_campaign", "last-touch", {"summer": [2, 1, 1], "": [1, 1, 0]}),
    ],
)
def test_breakdowns(
    warehouse: Warehouse, field: str, attribution: str, expected: dict[str, list[int]]
) -> None:
    records = breakdown_records()
    insert_touchpoints(warehouse, records)
    spec = parse_funnel(
        ["site_visit", "add_to_cart", "purchase"], breakdown=field, attribution=attribution
    )
    groups = check(warehouse, records, spec)
    assert {g.breakdown: [s.people for s in g.steps] for g in groups[1:]} == expected
    assert people_at(groups) == [3, 2, 1]
    # most people at step 1 first, then by value
    firsts = [(-g.steps[0].people, g.breakdown) for g in groups[1:]]
    assert firsts == sorted(firsts)


def test_percentiles_and_conversions(warehouse: Warehouse) -> None:
    gaps = [10, 20, 30, 40, 100]  # seconds from visit to cart
    records: list[Record] = []
    for n, gap in enumerate(gaps):
        start = T0 + timedelta(hours=n)
        records += [
            event(f"g{n}", "site_visit", start),
            event(f"g{n}", "add_to_cart", start + timedelta(seconds=gap)),
        ]
        if n < 2:
            records.append(event(f"g{n}", "purchase", start + timedelta(seconds=gap + 60)))
    insert_touchpoints(warehouse, records)
    spec = parse_funnel(["site_visit", "add_to_cart", "purchase"])
    (everybody,) = check(warehouse, records, spec)
    visit, cart, buy = everybody.steps
    assert (visit.people, visit.conversion_from_first, visit.dropped) == (5, 1.0, None)
    assert visit.median_seconds_from_previous is None
    approx = pytest.approx
    assert (cart.median_seconds_from_previous, cart.p90_seconds_from_previous) == approx((30, 76))
    assert (cart.median_seconds_from_first, cart.p90_seconds_from_first) == approx((30, 76))
    assert (buy.people, buy.conversion_from_previous, buy.conversion_from_first) == (2, 0.4, 0.4)
    assert buy.dropped == 3
    assert (buy.median_seconds_from_previous, buy.median_seconds_from_first) == approx((60, 75))
    assert buy.p90_seconds_from_first == approx(79)


def test_empty_warehouse_gives_zeros(warehouse: Warehouse) -> None:
    spec = parse_funnel(["site_visit", "purchase"], breakdown="channel")
    (everybody,) = funnel_of(warehouse, spec)
    assert [
        (s.people, s.conversion_from_previous, s.median_seconds_from_first) for s in everybody.steps
    ] == [
        (0, None, None),
        (0, None, None),
    ]


def test_dropped_at_lists_people_with_their_furthest_step(warehouse: Warehouse) -> None:
    records = [
        *journey("d1", (0, "site_visit", {"channel": "email"}), (1, "add_to_cart")),
        *journey("d2", (0, "site_visit"), (1, "add_to_cart"), (2, "purchase")),
        *journey("d3", (0, "site_visit"), (5, "add_to_cart")),
        *journey("d0", (0, "site_visit")),
    ]
    insert_touchpoints(warehouse, records)
    spec = parse_funnel(["site_visit", "add_to_cart", "purchase"], breakdown="channel")
    assert dropped_rows(warehouse, spec, 3) == [
        ("d1", "email", 2, T0 + MIN),
        ("d3", "web", 2, T0 + 5 * MIN),
    ]
    assert dropped_rows(warehouse, spec, 3) == expected_dropped(records, spec, 3)
    assert dropped_rows(warehouse, spec, 2) == [("d0", "web", 1, T0)]
    assert dropped_rows(warehouse, spec, 3, limit=1) == [("d1", "email", 2, T0 + MIN)]


# ---- randomized ------------------------------------------------------------------------

RANDOM_KINDS = [
    "site_visit", "product_view", "add_to_cart", "purchase", "page_view",
    "support_contact", "refund", "identify_noise",
]  # fmt: skip
CHANNELS = ["web", "email", "mobile_app", "phone"]


def random_records(rng: random.Random, people: int) -> list[Record]:
    records: list[Record] = []
    for n in range(people):
        anonymous = rng.random() < 0.25
        person = f"a{n}" if anonymous else f"c{n}"
        for _ in range(rng.randrange(1, 14)):
            kind = rng.choice(RANDOM_KINDS)
            # whole seconds over four days: some events share a timestamp
            at = T0 + timedelta(seconds=rng.randrange(0, 4 * 86400) // 60 * 60)
            if kind == "identify_noise":
                if anonymous and rng.random() < 0.5:
                    records.append(identify(f"c{rng.randrange(people)}", person, at))
                continue
            properties: dict[str, Any] = {}
            if kind == "purchase":
                properties = {"revenue": rng.choice([5, 20, 50, 75.5, "99"]), "currency": "EUR"}
            if kind == "site_visit" and rng.random() < 0.7:
                properties = {"utm_campaign": rng.choice(["spring", "summer", "autumn"])}
            if kind == "refund":
                properties = {"amount": rng.choice([1, 10, 100])}
            records.append(
                event(
                    person,
                    kind,
                    at,
                    anonymous=anonymous,
                    channel=rng.choice(CHANNELS),
                    properties=properties,
                )
            )
    return records


RANDOM_SPECS: list[dict[str, Any]] = [
    {"steps": ["site_visit", "add_to_cart", "purchase"], "window": "1d"},
    {"steps": ["site_visit", "add_to_cart", "purchase"], "order": "strict", "window": "2d"},
    {
        "steps": ["site_visit", "add_to_cart", "purchase[revenue>=50]"],
        "order": "any",
        "window": "12h",
        "breakdown": "channel",
    },
    {
        "steps": ["site_visit", "?product_view", "add_to_cart<=6h", "!support_contact", "purchase"],
        "window": "3d",
        "breakdown": "channel",
    },
    {
        "steps": ["page_view", "page_view", "?support_contact", "page_view", "purchase"],
        "exclude": ["refund[amount>5]@1-4"],
        "window": "4d",
    },
    {
        "steps": ["site_visit[utm_campaign!=autumn]", "product_view", "add_to_cart", "purchase"],
        "window": "2d",
        "breakdown": "utm_campaign",
        "attribution": "first-touch",
    },
    {
        "steps": ["site_visit", "add_to_cart", "purchase"],
        "order": "strict",
        "breakdown": "utm_campaign",
        "attribution": "last-touch",
    },
    {
        "steps": ["product_view", "add_to_cart", "add_to_cart", "purchase"],
        "order": "any",
        "window": "1d",
        "breakdown": "channel",
        "attribution": "last-touch",
    },
    {
        "steps": ["site_visit", "product_view<=12h", "?add_to_cart", "purchase<=1d"],
        "window": "3d",
        "since": T0 + timedelta(hours=12),
        "until": T0 + timedelta(days=3),
    },
]


@pytest.mark.parametrize("seed", [1, 2])
def test_random_journeys_against_the_reference(warehouse: Warehouse, seed: int) -> None:
    rng = random.Random(seed)
    records = random_records(rng, people=250)
    insert_touchpoints(warehouse, records)
    for kw in RANDOM_SPECS:
        spec = parse_funnel(**kw)
        check(warehouse, records, spec)
        for step in range(2, len(spec.steps) + 1):
            assert dropped_rows(warehouse, spec, step) == expected_dropped(records, spec, step), (
                kw,
                step,
            )


# ---- the chain path against the general walk ------------------------------------------

CHAIN_SPECS: list[dict[str, Any]] = [
    {"steps": ["site_visit", "add_to_cart", "purchase"], "window": "1d", "breakdown": "channel"},
    {"steps": ["site_visit", "product_view", "add_to_cart", "purchase"], "window": "6h"},
    {"steps": ["page_view", "page_view", "page_view"], "window": "2d", "breakdown": "channel"},
    {
        "steps": ["site_visit[utm_campaign!=autumn]", "purchase[revenue>=50]"],
        "window": "3d",
        "breakdown": "utm_campaign",
        "attribution": "first-touch",
    },
    {"steps": ["purchase"], "breakdown": "channel"},
    {"steps": ["site_visit"]},
    {
        "steps": ["site_visit", "add_to_cart", "site_visit", "purchase"],
        "window": "2h",
        "breakdown": "channel",
        "since": T0 + timedelta(hours=6),
        "until": T0 + timedelta(days=1),
    },
]


def crowded_records(rng: random.Random, people: int) -> list[Record]:
    """Journeys on a coarse clock (whole hours over two days): many events share a time,
    so ties between starts and between steps are common."""
    kinds = ["site_visit", "product_view", "add_to_cart", "purchase", "page_view"]
    records: list[Record] = []
    for n in range(people):
        for _ in range(rng.randrange(1, 16)):
            kind = rng.choice(kinds)
            properties: dict[str, Any] = {}
            if kind == "purchase":
                properties = {"revenue": rng.choice([5, 50, 75.5])}
            if kind == "site_visit" and rng.random() < 0.7:
                properties = {"utm_campaign": rng.choice(["spring", "summer", "autumn"])}
            at = T0 + timedelta(hours=rng.randrange(0, 48))
            channel = rng.choice(CHANNELS)
            records.append(event(f"k{n}", kind, at, channel=channel, properties=properties))
    return records


@pytest.mark.parametrize("seed", [3, 4])
def test_chain_path_equals_the_walk_and_the_reference(warehouse: Warehouse, seed: int) -> None:
    rng = random.Random(seed)
    records = random_records(rng, people=200) + crowded_records(rng, people=200)
    insert_touchpoints(warehouse, records)
    for kw in CHAIN_SPECS:
        spec = parse_funnel(**kw)
        assert takes_chain_path(spec), kw
        check(warehouse, records, spec)  # the reference, and both paths alike
        for step in range(2, len(spec.steps) + 1):
            assert dropped_rows(warehouse, spec, step) == expected_dropped(records, spec, step)


def test_chain_path_ties_and_edges(warehouse: Warehouse) -> None:
    window = timedelta(hours=1)
    records = [
        # two starts at one time: the smaller event_id comes first and gives the channel
        event("t1", "site_visit", T0, channel="email", event_id="t1-b"),
        event("t1", "site_visit", T0, channel="phone", event_id="t1-a"),
        event("t1", "purchase", T0 + MIN),
        # a step at its start's time is not after it; exactly at the window's end counts
        event("t2", "site_visit", T0, channel="web"),
        event("t2", "purchase", T0),
        event("t2", "purchase", T0 + window),
        # the earliest start goes nowhere, a later one converts: its channel counts
        event("t3", "site_visit", T0, channel="web"),
        event("t3", "site_visit", T0 + 2 * window, channel="email"),
        event("t3", "purchase", T0 + 2 * window + MIN),
        # one millisecond past the window: not converted, channel of the first start
        event("t4", "site_visit", T0, channel="mobile_app"),
        event("t4", "site_visit", T0 + timedelta(milliseconds=1), channel="phone"),
        event("t4", "purchase", T0 + window + timedelta(milliseconds=2)),
    ]
    insert_touchpoints(warehouse, records)
    spec = parse_funnel(["site_visit", "purchase"], window="1h", breakdown="channel")
    assert takes_chain_path(spec)
    groups = check(warehouse, records, spec)
    assert {g.breakdown: people_at(groups, g.breakdown) for g in groups} == {
        None: [4, 3],
        "email": [1, 1],
        "phone": [1, 1],
        "web": [1, 1],
        "mobile_app": [1, 0],
    }


# ---- the command -----------------------------------------------------------------------


@pytest.fixture
def cli_env(warehouse: Warehouse, monkeypatch: pytest.MonkeyPatch) -> Warehouse:
    # No worker on that port, so the command opens the folder itself; this process already
    # holds the same folder, which chDB allows.
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    monkeypatch.setenv("JOURNEY_CLICKHOUSE_DSN", f"chdb://{warehouse.location}")
    monkeypatch.setenv("JOURNEY_WORKER_PORT", str(port))
    return warehouse


def run_cli(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    code = 0
    try:
        main(["funnel", *args])
    except SystemExit as exc:
        code = int(exc.code or 0)
    out, err = capsys.readouterr()
    return code, out, err


def test_cli_outputs(
    cli_env: Warehouse, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("COLUMNS", "200")  # rich folds cells in a narrow table
    records = breakdown_records()
    insert_touchpoints(cli_env, records)
    args = ["site_visit", "add_to_cart", "purchase", "-b", "channel"]
    code, out, err = run_cli(capsys, *args, "-f", "json")
    assert (code, err) == (0, "")
    payload = json.loads(out)
    assert payload["columns"][:4] == ["breakdown", "step", "label", "people"]
    assert [row[3] for row in payload["rows"] if row[0] is None] == [3, 2, 1]
    assert [row[:4] for row in payload["rows"] if row[0] == "email"] == [
        ["email", 1, "site_visit", 2],
        ["email", 2, "add_to_cart", 1],
        ["email", 3, "purchase", 0],
    ]
    code, out, _ = run_cli(capsys, *args, "-f", "csv")
    lines = out.splitlines()
    assert lines[0].startswith("breakdown,step,label,people,conversion_from_previous")
    assert lines[1].startswith(",1,site_visit,3,,1.0,")
    code, out, _ = run_cli(capsys, *args)
    assert code == 0 and "(all)" in out and "advertising" in out and "66.7%" in out
    assert "2. add_to_cart" in out
    code, out, _ = run_cli(capsys, *args, "--dropped-at", "3", "-f", "json")
    assert json.loads(out) == {
        "columns": ["person", "breakdown", "furthest_step", "furthest_step_at"],
        "rows": [["b2", "email", 2, (T0 + MIN).isoformat()]],
    }
    code, out, _ = run_cli(capsys, "site_visit", "purchase", "--dropped-at", "2", "-f", "csv")
    assert out.splitlines() == [
        "person,furthest_step,furthest_step_at",
        f"b2,1,{T0.isoformat()}",
        f"b3,1,{(T0 + MIN).isoformat()}",
    ]


def test_cli_show_sql_and_errors(cli_env: Warehouse, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run_cli(capsys, "site_visit", "purchase[revenue>50]", "--show-sql")
    assert code == 0
    assert "funnel_chains AS" in out and "arrayFold" not in out  # the chain path
    assert out.splitlines()[-1].startswith("-- parameters: {")
    assert "revenue" not in out.split("-- parameters:")[0]  # bound, not spliced
    code, out, _ = run_cli(capsys, "site_visit", "?product_view", "purchase", "--show-sql")
    assert code == 0
    assert "funnel_walks AS" in out and "arrayFold" in out  # the general walk
    code, _, err = run_cli(capsys, "site_visit", "purchse")
    assert code == 1
    assert err.strip().splitlines() == [
        "error: step 2 'purchse': unknown touchpoint type 'purchse' (did you mean purchase?)"
    ]
    code, _, err = run_cli(capsys, "site_visit", "purchase", "--dropped-at", "1")
    assert (code, err.strip()) == (1, "error: --dropped-at takes a step from 2 to 2, got 1")
    code, _, err = run_cli(capsys, "site_visit", "--since", "yesterday")
    assert code == 1 and err.startswith("error: --since takes an ISO 8601 date")


@pytest.mark.parametrize(
    ("seconds", "text"),
    [(None, "-"), (0.0, "0s"), (45.5, "45.5s"), (60.0, "1m"), (303.0, "5m 3s"), (7500.0, "2h 5m"),
     (86400.0, "1d"), (273600.0, "3d 4h")],
)  # fmt: skip
def test_table_durations(seconds: float | None, text: str) -> None:
    from journey.cli.funnel import _duration

    assert _duration(seconds) == text
