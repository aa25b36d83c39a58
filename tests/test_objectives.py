import math

import numpy as np
import pytest
import torch

from kochat_train.objectives import last_token_index, pairwise_accuracy, pairwise_loss, positions_from_mask, unigram_perplexity


def test_last_token_index_right_and_left_padding():
    mask = torch.tensor([[1, 1, 1, 0, 0], [0, 0, 1, 1, 1], [1, 1, 1, 1, 1], [1, 0, 0, 0, 0]])
    assert last_token_index(mask).tolist() == [2, 4, 4, 0]


def test_positions_count_real_tokens_only():
    mask = torch.tensor([[0, 0, 1, 1, 1], [1, 1, 1, 0, 0]])
    assert positions_from_mask(mask).tolist() == [[0, 0, 0, 1, 2], [0, 1, 2, 2, 2]]


def test_pairwise_loss_by_hand():
    # −log σ(1) = log(1 + e^−1) = 0.31326; −log σ(0) = log 2 = 0.69315; −log σ(−2) = 2.12693
    loss = pairwise_loss(torch.tensor([2.0, 0.5, -1.0]), torch.tensor([1.0, 0.5, 1.0]))
    assert loss.item() == pytest.approx((0.31326 + 0.69315 + 2.12693) / 3, abs=1e-5)


def test_pairwise_loss_gradient_pushes_chosen_up():
    chosen = torch.tensor([0.0], requires_grad=True)
    pairwise_loss(chosen, torch.tensor([0.0])).backward()
    assert chosen.grad.item() == pytest.approx(-0.5)  # −(1 − σ(0))


def test_pairwise_accuracy_counts_ties_as_wrong_or_as_a_coin_toss():
    assert pairwise_accuracy(np.array([0.5, 0.0, -0.1, 2.0])) == 0.5
    assert pairwise_accuracy(np.array([0.5, 0.0, -0.1, 2.0]), tie=0.5) == 0.625
    assert math.isnan(pairwise_accuracy(np.array([])))


def test_unigram_perplexity_by_hand():
    # counts [2, 1, 0] + 1 → p = [3/6, 2/6, 1/6]; eval tokens 0 and 2 → exp(−(log ½ + log ⅙)/2) = √12
    assert unigram_perplexity(np.array([0, 0, 1]), np.array([0, 2]), vocab_size=3) == pytest.approx(math.sqrt(12))


def test_log_probs_a_few_rows_at_a_time_equal_the_full_log_softmax():
    from kochat_train.objectives import LOGPROB_ROWS, gathered_logprobs
    from kochat_train.rollout import entropy

    torch.manual_seed(0)
    logits = torch.randn(2 * LOGPROB_ROWS + 1, 5, 11, dtype=torch.float64)  # a last chunk shorter than the others
    tokens = torch.randint(0, 11, (2 * LOGPROB_ROWS + 1, 5))
    full = torch.log_softmax(logits, dim=-1)
    assert torch.allclose(gathered_logprobs(logits, tokens), full.gather(-1, tokens.unsqueeze(-1)).squeeze(-1).float())
    assert torch.allclose(entropy(logits), -(full.exp() * full).sum(dim=-1))
    # by hand: logits (0, ln 3) give p = (1/4, 3/4)
    two = torch.tensor([[[0.0, math.log(3.0)]]])
    assert gathered_logprobs(two, torch.tensor([[1]])).item() == pytest.approx(math.log(0.75))
    assert entropy(two).item() == pytest.approx(-(0.25 * math.log(0.25) + 0.75 * math.log(0.75)))
