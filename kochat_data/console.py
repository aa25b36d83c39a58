"""The one way kochat makes rich consoles: messages never wrap, and a closed pipe ends the command quietly."""

from __future__ import annotations

from rich.console import Console


class KochatConsole(Console):
    def on_broken_pipe(self) -> None:
        # rich's own handling exits with status 1; the CLI turns this into the shell's 141, quietly.
        raise BrokenPipeError


def make_console(stderr: bool = False, soft_wrap: bool = True) -> Console:
    """A console on stdout (or stderr); with soft_wrap a message line stays one line, whatever the width."""
    return KochatConsole(stderr=stderr, soft_wrap=soft_wrap)


stderr_console = make_console(stderr=True)
