"""The statistics of blind battles against values worked out by hand."""

import math

import pytest

from kochat_eval.battles import bradley_terry, bradley_terry_with_ci, cohen_kappa, human_win_rate


def test_the_human_win_rate_counts_a_tie_as_half_and_both_bad_apart():
    battles = [("p1", "ppo", "sft", "a"), ("p2", "sft", "ppo", "a"), ("p3", "ppo", "sft", "tie"), ("p4", "sft", "ppo", "b"),
               ("p5", "ppo", "sft", "both_bad"), ("p1", "dpo", "sft", "a")]
    result = human_win_rate(battles, "ppo", "sft")
    # ppo: win (p1), loss (p2: sft on side a won), tie (p3), win (p4: ppo on side b won); p5 both bad → (1 + 0 + ½ + 1) / 4
    assert result["win_rate"] == pytest.approx(2.5 / 4)
    assert result["votes"] == 5 and result["both_bad_share"] == pytest.approx(1 / 5)
    low, high = result["ci"]
    assert low <= result["win_rate"] <= high and low < high
    assert human_win_rate(battles, "ppo", "sft") == result  # seeded
    assert math.isnan(human_win_rate(battles, "grpo", "sft")["win_rate"])


def test_bradley_terry_on_three_stages_solved_by_hand():
    # a beats b 2 of 3, b beats c 2 of 3, a beats c 4 of 5: s_a − s_b = ln 2, s_b − s_c = ln 2 and s_a − s_c = ln 4
    # fit every pair exactly (σ(ln 2) = 2/3, σ(ln 4) = 4/5), so that is the maximum-likelihood answer.
    battles = ([("p", "a", "b", "a")] * 2 + [("p", "a", "b", "b")] + [("q", "b", "c", "a")] * 2 + [("q", "c", "b", "a")]
               + [("r", "c", "a", "b")] * 4 + [("r", "a", "c", "b")])
    strengths = bradley_terry(battles, ["a", "b", "c"], reference="c")
    assert strengths["a"] == pytest.approx(math.log(4), abs=1e-4)
    assert strengths["b"] == pytest.approx(math.log(2), abs=1e-4)
    assert strengths["c"] == 0.0
    # a tie is half a win: one tie and one win of a over b is a 3/4 share, s_a − s_b = ln 3
    tied = bradley_terry([("p", "a", "b", "tie"), ("p", "a", "b", "a")], ["a", "b"], reference="b")
    assert tied["a"] == pytest.approx(math.log(3), abs=1e-4)
    with_ci = bradley_terry_with_ci(battles, ["a", "b", "c"], reference="c", resamples=100)
    assert with_ci["a"]["bt"] == pytest.approx(math.log(4), abs=1e-4)
    low, high = with_ci["b"]["bt_ci"]
    assert low <= math.log(2) + 1e-6 and high >= math.log(2) - 1e-6


def test_cohen_kappa_by_hand():
    # agreement 3/4; chance: P(a)·P(a) + P(b)·P(b) = (2/4·1/4) + (2/4·3/4) = 1/2 → κ = (3/4 − 1/2) / (1 − 1/2) = 1/2
    assert cohen_kappa(["a", "a", "b", "b"], ["a", "b", "b", "b"]) == pytest.approx(0.5)
    assert cohen_kappa(["a", "b"], ["a", "b"]) == pytest.approx(1.0)
    assert math.isnan(cohen_kappa(["a"], ["a"]))
    assert math.isnan(cohen_kappa(["tie", "tie"], ["tie", "tie"]))
