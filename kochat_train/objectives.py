"""The math of the training stages as small pure functions, each tested against hand-computed values."""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F


def last_token_index(attention_mask: torch.Tensor) -> torch.Tensor:
    """Index of the last real token per row, for right or left padding. (B, T) → (B,)"""
    width = attention_mask.shape[1]
    return width - 1 - attention_mask.flip(dims=[1]).argmax(dim=1)


def positions_from_mask(attention_mask: torch.Tensor) -> torch.Tensor:
    """Position ids that count real tokens only, so left padding does not shift positions. (B, T)"""
    return (attention_mask.long().cumsum(dim=1) - 1).clamp(min=0)


def pairwise_loss(chosen: torch.Tensor, rejected: torch.Tensor) -> torch.Tensor:
    """Bradley–Terry loss −log σ(r_chosen − r_rejected), averaged over pairs."""
    return -F.logsigmoid(chosen - rejected).mean()


def pairwise_accuracy(margins: np.ndarray) -> float:
    """Share of pairs ranked right; a tie (margin 0) counts as wrong."""
    return float(np.mean(margins > 0)) if len(margins) else float("nan")


def unigram_perplexity(train_ids: np.ndarray, eval_ids: np.ndarray, vocab_size: int) -> float:
    """Perplexity on `eval_ids` of token frequencies in `train_ids`, add-one smoothed over the vocabulary."""
    counts = np.bincount(train_ids, minlength=vocab_size).astype(np.float64)
    log_probs = np.log((counts + 1.0) / (counts.sum() + vocab_size))
    return math.exp(-log_probs[eval_ids].mean())
