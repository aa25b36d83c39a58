"""Validate a file against its kind: kept records, every problem, and the rejects to write."""

from __future__ import annotations

import codecs
import hashlib
import itertools
import json
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import polars as pl
import pyarrow as pa

from kochat_data.columnar import read_clean_frame
from kochat_data.errors import InvalidDataError, Problem, UsageError
from kochat_data.reading import FileFormat, SourceRecord, detect_format, read_bytes, read_text
from kochat_data.tables import read_source, table_format
from kochat_data.schema import Kind, check_record, conversation_records, detect_kind

_KIND_DETECTION_WINDOW = 100


@dataclass
class ValidatedFile:
    path: Path
    kind: Kind
    file_format: FileFormat
    sha256: str
    records: list[dict] = field(default_factory=list)
    """Normalised valid records, each with its `index` and `line` in the file."""
    problems: list[Problem] = field(default_factory=list)
    rejects: list[dict] = field(default_factory=list)
    """One entry per rejected record: file, index, line, reason and the raw record."""
    total: int = 0
    """Records read, valid or not (kept even when a consumer releases `records`)."""
    frame: pl.DataFrame | None = None
    """The valid records as columns (see `rows`), set directly by the columnar path."""

    def rows(self) -> pl.DataFrame:
        """The valid records as columns: prompt, completion or completions + ranking (null for a pair without
        ranks), extra as JSON and prompt_messages (JSON, or "" for a lone question)."""
        if self.frame is None:
            names = {Kind.SFT: ["prompt", "completion"], Kind.RM: ["prompt", "completions", "ranking"], Kind.PPO: ["prompt"]}[self.kind]
            columns = {name: [record[name] for record in self.records] for name in names}
            columns["extra"] = [json.dumps(record["extra"], ensure_ascii=False, sort_keys=True) for record in self.records]
            columns["prompt_messages"] = [json.dumps(messages, ensure_ascii=False) if (messages := record["prompt_messages"]) else ""
                                          for record in self.records]
            # pyarrow converts the Python lists in C++; pl.DataFrame(dict of lists) peaks at ~3×
            # the size of the data on the nested `completions` column.
            types = {"completions": pa.list_(pa.string()), "ranking": pa.list_(pa.int64())}  # a file of unranked pairs has only nulls
            self.frame = pl.from_arrow(pa.table({name: pa.array(values, types.get(name)) for name, values in columns.items()}))
        return self.frame

    def summary(self) -> str:
        """One closing line: how many records are invalid and the most common reasons."""
        reasons = Counter(problem.message if problem.field is None else f"'{problem.field}'" for problem in self.problems)
        common = ", ".join(f"{reason} ×{count}" for reason, count in reasons.most_common(3))
        return f"{self.path}: {len(self.rejects)} of {self.total} {self.kind.value} records invalid ({common})"


def validate_file(path: Path, kind: Kind | None = None, columnar: bool = False, columns: dict[str, str] | None = None) -> ValidatedFile:
    """Read and check every record; `kind=None` detects it from the fields; `columns` renames the
    source's columns to kochat's fields (`tables.parse_columns`).

    `columnar` tries the whole-file path first (`kochat_data.columnar`): for a clean JSON file it
    fills `frame` instead of `records`, many times faster; any other source is read record by
    record as without it.
    """
    if columnar and kind is not None and not columns and table_format(path) is None:
        validated = _validate_columnar(path, kind)
        if validated is not None:
            return validated
    file_format, sha256, records = read_source(path, columns)
    if file_format is FileFormat.CONVERSATION:
        if kind not in (None, Kind.SFT):
            raise UsageError(f"{path}: a KoChatGPT conversation file is SFT data, not {kind.value}")
        kind = Kind.SFT
    if kind is None:
        kind, records = _detect_file_kind(path, records)
    result = ValidatedFile(path, kind, file_format, sha256)
    display = str(path)
    if kind is Kind.SFT:
        records = (record for source in records for record in conversation_records(source))
    for source in records:
        result.total += 1
        if source.error:
            clean, problems = None, [(None, source.error)]
        else:
            clean, problems = check_record(source.data, kind)
        if problems:
            _reject(result, display, source, problems)
            continue
        clean["index"], clean["line"] = source.index, source.line
        result.records.append(clean)
    return result


def _validate_columnar(path: Path, kind: Kind) -> ValidatedFile | None:
    raw = read_bytes(path)
    try:  # any problem with the file as a whole is the located path's to word
        head = codecs.getincrementaldecoder("utf-8-sig")().decode(raw[:4096])  # a character cut at the end is no error
        file_format = detect_format(path, head)
    except (UnicodeDecodeError, UsageError):
        return None
    frame = read_clean_frame(raw, file_format, kind)
    if frame is None:
        return None
    return ValidatedFile(path, kind, file_format, hashlib.sha256(raw).hexdigest(), total=frame.height, frame=frame)


def _reject(result: ValidatedFile, display: str, source: SourceRecord, problems: list[tuple[str | None, str]]) -> None:
    located = [Problem(display, source.line, source.index, name, message) for name, message in problems]
    result.problems.extend(located)
    reason = "; ".join(problem.detail() for problem in located)
    result.rejects.append(
        {"file": display, "index": source.index, "line": source.line, "reason": reason, "record": source.data}
    )


def _detect_file_kind(path: Path, records):
    head = list(itertools.islice(records, _KIND_DETECTION_WINDOW))
    kinds = Counter(kind for source in head if (kind := detect_kind(source.data)) is not None)
    if not kinds:
        fields = sorted({key for source in head if isinstance(source.data, dict) for key in source.data})
        broken = [Problem(str(path), source.line, source.index, None, source.error) for source in head if source.error]
        found = f"fields {', '.join(fields[:8])}" if fields else "no readable record" if broken else "no JSON objects"
        raise InvalidDataError(
            broken + [Problem(str(path), None, None, None,
                              f"cannot tell the kind: expected prompt + completion or messages (SFT), prompt + "
                              f"completion_0… + ranking or chosen + rejected (RM) or prompt (PPO), got {found}; pass --kind "
                              f"to say, or --columns FIELD=COLUMN,… to name the fields")]
        )
    return kinds.most_common(1)[0][0], itertools.chain(head, records)


def raise_for_problems(files: list[ValidatedFile], hint: str = "") -> None:
    """Raise one error listing every problem of every file, with a summary line per file (and a hint)."""
    invalid = [validated for validated in files if validated.problems]
    if invalid:
        problems = [problem for validated in invalid for problem in validated.problems]
        raise InvalidDataError(problems, "\n".join([*(validated.summary() for validated in invalid), *([hint] if hint else [])]))


def read_prompt_records(path: Path) -> tuple[list[dict], str]:
    """The prompts of a file, each `{prompt, prompt_messages}` (the conversation, or None for a lone question), and
    the file's sha256: validated PPO-style records when it is JSON or a table (TRL prompt-only too), else its
    non-blank lines."""
    if table_format(path) is None:
        text, sha256 = read_text(path)
        if not text.strip():
            raise UsageError(f"{path}: no prompt in the file (it is empty or holds only blank lines)")
        if not text.lstrip().startswith(("{", "[")):
            return [{"prompt": line.strip(), "prompt_messages": None} for line in text.splitlines() if line.strip()], sha256
    validated = validate_file(path, Kind.PPO)
    raise_for_problems([validated])
    return validated.records, validated.sha256
