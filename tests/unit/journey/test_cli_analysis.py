"""journey paths, flows, retention and customer: options refused in one line, the
timeline's property summary."""

from __future__ import annotations

import json

import pytest

from journey.cli import main
from journey.cli.analysis import summarize_properties

HOSTILE = "x'; DROP TABLE touchpoints; --"


def run(argv: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    code = 0
    try:
        main(argv)
    except SystemExit as exc:
        code = int(exc.code or 0)
    out, err = capsys.readouterr()
    return code, out, err


@pytest.mark.parametrize(
    ("argv", "code", "message"),
    [
        (["paths", "--start-at", "site_visit", "--end-at", "purchase"], 1, "not both"),
        (["paths", "--start-at", "purchse"], 1, "did you mean purchase?"),
        (["paths", "--end-at", HOSTILE], 1, "is not a touchpoint type"),
        (["paths", "--exclude", "nope"], 1, "--exclude: 'nope' is not a touchpoint type"),
        (["paths", "--top", "0"], 2, "'--top'"),
        (["paths", "--max-length", "51"], 2, "'--max-length'"),
        (["paths", "--since", "yesterday"], 2, "is not a date or time"),
        (
            ["paths", "--since", "2024-05-02", "--until", "2024-05-01T00:00:00Z"],
            1,
            "--since must be earlier than --until",
        ),
        (["paths", "--format", "xml"], 2, "'--format'"),
        (["paths", "--start-at", "purchase", "--exclude", "purchase"], 1, "excluded"),
        (["flows", "--conversion", "buy"], 1, "--conversion: 'buy' is not a touchpoint type"),
        (["flows", "--top", "0"], 2, "'--top'"),
        (["retention", "--return-event", "everything"], 1, "--return-event"),
        (["retention", "--cohort-event", "signup"], 1, "--cohort-event"),
        (["retention", "--period", "day"], 2, "'--period'"),
        (["retention", "--periods", "121"], 2, "'--periods'"),
        (["customer", ""], 1, "give a customer id or an anonymous id"),
        (["customer", "c-1", "--limit", "0"], 2, "'--limit'"),
        (["customer", "c-1", "--format", "csv"], 2, "'--format'"),
    ],
)
def test_cli_refuses_bad_options_in_one_line(
    argv: list[str], code: int, message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    # every one is refused before any warehouse or worker is reached
    got, out, err = run(argv, capsys)
    assert got == code, err
    assert out == ""
    assert len(err.strip().splitlines()) == 1, err
    assert err.startswith("error: ") and message in err


def test_summary_puts_the_required_properties_first() -> None:
    properties = json.dumps(
        {"items": [1, 2], "currency": "EUR", "revenue": "19.99", "order_id": "o-1", "gift": True}
    )
    assert summarize_properties("purchase", properties) == (
        "order_id=o-1, revenue=19.99, currency=EUR, items=[2], gift=true"
    )
    assert summarize_properties("unknown_type", {"a": {"b": 1}}) == "a={…}"
    assert summarize_properties("page_view", "not json") == "not json"
    long = summarize_properties("page_view", {"url": "x" * 200})
    assert len(long) == 72 and long.endswith("…")
