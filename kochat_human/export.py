"""`kochat label export`: people's rankings as training data that `kochat data build --rm` reads with no edit.

`kochatgpt`: one KoChatGPT RM record per item (`prompt`, `completion_0..k-1`, `ranking`), the ranking aggregated
over the item's people by mean rank (ties kept as ties); the raw votes beside it, one line per person and item.
`trl`: explicit-prompt preference pairs (`prompt`, `chosen`, `rejected`) from the aggregated order.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from kochat_data.errors import UsageError
from kochat_eval.agreement import aggregate_ranking, preference_pairs
from kochat_human.store import Item, LabelStore, rankings_and_flags

FORMATS = ("kochatgpt", "trl")


def votes_path(out: Path) -> Path:
    return out.with_name(out.name + ".votes.jsonl")


def export_labels(store: LabelStore, out: Path, file_format: str = "kochatgpt", min_annotators: int = 1,
                  keep_flagged: bool = False, overwrite: bool = False) -> dict:
    """Write the export (and, for kochatgpt, its votes file); returns the counts of what was written and left out."""
    if file_format not in FORMATS:
        raise UsageError(f"--format: expected one of {', '.join(FORMATS)}, got {file_format!r}")
    if min_annotators < 1:
        raise UsageError(f"--min-annotators: expected an integer ≥ 1, got {min_annotators}")
    outputs = [out] + ([votes_path(out)] if file_format == "kochatgpt" else [])
    for path in outputs:
        if path.is_dir():
            raise UsageError(f"{path}: is a directory; --out names the file to write")
        if path.exists() and not overwrite:
            raise UsageError(f"{path}: exists; pass --overwrite to replace it")
        if not path.parent.is_dir():
            raise UsageError(f"{path.parent}: no such directory (--out {out})")
    records, votes, counts = export_records(store, file_format, min_annotators, keep_flagged)
    _write_lines(out, records)
    if file_format == "kochatgpt":
        _write_lines(votes_path(out), votes)
    return counts | {"out": str(out), "votes_file": str(votes_path(out)) if file_format == "kochatgpt" else None}


def export_records(store: LabelStore, file_format: str, min_annotators: int = 1, keep_flagged: bool = False) -> tuple[list, list, dict]:
    """(records, raw vote lines: every vote, skip and flag that stands, counts)."""
    items = {item.id: item for item in store.items()}
    votes = store.votes()
    rankings, flagged = rankings_and_flags(votes)
    vote_lines = [{"item": vote.item, "annotator": vote.annotator, "kind": vote.kind, "prompt": items[vote.item].prompt,
                   "ranking": vote.ranking, "shown_order": vote.shown_order, "seconds": vote.seconds,
                   "client_vote_id": vote.client_vote_id, "voted_at": vote.created_at} for vote in votes]
    records = []
    counts = {"items": 0, "records": 0, "votes": 0, "unranked": 0, "too_few_votes": 0, "flagged": 0, "empty_answers_left_out": 0,
              "too_few_answers": 0, "all_tied": 0}
    for item in items.values():
        ranked = rankings.get(item.id, [])
        if item.id in flagged and not keep_flagged:
            counts["flagged"] += 1
        elif not ranked:
            counts["unranked"] += 1
        elif len(ranked) < min_annotators:
            counts["too_few_votes"] += 1
        else:
            completions, ranking, left_out = _without_empty(item, aggregate_ranking(ranked))
            counts["empty_answers_left_out"] += left_out
            if len(completions) < 2:
                counts["too_few_answers"] += 1
                continue
            counts["items"] += 1
            counts["votes"] += len(ranked)
            counts["all_tied"] += len(set(ranking)) == 1
            records.extend(_records(item, completions, ranking, file_format))
    counts["records"] = len(records)
    return records, vote_lines, counts


def _without_empty(item: Item, ranking: list[int]) -> tuple[list[str], list[int], int]:
    """The answers and their ranks less the empty ones (a model may end at once; `kochat data` reads no empty text)."""
    kept = [(text, rank) for text, rank in zip(item.completions, ranking, strict=True) if text.strip()]
    return [text for text, _ in kept], [rank for _, rank in kept], len(item.completions) - len(kept)


def _records(item: Item, completions: list[str], ranking: list[int], file_format: str) -> list[dict]:
    prompt = json.loads(item.prompt_messages) if item.prompt_messages else item.prompt
    if file_format == "trl":
        return [{"prompt": prompt, "chosen": completions[better], "rejected": completions[worse]}
                for better, worse in preference_pairs(ranking)]
    return [{"prompt": prompt, **{f"completion_{i}": text for i, text in enumerate(completions)}, "ranking": ranking}]


def _write_lines(path: Path, rows: list[dict]) -> None:
    """Written beside its place and renamed over it: a reader never sees half an export."""
    partial = path.with_name(f".{path.name}.partial-{os.getpid()}")
    partial.write_text("".join(json.dumps(row, ensure_ascii=False) + "\n" for row in rows), encoding="utf-8")
    os.replace(partial, path)
