"""Critic-free RL's math, the rule rewards and the reward-hacking checks against values worked out by hand."""

import math

import pytest
import torch

from kochat_data.errors import UsageError
from kochat_train.alarms import Thresholds, answer_signature, hacking_alarms, kl_alarm, length_alarm, proxy_judge_alarm, share_alarm
from kochat_train.stage_configs import OnlineRLConfig
from kochat_train.objectives import (
    ADVANTAGES,
    LOSS_AGGREGATIONS,
    BatchTotals,
    clipped_surrogate,
    kl_k1,
    kl_k3,
    zero_std_groups,
)
from tests.conftest import as_two_ranks
from kochat_train.reward_functions import (
    eos_reward,
    hangul_reward,
    length_reward,
    overlap_reward,
    parse_reward,
    repetition_reward,
)

REWARDS = torch.tensor([[1.0, 2.0, 3.0], [5.0, 5.0, 5.0]])  # two groups of G = 3; the second has no signal


def test_group_advantage_by_hand():
    # group 1: mean 2, unbiased std 1 → (−1, 0, 1) / (1 + 1e-4); group 2: all equal → 0
    advantages = ADVANTAGES["group"](REWARDS)
    assert advantages[0].tolist() == pytest.approx([-1 / 1.0001, 0.0, 1 / 1.0001])
    assert advantages[1].tolist() == [0.0, 0.0, 0.0]


def test_dr_grpo_advantage_keeps_the_scale():
    assert ADVANTAGES["group-nostd"](REWARDS).tolist() == [[-1.0, 0.0, 1.0], [0.0, 0.0, 0.0]]


def test_leave_one_out_baseline_by_hand():
    # r1 = 1 against mean(2, 3) = 2.5 → −1.5; r2 = 2 against 2 → 0; r3 = 3 against 1.5 → 1.5
    assert ADVANTAGES["loo"](REWARDS).tolist() == [[-1.5, 0.0, 1.5], [0.0, 0.0, 0.0]]


def test_batch_advantage_uses_the_std_of_the_whole_batch():
    # centred: (−1, 0, 1, 0, 0, 0); mean 0; unbiased variance 2/5 → std √0.4
    expected = torch.tensor([[-1.0, 0.0, 1.0], [0.0, 0.0, 0.0]]) / (math.sqrt(0.4) + 1e-4)
    torch.testing.assert_close(ADVANTAGES["batch"](REWARDS), expected)


def test_batch_advantage_over_two_processes_equals_one():
    """Each rank holds one group; their batch std is the whole batch's."""
    halves = REWARDS[:1], REWARDS[1:]
    split = as_two_ranks(lambda index, total: ADVANTAGES["batch"](halves[index], total=total))
    torch.testing.assert_close(torch.cat(split), ADVANTAGES["batch"](REWARDS))


def test_zero_std_groups_are_counted():
    assert zero_std_groups(REWARDS) == 1
    assert zero_std_groups(torch.tensor([[0.5, 0.5], [0.5, 0.5]])) == 2


LOSSES = torch.tensor([[1.0, 2.0, 3.0], [4.0, 0.0, 0.0]])
MASK = torch.tensor([[1.0, 1.0, 1.0], [1.0, 0.0, 0.0]])


def test_loss_aggregations_by_hand():
    totals = BatchTotals(tokens=4, sequences=2, horizon=10)
    assert LOSS_AGGREGATIONS["token-mean"](LOSSES, MASK, totals).item() == pytest.approx(10 / 4)  # (1+2+3+4) / 4 tokens
    assert LOSS_AGGREGATIONS["seq-mean-token-mean"](LOSSES, MASK, totals).item() == pytest.approx((2 + 4) / 2)  # means 2 and 4
    assert LOSS_AGGREGATIONS["seq-mean-token-sum-norm"](LOSSES, MASK, totals).item() == pytest.approx(10 / (2 * 10))


@pytest.mark.parametrize("name", list(LOSS_AGGREGATIONS))
def test_parts_of_the_batch_add_up_to_the_whole(name):
    """Micro-batches (or processes) each divide by the global totals: their sum is the one-batch loss."""
    totals = BatchTotals(tokens=MASK.sum().item(), sequences=2, horizon=10)
    aggregate = LOSS_AGGREGATIONS[name]
    parts = aggregate(LOSSES[:1], MASK[:1], totals) + aggregate(LOSSES[1:], MASK[1:], totals)
    assert parts.item() == pytest.approx(aggregate(LOSSES, MASK, totals).item())


def test_kl_estimators_by_hand():
    logprobs, ref = torch.tensor([math.log(0.5)]), torch.tensor([math.log(0.25)])
    assert kl_k1(logprobs, ref).item() == pytest.approx(math.log(2))  # log 0.5 − log 0.25
    assert kl_k3(logprobs, ref).item() == pytest.approx(0.5 - 1 - math.log(0.5))  # ρ = 0.25/0.5: (ρ − 1) − log ρ
    assert kl_k3(ref, ref).item() == 0.0 and (kl_k3(torch.randn(50), torch.randn(50)) >= 0).all()


