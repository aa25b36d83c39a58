"""`kochat eval rm`: how well a reward model orders the held-out pairs."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from sklearn.metrics import roc_auc_score
from transformers import EvalPrediction

from kochat_data.progress import progress_bar
from kochat_data.schema import Kind
from kochat_train.rm import PAIR_COLUMNS, PairCollator, ScalarRewardModel, pair_metrics, tokenize_pairs
from kochat_train.runtime import load_stage_data, resolve_device
from kochat_train.sources import load_reward_model, load_tokenizer


def margin_auc(margins: np.ndarray) -> float:
    """ROC-AUC of separating chosen from rejected by reward: each pair counts once each way round."""
    if len(margins) == 0:
        return float("nan")
    labels = np.r_[np.ones(len(margins)), np.zeros(len(margins))]
    return float(roc_auc_score(labels, np.r_[margins, -margins]))


@torch.no_grad()
def evaluate_rm(model_dir: Path, data_dir: Path, batch_size: int = 32, max_length: int = 256, device: str = "auto") -> dict:
    """Accuracy (tie = wrong), mean margin, ROC-AUC and accuracy per rank pair on the eval split."""
    pairs = load_stage_data(data_dir, Kind.RM, PAIR_COLUMNS, "kochat eval rm")["eval"]
    tokenizer = load_tokenizer(model_dir)
    device = resolve_device(device)
    reward_model = ScalarRewardModel(load_reward_model(model_dir, tokenizer)).to(device).eval()
    features = tokenize_pairs(pairs, tokenizer, max_length)
    collate = PairCollator(tokenizer)
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
    return {"model": str(model_dir), "data": str(data_dir), **metrics}
