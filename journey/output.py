"""Terminal output: data printed as it is (no markup, no emoji) and never cut short.

Every table and console of the shell comes from here. Data cells are plain text: a
value such as `[/]` or `root:x:0` prints as written, never as Rich markup or an emoji.
On a terminal, tables are Rich tables whose columns fold rather than end in an ellipsis
(a cut number reads as a wrong number); piped or redirected, they are plain text
columns as wide as their values, with no colour, box or width limit.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from rich.console import Console, ConsoleOptions, RenderResult
from rich.segment import Segment
from rich.table import Table
from rich.text import Text

# A pipe or a file has no width: nothing wraps or is cut.
PIPE_WIDTH = 1_000_000
COLUMN_GAP = "  "


def make_console(*, stderr: bool = False, **options: Any) -> Console:
    """A console that prints text as given: no emoji codes, no highlighting, and as wide
    as the text when it writes to a pipe or a file. Rich markup in the program's own
    strings still works; data belongs in a Text, in `plain(...)` or escaped."""
    console = Console(stderr=stderr, emoji=False, highlight=False, **options)
    if not console.is_terminal:
        console.width = PIPE_WIDTH
    return console


def plain(value: Any) -> Text:
    """A value as text that is never read as markup."""
    return value if isinstance(value, Text) else Text("" if value is None else str(value))


class DataTable(Table):
    """A Rich table whose cells and title are text as given, and that never truncates.

    Strings are cells, not markup: style a cell by passing a Text. Columns fold instead
    of ending in an ellipsis. Rendered to anything but a terminal, the table is plain
    text: the title, the headers, a rule of dashes and one line per row (more when a
    cell holds line breaks), columns two spaces apart, numbers aligned right.
    """

    def __init__(self, *headers: str, title: str | Text | None = None, **options: Any) -> None:
        options.setdefault("header_style", "bold")
        super().__init__(*headers, title=plain(title) if title is not None else None, **options)
        self._plain_rows: list[list[str]] = []

    def add_column(self, header: Any = "", *args: Any, **options: Any) -> None:
        options.setdefault("overflow", "fold")
        super().add_column(plain(header), *args, **options)

    def add_row(self, *cells: Any, **options: Any) -> None:
        texts = [plain(cell) for cell in cells]
        self._plain_rows.append([text.plain for text in texts])
        super().add_row(*texts, **options)

    def __rich_console__(self, console: Console, options: ConsoleOptions) -> RenderResult:
        if console.is_terminal:
            yield from super().__rich_console__(console, options)
            return
        for line in self.plain_lines():
            yield Segment(line + "\n")

    def plain_lines(self) -> list[str]:
        """The table as plain text lines (what a pipe or a file gets)."""
        headers = [plain(column.header).plain for column in self.columns]
        right = [column.justify == "right" for column in self.columns]
        rows = [[*row, *[""] * (len(headers) - len(row))] for row in self._plain_rows]
        widths = [
            max([len(line) for text in (header, *(row[i] for row in rows))
                 for line in text.split("\n")] or [0])
            for i, header in enumerate(headers)
        ]  # fmt: skip
        lines: list[str] = []
        if isinstance(self.title, Text) and self.title.plain:
            lines.append(self.title.plain)
        if self.show_header and any(headers):
            lines.append(_join(headers, widths, right))
            lines.append(_join(["-" * w for w in widths], widths, right))
        for row in rows:
            lines.extend(_row_lines(row, widths, right))
        if isinstance(self.caption, Text | str) and str(self.caption):
            lines.append(plain(self.caption).plain)
        return lines


def _join(cells: Iterable[str], widths: list[int], right: list[bool]) -> str:
    parts = [
        cell.rjust(width) if is_right else cell.ljust(width)
        for cell, width, is_right in zip(cells, widths, right, strict=True)
    ]
    return COLUMN_GAP.join(parts).rstrip()


def _row_lines(row: list[str], widths: list[int], right: list[bool]) -> list[str]:
    split = [cell.split("\n") for cell in row]
    height = max((len(lines) for lines in split), default=1)
    return [
        _join([lines[k] if k < len(lines) else "" for lines in split], widths, right)
        for k in range(height)
    ]
