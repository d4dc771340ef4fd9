"""CX metrics as a question: groupings, deadlines and the shaping of KPI rows."""

from __future__ import annotations

import pytest

from projections.analysis.kpis import (
    DEFAULT_DEADLINE,
    KPI_COLUMNS,
    Deadline,
    Dimension,
    KpiSpec,
    kpi_flat,
    kpi_records,
    parse_deadlines,
    parse_grouping,
)


@pytest.mark.parametrize(
    ("text", "dimensions"),
    [
        ("channel", (Dimension.channel,)),
        ("week", (Dimension.week,)),
        (" channel , week ", (Dimension.channel, Dimension.week)),
        ("day,channel", (Dimension.day, Dimension.channel)),
        ("total", ()),
        ("", ()),
    ],
)
def test_groupings(text: str, dimensions: tuple[Dimension, ...]) -> None:
    assert parse_grouping(text) == dimensions


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("nonsense", "cannot group by 'nonsense'"),
        ("channel,channel", "given twice"),
        ("day,week", "one period at most"),
        ("channel;DROP TABLE touchpoints", "cannot group by"),
    ],
)
def test_bad_groupings(text: str, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        parse_grouping(text)


def test_deadlines_must_be_positive() -> None:
    with pytest.raises(ValueError, match="positive"):
        Deadline(0, 10)
    with pytest.raises(ValueError, match="positive"):
        KpiSpec(deadlines={"chat": (10, -1)})


def test_kpi_shaping() -> None:
    columns = ["channel", *KPI_COLUMNS]
    row = ["chat", 4, 2, 1, 1.0, 0, None, 0, float("nan"), 1, 1.0, 60.0, 90.0, 600.0, 700.0,
           1, 1.0, 0.5, 0.5, {"sla_breach": 2}, {"sla_breach": 500.0}]  # fmt: skip
    other = ["web", 2, *([0] * 17), {"checkout_abandoned": 1}, {"checkout_abandoned": 500.0}]
    records = kpi_records(columns, [row, other])
    assert records[0]["ces"] is None and records[0]["nps"] is None
    flat_columns, flat_rows = kpi_flat(records)
    assert flat_columns[-4:] == [
        "frictions.checkout_abandoned", "frictions.sla_breach",
        "friction_per_1000.checkout_abandoned", "friction_per_1000.sla_breach",
    ]  # fmt: skip
    assert flat_rows[0][-4:] == [0, 2, None, 500.0]
    assert flat_rows[1][-4:] == [1, 0, 500.0, None]
    assert "frictions" not in flat_columns and flat_columns[0] == "channel"


def test_deadline_texts() -> None:
    named, default = parse_deadlines(["chat=5m/4h", "default=1h/2d", "phone=30m/8h"])
    assert named == {"chat": Deadline(300, 4 * 3600), "phone": Deadline(1800, 8 * 3600)}
    assert default == Deadline(3600, 2 * 86400)
    assert parse_deadlines([]) == ({}, DEFAULT_DEADLINE)
    for bad, message in [
        ("chat", "CHANNEL="),
        ("chat=5m", "CHANNEL="),
        ("=5m/1h", "CHANNEL="),
        ("chat=5x/1h", "chat: first response"),
        ("chat=1m/0s", "resolution"),
    ]:
        with pytest.raises(ValueError, match=message):
            parse_deadlines([bad])
