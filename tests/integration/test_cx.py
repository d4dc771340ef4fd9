"""CX metrics and friction impact on real chDB, checked against plain-Python references."""

from __future__ import annotations

import json
import math
import uuid
from collections.abc import Iterator, Sequence
from datetime import UTC, date, datetime, timedelta
from typing import Any

import orjson
import pytest

from journey.cli import main
from projections.clickhouse.client import Warehouse
from projections.clickhouse.cx import (
    IMPACT_COLUMNS,
    KPI_COLUMNS,
    Deadline,
    Dimension,
    friction_impact_sql,
    impact_funnel,
    kpi_records,
    kpis_sql,
)
from projections.clickhouse.readonly import run_readonly
from projections.clickhouse.tables import FRICTION, TOUCHPOINTS
from projections.clickhouse.writer import (
    insert_friction_json,
    insert_records,
    insert_touchpoints,
)
from tests.ports import free_port

pytestmark = pytest.mark.integration



T0 = datetime(2024, 5, 1, 9, 0, tzinfo=UTC)  # a Wednesday
MIN = timedelta(minutes=1)
HOUR = timedelta(hours=1)
DAY = timedelta(days=1)
Record = dict[str, Any]


def event(
    type_: str,
    at: datetime,
    *,
    customer: str | None = None,
    anonymous: str | None = None,
    channel: str = "web",
    case: str | None = None,
    **properties: Any,
) -> Record:
    return {
        "event_id": str(uuid.uuid4()),
        "schema_version": 1,
        "type": type_,
        "occurred_at": at.isoformat(),
        "channel": channel,
        "customer_id": customer,
        "anonymous_id": anonymous,
        "customer_key": customer or anonymous,
        "case_id": case,
        "properties": properties,
    }


def friction(
    rule: str, customer_key: str, at: datetime, channel: str = "", case: str = ""
) -> Record:
    return {
        "friction_id": str(uuid.uuid4()),
        "rule": rule,
        "kind": "",
        "severity": "medium",
        "customer_key": customer_key,
        "occurred_at": at.isoformat(),
        "detected_at": at.isoformat(),
        "stage": "retention",
        "case_id": case,
        "channel": channel,
        "evidence": [],
        "message": f"{rule} for {customer_key}",
    }


@pytest.fixture
def store(warehouse: Warehouse) -> Any:

    def write(touchpoints: list[Record], frictions: list[Record]) -> None:
        insert_touchpoints(warehouse, touchpoints)
        insert_records(warehouse, FRICTION, frictions)

    return write


def rows(warehouse: Warehouse, built: tuple[str, dict[str, Any]]) -> list[dict[str, Any]]:
    result = run_readonly(warehouse, *built)
    return kpi_records(result.columns, result.rows)


# ---- the reference: plain Python -------------------------------------------------------


def _at(record: Record) -> datetime:
    return datetime.fromisoformat(record["occurred_at"])


def unique(records: list[Record], key: str = "event_id") -> list[Record]:
    return list({r[key]: r for r in records}.values())


def linked_customers(records: list[Record]) -> dict[str, str]:
    """anonymous id -> the customer of its earliest identify."""
    claims: dict[str, tuple[tuple[datetime, str], str]] = {}
    for r in unique(records):
        if r["type"] == "identify":
            key = (_at(r), r["event_id"])
            known = claims.get(r["anonymous_id"])
            if known is None or key < known[0]:
                claims[r["anonymous_id"]] = (key, r["customer_id"])
    return {anonymous: customer for anonymous, (_, customer) in claims.items()}


def person_of(record: Record, links: dict[str, str]) -> str:
    if record["customer_id"]:
        return str(record["customer_id"])
    return str(
        links.get(record["anonymous_id"] or "", record["anonymous_id"] or record["customer_key"])
    )


def inbound(r: Record) -> bool:
    return bool(r["type"] == "billing_inquiry") or (
        r["type"] == "support_contact" and r["properties"].get("direction") != "outbound"
    )


def answer(r: Record) -> bool:
    return bool(r["type"] == "agent_response") or (
        r["type"] == "support_contact" and r["properties"].get("direction") == "outbound"
    )


def quantile(values: list[float], p: float) -> float | None:
    """Exact, linearly interpolated between the closest ranks (quantileExactInclusive)."""
    if not values:
        return None
    ordered = sorted(values)
    h = (len(ordered) - 1) * p
    low = math.floor(h)
    if low + 1 >= len(ordered):
        return ordered[low]
    return ordered[low] + (h - low) * (ordered[low + 1] - ordered[low])


def ratio(part: float, whole: float) -> float | None:
    return part / whole if whole else None


