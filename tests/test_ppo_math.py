"""PPO's math against values worked out by hand."""

import math

import pytest
import torch

from kochat_train.objectives import (
    adaptive_kl_coef,
    approx_kl,
    clipped_policy_loss,
    clipped_value_loss,
    gae,
    kl_penalised_rewards,
    whiten,
)
from kochat_train.rollout import response_mask
from tests.conftest import as_two_ranks


def test_gae_by_hand():
    # One row, three tokens, γ = 1, λ = 0.5, V = (1, 2, 3), r = (0, 0, 10); V after the end = 0.
    # δ2 = 10 − 3 = 7; δ1 = 0 + 3 − 2 = 1; δ0 = 0 + 2 − 1 = 1
    # A2 = 7; A1 = 1 + 0.5·7 = 4.5; A0 = 1 + 0.5·4.5 = 3.25; returns = A + V
    advantages, returns = gae(torch.tensor([[0.0, 0.0, 10.0]]), torch.tensor([[1.0, 2.0, 3.0]]), torch.ones(1, 3), gamma=1.0, lam=0.5)
    assert advantages.tolist() == [[3.25, 4.5, 7.0]]
    assert returns.tolist() == [[4.25, 6.5, 10.0]]


def test_gae_stops_at_the_end_of_each_response():
    # Second row ends after one token: its value bootstraps from 0, padding gets 0.
    rewards = torch.tensor([[1.0, 1.0], [2.0, 5.0]])
    values = torch.tensor([[0.5, 0.5], [1.0, 9.0]])
    mask = torch.tensor([[1.0, 1.0], [1.0, 0.0]])
    advantages, returns = gae(rewards, values, mask, gamma=0.9, lam=1.0)
    # row 0: A1 = 1 − 0.5 = 0.5; A0 = 1 + 0.9·0.5 − 0.5 + 0.9·0.5 = 1.4
    assert advantages[0].tolist() == pytest.approx([1.4, 0.5])
    assert advantages[1].tolist() == [1.0, 0.0]
    assert returns[1].tolist() == [2.0, 0.0]


def test_whiten_uses_masked_entries_only():
    values = torch.tensor([[1.0, 3.0, 100.0]])
    whitened = whiten(values, torch.tensor([[1.0, 1.0, 0.0]]))
    assert whitened[0].tolist() == pytest.approx([-1.0, 1.0, 0.0], abs=1e-6)  # mean 2, variance 1


def test_whiten_over_two_processes_uses_the_global_batch():
    """Two threads stand in for two ranks; `total` is their all-reduce (a sum through a barrier)."""
    halves = [(torch.tensor([[1.0, 3.0]]), torch.tensor([[1.0, 1.0]])), (torch.tensor([[5.0, 7.0, 9.0]]), torch.tensor([[1.0, 1.0, 0.0]]))]
    results = as_two_ranks(lambda index, total: whiten(*halves[index], total=total))
    # global masked entries 1, 3, 5, 7: mean 4, variance (9 + 1 + 1 + 9) / 4 = 5
    scale = 1 / math.sqrt(5)
    assert results[0][0].tolist() == pytest.approx([-3 * scale, -1 * scale], abs=1e-6)
    assert results[1][0].tolist() == pytest.approx([1 * scale, 3 * scale, 0.0], abs=1e-6)


def test_clipped_policy_loss_by_hand():
    # ratios e^0.5 = 1.6487 (A = 1: clipped to 1.2 → loss −1.2) and e^−0.5 = 0.6065 (A = −1: max(0.6065, 0.8) = 0.8)
    logprobs = torch.tensor([[0.5, -0.5]])
    loss, clipped = clipped_policy_loss(logprobs, torch.zeros(1, 2), torch.tensor([[1.0, -1.0]]), torch.ones(1, 2), 0.2)
    assert loss.item() == pytest.approx((-1.2 + 0.8) / 2)
    assert clipped.item() == 1.0
    # Inside the clip range the loss is plain −A·ρ and nothing is clipped.
    loss, clipped = clipped_policy_loss(torch.tensor([[0.1]]), torch.zeros(1, 1), torch.tensor([[2.0]]), torch.ones(1, 1), 0.2)
    assert loss.item() == pytest.approx(-2 * math.exp(0.1)) and clipped.item() == 0.0


def test_clipped_value_loss_by_hand():
    # V_old = 0, V = 1, R = 2, ε = 0.2: V_clip = 0.2; max((1−2)², (0.2−2)²) = 3.24; ½ → 1.62
    loss = clipped_value_loss(torch.tensor([[1.0]]), torch.zeros(1, 1), torch.tensor([[2.0]]), torch.ones(1, 1), 0.2)
    assert loss.item() == pytest.approx(1.62)


def test_approx_kl_by_hand():
    # log ρ = 0.5: e^0.5 − 1 − 0.5 = 0.148721; log ρ = 0 gives 0; mean over two tokens
    assert approx_kl(torch.tensor([[0.5, 0.0]]), torch.zeros(1, 2), torch.ones(1, 2)).item() == pytest.approx(0.148721 / 2, abs=1e-6)


def test_kl_penalty_and_score_on_the_last_real_token():
    logprobs = torch.tensor([[-1.0, -2.0, -3.0]])
    ref = torch.tensor([[-1.5, -2.0, -1.0]])
    rewards = kl_penalised_rewards(torch.tensor([4.0]), logprobs, ref, torch.tensor([[1.0, 1.0, 0.0]]), kl_coef=0.1)
    assert rewards[0].tolist() == pytest.approx([-0.05, 4.0, 0.0])


def test_adaptive_kl_moves_toward_the_target():
    assert adaptive_kl_coef(0.1, observed_kl=12.0, target_kl=6.0, batch_size=100, horizon=1000) == pytest.approx(0.1 * 1.02)
    assert adaptive_kl_coef(0.1, observed_kl=5.7, target_kl=6.0, batch_size=100, horizon=1000) == pytest.approx(0.1 * (1 - 0.005))


def test_response_mask_keeps_the_first_eos():
    eos = 2
    ids = torch.tensor([[5, 6, 2, 2, 2], [5, 2, 7, 2, 8], [5, 6, 7, 8, 9]])
    assert response_mask(ids, [eos]).tolist() == [[1, 1, 1, 0, 0], [1, 1, 0, 0, 0], [1, 1, 1, 1, 1]]
