"""Errors meant for people: one line each, file and record, what was expected and found."""

from __future__ import annotations

from dataclasses import dataclass

EXIT_OK = 0
EXIT_INVALID = 1
EXIT_USAGE = 2


@dataclass(frozen=True)
class Problem:
    """One thing wrong with one record (or with a file, when `record` is None)."""

    path: str
    line: int | None
    record: int | None
    field: str | None
    message: str

    def detail(self) -> str:
        """What is wrong, without the location: `field 'X': expected …, got …`."""
        return self.message if self.field is None else f"field '{self.field}': {self.message}"

    def __str__(self) -> str:
        where = f"{self.path}:{self.line}:" if self.line is not None else f"{self.path}:"
        record = f" record {self.record}:" if self.record is not None else ""
        return f"{where}{record} {self.detail()}"


class KochatError(Exception):
    """A user error: reported as its message lines, never as a traceback."""

    exit_code = EXIT_USAGE

    def lines(self) -> list[str]:
        return [str(self)]


class UsageError(KochatError):
    """Bad arguments, or a file that cannot be read as records (exit 2)."""


class InvalidDataError(KochatError):
    """Records that break the schema (exit 1); carries every problem found."""

    exit_code = EXIT_INVALID

    def __init__(self, problems: list[Problem], summary: str = ""):
        self.problems = problems
        self.summary = summary
        super().__init__(summary or f"{len(problems)} problems")

    def lines(self) -> list[str]:
        return [str(problem) for problem in self.problems] + ([self.summary] if self.summary else [])


class Interrupted(KochatError):
    """A stage stopped by SIGINT or SIGTERM after saving a checkpoint (`kochat_train.interrupts`); the CLI names
    the command that goes on from it."""

    exit_code = 130  # 128 + SIGINT, as the shell reports an interrupted command

    def __init__(self, message: str, resume_hint: str = "the same command with --resume"):
        self.message, self.resume_hint = message, resume_hint
        super().__init__(message)

    def lines(self) -> list[str]:
        return [f"{self.message}; to go on: {self.resume_hint}"]
