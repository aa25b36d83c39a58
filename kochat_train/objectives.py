"""The math of the training stages as small pure functions, each tested against hand-computed values."""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

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


def pairwise_accuracy(margins: np.ndarray, tie: float = 0.0) -> float:
    """Share of pairs ranked right; a tie (margin 0) counts as `tie` of a right one (a model's: 0)."""
    return float(np.mean(margins > 0) + tie * np.mean(margins == 0)) if len(margins) else float("nan")


UNRANKED = -1  # the rank of either answer of a preference pair that came without ranks


def rank_pairs(chosen_ranks: Sequence[int | None], rejected_ranks: Sequence[int | None]) -> list[list[int]]:
    """(chosen rank, rejected rank) per pair, UNRANKED where the data has none (null)."""
    return [[UNRANKED if c is None else c, UNRANKED if r is None else r] for c, r in zip(chosen_ranks, rejected_ranks, strict=True)]


def pair_accuracies(margins: np.ndarray, ranks: np.ndarray, tie: float = 0.0) -> dict[str, float]:
    """Accuracy overall and per (chosen rank, rejected rank) as `accuracy_{c}v{r}`; ranks is (N, 2). Pairs
    without ranks count overall only: a rank-pair table for them would invent ranks."""
    metrics = {"accuracy": pairwise_accuracy(margins, tie)}
    for chosen_rank, rejected_rank in sorted({tuple(pair) for pair in ranks.tolist() if UNRANKED not in pair}):
        selected = (ranks[:, 0] == chosen_rank) & (ranks[:, 1] == rejected_rank)
        metrics[f"accuracy_{chosen_rank}v{rejected_rank}"] = pairwise_accuracy(margins[selected], tie)
    return metrics


def unigram_perplexity(train_ids: np.ndarray, eval_ids: np.ndarray, vocab_size: int) -> float:
    """Perplexity on `eval_ids` of token frequencies in `train_ids`, add-one smoothed over the vocabulary."""
    counts = np.bincount(train_ids, minlength=vocab_size).astype(np.float64)
    log_probs = np.log((counts + 1.0) / (counts.sum() + vocab_size))
    return math.exp(-log_probs[eval_ids].mean())


# log-softmax over the vocabulary keeps (and, under autograd, saves) a float copy of all the logits: with 128k–256k
# vocabularies, GBs per batch. A few rows at a time, as logit[token] − logsumexp(logits), the copy is a chunk's, and
# logsumexp's backward needs only the logits themselves.
LOGPROB_ROWS = 4


def gathered_logprobs(logits: torch.Tensor, tokens: torch.Tensor) -> torch.Tensor:
    """log p(token) under `logits`, LOGPROB_ROWS rows at a time (in fp32). (B, R, V), (B, R) → (B, R)"""
    rows = [chunk.float().gather(-1, ids.unsqueeze(-1)).squeeze(-1) - torch.logsumexp(chunk.float(), dim=-1)
            for chunk, ids in zip(logits.split(LOGPROB_ROWS), tokens.split(LOGPROB_ROWS), strict=True)]
    return torch.cat(rows) if rows else logits.new_zeros(tokens.shape, dtype=torch.float32)


# DPO (Rafailov et al. 2023; IPO: Azar et al. 2023). A sequence's log-prob is summed (or, length-
# normalised, averaged) over its response tokens and EOS; labels are −100 on prompt and padding.


def sequence_logprobs(logits: torch.Tensor, labels: torch.Tensor, length_normalize: bool = False) -> torch.Tensor:
    """log p(response + EOS | prompt) per row from next-token logits. (B, T, V), (B, T) → (B,)"""
    targets = labels[:, 1:]
    counted = targets != -100
    token_logprobs = gathered_logprobs(logits[:, :-1], targets.clamp(min=0))
    total = (token_logprobs * counted).sum(dim=1)
    return total / counted.sum(dim=1).clamp(min=1) if length_normalize else total


