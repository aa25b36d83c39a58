"""Turn a file into located records: JSON array, JSON Lines or the KoChatGPT conversation file.

The reader never judges the records (that is `schema`); it only says where each one starts
and, for a record that is not even JSON, why it could not be parsed.
"""

from __future__ import annotations

import codecs
import functools
import hashlib
import json
import re
from collections.abc import Iterator
from dataclasses import dataclass
from enum import Enum
from pathlib import Path

from kochat_data.errors import UsageError

CONVERSATION_MARK = "<<start conversation>>"
_WHITESPACE = re.compile(r"[ \t\r\n]*")
# Where the next record of a broken JSON array may start: a ',' then its '{'. Pretty-printed
# arrays (the KoChatGPT files) have a line break there, and a raw line break cannot sit inside
# a JSON string, so that boundary is never found inside a text.
_NEXT_RECORD_ON_NEW_LINE = re.compile(r",[ \t\r]*\n[ \t\r\n]*\{")
_NEXT_RECORD = re.compile(r",[ \t\r\n]*\{")
_CONVERSATION_TURN = re.compile(r"^<(사람|챗봇)>:[ \t]?(.*)$")
HUMAN, BOT = "사람", "챗봇"


class FileFormat(str, Enum):
    JSON_ARRAY = "json-array"
    JSON_LINES = "jsonl"
    CONVERSATION = "conversation"
    CSV = "csv"
    PARQUET = "parquet"
    ARROW = "save_to_disk"
    HUB = "hub"


@dataclass(frozen=True)
class SourceRecord:
    """One record as found in a file; `error` says why it could not be parsed."""

    index: int
    """1-based position of the record in its file."""
    line: int
    """1-based line on which the record starts."""
    data: object = None
    error: str | None = None


def read_bytes(path: Path) -> bytes:
    """The file's bytes; a missing file, a directory or a file we may not read is a usage error."""
    try:
        return path.read_bytes()
    except FileNotFoundError:
        raise UsageError(f"{path}: no such file") from None
    except IsADirectoryError:
        raise UsageError(f"{path}: is a directory, expected a data file") from None
    except PermissionError:
        raise UsageError(f"{path}: permission denied") from None


def read_text(path: Path) -> tuple[str, str]:
    """The file as text (UTF-8 with or without BOM; anything else is a usage error) and its sha256."""
    raw = read_bytes(path)
    if raw.startswith((codecs.BOM_UTF16_LE, codecs.BOM_UTF16_BE)):
        raise UsageError(f"{path}: UTF-16 text; kochat reads UTF-8 (iconv -f utf-16 -t utf-8 {path})")
    try:
        return raw.decode("utf-8-sig"), hashlib.sha256(raw).hexdigest()
    except UnicodeDecodeError as err:
        message = f"{path}: not UTF-8 (byte 0x{raw[err.start]:02x} at offset {err.start})"
        if _decodes_as_cp949(raw):
            message += f"; it looks like CP949/EUC-KR: convert it with iconv -f cp949 -t utf-8 {path}"
        raise UsageError(message) from None


def _decodes_as_cp949(raw: bytes) -> bool:
    try:
        raw.decode("cp949")
    except UnicodeDecodeError:
        return False
    return True


def detect_format(path: Path, text: str) -> FileFormat:
    """The file format from its content (the KoChatGPT `.jsonl` files are JSON arrays)."""
    head = text.lstrip()
    if not head:
        raise UsageError(f"{path}: empty file, expected JSON records")
    if head.startswith("["):
        return FileFormat.JSON_ARRAY
    if head.startswith(CONVERSATION_MARK):
        return FileFormat.CONVERSATION
    if head.startswith("{"):
        _reject_single_object(path, text, head.split("\n", 1)[0])
        return FileFormat.JSON_LINES
    first_line = head.split("\n", 1)[0]
    if "," in first_line or "\t" in first_line:
        raise UsageError(
            f"{path}: looks like CSV/TSV (first line {first_line[:60]!r}), not JSON; "
            "expected a JSON array or JSON Lines of records (a CSV file is read as one when named .csv or .tsv)"
        )
    raise UsageError(f"{path}: not JSON (starts with {head[:40]!r}); expected a JSON array or JSON Lines")


def _reject_single_object(path: Path, text: str, first_line: str) -> None:
    """A pretty-printed top-level object is not JSON Lines: say what it is."""
    try:
        json.loads(first_line)
        return
    except ValueError:
        pass
    try:
        value = json.loads(text)
    except ValueError:
        return  # broken lines are reported one by one as JSON Lines records
    keys = ", ".join(list(value)[:6])
    raise UsageError(
        f"{path}: one top-level JSON object (keys: {keys}), not records; "
        "expected a JSON array of records or JSON Lines"
    )


def read_records(path: Path) -> tuple[FileFormat, str, Iterator[SourceRecord]]:
    """The file's format, its sha256 and its records, located by index and line."""
    text, sha256 = read_text(path)
    file_format = detect_format(path, text)
    parse = {
        FileFormat.JSON_ARRAY: functools.partial(_iter_json_array, path=path),
        FileFormat.JSON_LINES: _iter_json_lines,
        FileFormat.CONVERSATION: _iter_conversation,
    }[file_format]
    return file_format, sha256, parse(text)