def reference_cases(
    records: list[Record], deadlines: dict[str, Deadline], default: Deadline
) -> dict[str, dict[str, Any]]:
    horizon = max(_at(r) for r in unique(records))
    service = [r for r in unique(records) if r["case_id"] and r["type"] in (
        "support_contact", "billing_inquiry", "agent_response", "escalation", "case_resolved",
        "case_reopened")]  # fmt: skip
    cases: dict[str, dict[str, Any]] = {}
    for case_id in {r["case_id"] for r in service}:
        events = [r for r in service if r["case_id"] == case_id]
        contacts = sorted((_at(r), r["event_id"], r["channel"]) for r in events if inbound(r))
        if not contacts:
            continue
        opened, _, channel = contacts[0]
        answers = [_at(r) for r in events if answer(r) and _at(r) >= opened]
        resolutions = [_at(r) for r in events if r["type"] == "case_resolved" and _at(r) >= opened]
        first_response = (min(answers) - opened).total_seconds() if answers else None
        resolution = (min(resolutions) - opened).total_seconds() if resolutions else None
        deadline = deadlines.get(channel, default)
        fr_limit, res_limit = deadline.first_response_seconds, deadline.resolution_seconds
        if (first_response is not None and first_response <= fr_limit
                and resolution is not None and resolution <= res_limit):  # fmt: skip
            sla: int | None = 1
        elif (
            (first_response is not None and first_response > fr_limit)
            or (resolution is not None and resolution > res_limit)
            or (first_response is None and horizon > opened + timedelta(seconds=fr_limit))
            or (resolution is None and horizon > opened + timedelta(seconds=res_limit))
        ):
            sla = 0
        else:
            sla = None
        cases[case_id] = {
            "channel": channel, "at": opened, "contacts": len(contacts),
            "first_response": first_response, "resolution": resolution, "sla": sla,
            "escalated": any(r["type"] == "escalation" for r in events),
        }  # fmt: skip
    return cases


def _key(dimensions: Sequence[Dimension], channel: str, at: datetime) -> tuple[Any, ...]:
    parts: list[Any] = []
    for d in dimensions:
        if d is Dimension.channel:
            parts.append(channel)
        elif d is Dimension.day:
            parts.append(at.date().isoformat())
        elif d is Dimension.week:
            parts.append((at.date() - timedelta(days=at.weekday())).isoformat())
        else:
            parts.append(at.date().replace(day=1).isoformat())
    return tuple(parts)


def reference_kpis(
    records: list[Record],
    frictions: list[Record],
    dimensions: Sequence[Dimension],
    deadlines: dict[str, Deadline],
    default: Deadline,
    since: datetime | None = None,
    until: datetime | None = None,
) -> dict[tuple[Any, ...], dict[str, Any]]:
    def inside(at: datetime) -> bool:
        return (since is None or at >= since) and (until is None or at < until)

    links = linked_customers(records)
    cases = reference_cases(records, deadlines, default)
    groups: dict[tuple[Any, ...], dict[str, list[Any]]] = {}

    def group(channel: str, at: datetime) -> dict[str, list[Any]]:
        return groups.setdefault(
            _key(dimensions, channel, at),
            {"cases": [], "surveys": [], "people": [], "frictions": []},
        )

    for case in cases.values():
        if inside(case["at"]):
            group(case["channel"], case["at"])["cases"].append(case)
    for r in unique(records):
        if r["type"] == "survey_response":
            about = cases.get(r["properties"].get("case_id") or r["case_id"] or "")
            channel, at = (about["channel"], about["at"]) if about else (r["channel"], _at(r))
            if inside(at):
                group(channel, at)["surveys"].append(r["properties"])
        if inside(_at(r)):
            group(r["channel"], _at(r))["people"].append(person_of(r, links))
    for f in unique(frictions, "friction_id"):
        if inside(_at(f)):
            group(f["channel"], _at(f))["frictions"].append(f["rule"])
    if not dimensions:
        groups.setdefault((), {"cases": [], "surveys": [], "people": [], "frictions": []})

    result: dict[tuple[Any, ...], dict[str, Any]] = {}
    for key, g in groups.items():
        cs, surveys = g["cases"], g["surveys"]

        def scores(kind: str, surveys: list[Any] = surveys) -> list[int]:
            return [s["score"] for s in surveys if s["survey"] == kind]

        csat, nps, ces = scores("csat"), scores("nps"), scores("ces")
        resolved = [c for c in cs if c["resolution"] is not None]
        responses = [c["first_response"] for c in cs if c["first_response"] is not None]
        resolutions = [c["resolution"] for c in resolved]
        judged = [c for c in cs if c["sla"] is not None]
        customers = len(set(g["people"]))
        counts = {rule: g["frictions"].count(rule) for rule in set(g["frictions"])}
        result[key] = {
            "customers": customers,
            "cases": len(cs),
            "csat_answers": len(csat),
            "csat": ratio(sum(s >= 4 for s in csat), len(csat)),
            "nps_answers": len(nps),
            "nps": ratio(100 * (sum(s >= 9 for s in nps) - sum(s <= 6 for s in nps)), len(nps)),
            "ces_answers": len(ces),
            "ces": ratio(sum(ces), len(ces)),
            "resolved_cases": len(resolved),
            "fcr": ratio(sum(c["contacts"] == 1 for c in resolved), len(resolved)),
            "first_response_median_seconds": quantile(responses, 0.5),
            "first_response_p90_seconds": quantile(responses, 0.9),
            "resolution_median_seconds": quantile(resolutions, 0.5),
            "resolution_p90_seconds": quantile(resolutions, 0.9),
            "sla_cases": len(judged),
            "sla_compliance": ratio(sum(c["sla"] for c in judged), len(judged)),
            "escalation_rate": ratio(sum(c["escalated"] for c in cs), len(cs)),
            "repeat_contact_rate": ratio(sum(c["contacts"] > 1 for c in cs), len(cs)),
            "frictions": counts,
            "friction_per_1000": (
                {rule: 1000 * n / customers for rule, n in counts.items()} if customers else {}
            ),
        }
    return result


