"""Rich progress bars on stderr, shared by every long step."""

from __future__ import annotations

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, SpinnerColumn, TextColumn, TimeElapsedColumn

stderr_console = Console(stderr=True, soft_wrap=True)  # a message line stays one line, whatever the width


def progress_bar(enabled: bool = True) -> Progress:
    """A transient bar on stderr; `enabled=False` gives a silent one (the other ranks of a torchrun job)."""
    return Progress(
        SpinnerColumn(),
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        console=stderr_console,
        transient=True,
        disable=not enabled,
    )
