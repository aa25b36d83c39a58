"""Progress of every long step on stderr: rich bars on a terminal, plain lines now and then elsewhere."""

from __future__ import annotations

import os
import time

from rich.progress import (
    BarColumn, MofNCompleteColumn, Progress, SpinnerColumn, Task, TaskID, TextColumn, TimeElapsedColumn, TimeRemainingColumn,
)

from kochat_data.console import stderr_console

# Seconds between plain progress lines when stderr is a file or a pipe (a log, CI).
PLAIN_INTERVAL_ENV = "KOCHAT_PROGRESS_SECONDS"
DEFAULT_PLAIN_INTERVAL = 30.0


def clock(seconds: float | None) -> str:
    """0:42, 12:05, 1:02:03."""
    if seconds is None:
        return "?"
    minutes, secs = divmod(int(seconds), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours}:{minutes:02d}:{secs:02d}" if hours else f"{minutes}:{secs:02d}"


def plain_line(task: Task) -> str:
    """One progress line: what, how far, how fast, how long until done."""
    if task.total:
        done = f"{task.completed:.0f}/{task.total:.0f} ({task.completed / task.total:.0%})"
    else:
        done = f"{task.completed:.0f}"
    rate = f", {task.speed:.2f}/s" if task.speed else ""
    left = f", {clock(task.time_remaining)} left" if task.total and task.time_remaining is not None and not task.finished else ""
    return f"{task.description}: {done}{rate}, {clock(task.elapsed)} elapsed{left}"


class LoggingProgress(Progress):
    """A rich Progress that, off a terminal (where the bar does not render), prints a plain line per
    task every `interval` seconds and once when a task that took longer ends, so a run captured to
    a file shows that it is alive and how long it has to go."""

    def __init__(self, *columns, interval: float, **kwargs):
        super().__init__(*columns, **kwargs)
        self.off_terminal = not self.console.is_terminal
        self.plain = self.off_terminal and not self.disable
        self.interval = interval
        self.last_line: dict[TaskID, float] = {}

    def add_task(self, description: str, *args, **kwargs) -> TaskID:
        task_id = super().add_task(description, *args, **kwargs)
        self.last_line[task_id] = time.monotonic()
        return task_id

    def update(self, task_id: TaskID, *args, **kwargs) -> None:
        super().update(task_id, *args, **kwargs)
        self._maybe_print(task_id)

    def advance(self, task_id: TaskID, advance: float = 1) -> None:
        super().advance(task_id, advance)
        self._maybe_print(task_id)

    def start(self) -> None:
        if not self.off_terminal:  # off a terminal the live display renders nothing but a blank line when it stops
            super().start()

    def stop(self) -> None:
        if self.plain:
            for task in self.tasks:
                if task.completed and (task.elapsed or 0) >= self.interval:  # a quick step needs no line
                    self.console.print(plain_line(task), markup=False, highlight=False)
            self.plain = False  # stop may be called twice (context manager and callback)
        if not self.off_terminal:
            super().stop()

    def _maybe_print(self, task_id: TaskID) -> None:
        now = time.monotonic()
        if self.plain and now - self.last_line.get(task_id, now) >= self.interval:
            self.last_line[task_id] = now
            task = next(task for task in self.tasks if task.id == task_id)
            self.console.print(plain_line(task), markup=False, highlight=False)


def progress_bar(enabled: bool = True) -> Progress:
    """A transient bar with time left on stderr, or plain lines off a terminal; `enabled=False`
    gives a silent one (the other ranks of a torchrun job)."""
    return LoggingProgress(
        SpinnerColumn(),
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
        console=stderr_console,
        transient=True,
        disable=not enabled,
        interval=float(os.environ.get(PLAIN_INTERVAL_ENV, DEFAULT_PLAIN_INTERVAL)),
    )