def by_key(got: list[dict[str, Any]], dimensions: Sequence[Dimension]) -> dict[Any, Any]:
    names = ["channel" if d is Dimension.channel else "period" for d in dimensions]
    keyed = {}
    for row in got:
        key = tuple(row[n].isoformat() if isinstance(row[n], date) else row[n] for n in names)
        keyed[key] = {name: row[name] for name in KPI_COLUMNS}
    return keyed


def same(got: Any, want: Any) -> bool:
    if isinstance(want, dict):
        return (
            isinstance(got, dict)
            and got.keys() == want.keys()
            and all(same(got[k], want[k]) for k in want)
        )
    if isinstance(want, float) or isinstance(got, float):
        return got is not None and want is not None and math.isclose(got, want, rel_tol=1e-9)
    return bool(got == want)


def assert_same(got: dict[Any, Any], want: dict[Any, Any]) -> None:
    assert got.keys() == want.keys()
    for key in want:
        bad = {m: (got[key][m], want[key][m]) for m in want[key]
               if not same(got[key][m], want[key][m])}  # fmt: skip
        assert not bad, f"{key}: {bad}"


# ---- the KPI data set ------------------------------------------------------------------

DEADLINES = {"phone": Deadline(3600, 8 * 3600), "chat": Deadline(300, 3600)}
DEFAULT = Deadline(24 * 3600, 72 * 3600)
HORIZON = T0 + 10 * DAY


def kpi_data() -> tuple[list[Record], list[Record]]:
    e = event
    duplicate = e("support_contact", T0 + 8 * DAY, customer="c1", channel="email", case="k5",
                  topic="order", direction="inbound")  # fmt: skip
    touchpoints = [
        # k1, phone: answered and resolved in time, one contact
        e("support_contact", T0, customer="c1", channel="phone", case="k1", topic="delivery",
          direction="inbound"),
        e("agent_response", T0 + 30 * MIN, customer="c1", channel="phone", case="k1"),
        e("case_resolved", T0 + 2 * HOUR, customer="c1", channel="phone", case="k1"),
        # k2, phone: answered late, a second contact, escalated
        e("support_contact", T0 + HOUR, customer="c2", channel="phone", case="k2", topic="bill"),
        e("agent_response", T0 + 3 * HOUR, customer="c2", channel="email", case="k2"),
        e("support_contact", T0 + DAY, customer="c2", channel="chat", case="k2", topic="bill",
          direction="inbound"),
        e("escalation", T0 + DAY + HOUR, customer="c2", channel="phone", case="k2", to="tier2"),
        e("case_resolved", T0 + 2 * DAY, customer="c2", channel="phone", case="k2"),
        # k3, chat, from an anonymous visitor later identified as c3: within chat's deadlines
        e("support_contact", T0 + 2 * HOUR, anonymous="a-9", channel="chat", case="k3",
          topic="login"),
        e("support_contact", T0 + 2 * HOUR + 2 * MIN, anonymous="a-9", channel="chat",
          case="k3", topic="login", direction="outbound"),
        e("case_resolved", T0 + 2 * HOUR + 10 * MIN, anonymous="a-9", channel="chat", case="k3"),
        e("identify", T0 + 3 * HOUR, customer="c3", anonymous="a-9"),
        e("site_visit", T0 + 4 * HOUR, customer="c3", url="https://shop.test/"),
        # k4, email (default deadlines): never answered, the deadline passed
        e("billing_inquiry", T0 + 7 * DAY, customer="c4", channel="email", case="k4"),
        # k5, email: written twice, resolved in time, reopened and resolved again
        duplicate,
        dict(duplicate),
        e("agent_response", T0 + 8 * DAY + HOUR, customer="c1", channel="email", case="k5"),
        e("case_resolved", T0 + 8 * DAY + 5 * HOUR, customer="c1", channel="email", case="k5"),
        e("case_reopened", T0 + 9 * DAY, customer="c1", channel="email", case="k5"),
        e("case_resolved", T0 + 9 * DAY + HOUR, customer="c1", channel="email", case="k5"),
        # k6, chat: opened just before the horizon, nothing decided yet
        e("support_contact", HORIZON - 2 * MIN, customer="c5", channel="chat", case="k6",
          topic="x"),
        # k7: the company reached out, the customer never did: not a case
        e("support_contact", T0 + 5 * HOUR, customer="c2", channel="phone", case="k7",
          topic="offer", direction="outbound"),
        # k8, phone: answered in time, resolved late
        e("support_contact", T0 + 2 * DAY, customer="c7", channel="phone", case="k8", topic="y"),
        e("agent_response", T0 + 2 * DAY + 45 * MIN, customer="c7", channel="phone", case="k8"),
        e("case_resolved", T0 + 2 * DAY + 10 * HOUR, customer="c7", channel="phone", case="k8"),
        # surveys: about a case (property or envelope case_id) or on their own
        e("survey_response", T0 + DAY, customer="c3", channel="email", survey="csat", score=5,
          case_id="k3"),
        e("survey_response", T0 + DAY, customer="c1", survey="csat", score=3),
        e("survey_response", T0 + 3 * DAY, customer="c2", channel="phone", case="k2",
          survey="csat", score=4),
        e("survey_response", T0 + DAY, customer="c1", survey="nps", score=10),
        e("survey_response", T0 + 8 * DAY, customer="c2", survey="nps", score=7),
        e("survey_response", T0 + 3 * DAY, customer="c7", channel="email", survey="nps",
          score=3, case_id="k8"),
        e("survey_response", T0 + DAY, customer="c5", channel="chat", survey="ces", score=2),
        e("survey_response", T0 + 8 * DAY, customer="c4", channel="email", survey="ces",
          score=5, case_id="k4"),
        e("survey_response", T0 + 9 * DAY, customer="c6", channel="sms", survey="csat", score=2,
          case_id="unknown-case"),
        e("site_visit", HORIZON, customer="c6", url="https://shop.test/"),
    ]  # fmt: skip
    repeated = friction("sla_breach", "c2", T0 + 2 * HOUR, "phone", "k2")
    frictions = [
        repeated,
        dict(repeated),
        friction("repeat_contact", "c2", T0 + DAY, "phone", "k2"),
        friction("sla_breach", "c4", T0 + 8 * DAY, "email", "k4"),
        friction("checkout_abandoned", "a-9", T0 + 5 * HOUR, "web"),
        friction("failed_outcome", "c6", T0 + 9 * DAY),
        friction("sla_breach", "c7", T0 + 2 * DAY + 8 * HOUR, "phone", "k8"),
    ]
    return touchpoints, frictions


