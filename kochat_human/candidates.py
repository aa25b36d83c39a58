"""What a label project is made from: prompts from any source `kochat data` reads, or candidate answers as they are.

Both come back as records `{prompt, prompt_messages, completions?}` with a description of their source (path,
sha256, format, records read) for the manifest; every bad record is reported at once, with its file and line.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

from kochat_data.errors import InvalidDataError, Problem, UsageError
from kochat_data.schema import Kind, RecordChecker, describe
from kochat_data.tables import read_source
from kochat_data.text import normalize
from kochat_data.validate import read_prompt_records

MOST_ANSWERS = 9  # the page places answers by the keys 1 … 9


def read_prompts(source: Path, split: str = "eval") -> tuple[list[dict], dict]:
    """The prompts of a file (PPO records, TRL prompt-only, text lines, a table), or of one split of a build
    directory's PPO prompts: `eval`, the prompts no stage trained on (to judge stages by); `train`, those whose
    rankings a later build keeps in its train split (a build puts a prompt on the same side every time)."""
    source = Path(source)
    if (source / "manifest.json").is_file() and (source / Kind.PPO.value).is_dir():
        from kochat_train.stage_data import dataset_prompts, load_stage_data

        rows = load_stage_data(source, Kind.PPO, ["prompt"], "kochat label new")[split]
        prompts = dataset_prompts(rows)
        records = [{"prompt": text, "prompt_messages": prompt if isinstance(prompt, list) else None}
                   for text, prompt in zip(rows["prompt"], prompts, strict=True)]
        sha256 = hashlib.sha256((source / "manifest.json").read_bytes()).hexdigest()
        return records, {"path": str(source), "format": f"build {split} split", "sha256": sha256, "records": len(records)}
    if source.is_dir() and not any((source / name).is_file() for name in ("dataset_info.json", "dataset_dict.json")):
        raise UsageError(f"{source}: a directory that is no `kochat data build` output (no manifest.json and ppo/); give a prompt "
                         "file or a build directory")
    found, sha256 = read_prompt_records(source)
    records = [{"prompt": record["prompt"], "prompt_messages": record["prompt_messages"]} for record in found]
    return records, {"path": str(source), "format": "prompts", "sha256": sha256, "records": len(records)}


def read_candidates(path: Path, on_invalid: str = "fail") -> tuple[list[dict], dict, list[dict]]:
    """Records `{prompt, completions: [2 … 9 answers]}`, or KoChatGPT RM records (`completion_0` …) whose `ranking`,
    when present, is not shown to anyone and not kept; and the rejects (`on_invalid` skip), as `kochat data build`
    writes them. With `fail`, any invalid record stops it with every problem listed."""
    file_format, sha256, sources = read_source(Path(path))
    records, problems, rejects, total, ranked = [], [], [], 0, 0
    for source in sources:
        total += 1
        found = [(None, source.error)] if source.error else []
        record = None
        if not found:
            record, found = _candidate(source.data)
        if found:
            located = [Problem(str(path), source.line, source.index, name, message) for name, message in found]
            problems += located
            rejects.append({"file": str(path), "index": source.index, "line": source.line,
                            "reason": "; ".join(problem.detail() for problem in located), "record": source.data})
            continue
        ranked += "ranking" in source.data
        records.append(record)
    if rejects and on_invalid == "fail":
        raise InvalidDataError(problems, f"{path}: {len(rejects)} of {total} candidate records invalid; pass --on-invalid skip to "
                                         "label the others (the rejects go to PROJECT/rejects.jsonl)")
    return records, {"path": str(path), "format": file_format.value, "sha256": sha256, "records": total, "rejected": len(rejects),
                     "rankings_ignored": ranked}, rejects


def _candidate(data: object) -> tuple[dict | None, list[tuple[str | None, str]]]:
    if not isinstance(data, dict):
        return None, [(None, f"expected a JSON object, got {describe(data)}")]
    checker = RecordChecker(data)
    prompt, messages = checker.prompt()
    completions: list = []
    if "completions" in data:
        given = data["completions"]
        if isinstance(given, list) and all(isinstance(text, str) and text.strip() for text in given):
            completions = [normalize(text) for text in given]
        else:
            checker.problems.append(("completions", f"expected a list of non-empty texts, got {describe(given)}"))
    elif any(key.startswith("completion_") for key in data):
        completions = checker.completions()
    else:
        checker.problems.append(("completions", "missing (a candidate record has completions: [...] or completion_0 …)"))
    if not checker.problems and not 2 <= len(completions) <= MOST_ANSWERS:
        checker.problems.append(("completions", f"expected 2 … {MOST_ANSWERS} answers to rank, got {len(completions)}"))
    if checker.problems:
        return None, checker.problems
    return {"prompt": prompt, "prompt_messages": messages, "completions": completions}, []
