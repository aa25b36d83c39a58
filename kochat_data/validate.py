"""Validate a file against its kind: kept records, every problem, and the rejects to write."""

from __future__ import annotations

import itertools
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

from kochat_data.errors import InvalidDataError, Problem, UsageError
from kochat_data.reading import FileFormat, SourceRecord, read_records
from kochat_data.schema import Kind, check_record, detect_kind

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

    def summary(self) -> str:
        """One closing line: how many records are invalid and the most common reasons."""
        reasons = Counter(problem.message if problem.field is None else f"'{problem.field}'" for problem in self.problems)
        common = ", ".join(f"{reason} ×{count}" for reason, count in reasons.most_common(3))
        return f"{self.path}: {len(self.rejects)} of {self.total} {self.kind.value} records invalid ({common})"


def validate_file(path: Path, kind: Kind | None = None) -> ValidatedFile:
    """Read and check every record; `kind=None` detects it from the fields."""
    file_format, sha256, records = read_records(path)
    if file_format is FileFormat.CONVERSATION:
        if kind not in (None, Kind.SFT):
            raise UsageError(f"{path}: a KoChatGPT conversation file is SFT data, not {kind.value}")
        kind = Kind.SFT
    if kind is None:
        kind, records = _detect_file_kind(path, records)
    result = ValidatedFile(path, kind, file_format, sha256)
    display = str(path)
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
        found = f"fields {', '.join(fields[:8])}" if fields else "no JSON objects"
        raise InvalidDataError(
            [Problem(str(path), None, None, None,
                     f"cannot tell the kind: expected prompt + completion (SFT), prompt + completion_0… + "
                     f"ranking (RM) or prompt (PPO), got {found}; pass --kind to say")]
        )
    return kinds.most_common(1)[0][0], itertools.chain(head, records)


def raise_for_problems(files: list[ValidatedFile]) -> None:
    """Raise one error listing every problem of every file, with a summary line per file."""
    invalid = [validated for validated in files if validated.problems]
    if invalid:
        problems = [problem for validated in invalid for problem in validated.problems]
        raise InvalidDataError(problems, "\n".join(validated.summary() for validated in invalid))