@pytest.mark.parametrize(
    ("dimensions", "since", "until"),
    [
        ((Dimension.channel,), None, None),
        ((Dimension.channel, Dimension.week), None, None),
        ((Dimension.week, Dimension.channel), None, None),
        ((Dimension.day,), T0 + DAY, T0 + 9 * DAY),
        ((), None, None),
        ((Dimension.month,), T0 + 2 * DAY, None),
    ],
)
def test_kpis_match_the_reference(
    warehouse: Warehouse,
    store: Any,
    dimensions: tuple[Dimension, ...],
    since: datetime | None,
    until: datetime | None,
) -> None:
    touchpoints, frictions = kpi_data()
    store(touchpoints, frictions)
    built = kpis_sql(by=dimensions, since=since, until=until, deadlines=DEADLINES,
                     default_deadline=DEFAULT)  # fmt: skip
    got = by_key(rows(warehouse, built), dimensions)
    want = reference_kpis(touchpoints, frictions, dimensions, DEADLINES, DEFAULT, since, until)
    assert_same(got, want)


def test_kpis_by_channel_read_as_designed(warehouse: Warehouse, store: Any) -> None:
    """The reference itself, spelled out for the phone and chat channels."""
    store(*kpi_data())
    got = by_key(
        rows(warehouse, kpis_sql(by=["channel"], deadlines=DEADLINES, default_deadline=DEFAULT)),
        (Dimension.channel,),
    )
    phone, chat, email = got[("phone",)], got[("chat",)], got[("email",)]
    # k1, k2, k8; k7 is outbound only
    assert (phone["cases"], phone["resolved_cases"]) == (3, 3)
    assert phone["fcr"] == pytest.approx(2 / 3)
    assert phone["repeat_contact_rate"] == pytest.approx(1 / 3)
    assert phone["escalation_rate"] == pytest.approx(1 / 3)
    assert phone["sla_compliance"] == pytest.approx(1 / 3)  # only k1
    assert phone["first_response_median_seconds"] == 45 * 60  # 30m, 2h, 45m
    assert phone["csat"] == 1.0 and phone["nps"] == -100.0  # csat 4 on k2, nps 3 on k8
    assert phone["frictions"] == {"sla_breach": 2, "repeat_contact": 1}
    # c1, c2 and c7 touched the phone channel
    assert phone["friction_per_1000"] == {
        "sla_breach": pytest.approx(2000 / 3),
        "repeat_contact": pytest.approx(1000 / 3),
    }
    # k3 (anonymous a-9 = c3) and the still open k6; the csat 5 about k3 counts here
    assert (chat["cases"], chat["sla_cases"], chat["sla_compliance"]) == (2, 1, 1.0)
    assert chat["customers"] == 3  # c2 (a follow-up on k2), c3, c5; not a-9
    assert (chat["csat_answers"], chat["ces"]) == (1, 2.0)
    # k4 (breached) and k5 (in time, its duplicate contact counted once)
    assert (email["cases"], email["sla_compliance"], email["fcr"]) == (2, 0.5, 1.0)
    assert email["resolution_median_seconds"] == 5 * 3600


