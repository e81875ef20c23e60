"""Progress that shows on a terminal *and* in a log file.

A rich `Progress` draws a live bar on a terminal, but with output redirected it prints nothing until
it stops: `recgpt evaluate > log` was silent for 24 minutes. `make_progress` returns the rich bar on a
terminal and otherwise a `LineProgress` with the same methods (`add_task`, `advance`, `update`,
`remove_task`, context manager) that prints one plain line per task when it starts, every `every`
seconds while it runs, and when it finishes::

    [progress] fit itemknn: 3/8 (0:01:30)
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field
from types import TracebackType
from typing import Any

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

DEFAULT_EVERY_S = 30.0


@dataclass
class _Task:
    description: str
    total: float | None
    completed: float = 0.0
    visible: bool = True
    started: float = field(default_factory=time.monotonic)
    finished: bool = False


def _clock(seconds: float) -> str:
    s = int(seconds)
    return f"{s // 3600}:{s % 3600 // 60:02d}:{s % 60:02d}"


def _count(x: float) -> str:
    return f"{x:,.0f}" if float(x).is_integer() else f"{x:,.1f}"


class LineProgress:
    """Plain progress lines for logs and pipes; the subset of `rich.progress.Progress` recgpt uses."""

    def __init__(self, console: Console, *, every: float = DEFAULT_EVERY_S, disable: bool = False) -> None:
        self.console = console
        self.every = every
        self.disable = disable
        self._tasks: dict[int, _Task] = {}
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    # -------------------------------------------------------------- the Progress interface
    def __enter__(self) -> LineProgress:
        self.start()
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()

    def start(self) -> None:
        """Start the ticker thread that prints the periodic lines."""
        if self.disable or self._thread is not None:
            return
        self._stop.clear()
        self._thread = threading.Thread(target=self._tick, name="recgpt-progress", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        """Stop the ticker (tasks left unfinished get no final line: they did not finish)."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
            self._thread = None

    def add_task(
        self,
        description: str,
        start: bool = True,
        total: float | None = 100.0,
        completed: float = 0,
        visible: bool = True,
        **fields: Any,
    ) -> int:
        """A new task; prints its first line."""
        with self._lock:
            task_id = len(self._tasks)
            task = _Task(description, total, completed, visible)
            self._tasks[task_id] = task
            self._emit(task)
            self._finish_if_done(task)
        return task_id

    def advance(self, task_id: int, advance: float = 1) -> None:
        """Count `advance` more steps done."""
        self.update(task_id, advance=advance)

    def update(
        self,
        task_id: int,
        *,
        total: float | None = None,
        completed: float | None = None,
        advance: float | None = None,
        description: str | None = None,
        visible: bool | None = None,
        refresh: bool = False,
        **fields: Any,
    ) -> None:
        """Change a task like `Progress.update`; a task that reaches its total prints its last line."""
        with self._lock:
            task = self._tasks[task_id]
            if total is not None:
                task.total = total
            if completed is not None:
                task.completed = completed
            if advance is not None:
                task.completed += advance
            if description is not None:
                task.description = description
            if visible is not None:
                task.visible = visible
            self._finish_if_done(task)

    def remove_task(self, task_id: int) -> None:
        """Forget a task (no more lines for it)."""
        with self._lock:
            self._tasks.pop(task_id, None)

    # ---------------------------------------------------------------------- the lines
    def line(self, task: _Task) -> str:
        """`[progress] <description>: <done>/<total> (<elapsed>)`."""
        total = "?" if task.total is None else _count(task.total)
        return (
            f"[progress] {task.description}: {_count(task.completed)}/{total} "
            f"({_clock(time.monotonic() - task.started)})"
        )

    def _emit(self, task: _Task) -> None:
        if not self.disable and task.visible:
            self.console.print(self.line(task), markup=False, highlight=False, soft_wrap=True)

    def _finish_if_done(self, task: _Task) -> None:
        if not task.finished and task.total is not None and task.completed >= task.total:
            task.finished = True
            self._emit(task)

    def _tick(self) -> None:
        while not self._stop.wait(self.every):
            with self._lock:
                for task in self._tasks.values():
                    if not task.finished:
                        self._emit(task)


def make_progress(
    console: Console, enabled: bool = True, *, every: float = DEFAULT_EVERY_S, transient: bool = False
) -> Progress | LineProgress:
    """A rich bar on a terminal, plain lines every `every` seconds otherwise; nothing when not `enabled`."""
    if console.is_terminal:
        return Progress(
            TextColumn("{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TimeElapsedColumn(),
            console=console,
            disable=not enabled,
            transient=transient,
        )
    return LineProgress(console, every=every, disable=not enabled)


__all__ = ["DEFAULT_EVERY_S", "LineProgress", "make_progress"]
