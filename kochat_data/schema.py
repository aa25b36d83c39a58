"""The record rules of the three KoChatGPT kinds and the named Arrow schemas kochat writes."""

from __future__ import annotations

import re
from enum import Enum

from datasets import Dataset, DatasetDict, Features, Value

from kochat_data.errors import UsageError
from kochat_data.reading import SourceRecord
from kochat_data.messages import (MessageError, answer_message, assistant_turns, checked_messages, dialogue_text, is_message_list, plain,
                                  prompt_messages, split_pair, split_texts)
from kochat_data.text import normalize

_NUMBERED_COMPLETION = re.compile(r"completion_(\d+)")


class Kind(str, Enum):
    SFT = "sft"
    RM = "rm"
    PPO = "ppo"


def detect_kind(record: object) -> Kind | None:
    """The kind a record's fields say it is, or None when they say nothing."""
    if not isinstance(record, dict):
        return None
    if "ranking" in record or "completion_0" in record or "chosen" in record:
        return Kind.RM
    if "completion" in record or "messages" in record:
        return Kind.SFT
    if "prompt" in record:
        return Kind.PPO
    return None


class RecordChecker:
    """Collects every problem of one record as (field, message) and keeps normalised values."""

    def __init__(self, record: dict):
        self.record = record
        self.problems: list[tuple[str | None, str]] = []

    def text(self, field: str) -> str | None:
        if field not in self.record:
            self.problems.append((field, "missing"))
            return None
        value = self.record[field]
        if not isinstance(value, str):
            self.problems.append((field, f"expected text, got {describe(value)}"))
            return None
        if not value.strip():
            self.problems.append((field, f"expected non-empty text, got {describe(value)}"))
            return None
        return normalize(value)

    def prompt(self, value: object = None) -> tuple[str | None, list[dict] | None]:
        """The prompt's text and, when it is a conversation, its messages (None for a lone question).
        `value`: a conversation found elsewhere in the record (the shared start of a pair)."""
        value = self.record.get("prompt") if value is None else value
        if not isinstance(value, list):
            return self.text("prompt"), None
        messages = self._read("prompt", prompt_messages, value)
        if messages is None:
            return None, None
        return dialogue_text(messages), None if plain(messages) else messages

    def answer(self, field: str) -> str | None:
        """A completion: text, or (conversational) one assistant message."""
        value = self.record.get(field)
        return self._read(field, answer_message, value) if isinstance(value, list) else self.text(field)

    def _read(self, field: str, read, value):
        try:
            return read(value)
        except MessageError as err:
            self.problems.append((field, str(err)))
            return None

    def preference(self) -> tuple[str | None, list[dict] | None, list[str | None]]:
        """TRL's preference shapes: explicit prompt (`prompt`, `chosen`, `rejected`), or implicit (two whole
        conversations or texts sharing their start); returns the prompt text, its messages and the two answers."""
        chosen, rejected = self.record.get("chosen"), self.record.get("rejected")
        nothing = None, None, [None, None]
        if "rejected" not in self.record:
            self.problems.append(("rejected", "missing (a preference pair needs chosen and rejected)"))
            return nothing
        if is_message_list(chosen) and is_message_list(rejected):
            conversations = [self._read(side, checked_messages, value) for side, value in (("chosen", chosen), ("rejected", rejected))]
            split = None if None in conversations else self._read("chosen", lambda pair: split_pair(*pair), conversations)
            if split is None:
                return nothing
            shared, *answers = split
            return (*self.prompt(shared or None), answers)  # the conversations' own start wins over a prompt field
        if "prompt" not in self.record and isinstance(chosen, str) and isinstance(rejected, str):
            split = self._read("chosen", lambda pair: split_texts(*map(normalize, pair)), (chosen, rejected))
            return (split[0], None, list(split[1:])) if split else nothing
        return (*self.prompt(), [self.answer("chosen"), self.answer("rejected")])

    def completions(self) -> list[str | None]:
        numbers = {int(m.group(1)) for key in self.record if (m := _NUMBERED_COMPLETION.fullmatch(key))}
        count = max(max(numbers, default=-1) + 1, 2)
        have = ", ".join(f"completion_{n}" for n in sorted(numbers)) or "none"
        texts = []
        for number in range(count):
            name = f"completion_{number}"
            if name in self.record:
                texts.append(self.text(name))
            else:
                self.problems.append((name, f"missing (RM needs completion_0 … completion_{{k-1}}, k ≥ 2; has {have})"))
                texts.append(None)
        return texts

    def ranking(self, count: int) -> list[int] | None:
        if "ranking" not in self.record:
            self.problems.append(("ranking", f"missing (expected {count} ints, the rank of each completion, 0 = best)"))
            return None
        ranking = self.record["ranking"]
        if not isinstance(ranking, list):
            self.problems.append(("ranking", f"expected {count} ints, got {describe(ranking)}"))
            return None
        if len(ranking) != count:
            self.problems.append(("ranking", f"expected {count} ints, got {len(ranking)}"))
            return None
        for position, rank in enumerate(ranking):
            if not isinstance(rank, int) or isinstance(rank, bool):
                self.problems.append(("ranking", f"expected {count} ints, got {describe(rank)} at position {position}"))
                return None
            if rank < 0:
                self.problems.append(("ranking", f"expected ranks ≥ 0, got {rank} at position {position}"))
                return None
        return ranking


