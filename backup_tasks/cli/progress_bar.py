"""The live bar of ``backupctl backup --wait`` and ``backupctl restore``: one line per stage with bytes and rate.

It draws on stderr, and only for people: in human mode with stderr on a terminal.
With ``--json``, or when stderr is a file or a pipe, it is off and nothing changes in
the output. The bar is fed progress reports (progress.KEYS): from the worker's PROGRESS
state through ``client.Run.wait``, from in-process listeners when the chain runs
embedded, or from the restore's own byte count.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from backup_tasks.cli.output import Output

if TYPE_CHECKING:
    from rich.progress import Progress, TaskID

#: catalog stages that are not work with bytes: shown as the run's state, not as bars
_NO_BYTES = ("queued", "start", "done")


def _progress(console) -> Progress:
    """rich's live display with our columns, imported only when a bar is drawn: --json and pipes start without rich."""
    from rich.progress import BarColumn, DownloadColumn, Progress, ProgressColumn, TextColumn, TimeElapsedColumn
    from rich.text import Text

    class _Rate(ProgressColumn):
        """Bytes per second over the stage so far.

        Rich's own speed column needs several samples a second; a stage reports about once
        a second, and a short one only at its start, so the average since the stage began
        is the honest figure.
        """

        def render(self, task) -> Text:
            elapsed = task.finished_time if task.finished_time is not None else task.elapsed
            if not elapsed or not task.completed:
                return Text("", style="progress.data.speed")
            rate = task.completed / elapsed
            for unit in ("B", "KiB", "MiB", "GiB"):
                if rate < 1024 or unit == "GiB":
                    return Text(f"{rate:.1f} {unit}/s", style="progress.data.speed")
                rate /= 1024
            return Text("")

    return Progress(TextColumn("[bold]{task.description:<9}"), BarColumn(), DownloadColumn(binary_units=True),
                    _Rate(), TimeElapsedColumn(), console=console, transient=False)


class StageBar:
    def __init__(self, out: Output, title: str, *, wanted: bool = True) -> None:
        self.enabled = wanted and not out.json_mode and out.err.is_terminal
        self._title = title
        self._rows: dict[str, TaskID] = {}
        self._current: str | None = None
        self._progress = _progress(out.err) if self.enabled else None

    def __enter__(self) -> "StageBar":
        if self._progress is not None:
            self._progress.console.print(self._title, markup=False, highlight=False)
            self._progress.start()
        return self

    def __exit__(self, *exc) -> None:
        if self._progress is not None:
            self._finish_current()
            self._progress.stop()
            self._progress = None  # drawn once; later reports are ignored

    def update(self, report: dict) -> None:
        """Take one progress report (a dict with stage, bytes_done, bytes_total)."""
        if self._progress is None:
            return
        stage = report.get("stage") or "?"
        if stage in _NO_BYTES:
            if stage == "done":
                self._finish_current()
            return
        if stage != self._current:
            # A dump cannot know its size while it runs; the next stage's input is its output.
            self._finish_current(report.get("bytes_total"))
            self._rows[stage] = self._progress.add_task(stage, total=report.get("bytes_total"))
            self._current = stage
        self._progress.update(self._rows[stage], completed=report.get("bytes_done") or 0, total=report.get("bytes_total"))

    def callback(self, stage: str, bytes_done: int, bytes_total: int | None) -> None:
        """The same, as a progress callback (progress.Callback) for work running in this process."""
        self.update({"stage": stage, "bytes_done": bytes_done, "bytes_total": bytes_total})

    def _finish_current(self, size_hint: int | None = None) -> None:
        """A stage that ended shows as full, whatever its last sampled byte count was."""
        if self._current is None:
            return
        row = self._rows[self._current]
        task = next(t for t in self._progress.tasks if t.id == row)
        total = task.total if task.total is not None else (size_hint or task.completed)
        self._progress.update(row, total=total, completed=total)
        self._progress.stop_task(row)
        self._current = None
