"""`journey samples helpdesk` through the real entry point, on a log written by the test."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from journey.cli import main
from schemas.codec import validate_touchpoint

LOG = """concept:name,lifecycle:transition,org:resource,time:timestamp,case:concept:name
Assign seriousness,complete,Value 2,2010-01-13 08:40:25+00:00,Case1
Take in charge ticket,complete,Value 3,2010-01-14 09:00:00+00:00,Case1
Resolve ticket,complete,Value 3,2010-01-15 10:00:00+00:00,Case1
Closed,complete,Value 3,2010-01-16 10:00:00+00:00,Case1
"""


def run(argv: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    code = 0
    try:
        main(argv)
    except SystemExit as exc:
        code = int(exc.code or 0)
    out, err = capsys.readouterr()
    return code, out, err


def test_the_log_becomes_valid_service_touchpoints(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    log = tmp_path / "Helpdesk.csv"
    log.write_text(LOG)
    code, out, err = run(["samples", "helpdesk", str(log), "--end", "original"], capsys)
    assert code == 0, err
    events = [json.loads(line) for line in out.splitlines()]
    # the first row opens the ticket: one contact, and no response at that same moment
    assert [e["type"] for e in events] == [
        "support_contact", "agent_response", "case_resolved"]
    assert events[1]["occurred_at"].startswith("2010-01-14T09:00:00")
    assert {e["case_id"] for e in events} == {"Case1"}
    assert events[0]["occurred_at"].startswith("2010-01-13T08:40:25")
    for event in events:
        validate_touchpoint(event)


def test_end_shifts_the_last_event_there(tmp_path: Path,
                                         capsys: pytest.CaptureFixture[str]) -> None:
    log = tmp_path / "Helpdesk.csv"
    log.write_text(LOG)
    code, out, err = run(["samples", "helpdesk", str(log), "--end", "2026-01-31T12:00:00Z"],
                         capsys)
    assert code == 0, err
    assert json.loads(out.splitlines()[-1])["occurred_at"].startswith("2026-01-31T12:00:00")


@pytest.mark.parametrize(("argv", "message"), [
    (["samples", "helpdesk", "/no/such/Helpdesk.csv"], "is not a file"),
    (["samples", "helpdesk", "{log}", "--end", "yesterday"], "--end: 'yesterday' is not"),
    (["samples", "helpdesk", "{other}"], "does not look like the help-desk log"),
])
def test_mistakes_get_one_line(argv: list[str], message: str, tmp_path: Path,
                               capsys: pytest.CaptureFixture[str]) -> None:
    log, other = tmp_path / "Helpdesk.csv", tmp_path / "other.csv"
    log.write_text(LOG)
    other.write_text("a,b\n1,2\n")
    argv = [a.format(log=log, other=other) for a in argv]
    code, _, err = run(argv, capsys)
    assert code == 1
    assert err.startswith("error: ") and message in err
    assert len(err.strip().splitlines()) == 1