def test_clip_higher_is_asymmetric():
    old = torch.zeros(1, 2)
    logprobs = torch.log(torch.tensor([[1.25, 0.7]]))  # ratios 1.25 and 0.7
    positive = torch.ones(1, 2)
    losses, clipped = clipped_surrogate(logprobs, old, positive, clip_low=0.2, clip_high=0.28)
    # A > 0: ratio 1.25 is inside 1 + 0.28, not clipped → −1.25; ratio 0.7 is below 0.8 → max(−0.7, −0.8) = −0.7 (unclipped)
    assert losses[0].tolist() == pytest.approx([-1.25, -0.7]) and clipped.tolist() == [[0.0, 0.0]]
    losses, clipped = clipped_surrogate(logprobs, old, positive, clip_low=0.2, clip_high=0.2)
    assert losses[0].tolist() == pytest.approx([-1.2, -0.7]) and clipped.tolist() == [[1.0, 0.0]]
    losses, _ = clipped_surrogate(logprobs, old, -positive, clip_low=0.2, clip_high=0.28)
    assert losses[0].tolist() == pytest.approx([1.25, 0.8])  # A < 0: the low clip binds at 0.8


def test_rule_rewards_by_hand():
    assert length_reward(["하나 둘 셋", ""], target=3) == [0.0, -1.0]
    assert length_reward(["a b c d e f"], target=3) == [-1.0]
    assert hangul_reward(["안녕 hi", "hello", "…"]) == pytest.approx([2 / 4, 0.0, 0.0])  # letters: 안 녕 h i
    assert eos_reward([True, False]) == [1.0, 0.0]
    # seq-rep-4 over eojeol: 5 words → 2 four-grams, both the same → 1 − 1/2; a b a b a b a: loop (ab ×3) and seq-rep 1 − 2/4
    assert repetition_reward(["가 가 가 가 가", "a b a b a b a", "짧은 답"]) == pytest.approx([-0.5 - 1, -0.5 - 1, 0.0])
    assert repetition_reward(["하나 둘 셋 넷 다섯"]) == [0.0]
    assert overlap_reward(["사과 주세요", "  "], ["사과는 여기", "답"]) == pytest.approx([2 / 5, 0.0])  # 사 과 of 사 과 주 세 요


def test_reward_specs_parse_and_bad_ones_are_one_line():
    spec = parse_reward("rm=runs/rm")
    assert (spec.kind, spec.argument, spec.weight) == ("rm", "runs/rm", 1.0)
    spec = parse_reward("length=12:0.5")
    assert (spec.name, spec.argument, spec.weight) == ("length", "12", 0.5)
    spec = parse_reward("mypackage.rewards:short:2")
    assert (spec.kind, spec.name, spec.argument, spec.weight) == ("function", "short", "mypackage.rewards:short", 2.0)
    assert parse_reward("relevance").argument is None and parse_reward("hangul:-1").weight == -1.0
    for bad, said in (("length", "target length"), ("length=0", "target length"), ("rm", "reward model directory"),
                      ("eos=3", "takes no argument"), ("nonsense", "expected rm=DIR")):
        with pytest.raises(UsageError, match=said):
            parse_reward(bad)


START = {"eval_median_eojeol": 7.5, "eval_non_hangul_share": 0.05, "eval_loop_share": 0.0, "eval_kl": 0.0,
         "eval_proxy_score": 1.0, "eval_judge_score": 2.0}


def test_each_alarm_fires_at_its_threshold_and_not_below():
    assert length_alarm(7.5, 2.4, 3.0) and length_alarm(7.5, 2.5, 3.0) is None  # 2.5 = 7.5 / 3 is not below
    assert length_alarm(4.0, 12.5, 3.0) and length_alarm(4.0, 12.0, 3.0) is None
    assert share_alarm("x", 0.05, 0.3, 0.2) and share_alarm("x", 0.05, 0.25, 0.2) is None
    assert kl_alarm(10.5, 10.0) and kl_alarm(9.9, 10.0) is None
    assert proxy_judge_alarm(1.0, 1.5, 2.0, 1.8, 0.1) and proxy_judge_alarm(1.0, 1.5, 2.0, 1.95, 0.1) is None
    assert proxy_judge_alarm(1.0, 0.9, 2.0, 1.0, 0.1) is None  # both fell: a bad run, not a gamed proxy


def test_the_sample_ppo_collapse_fires_and_a_steady_run_does_not():
    collapsed = {**START, "eval_median_eojeol": 1.0, "eval_non_hangul_share": 0.3, "eval_kl": 14.6, "eval_proxy_score": 3.4,
                 "eval_judge_score": 1.3}
    assert set(hacking_alarms(START, collapsed, Thresholds.of(OnlineRLConfig()))) == {"length", "non_hangul", "kl", "proxy_judge"}
    steady = {**START, "eval_median_eojeol": 6.0, "eval_kl": 1.6, "eval_proxy_score": 1.4, "eval_judge_score": 2.3}
    assert hacking_alarms(START, steady, Thresholds.of(OnlineRLConfig())) == {}


def test_answer_signature_by_hand():
    signature = answer_signature(["안녕하세요 반가워요", "hello there friend", "네 네 네 네"])
    assert signature == {"eval_median_eojeol": 3.0, "eval_non_hangul_share": pytest.approx(1 / 3), "eval_loop_share": pytest.approx(1 / 3)}