def test_kpis_without_data_give_one_empty_total(warehouse: Warehouse, store: Any) -> None:
    store([], [])
    (total,) = rows(warehouse, kpis_sql(by=[]))
    assert total["customers"] == 0 and total["cases"] == 0
    assert total["csat"] is None and total["first_response_median_seconds"] is None
    assert total["frictions"] == {} and total["friction_per_1000"] == {}


# ---- the impact population -------------------------------------------------------------

STUDY = (T0, T0 + 14 * DAY)
IMPACT_HORIZON = T0 + 70 * DAY


def impact_data() -> tuple[list[Record], list[Record]]:
    e = event

    def contact(who: str, at: datetime) -> Record:
        return e("support_contact", at, customer=who, channel="phone", case=f"k-{who}",
                 topic="help")  # fmt: skip

    def visit(who: str, at: datetime) -> Record:
        return e("site_visit", at, customer=who, url="https://shop.test/")

    def checkout(who: str, at: datetime) -> Record:
        return e("checkout_started", at, customer=who, cart_value=10, currency="EUR")

    def purchase(who: str, at: datetime, revenue: float) -> Record:
        return e("purchase", at, customer=who, order_id=f"o-{uuid.uuid4().hex[:6]}",
                 revenue=revenue, currency="EUR")  # fmt: skip

    touchpoints = [
        # A1: first seen the week of Apr 15, a service contact; converts, comes back
        visit("A1", T0 - 14 * DAY), contact("A1", T0 + DAY), checkout("A1", T0 + 3 * DAY),
        purchase("A1", T0 + 4 * DAY, 30), visit("A1", T0 + 42 * DAY),
        # A2: same stratum; starts a checkout and never buys
        visit("A2", T0 - 13 * DAY), contact("A2", T0 + 2 * DAY), checkout("A2", T0 + 4 * DAY),
        # A5: same stratum; its friction is too recent for retention and revenue windows
        visit("A5", T0 - 12 * DAY), contact("A5", T0 + 11 * DAY),
        # A3: first seen in the period, no service contact; its friction is on anonymous a-7
        visit("A3", T0), e("site_visit", T0 + 5 * HOUR, anonymous="a-7", url="u"),
        e("identify", T0 + 6 * HOUR, customer="A3", anonymous="a-7"),
        purchase("A3", T0 + 30 * DAY, 50),
        # A4: alone in its stratum (first seen the week of May 13, with a service contact)
        contact("A4", T0 + 12 * DAY),
        # comparison people
        visit("C1", T0 - 12 * DAY), contact("C1", T0 + DAY + 12 * HOUR),
        checkout("C1", T0 + 2 * DAY), purchase("C1", T0 + 3 * DAY, 80), visit("C1", T0 + 45 * DAY),
        visit("C2", T0 - 11 * DAY),
        e("billing_inquiry", T0 + 5 * DAY, customer="C2", channel="email", case="k-C2"),
        visit("C3", T0 + HOUR), checkout("C3", T0 + DAY), purchase("C3", T0 + DAY + 2 * HOUR, 40),
        visit("C3", T0 + 40 * DAY),
        visit("C4", T0 + 2 * DAY),
        # B hit sla_breach before the period: in neither group for that rule
        visit("B", T0 - 10 * DAY), contact("B", T0 + DAY), purchase("B", T0 + 2 * DAY, 1000),
        # D: in a stratum without affected people
        visit("D", T0 + 7 * DAY), visit("D", IMPACT_HORIZON),
    ]  # fmt: skip
    repeated = friction("sla_breach", "A1", T0 + 2 * DAY, "phone", "k-A1")
    frictions = [
        repeated,
        dict(repeated),
        friction("sla_breach", "A2", T0 + 3 * DAY, "phone", "k-A2"),
        friction("sla_breach", "A5", T0 + 11 * DAY + HOUR, "phone", "k-A5"),
        friction("sla_breach", "a-7", T0 + DAY, "web"),
        friction("sla_breach", "A4", T0 + 12 * DAY + HOUR, "phone", "k-A4"),
        friction("sla_breach", "B", T0 - 3 * DAY, "phone", "k-B"),
        friction("checkout_abandoned", "A2", T0 + 5 * DAY, "web"),
    ]
    return touchpoints, frictions