def describe(value: object) -> str:
    """A short, human description of a JSON value for error messages."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return f"boolean {str(value).lower()}"
    if isinstance(value, str):
        return "empty string" if not value else ("blank string" if not value.strip() else f"string {value[:20]!r}")
    if isinstance(value, (int, float)):
        return f"{type(value).__name__} {value}"
    if isinstance(value, list):
        return f"list of {len(value)}"
    return "object"


def conversation_records(source: SourceRecord) -> list[SourceRecord]:
    """An SFT record written as `messages` (TRL's conversational language modelling): one record per assistant
    turn, the conversation before it as its prompt, at the source's place; any other record as it is."""
    record = source.data
    if not (isinstance(record, dict) and "messages" in record and "completion" not in record and "prompt" not in record):
        return [source]
    try:
        turns = assistant_turns(checked_messages(record["messages"]))
    except MessageError as err:
        return [SourceRecord(source.index, source.line, error=f"field 'messages': {err}")]
    rest = {key: value for key, value in record.items() if key != "messages"}
    return [SourceRecord(source.index, source.line, {"prompt": asked, "completion": answer, **rest}) for asked, answer in turns]


def check_record(record: object, kind: Kind) -> tuple[dict | None, list[tuple[str | None, str]]]:
    """The normalised record (known fields, plus `extra` for the rest) or its problems."""
    if not isinstance(record, dict):
        return None, [(None, f"expected a JSON object, got {describe(record)}")]
    checker = RecordChecker(record)
    clean: dict = {}
    if kind is Kind.RM and "chosen" in record and "ranking" not in record:
        # A pair says which answer is preferred, not how the two rank among others: its ranks stay unknown (null).
        clean["prompt"], clean["prompt_messages"], clean["completions"] = checker.preference()
        clean["ranking"] = None
        known = {"prompt", "chosen", "rejected", "messages"}  # UltraFeedback's `messages` repeats `chosen`
    else:
        clean["prompt"], clean["prompt_messages"] = checker.prompt()
        if kind is Kind.SFT:
            clean["completion"] = checker.answer("completion")
            known = {"prompt", "completion"}
        elif kind is Kind.RM:
            clean["completions"] = checker.completions()
            clean["ranking"] = checker.ranking(len(clean["completions"]))
            known = {"prompt", "ranking"} | {key for key in record if _NUMBERED_COMPLETION.fullmatch(key)}
        else:
            known = {"prompt"}
    if checker.problems:
        return None, checker.problems
    clean["extra"] = {key: value for key, value in record.items() if key not in known}
    return clean, []


# Named schemas of the datasets `kochat data build` writes; every trainer checks the columns it reads.
# `prompt_messages`: the prompt's conversation as JSON when it is more than one user question, else "".
PROMPT_MESSAGES = "prompt_messages"
SFT_FEATURES = Features(
    {"prompt": Value("string"), "completion": Value("string"), "prompt_id": Value("string"), "extra": Value("string"),
     "prompt_messages": Value("string")}
)
PAIR_FEATURES = Features(
    {
        "prompt": Value("string"),
        "chosen": Value("string"),
        "rejected": Value("string"),
        "chosen_rank": Value("int32"),
        "rejected_rank": Value("int32"),
        "prompt_id": Value("string"),
        "extra": Value("string"),
        "prompt_messages": Value("string"),
    }
)
PROMPT_FEATURES = Features(
    {"prompt": Value("string"), "prompt_id": Value("string"), "extra": Value("string"), "prompt_messages": Value("string")}
)
FEATURES = {Kind.SFT: SFT_FEATURES, Kind.RM: PAIR_FEATURES, Kind.PPO: PROMPT_FEATURES}


def require_columns(dataset: Dataset | DatasetDict, kind: Kind, columns: list[str], where: str) -> None:
    """Fail with one clear line when a dataset lacks columns a stage reads."""
    splits = dataset.values() if isinstance(dataset, DatasetDict) else [dataset]
    for split in splits:
        missing = [column for column in columns if column not in split.column_names]
        if missing:
            raise UsageError(
                f"{where}: the {kind.value} dataset lacks column(s) {', '.join(missing)} "
                f"(has {', '.join(split.column_names)}); build it with `kochat data build`"
            )
