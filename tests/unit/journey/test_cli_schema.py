"""`journey schema export|list` through the real entry point, as a person runs them."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from journey.cli import main
from journey.cli.schema import envelope_requirements, required_properties
from schemas.catalogue import CATALOGUE
from schemas.export import json_schemas


def run(argv: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    """Exit code, stdout and stderr of `journey <argv>`."""
    code = 0
    try:
        main(argv)
    except SystemExit as exc:
        code = int(exc.code or 0)
    out, err = capsys.readouterr()
    return code, out, err


def test_export_writes_every_schema_as_json(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    target = tmp_path / "contract" / "v1"  # parents are created too
    code, out, err = run(["schema", "export", str(target)], capsys)
    assert code == 0, err
    listed = [Path(line) for line in out.splitlines()]
    expected_names = set(json_schemas())
    assert {p.name for p in listed} == expected_names
    assert {p.name for p in target.iterdir()} == expected_names
    for path in listed:
        assert path.parent == target
        schema = json.loads(path.read_text())
        assert schema["$schema"].startswith("https://json-schema.org/")
        assert schema["$id"].endswith(path.name)
    assert err.strip() == f"{len(expected_names)} schema files written to {target}"


def test_export_twice_overwrites(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert run(["schema", "export", str(tmp_path)], capsys)[0] == 0
    code, out, _ = run(["schema", "export", str(tmp_path)], capsys)
    assert code == 0
    assert len(out.splitlines()) == len(json_schemas())


def test_export_to_a_file_is_a_one_line_error(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    taken = tmp_path / "notes.txt"
    taken.write_text("keep me")
    code, out, err = run(["schema", "export", str(taken)], capsys)
    assert code != 0
    assert out == ""
    assert len(err.splitlines()) == 1
    assert err.startswith("error: ") and str(taken) in err and "is a file" in err
    assert "Traceback" not in err
    assert taken.read_text() == "keep me"


def test_export_below_a_file_is_a_one_line_error(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    taken = tmp_path / "notes.txt"
    taken.write_text("")
    code, out, err = run(["schema", "export", str(taken / "schemas")], capsys)
    assert code != 0
    assert out == ""
    assert len(err.splitlines()) == 1
    assert err.startswith("error: cannot write the schemas to ")


def test_export_needs_a_directory(capsys: pytest.CaptureFixture[str]) -> None:
    code, _, err = run(["schema", "export"], capsys)
    assert code == 2
    assert len(err.splitlines()) == 1 and "Missing argument 'DIR'" in err


def test_list_shows_the_catalogue(capsys: pytest.CaptureFixture[str]) -> None:
    # piped (as under capture): plain columns, one row per line, the type first
    code, out, err = run(["schema", "list"], capsys)
    assert code == 0, err
    lines = out.splitlines()
    assert "│" not in out and "\x1b" not in out
    for name, kind in CATALOGUE.items():
        (line,) = [ln for ln in lines if ln.split()[:1] == [name]]
        assert f" {kind.area.value} " in line
        for prop in required_properties(kind):
            assert prop in line
    (purchase,) = [ln for ln in lines if ln.split()[:1] == ["purchase"]]
    assert "order_id, revenue, currency" in purchase
    assert f"{len(CATALOGUE)} touchpoint types" in out


def test_requirements_follow_the_contract() -> None:
    assert required_properties(CATALOGUE["add_to_cart"]) == ["product_id", "quantity"]
    assert required_properties(CATALOGUE["identify"]) == []
    assert envelope_requirements(CATALOGUE["identify"]) == ["customer_id", "anonymous_id"]
    assert envelope_requirements(CATALOGUE["support_contact"]) == ["case_id"]
    assert envelope_requirements(CATALOGUE["billing_inquiry"]) == ["case_id"]
    assert envelope_requirements(CATALOGUE["page_view"]) == []
