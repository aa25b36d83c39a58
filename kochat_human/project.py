"""`kochat label new`: a label project from prompts answered by stages, or from candidate answers given as they are.

A project is a directory: the store (`label.sqlite`), `manifest.json` (the sources with their sha256, decoding,
seed, k and counts) and `guidelines.txt` (shown beside every item; edit it freely). The same inputs and seed give
the same items in the same order.
"""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from kochat_data.atomic import atomic_directory, check_writable
from kochat_data.errors import UsageError
from kochat_data.text import fold
from kochat_human.candidates import read_candidates, read_prompts
from kochat_human.database import DATABASE, create_database
from kochat_human.store import Item, LabelStore
from kochat_train.config import seed_problems
from kochat_train.decoding_flags import decoding_problems, with_defaults

MANIFEST = "manifest.json"
GUIDELINES = "guidelines.txt"
REJECTS = "rejects.jsonl"
MOST_STAGES = 4  # --k and the number of stages: 2 … 4 answers written per prompt

DEFAULT_GUIDELINES = """\
좋은 답부터 차례로 고르세요. 답의 번호 키(1, 2, …)를 누르거나 답을 누르면 다음 순위가 되고, 마지막 하나는 저절로 꼴찌가 됩니다.
= 다음 답을 앞의 답과 동점으로 · Enter 제출 · Backspace 마지막 선택 지우기 · s 건너뛰기 · u 방금 낸 표 되돌리기 · f 깨졌거나 불쾌한 문항 신고
좋은 답: 먼저 질문에 맞는 답, 그다음 정확성, 자연스러운 한국어, 간결함. 길이만 보고 고르지 마세요.

Rank from best to worst: press an answer's number (or click it) to place it next; the one left over goes last.
= ties the next answer with the previous one · Enter submits · Backspace removes the last pick · s skips · u undoes your last vote · f flags a broken or offensive item.
A good answer answers the question first; then correctness, natural Korean, brevity. Do not rank by length alone.
"""


@dataclass
class LabelProjectConfig:
    out: Path
    stages: dict[str, Path] = field(default_factory=dict)
    """Stages that write the answers: one sampled k times, or 2 … 4 answering once each."""
    prompts: Path | None = None
    """The prompts the stages answer: a PPO file, a build directory (its held-out eval prompts), text lines, TRL prompt-only."""
    split: str = "eval"
    """With a build directory as --prompts: its eval prompts (no stage trained on them: to judge stages by) or its train
    prompts (rankings a rebuild keeps for training)."""
    candidates: Path | None = None
    """Answers given as they are: JSON Lines of {prompt, completions: […]}, or KoChatGPT RM records (any ranking is ignored)."""
    on_invalid: str = "fail"
    """Candidates: `fail` stops at any invalid record; `skip` labels the others and writes the rejects to rejects.jsonl."""
    k: int | None = None
    """Answers per prompt (2 … 4; default 2 from one stage, one per stage from several)."""
    annotators_per_item: int = 2
    max_prompts: int = 0
    """Keep this many prompts, a seeded sample (0: all)."""
    seed: int = 0
    decoding: dict = field(default_factory=dict)
    """Decoding settings given (`kochat_train.decoding_flags`); the rest keep their defaults."""
    batch_size: int = 16
    max_length: int = 512
    device: str = "auto"
    overwrite: bool = False

    def problems(self) -> list[str]:
        found = []
        if bool(self.stages) == bool(self.candidates):
            found.append("give --stage NAME=DIR … with --prompts SOURCE, or --candidates FILE (one of the two)")
        if self.stages and self.prompts is None:
            found.append("--stage needs --prompts SOURCE: the prompts the stages answer")
        if self.candidates and self.prompts is not None:
            found.append("--prompts goes with --stage; --candidates brings its own prompts")
        if len(self.stages) > MOST_STAGES:
            found.append(f"at most {MOST_STAGES} stages (one answer each), got {len(self.stages)}")
        if self.k is not None and not 2 <= self.k <= MOST_STAGES:
            found.append(f"--k: expected 2 … {MOST_STAGES} answers per prompt, got {self.k}")
        if len(self.stages) > 1 and self.k not in (None, len(self.stages)):
            found.append(f"--k {self.k} with {len(self.stages)} stages: several stages answer once each (k = {len(self.stages)}); "
                         "sample k answers from one stage instead")
        if len(self.stages) == 1 and not with_defaults(self.decoding)["do_sample"]:
            found.append("answers from one stage: add --do-sample (greedy decoding writes the same answer every time)")
        if self.split not in ("train", "eval"):
            found.append(f"--split: expected train or eval, got {self.split!r}")
        if self.on_invalid not in ("fail", "skip"):
            found.append(f"--on-invalid: expected fail or skip, got {self.on_invalid!r}")
        if self.candidates and self.decoding:
            found.append("decoding flags go with --stage; --candidates are taken as they are")
        if "num_return_sequences" in self.decoding:
            found.append("--num-return-sequences: say --k instead")
        for flag, value, least in (("--annotators-per-item", self.annotators_per_item, 1), ("--max-prompts", self.max_prompts, 0),
                                   ("--batch-size", self.batch_size, 1), ("--max-length", self.max_length, 1)):
            if value < least:
                found.append(f"{flag}: expected an integer ≥ {least}, got {value}")
        return found + decoding_problems(self.decoding) + seed_problems(self.seed)

    @property
    def answers_per_prompt(self) -> int:
        return len(self.stages) if len(self.stages) > 1 else self.k or 2