def dpo_loss(
    chosen: torch.Tensor, rejected: torch.Tensor, ref_chosen: torch.Tensor, ref_rejected: torch.Tensor, beta: float, loss_type: str = "sigmoid"
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The DPO loss over pairs and the implicit rewards β·(log π − log π_ref) of chosen and rejected.

    With Δ = (log π_c − log π_r) − (log π_ref,c − log π_ref,r): sigmoid −log σ(β·Δ); ipo (Δ − 1/(2β))².
    """
    delta = (chosen - rejected) - (ref_chosen - ref_rejected)
    if loss_type == "sigmoid":
        losses = -F.logsigmoid(beta * delta)
    elif loss_type == "ipo":
        losses = (delta - 1 / (2 * beta)) ** 2
    else:
        raise ValueError(f"loss_type must be sigmoid or ipo, got {loss_type!r}")
    return losses.mean(), beta * (chosen - ref_chosen).detach(), beta * (rejected - ref_rejected).detach()


# PPO. Tensors are (B, R): one row per rollout, one column per response token; `mask` is 1 on
# real response tokens (up to and including the first EOS) and 0 after.


def masked_mean(values: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    return (values * mask).sum() / mask.sum().clamp(min=1)


def whiten(
    values: torch.Tensor, mask: torch.Tensor, shift_mean: bool = True, total: Callable[[torch.Tensor], torch.Tensor] = lambda t: t
) -> torch.Tensor:
    """Scale to unit variance over the masked entries (and centre them unless `shift_mean` is False).

    `total` sums a tensor over every process that holds part of the batch (data-parallel
    PPO passes an all-reduce), so that mean and variance are the global batch's.
    """
    count = total(mask.sum()).clamp(min=1)
    mean = total((values * mask).sum()) / count
    variance = total((((values - mean) ** 2) * mask).sum()) / count
    whitened = (values - mean) * torch.rsqrt(variance + 1e-8)
    return (whitened if shift_mean else whitened + mean) * mask


def gae(rewards: torch.Tensor, values: torch.Tensor, mask: torch.Tensor, gamma: float, lam: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Generalised advantage estimation; returns (advantages, returns), zero after each response ends.

    δ_t = r_t + γ V_{t+1} − V_t with V = 0 past the last real token; A_t = δ_t + γλ A_{t+1}.
    The loop runs over response positions, each step vectorised over the batch.
    """
    advantages = torch.zeros_like(rewards)
    running = torch.zeros_like(rewards[:, 0])
    width = rewards.shape[1]
    for t in reversed(range(width)):
        following = mask[:, t + 1] if t + 1 < width else torch.zeros_like(running)
        next_value = values[:, t + 1] * following if t + 1 < width else torch.zeros_like(running)
        delta = rewards[:, t] + gamma * next_value - values[:, t]
        running = delta + gamma * lam * running * following
        advantages[:, t] = running
    advantages = advantages * mask
    return advantages, (advantages + values) * mask


def clipped_surrogate(
    logprobs: torch.Tensor, old_logprobs: torch.Tensor, advantages: torch.Tensor, clip_low: float, clip_high: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per token max(−A·ρ, −A·clip(ρ, 1 − ε_low, 1 + ε_high)) with ρ = π/π_old, and where the clip bit.
    ε_high > ε_low is DAPO's clip-higher: room for unlikely tokens to grow."""
    ratio = torch.exp(logprobs - old_logprobs)
    unclipped = -advantages * ratio
    clipped = -advantages * torch.clamp(ratio, 1 - clip_low, 1 + clip_high)
    return torch.max(unclipped, clipped), (clipped > unclipped).float()


def clipped_policy_loss(
    logprobs: torch.Tensor, old_logprobs: torch.Tensor, advantages: torch.Tensor, mask: torch.Tensor, clip_range: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """PPO's clipped surrogate (symmetric ε) averaged over tokens; also the clipped fraction."""
    losses, clipped = clipped_surrogate(logprobs, old_logprobs, advantages, clip_range, clip_range)
    return masked_mean(losses, mask), masked_mean(clipped, mask)


def clipped_value_loss(
    values: torch.Tensor, old_values: torch.Tensor, returns: torch.Tensor, mask: torch.Tensor, clip_range: float
) -> torch.Tensor:
    """½·max((V − R)², (V_clip − R)²) with V_clip = V_old + clip(V − V_old, ±ε), averaged over tokens."""
    clipped = old_values + torch.clamp(values - old_values, -clip_range, clip_range)
    return 0.5 * masked_mean(torch.max((values - returns) ** 2, (clipped - returns) ** 2), mask)


# KL(π ‖ π_ref) per token from log-probs of tokens sampled from π (Schulman 2020, "Approximating KL").


def kl_k1(logprobs: torch.Tensor, ref_logprobs: torch.Tensor) -> torch.Tensor:
    """log π − log π_ref: unbiased, negative on some tokens; its sum over a response is the sequence's log-ratio."""
    return logprobs - ref_logprobs


def kl_k3(logprobs: torch.Tensor, ref_logprobs: torch.Tensor) -> torch.Tensor:
    """(ρ − 1) − log ρ with ρ = π_ref / π: unbiased, never negative, lower variance (GRPO's KL term)."""
    log_ratio = ref_logprobs - logprobs
    return torch.exp(log_ratio) - 1 - log_ratio


KL_ESTIMATORS: dict[str, Callable[[torch.Tensor, torch.Tensor], torch.Tensor]] = {"k1": kl_k1, "k3": kl_k3}


def approx_kl(logprobs: torch.Tensor, old_logprobs: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """KL(old ‖ new) per token by k3 with the roles of the two policies swapped (ρ = p_new / p_old)."""
    return masked_mean(kl_k3(old_logprobs, logprobs), mask)


def kl_penalised_rewards(
    scores: torch.Tensor, logprobs: torch.Tensor, ref_logprobs: torch.Tensor, mask: torch.Tensor, kl_coef: float
) -> torch.Tensor:
    """Per-token reward −β·(log π − log π_ref), plus the sequence score on the last real response token."""
    rewards = -kl_coef * kl_k1(logprobs, ref_logprobs) * mask
    last = last_token_index(mask)
    rewards[torch.arange(len(rewards)), last] += scores
    return rewards


def adaptive_kl_coef(kl_coef: float, observed_kl: float, target_kl: float, batch_size: int, horizon: int) -> float:
    """Ziegler et al. (2019): move β by up to ±20% × batch/horizon toward the KL target."""
    error = min(max(observed_kl / target_kl - 1.0, -0.2), 0.2)
    return kl_coef * (1.0 + error * batch_size / horizon)


# Critic-free RL (GRPO, Dr. GRPO, RLOO). Rewards are (P, G): P prompts, G sampled responses each.
# Every process holds whole groups, so group statistics are local; `total` sums over processes
# (an all-reduce under torchrun) where a statistic is the global batch's.


def group_advantages(rewards: torch.Tensor, total: Callable[[torch.Tensor], torch.Tensor] = lambda t: t) -> torch.Tensor:
    """GRPO (Shao et al. 2024): (r − mean of the group) / (std of the group + 1e-4), the unbiased std."""
    return (rewards - rewards.mean(dim=1, keepdim=True)) / (rewards.std(dim=1, keepdim=True) + 1e-4)


def group_nostd_advantages(rewards: torch.Tensor, total: Callable[[torch.Tensor], torch.Tensor] = lambda t: t) -> torch.Tensor:
    """Dr. GRPO (Liu et al. 2025): r − mean of the group; no std, which favours groups that barely differ."""
    return rewards - rewards.mean(dim=1, keepdim=True)


def leave_one_out_advantages(rewards: torch.Tensor, total: Callable[[torch.Tensor], torch.Tensor] = lambda t: t) -> torch.Tensor:
    """RLOO (Ahmadian et al. 2024): r_i − mean of the other G − 1 rewards of its group."""
    size = rewards.shape[1]
    return (rewards * size - rewards.sum(dim=1, keepdim=True)) / (size - 1)


def batch_advantages(rewards: torch.Tensor, total: Callable[[torch.Tensor], torch.Tensor] = lambda t: t) -> torch.Tensor:
    """r − mean of the group, divided by the std of those differences over the global batch (REINFORCE++ baseline)."""
    centred = rewards - rewards.mean(dim=1, keepdim=True)
    count = total(torch.tensor(float(centred.numel())))
    mean = total(centred.sum()) / count
    variance = total(((centred - mean) ** 2).sum()) / (count - 1).clamp(min=1)
    return centred / (variance.sqrt() + 1e-4)


ADVANTAGES: dict[str, Callable[..., torch.Tensor]] = {
    "group": group_advantages, "group-nostd": group_nostd_advantages, "loo": leave_one_out_advantages, "batch": batch_advantages,
}


def zero_std_groups(rewards: torch.Tensor) -> int:
    """Groups whose G rewards are all equal: every estimator gives them advantage 0 (no signal)."""
    return int((rewards == rewards[:, :1]).all(dim=1).sum())


# Loss aggregation over the GLOBAL batch: each function divides by totals of the whole batch (every
# process, every accumulation step), so summing the parts' losses gives the one-batch loss exactly.


@dataclass(frozen=True)
class BatchTotals:
    tokens: float  # response tokens that count in the loss, over the global batch
    sequences: float  # responses in the global batch
    horizon: int  # Dr. GRPO's constant length: max_new_tokens


def token_mean(losses: torch.Tensor, mask: torch.Tensor, totals: BatchTotals) -> torch.Tensor:
    """DAPO: every token of the batch weighs the same. Σ loss / Σ tokens."""
    return (losses * mask).sum() / max(totals.tokens, 1)


def seq_mean_token_mean(losses: torch.Tensor, mask: torch.Tensor, totals: BatchTotals) -> torch.Tensor:
    """GRPO: mean over responses of each response's token mean (a short answer's tokens weigh more)."""
    return ((losses * mask).sum(dim=1) / mask.sum(dim=1).clamp(min=1)).sum() / max(totals.sequences, 1)


def seq_mean_token_sum_norm(losses: torch.Tensor, mask: torch.Tensor, totals: BatchTotals) -> torch.Tensor:
    """Dr. GRPO: token sums over responses, divided by a constant (responses × max_new_tokens): no length bias."""
    return (losses * mask).sum() / max(totals.sequences * totals.horizon, 1)


LOSS_AGGREGATIONS: dict[str, Callable[[torch.Tensor, torch.Tensor, BatchTotals], torch.Tensor]] = {
    "token-mean": token_mean, "seq-mean-token-mean": seq_mean_token_mean, "seq-mean-token-sum-norm": seq_mean_token_sum_norm,
}
