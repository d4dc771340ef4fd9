"""Tables print data as it is, never cut short: on a terminal and in a pipe."""

from __future__ import annotations

import io

import pytest
from rich.console import Console
from rich.text import Text

from journey.output import PIPE_WIDTH, DataTable, make_console

TRICKY = ["[/]", "[bold]x[/bold]", "root:x:0:0:root:/root:/bin/bash", ":smile: :thumbs_up:",
          "a\\b [red]", "[link=http://x]y[/link]"]  # fmt: skip
NUMBERS = ["1,452,331.25", "98765432109876543210", "-0.000001234"]


def table() -> DataTable:
    t = DataTable(title="values [/] :smile:")
    t.add_column("[value]")
    t.add_column("n", justify="right")
    for value, number in zip(TRICKY, [*NUMBERS, *NUMBERS], strict=True):
        t.add_row(value, number)
    t.add_row(Text("styled", style="red"), None)
    return t


def render(console: Console, renderable: object) -> str:
    console.print(renderable)
    file = console.file
    assert isinstance(file, io.StringIO)
    return file.getvalue()


def test_a_pipe_gets_plain_columns_with_every_value_whole() -> None:
    out = render(Console(file=io.StringIO(), width=PIPE_WIDTH), table())
    lines = out.splitlines()
    assert lines[0] == "values [/] :smile:"
    assert lines[1].split() == ["[value]", "n"]
    assert set(lines[2].replace(" ", "")) == {"-"}
    for value, number, line in zip(TRICKY, [*NUMBERS, *NUMBERS], lines[3:], strict=False):
        assert line.startswith(value) and line.endswith(number)
    assert lines[-1] == "styled"
    assert "\x1b" not in out and "…" not in out and "│" not in out
    # the numbers line up on the right
    assert len({len(line) for line in lines[3:-1]}) == 1


@pytest.mark.parametrize("width", [30, 60, 200])
def test_a_terminal_gets_a_rich_table_that_folds_and_never_reads_markup(width: int) -> None:
    console = Console(file=io.StringIO(), width=width, force_terminal=True, emoji=False,
                      color_system=None)
    out = render(console, table())
    assert "…" not in out
    # a folded cell continues on the next line, in its column
    columns = ["", ""]
    for line in out.splitlines():
        if line.startswith("│"):
            for k, fragment in enumerate(line.split("│")[1:-1]):
                columns[k] += fragment.replace(" ", "")
    for value in TRICKY:
        assert value.replace(" ", "") in columns[0]
    for number in NUMBERS:
        assert number in columns[1]
    assert "😄" not in out


def test_the_shells_console_prints_no_emoji_and_no_highlighting(
    capsys: pytest.CaptureFixture[str],
) -> None:
    console = make_console()
    assert not console.is_terminal  # captured: a pipe
    assert console.width == PIPE_WIDTH
    console.print(":smile: root:x:0 " + "9" * 300)
    assert capsys.readouterr().out == ":smile: root:x:0 " + "9" * 300 + "\n"


def test_multi_line_cells_keep_their_columns() -> None:
    t = DataTable()
    t.add_column("rule")
    t.add_column("thresholds")
    t.add_row("sla_breach", "chat 10m\nphone 1h")
    t.add_row("escalation", "-")
    assert t.plain_lines() == [
        "rule        thresholds",
        "----------  ----------",
        "sla_breach  chat 10m",
        "            phone 1h",
        "escalation  -",
    ]