def _monday(at: datetime) -> date:
    return at.date() - timedelta(days=at.weekday())


def reference_impact(
    records: list[Record],
    frictions: list[Record],
    converts: Any,
    *,
    retention: tuple[int, int] = (30, 60),
    revenue_days: int = 60,
) -> list[dict[str, Any]]:
    since, until = STUDY
    links = linked_customers(records)
    horizon = max(_at(r) for r in unique(records))
    events: dict[str, list[Record]] = {}
    for r in unique(records):
        events.setdefault(person_of(r, links), []).append(r)
    people = {}
    for person, evs in events.items():
        inside = [r for r in evs if since <= _at(r) < until]
        people[person] = {
            "stratum": (
                _monday(min(_at(r) for r in evs)),
                any(inbound(r) for r in inside),
            ),
            "entered": min((_at(r) for r in inside), default=None),
            "times": [_at(r) for r in evs],
            "purchases": [
                (_at(r), r["properties"]["revenue"]) for r in evs if r["type"] == "purchase"
            ],
            "converted": converts([r for r in inside]),
        }
    hits: dict[str, dict[str, list[datetime]]] = {}
    for f in unique(frictions, "friction_id"):
        who = str(links.get(f["customer_key"], f["customer_key"]))
        hits.setdefault(f["rule"], {}).setdefault(who, []).append(_at(f))
    result = []
    for rule, by_person in hits.items():
        affected = {}
        for who, times in by_person.items():
            in_period = [t for t in times if since <= t < until]
            if in_period and who in people and people[who]["entered"] is not None:
                affected[who] = min(in_period)
        if not affected:
            continue
        delays: dict[Any, list[timedelta]] = {}
        for who, hit in affected.items():
            delay = max(timedelta(0), hit - people[who]["entered"])
            delays.setdefault(people[who]["stratum"], []).append(delay)
        median = {s: sorted(d)[(len(d) - 1) // 2] for s, d in delays.items()}
        groups: dict[Any, dict[int, list[dict[str, Any]]]] = {}
        members = [(who, ref, 1) for who, ref in affected.items()] + [
            (who, p["entered"] + median[p["stratum"]], 0)
            for who, p in people.items()
            if p["entered"] is not None and who not in by_person and p["stratum"] in median
        ]
        for who, ref, is_affected in members:
            p = people[who]
            low, high = ref + timedelta(days=retention[0]), ref + timedelta(days=retention[1])
            end = ref + timedelta(days=revenue_days)
            groups.setdefault(p["stratum"], {0: [], 1: []})[is_affected].append({
                "converted": p["converted"],
                "retention_seen": high <= horizon,
                "retained": any(low <= t < high for t in p["times"]),
                "revenue_seen": end <= horizon,
                "revenue": sum(v for t, v in p["purchases"] if ref <= t < end),
            })  # fmt: skip

        def compare(
            outcome: str, seen: str | None, groups: dict[Any, Any] = groups
        ) -> tuple[int, float, float | None, float | None]:
            n = total = weighted = 0.0
            for g in groups.values():
                a = [m for m in g[1] if seen is None or m[seen]]
                c = [m for m in g[0] if seen is None or m[seen]]
                if not c:
                    continue
                n += len(a)
                total += sum(m[outcome] for m in a)
                weighted += len(a) * sum(m[outcome] for m in c) / len(c)
            return int(n), total, ratio(total, n), ratio(weighted, n)

        matched, _, conv_a, conv_c = compare("converted", None)
        ret_n, _, ret_a, ret_c = compare("retained", "retention_seen")
        rev_n, rev_total, rev_a, rev_c = compare("revenue", "revenue_seen")
        result.append({
            "rule": rule,
            "affected": len(affected),
            "matched": matched,
            "comparison": sum(len(g[0]) for g in groups.values() if g[0]),
            "conversion_affected": conv_a, "conversion_comparison": conv_c,
            "conversion_diff": None if conv_a is None else conv_a - conv_c,  # type: ignore[operator]
            "retention_customers": ret_n,
            "retention_affected": ret_a, "retention_comparison": ret_c,
            "retention_diff": None if ret_a is None else ret_a - ret_c,  # type: ignore[operator]
            "revenue_customers": rev_n, "revenue_affected_total": rev_total,
            "revenue_per_customer_affected": rev_a, "revenue_per_customer_comparison": rev_c,
            "revenue_per_customer_diff": None if rev_a is None else rev_a - rev_c,  # type: ignore[operator]
            "lost_revenue": None if rev_a is None else (rev_c - rev_a) * rev_n,  # type: ignore[operator]
        })  # fmt: skip
    return result


def checkout_then_purchase(min_revenue: float | None = None) -> Any:
    def converts(inside: list[Record]) -> bool:
        starts = [_at(r) for r in inside if r["type"] == "checkout_started"]
        ends = [_at(r) for r in inside if r["type"] == "purchase"
                and (min_revenue is None or r["properties"]["revenue"] > min_revenue)]  # fmt: skip
        return any(s < t <= s + 14 * DAY for s in starts for t in ends)

    return converts


def impact_rows(warehouse: Warehouse, built: tuple[str, dict[str, Any]]) -> dict[str, Any]:
    return {row["rule"]: row for row in rows(warehouse, built)}


def assert_impact(got: dict[str, Any], want: list[dict[str, Any]]) -> None:
    assert got.keys() == {w["rule"] for w in want}
    for w in want:
        bad = {k: (got[w["rule"]][k], v) for k, v in w.items() if not same(got[w["rule"]][k], v)}
        assert not bad, f"{w['rule']}: {bad}"


def test_friction_impact_matches_the_reference(warehouse: Warehouse, store: Any) -> None:
    touchpoints, frictions = impact_data()
    store(touchpoints, frictions)
    got = impact_rows(warehouse, friction_impact_sql(since=STUDY[0], until=STUDY[1]))
    assert list(rows(warehouse, friction_impact_sql(since=STUDY[0], until=STUDY[1]))[0]) == list(
        IMPACT_COLUMNS
    )
    assert_impact(got, reference_impact(touchpoints, frictions, checkout_then_purchase()))
    # spelled out: A1, A2, A5 (with C1, C2) and A3 (with C3, C4) are matched, A4 is not;
    # A5's windows end after the horizon; B (hit before the period) is in neither group
    sla = got["sla_breach"]
    assert (sla["affected"], sla["matched"], sla["comparison"]) == (5, 4, 4)
    assert (sla["conversion_affected"], sla["conversion_comparison"]) == (0.25, 0.5)
    assert sla["retention_customers"] == 3
    assert sla["retention_affected"] == pytest.approx(1 / 3)
    assert sla["retention_comparison"] == pytest.approx(0.5)
    assert (sla["revenue_customers"], sla["revenue_affected_total"]) == (3, 80.0)
    assert sla["revenue_per_customer_comparison"] == pytest.approx(100 / 3)
    assert sla["lost_revenue"] == pytest.approx(20.0)
    # the costliest first
    order = [r["rule"] for r in rows(warehouse, friction_impact_sql(since=STUDY[0],
                                                                    until=STUDY[1]))]  # fmt: skip
    assert order == sorted(got, key=lambda rule: -(got[rule]["lost_revenue"] or -math.inf))


def test_friction_impact_options(warehouse: Warehouse, store: Any) -> None:
    touchpoints, frictions = impact_data()
    store(touchpoints, frictions)
    spec = impact_funnel(["checkout_started", "purchase[revenue>35]"])
    built = friction_impact_sql(spec, since=STUDY[0], until=STUDY[1], retention_from_days=10,
                                retention_to_days=50, revenue_days=5)  # fmt: skip
    want = reference_impact(touchpoints, frictions, checkout_then_purchase(35),
                            retention=(10, 50), revenue_days=5)  # fmt: skip
    got = impact_rows(warehouse, built)
    assert_impact(got, want)
    assert got["sla_breach"]["conversion_affected"] == 0.0  # A1 bought for 30
    only = friction_impact_sql(since=STUDY[0], until=STUDY[1], rules=["checkout_abandoned"])
    assert list(impact_rows(warehouse, only)) == ["checkout_abandoned"]


def test_user_values_are_data_not_sql(warehouse: Warehouse, store: Any) -> None:
    touchpoints, frictions = impact_data()
    store(touchpoints, frictions)
    hostile = "x'); DROP TABLE touchpoints; --"
    spec = impact_funnel([f'checkout_started[topic="{hostile}"]', "purchase"])
    sql, params = friction_impact_sql(spec, since=STUDY[0], until=STUDY[1], rules=[hostile])
    assert hostile not in sql and "DROP" not in sql
    assert run_readonly(warehouse, sql, params).rows == []
    assert rows(warehouse, kpis_sql(since=T0, until=T0 + DAY))  # dates bound
    assert run_readonly(warehouse, "SELECT count() FROM touchpoints").scalar() == len(touchpoints)


# ---- the CLI ---------------------------------------------------------------------------


@pytest.fixture
def cli(
    warehouse: Warehouse, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> Iterator[Any]:
    monkeypatch.setenv("JOURNEY_CLICKHOUSE_DSN", f"chdb://{warehouse.location}")
    monkeypatch.setenv("JOURNEY_WORKER_PORT", str(free_port()))
    monkeypatch.setenv("COLUMNS", "240")

    def run(*argv: str) -> tuple[int, str, str]:
        code = 0
        try:
            main(list(argv))
        except SystemExit as exc:
            code = int(exc.code or 0)
        out, err = capsys.readouterr()
        return code, out, err

    yield run


def test_cli_kpis(warehouse: Warehouse, store: Any, cli: Any) -> None:
    touchpoints, frictions = kpi_data()
    store(touchpoints, frictions)
    sla = ["--sla", "phone=1h/8h", "--sla", "chat=5m/1h", "--sla", "default=24h/3d"]
    code, out, err = cli("kpis", "--by", "channel,week", *sla, "-f", "json")
    assert code == 0, err
    data = json.loads(out)
    assert data["by"] == ["channel", "week"]
    dims = (Dimension.channel, Dimension.week)
    got = {(r["channel"], r["period"]): {k: r[k] for k in KPI_COLUMNS} for r in data["rows"]}
    assert_same(got, reference_kpis(touchpoints, frictions, dims, DEADLINES, DEFAULT))
    code, out, err = cli("kpis", "--by", "channel", *sla, "-f", "csv")
    assert code == 0, err
    header, *lines = out.splitlines()
    assert header.startswith("channel,customers,cases,csat_answers,csat,")
    assert "frictions.sla_breach" in header and "friction_per_1000.repeat_contact" in header
    assert len(lines) == len(reference_kpis(touchpoints, frictions, (Dimension.channel,),
                                            DEADLINES, DEFAULT))  # fmt: skip
    code, out, err = cli("kpis", "--by", "week", "--since", "2024-05-01", "--show-sql")
    assert code == 0, err
    assert "CX metrics" in out and "2024-04-29" in out
    assert "toMonday(at)" in err and '"since": "2024-05-01T00:00:00+00:00"' in err
    code, out, err = cli("kpis", "--by", "nonsense")
    assert (code, out) == (1, "")
    assert err.strip().count("\n") == 0 and err.startswith("error: --by: cannot group by")
    code, _, err = cli("kpis", "--sla", "phone=soon")
    assert (
        code == 1
        and err.strip().count("\n") == 0
        and err.startswith("error: --sla: write CHANNEL=")
    )


def test_cli_friction_impact(warehouse: Warehouse, store: Any, cli: Any) -> None:
    touchpoints, frictions = impact_data()
    store(touchpoints, frictions)
    period = ["--since", STUDY[0].isoformat(), "--until", STUDY[1].isoformat()]
    code, out, err = cli("friction", "impact", *period, "-f", "json")
    assert code == 0, err
    data = json.loads(out)
    assert data["funnel"] == ["checkout_started", "purchase"]
    assert_impact({r["rule"]: r for r in data["rules"]},
                  reference_impact(touchpoints, frictions, checkout_then_purchase()))  # fmt: skip
    code, out, err = cli("friction", "impact", *period, "--funnel",
                         "checkout_started,purchase[revenue>35]", "-f", "csv")  # fmt: skip
    assert code == 0, err
    assert out.splitlines()[0] == ",".join(IMPACT_COLUMNS)
    code, out, err = cli("friction", "impact", *period, "--step", "checkout_started",
                         "--step", "purchase")  # fmt: skip
    assert code == 0, err
    assert "sla_breach" in out and "█" in out and "20.00" in out
    code, out, err = cli("friction", "impact", "--funnel", "checkout_started,purchse")
    assert code == 1 and err.strip().count("\n") == 0 and "did you mean purchase" in err
    code, _, err = cli("friction", "impact", "--funnel", "a", "--step", "b")
    assert code == 1 and "not both" in err


def test_kpis_and_impact_follow_retractions(warehouse: Warehouse) -> None:
    """Friction written as the sink writes the friction topic: a retraction hides its
    friction from the KPIs and the impact table, as if it had never been published."""
    def write(touchpoints: list[Record], frictions: list[Record], rule: str) -> list[Record]:
        insert_touchpoints(warehouse, touchpoints)
        insert_friction_json(warehouse, [orjson.dumps(f) for f in frictions])
        retracted = [f for f in frictions if f["rule"] == rule][:2]
        assert retracted, f"the data set holds {rule} friction"
        later = [{**f, "status": "retracted", "detected_at": (_at(f) + HOUR).isoformat()}
                 for f in retracted]
        insert_friction_json(warehouse, [orjson.dumps(f) for f in later])
        return [f for f in frictions if f not in retracted]

    touchpoints, frictions = kpi_data()
    standing = write(touchpoints, frictions, "sla_breach")
    for dimensions in ((), (Dimension.channel,)):
        built = kpis_sql(by=dimensions, deadlines=DEADLINES, default_deadline=DEFAULT)
        got = by_key(rows(warehouse, built), dimensions)
        assert_same(got, reference_kpis(touchpoints, standing, dimensions, DEADLINES, DEFAULT,
                                        None, None))

    for table in (TOUCHPOINTS, FRICTION):
        warehouse.command(f"TRUNCATE TABLE {table}")
    touchpoints, frictions = impact_data()
    standing = write(touchpoints, frictions, "sla_breach")
    got = impact_rows(warehouse, friction_impact_sql(since=STUDY[0], until=STUDY[1]))
    assert_impact(got, reference_impact(touchpoints, standing, checkout_then_purchase()))