def _iter_json_array(text: str, path: Path) -> Iterator[SourceRecord]:
    # json.loads would parse faster but loses where each record starts; raw_decode walks the
    # array one element at a time so every record (and every syntax error) has its line.
    decode = json.JSONDecoder().raw_decode
    boundary = _NEXT_RECORD_ON_NEW_LINE if "\n" in text.strip() else _NEXT_RECORD
    position = _WHITESPACE.match(text, text.index("[") + 1).end()
    line_of = _LineCounter(text)
    index = 0
    if text.startswith("]", position):
        yield from _check_end(text, position + 1, index)
        return
    while True:
        index += 1
        try:
            value, end = decode(text, position)
        except json.JSONDecodeError as err:
            problem = f"invalid JSON: {err.msg} (line {err.lineno} column {err.colno})"
            position, index = yield from _skip_broken(text, path, position, index, problem, boundary, decode, line_of)
            if position is None:
                return
            continue
        yield SourceRecord(index, line_of(position), value)
        after = _WHITESPACE.match(text, end).end()
        if text.startswith("]", after):
            yield from _check_end(text, after + 1, index)
            return
        if not text.startswith(",", after):
            problem = f"invalid JSON: expected ',' or ']' after record {index}"
            position, index = yield from _skip_broken(text, path, after, index + 1, problem, boundary, decode, line_of)
            if position is None:
                return
            continue
        position = _WHITESPACE.match(text, after + 1).end()


def _skip_broken(text: str, path: Path, start: int, index: int, problem: str, boundary: re.Pattern, decode, line_of):
    """Reject the broken span from `start` up to the next record that parses; returns where
    reading goes on and the index of the last record rejected, or (None, index) at the end.

    Each later record start inside the span that does not parse either is a rejected record of
    its own, so the count never drops below the file's. With no record to go on from and no
    closing ']' either, what follows cannot be located: the file is refused from that line.
    """
    pieces = [(start, problem)]  # (where a rejected record starts, why)
    ends = []  # where each of them ends: the ',' before the next record
    resume = None
    for match in boundary.finditer(text, start + 1):
        candidate = match.end() - 1
        ends.append(match.start())
        try:
            value, _ = decode(text, candidate)
        except json.JSONDecodeError as err:
            pieces.append((candidate, f"invalid JSON: {err.msg} (line {err.lineno} column {err.colno})"))
            continue
        if isinstance(value, dict):  # what follows it is the main loop's to check
            resume = candidate
            break
        pieces.append((candidate, f"expected a JSON object, got {type(value).__name__}"))
    if resume is None:
        closing = text.rstrip().rfind("]")
        if closing < start or text[closing + 1 :].strip():
            raise UsageError(f"{path}:{line_of(start)}: {problem}; no record could be located after it "
                             f"(is the file cut short?), so nothing from line {line_of(start)} on was read")
        ends.append(closing - 1)
    for number, ((first, reason), last) in enumerate(zip(pieces, ends, strict=False)):
        first_line, last_line = line_of(first), line_of(max(first, last))
        yield SourceRecord(index + number, first_line, error=f"{reason}; record skipped (lines {first_line}–{last_line})")
    return resume, index + len(pieces) - 1


class _LineCounter:
    """Line numbers of increasing positions, counting each stretch of text once (a whole-file
    count per record would make reading quadratic)."""

    def __init__(self, text: str):
        self.text, self.position, self.line = text, 0, 1

    def __call__(self, position: int) -> int:
        if position < self.position:
            return 1 + self.text.count("\n", 0, position)
        self.line += self.text.count("\n", self.position, position)
        self.position = position
        return self.line


def _check_end(text: str, position: int, index: int) -> Iterator[SourceRecord]:
    rest = _WHITESPACE.match(text, position).end()
    if rest < len(text):
        line = 1 + text.count("\n", 0, rest)
        yield SourceRecord(index + 1, line, error="invalid JSON: extra data after the closing ']'")


def _iter_json_lines(text: str) -> Iterator[SourceRecord]:
    index = 0
    for line_number, line in enumerate(text.split("\n"), start=1):
        if not line.strip():
            continue
        index += 1
        try:
            yield SourceRecord(index, line_number, json.loads(line))
        except json.JSONDecodeError as err:
            yield SourceRecord(index, line_number, error=f"invalid JSON: {err.msg} (column {err.colno})")


def _iter_conversation(text: str) -> Iterator[SourceRecord]:
    """Each bot turn becomes one SFT record whose prompt is the dialogue before it."""
    index = 0
    for turns in _conversation_blocks(text):
        for position, (speaker, turn_text, line) in enumerate(turns):
            if speaker != BOT:
                continue
            index += 1
            history = turns[:position]
            if not any(earlier == HUMAN for earlier, _, _ in history):
                yield SourceRecord(index, line, error="conversation: <챗봇> turn before any <사람> turn")
                continue
            yield SourceRecord(index, line, {"prompt": _render_history(history), "completion": turn_text})


def _conversation_blocks(text: str) -> Iterator[list[tuple[str, str, int]]]:
    """Blocks of (speaker, text, line) turns; untagged lines continue the turn above them."""
    turns: list[tuple[str, str, int]] = []
    for line_number, line in enumerate(text.split("\n"), start=1):
        if line.startswith(CONVERSATION_MARK):
            if turns:
                yield turns
            turns = []
            continue
        match = _CONVERSATION_TURN.match(line)
        if match:
            turns.append((match.group(1), match.group(2).strip(), line_number))
        elif line.strip() and turns:
            speaker, previous, start = turns[-1]
            turns[-1] = (speaker, f"{previous}\n{line.strip()}", start)
    if turns:
        yield turns


def _render_history(history: list[tuple[str, str, int]]) -> str:
    return render_dialogue([(speaker, turn_text) for speaker, turn_text, _ in history])


def render_dialogue(turns: list[tuple[str, str]]) -> str:
    """The prompt a bot turn answers: a lone first question as it is, a longer dialogue as
    `<사람>: …` / `<챗봇>: …` lines (speakers HUMAN and BOT), as the conversation file's records are built."""
    if len(turns) == 1:
        return turns[0][1]
    return "\n".join(f"<{speaker}>: {turn_text}" for speaker, turn_text in turns)
