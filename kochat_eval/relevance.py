"""`kochat eval relevance`: does a language model read the question?

On the held-out rank-0-vs-1 pairs (the right answer against a fluent answer to another question)
each answer gets log p(answer | its question) − log p(answer | no question): how much the
question raised its probability. A model that reads the prompt raises the right answer more;
one that does not is at ½, however fluent it is. Comparing log p(answer | question) alone would
mostly measure which answer is shorter or more common. On the train split's pairs the same probe
tells a model that learned which answer goes with the questions it saw (high there, ½ held out)
from one that learned nothing of the kind (½ on both).
"""

from __future__ import annotations

from pathlib import Path

import datasets
import numpy as np
import torch

from kochat_data.errors import UsageError
from kochat_data.schema import PROMPT_MESSAGES, Kind
from kochat_data.split import SPLITS
from kochat_train.dpo import PreferenceCollator, pair_sequence_logprobs, tokenize_preferences
from kochat_train.rm import PAIR_COLUMNS
from kochat_train.stage_data import load_stage_data, require_rows
from kochat_train.devices import resolve_device
from kochat_train.sources import capped_length, load_causal_lm, load_tokenizer
from kochat_train.template import IGNORE_INDEX

# The pairs that differ in relevance only: both answers are fluent, one answers another question.
RELEVANCE_RANKS = (0, 1)


def split_name(split: str) -> str:
    """How a report names the pairs of a split."""
    return "held-out" if split == "eval" else split


def relevance_accuracy(conditional: np.ndarray, unconditional: np.ndarray) -> dict[str, float]:
    """From (N, 2) log-probs of [right, other] answers with and without the question: the share of
    pairs where the question lifts the right answer more (tie = wrong), and the mean lifts."""
    lift = conditional - unconditional
    return {"relevance_accuracy": float(np.mean(lift[:, 0] > lift[:, 1])),
            "conditional_accuracy": float(np.mean(conditional[:, 0] > conditional[:, 1])),
            "mean_lift_right": float(lift[:, 0].mean()), "mean_lift_other": float(lift[:, 1].mean())}


def answer_tokens(labels: list[int]) -> int:
    return sum(label != IGNORE_INDEX for label in labels)


def same_answer_tokens(with_question: datasets.Dataset, without_question: datasets.Dataset) -> tuple[datasets.Dataset, datasets.Dataset]:
    """Both tokenisations of each answer cut to as many answer tokens as both keep. Cut to the positions, an answer
    after its question keeps fewer tokens than after no question; log-probs summed over different tokens would
    compare a short piece with a long one (seen: 0.917 on a tiny model, 0.28 on the same tokens)."""
    keep = {side: [min(answer_tokens(a), answer_tokens(b)) for a, b in zip(with_question[f"{side}_labels"], without_question[f"{side}_labels"],
                                                                             strict=True)]
            for side in ("chosen", "rejected")}

    def cut(row: dict, index: int) -> dict:
        cut_row = {}
        for side in ("chosen", "rejected"):
            labels = row[f"{side}_labels"]
            end = len(labels) - answer_tokens(labels) + keep[side][index]  # the answer is the labelled tail
            cut_row[f"{side}_ids"], cut_row[f"{side}_labels"] = row[f"{side}_ids"][:end], labels[:end]
        return cut_row

    return tuple(features.map(cut, with_indices=True, keep_in_memory=True) for features in (with_question, without_question))


@torch.no_grad()
def probe_relevance(model_dir: str | Path, data_dir: Path, max_pairs: int = 0, batch_size: int = 32, max_length: int = 128,
                    device: str = "auto", split: str = "eval", template: str | None = None, force_template: bool = False) -> dict:
    if batch_size < 1 or max_length < 1 or max_pairs < 0:
        raise UsageError(f"--batch-size and --max-length must be ≥ 1 and --max-pairs ≥ 0, got {batch_size}, {max_length}, {max_pairs}")
    if split not in SPLITS:
        raise UsageError(f"--split must be one of {', '.join(sorted(SPLITS))}, got {split!r}")
    data = load_stage_data(data_dir, Kind.RM, PAIR_COLUMNS, "kochat eval relevance")
    pairs = require_rows(data, split, data_dir, Kind.RM, f"no {split} pairs to probe")
    pairs = pairs.filter(lambda rows: [tuple(ranks) == RELEVANCE_RANKS for ranks in zip(rows["chosen_rank"], rows["rejected_rank"])],
                         batched=True, keep_in_memory=True)
    if not len(pairs):
        raise UsageError(f"{data_dir}: no {split} pair of a rank-0 and a rank-1 answer (the right answer against another question's)")
    pairs = pairs.select(range(min(len(pairs), max_pairs or len(pairs))))
    tokenizer = load_tokenizer(model_dir, template, force_template)
    model = load_causal_lm(model_dir, tokenizer).eval().to(resolve_device(device))
    max_length = capped_length(max_length, model)
    collate = PreferenceCollator(tokenizer)
    with_question, without_question = same_answer_tokens(
        tokenize_preferences(pairs, tokenizer, max_length),
        tokenize_preferences(pairs.map(lambda row: {"prompt": "", PROMPT_MESSAGES: ""}, keep_in_memory=True), tokenizer, max_length))
    conditional = np.stack(pair_sequence_logprobs(with_question, model, collate, batch_size), axis=1)
    unconditional = np.stack(pair_sequence_logprobs(without_question, model, collate, batch_size), axis=1)
    return {"model": str(model_dir), "data": str(data_dir), "split": split, "pairs": len(pairs), "max_length": max_length,
            **relevance_accuracy(conditional, unconditional)}