def new_project(config: LabelProjectConfig, progress: Callable[[str, int], Callable[[int], None]] | None = None) -> dict:
    """Write the project directory; returns its manifest. `progress(description, total)` gives a function to
    advance by a number of prompts answered."""
    problems = config.problems()
    if problems:
        raise UsageError("; ".join(problems))
    _refuse_to_lose_votes(config.out, config.overwrite)
    check_writable(config.out, config.overwrite)
    rejects = []
    if config.candidates:
        records, source, rejects = read_candidates(config.candidates, config.on_invalid)
    else:
        records, source = read_prompts(config.prompts, config.split)
    records, duplicates = _fold_duplicates(records)
    order = np.random.default_rng(config.seed).permutation(len(records))
    records = [records[i] for i in (order[: config.max_prompts] if config.max_prompts else order)]
    if not records:
        raise UsageError(f"{config.candidates or config.prompts}: no prompt to label")
    stages = {}
    if config.stages:
        from kochat_human.answers import answer_with_stages, stage_fingerprint

        answers = answer_with_stages(config, [record["prompt_messages"] or record["prompt"] for record in records], progress)
        for record, (completions, sources) in zip(records, answers, strict=True):
            record["completions"], record["sources"] = completions, sources
        stages = {name: {"path": str(directory), "sha256": stage_fingerprint(directory)} for name, directory in config.stages.items()}
    items = [_item(config.seed, position, record) for position, record in enumerate(records)]
    manifest = {
        "created_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "seed": config.seed, "annotators_per_item": config.annotators_per_item,
        "k": sorted({len(item.completions) for item in items}), "max_prompts": config.max_prompts,
        "decoding": with_defaults(config.decoding) if config.stages else None,
        "max_length": config.max_length if config.stages else None,
        "sources": {"candidates" if config.candidates else "prompts": source, **({"stages": stages} if stages else {})},
        "counts": {"read": source["records"], "rejected": len(rejects), "duplicates": duplicates, "items": len(items),
                   "answers": sum(len(item.completions) for item in items),
                   "items_with_identical_answers": sum(len(set(item.completions)) < len(item.completions) for item in items),
                   "empty_answers": sum(not text.strip() for item in items for text in item.completions)},
    }
    with atomic_directory(config.out, config.overwrite) as staging:
        create_database(staging / DATABASE, items, config.seed, config.annotators_per_item)
        (staging / MANIFEST).write_text(json.dumps(manifest, ensure_ascii=False, indent=2) + "\n", encoding="utf-8")
        (staging / GUIDELINES).write_text(DEFAULT_GUIDELINES, encoding="utf-8")
        (staging / REJECTS).write_text("".join(json.dumps(reject, ensure_ascii=False) + "\n" for reject in rejects), encoding="utf-8")
    return manifest


def open_project(project: Path) -> LabelStore:
    """The store of a project directory, refused in one line when it is none."""
    project = Path(project)
    if project.is_file():
        raise UsageError(f"{project}: is a file; expected a label project directory (`kochat label new --out DIR`)")
    if not project.is_dir():
        raise UsageError(f"{project}: no such directory; make a label project with `kochat label new --out {project}`")
    return LabelStore(project / DATABASE)


def guidelines(project: Path) -> str:
    try:
        return (Path(project) / GUIDELINES).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError):
        return ""


def _refuse_to_lose_votes(out: Path, overwrite: bool) -> None:
    """--overwrite replaces a project, never people's work: a project that holds votes is refused."""
    if overwrite and (out / DATABASE).is_file():
        votes = len(LabelStore(out / DATABASE).votes())
        if votes:
            raise UsageError(f"{out}: holds {votes} votes of people; refusing to replace them (move the project away, or "
                             "choose another --out)")


def _fold_duplicates(records: list[dict]) -> tuple[list[dict], int]:
    """The records less those equal to an earlier one after NFC and whitespace folding (the prompt, its conversation,
    and the answers where given), as `kochat data build` folds them; returns them and the count dropped."""
    seen, kept = set(), []
    for record in records:
        key = (fold(record["prompt"]), json.dumps(record["prompt_messages"], ensure_ascii=False),
               tuple(fold(text) for text in record.get("completions") or ()))
        if key not in seen:
            seen.add(key)
            kept.append(record)
    return kept, len(records) - len(kept)


def _item(seed: int, position: int, record: dict) -> Item:
    messages = json.dumps(record["prompt_messages"], ensure_ascii=False) if record["prompt_messages"] else ""
    content = json.dumps([seed, position, record["prompt"], messages, record["completions"]], ensure_ascii=False)
    return Item(hashlib.blake2b(content.encode("utf-8"), digest_size=6).hexdigest(), position, record["prompt"], messages,
                record["completions"], record.get("sources"))

