"""All CLI output goes through here: rich for people, one JSON document for scripts.

Library code never prints. In --json mode stdout carries exactly one JSON document,
errors included, and the exit code says whether it is a success.
"""

from __future__ import annotations

import json
import sys
from functools import cached_property
from typing import TYPE_CHECKING, Any, Callable

from backup_tasks.errors import BackupError

if TYPE_CHECKING:
    from rich.console import Console
    from rich.table import Table


class Output:
    """The consoles are made on first use: importing rich costs a command's start-up, and --json never prints through it."""

    def __init__(self, json_mode: bool) -> None:
        self.json_mode = json_mode

    @cached_property
    def console(self) -> Console:
        from rich.console import Console

        return Console(highlight=False, soft_wrap=True)

    @cached_property
    def err(self) -> Console:
        from rich.console import Console

        return Console(stderr=True, highlight=False, soft_wrap=True)

    def result(self, data: Any, human: Callable[[Console, Any], None]) -> None:
        if self.json_mode:
            sys.stdout.write(json.dumps(data, indent=2, default=str, ensure_ascii=False) + "\n")
        else:
            human(self.console, data)

    def error(self, err: BackupError) -> None:
        if self.json_mode:
            sys.stdout.write(json.dumps({"error": {**err.as_dict(), "exit_code": err.exit_code}}, indent=2) + "\n")
            return
        from rich.markup import escape

        self.err.print(f"[bold red]error:[/] {escape(err.message)}", markup=True, highlight=False)
        if err.remedy:
            self.err.print(f"[yellow]what to do:[/] {escape(err.remedy)}", markup=True, highlight=False)

    def note(self, text: str) -> None:
        """Progress and hints for people; silent in JSON mode so stdout stays one document."""
        if not self.json_mode:
            self.err.print(text, markup=False, highlight=False)


def print_table(console: Console, table: Table, *, whole: int = 0, optional: tuple[str, ...] = ()) -> None:
    """A table for people in which column ``whole`` (an id people copy) is never wrapped or cut.

    In a pipe or a file there is no screen to fit, so the table is printed at its natural
    width instead of rich's default 80 columns. On a narrower terminal the ``optional``
    columns are left out, in that order, until it fits; if it still does not, it is
    printed whole and the terminal wraps the lines, because a cut id cannot be copied.
    """
    col = table.columns[whole]
    col.no_wrap, col.overflow = True, "ignore"
    if console.is_terminal:
        for header in (None, *optional):
            if header is not None:  # a column holds its own cells: removing it removes them
                table.columns[:] = [c for c in table.columns if c.header != header]
            if _natural_width(console, table) <= console.width:
                return console.print(table)
    width = console.width
    try:
        console.width = max(width, _natural_width(console, table))
        console.print(table)
    finally:
        console.width = width


def _natural_width(console: Console, table: Table) -> int:
    return console.measure(table, options=console.options.update_width(1 << 16)).maximum
