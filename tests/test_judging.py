"""Honest judging: shortcut baselines, the judge share, paired and length-controlled win rates."""

import datasets
import numpy as np
import pytest

from conftest import TINY
from kochat_data.split import judge_prompt_ids
from kochat_eval.judging import (
    length_controlled_win_rate,
    paired_bootstrap_win_rate,
    prompt_overlap,
    shortcut_margins,
    win_indicators,
)
from kochat_eval.rm_eval import evaluate_rm
from kochat_eval.stages import stage_metrics
from kochat_train.objectives import pair_accuracies
from kochat_train.rm import RewardConfig, select_pairs, train_rm


def test_shortcut_accuracies_by_hand():
    prompts = ["날씨 어때", "점심 뭐 먹지", "영화 추천", "잘 자"]
    chosen = ["날씨가 맑아요", "김밥", "영화는 인셉션", "응 잘 자"]
    rejected = ["hello hello", "점심은 김치찌개가 좋아요", "추천", "ok"]
    ranks = np.array([[0, 2], [0, 1], [0, 1], [1, 2]])
    margins = shortcut_margins(prompts, chosen, rejected)
    # lengths (chars, spaces included): 7 v 11, 2 v 12, 7 v 2, 4 v 2 → longer wins on pairs 3 and 4
    assert pair_accuracies(margins["longer wins"], ranks, tie=0.5) == {"accuracy": 0.5, "accuracy_0v1": 0.5, "accuracy_0v2": 0.0,
                                                                        "accuracy_1v2": 1.0}
    assert pair_accuracies(margins["shorter wins"], ranks, tie=0.5)["accuracy"] == 0.5
    # Hangul share: 1 v 0, 1 v 1 (a tie: ½), 1 v 1 (½), 1 v 0 → 3 of 4
    assert pair_accuracies(margins["more Hangul wins"], ranks, tie=0.5)["accuracy"] == 0.75
    # prompt bigrams: 날씨 씨어 어때 → 1/3 v 0; 점심 심뭐 뭐먹 먹지 → 0 v 1/4; 영화 화추 추천 → 1/3 v 1/3 (a tie: ½); 잘자 → 1 v 0
    assert prompt_overlap("날씨 어때", "날씨가 맑아요") == pytest.approx(1 / 3)
    assert pair_accuracies(margins["prompt bigram overlap wins"], ranks, tie=0.5) == {"accuracy": 0.625, "accuracy_0v1": 0.25,
                                                                                       "accuracy_0v2": 1.0, "accuracy_1v2": 1.0}
    # the prompt's characters: 날씨어때 → 2/4 v 0; 점심뭐먹지 → 0 v 2/5; 영화추천 → 2/4 v 2/4 (a tie); 잘자 → 1 v 0
    assert prompt_overlap("날씨 어때", "날씨가 맑아요", n=1) == 0.5
    assert pair_accuracies(margins["prompt character overlap wins"], ranks, tie=0.5)["accuracy"] == 0.625
    assert prompt_overlap("날씨 어때", "맑아요", n=1) == 0 and prompt_overlap("", "맑아요") == 0


def test_eval_rm_reports_the_shortcuts_next_to_the_model(tiny_rm, sample_data, run_cli):
    result = evaluate_rm(tiny_rm, sample_data, batch_size=8)
    assert set(result["shortcuts"]) == {"longer wins", "shorter wins", "more Hangul wins", "prompt bigram overlap wins",
                                        "prompt character overlap wins"}
    longer, shorter = result["shortcuts"]["longer wins"], result["shortcuts"]["shorter wins"]
    assert longer["accuracy"] + shorter["accuracy"] == pytest.approx(1)  # a pair of equal lengths is a coin toss for both
    best = max(rule["accuracy"] for rule in result["shortcuts"].values())
    assert result["beats_every_shortcut"]["accuracy"] == (result["accuracy"] > best)
    code, out, err = run_cli("eval", "rm", "--model", tiny_rm, "--data", sample_data)
    assert code == 0 and "prompt character overlap wins" in out and "0v1" in out


def test_the_judge_share_is_disjoint_from_the_proxy_and_the_same_in_every_run(sample_data, tiny_base, tmp_path):
    pairs = datasets.load_from_disk(str(sample_data / "rm"))["train"]
    proxy, judge = select_pairs(pairs, "proxy", 0.5), select_pairs(pairs, "judge", 0.5)
    assert not set(proxy["prompt_id"]) & set(judge["prompt_id"])
    assert len(proxy) + len(judge) == len(pairs) and len(proxy) and len(judge)
    assert set(judge["prompt_id"]) == judge_prompt_ids(list(pairs["prompt_id"]), 0.5)  # a function of the prompt alone
    ids = [f"p{n}" for n in range(2000)]
    assert 0.45 < len(judge_prompt_ids(ids, 0.5)) / 2000 < 0.55 and judge_prompt_ids(ids, 0.2) <= judge_prompt_ids(ids, 0.5)
    counts = {}
    for which, seed in (("proxy", 1), ("judge", 2), ("judge", 3)):
        result = train_rm(RewardConfig(data=sample_data, out=tmp_path / f"{which}{seed}", model=str(tiny_base), max_steps=1, pairs=which,
                                       seed=seed, **TINY))
        counts.setdefault(which, set()).add(result.metrics["train_pairs"])
    assert counts == {"proxy": {len(proxy)}, "judge": {len(judge)}}  # other seeds, the same shares


def test_paired_bootstrap_ci_narrows_with_more_prompts():
    rng = np.random.default_rng(0)
    widths = []
    for n in (20, 200, 2000):
        scores, reference = rng.normal(0.2, 1, n), rng.normal(0, 1, n)
        rate, low, high = paired_bootstrap_win_rate(scores, reference)
        assert low <= rate <= high and rate == win_indicators(scores, reference).mean()
        widths.append(high - low)
    assert widths[0] > widths[1] > widths[2]
    assert paired_bootstrap_win_rate([1, 2], [1, 1]) == (0.75, 0.5, 1.0)  # a draw is half a win


def test_length_controlled_win_rate():
    rng = np.random.default_rng(1)
    scores, reference = rng.normal(0.3, 1, 300), rng.normal(0, 1, 300)
    raw = win_indicators(scores, reference).mean()
    assert length_controlled_win_rate(scores, reference, np.zeros(300)) == raw  # equal lengths: the raw rate
    # Wins that length explains: the longer response wins 90% of the time, lengths differ by ±5.
    difference = rng.choice([-5.0, 5.0], 300)
    wins = np.where(rng.random(300) < 0.9, difference > 0, difference < 0)
    raw = wins.mean()
    controlled = length_controlled_win_rate(wins.astype(float), np.full(300, 0.5), difference)
    assert abs(controlled - 0.5) < abs(raw - 0.5) / 3 and abs(controlled - 0.5) < 0.1
    # Longer responses win more often, but the wins are not explained by length alone: LC stays high.
    assert length_controlled_win_rate(np.ones(10), np.zeros(10), np.arange(10.0)) == 1.0


def test_a_policy_that_games_the_proxy_gains_on_the_proxy_only():
    rng = np.random.default_rng(2)
    n = 400
    reference_lengths, policy_lengths = rng.integers(3, 8, n), rng.integers(10, 16, n)  # the policy learned to ramble

    def rows(lengths, judge):  # the proxy rewards length; the judge scores what the length does not show
        return [{"response": " ".join(["말"] * length), "proxy_score": float(length), "judge_score": float(score), "kl": 1.0, "eos": True}
                for length, score in zip(lengths, judge, strict=True)]

    reference = rows(reference_lengths, rng.normal(0, 1, n))
    policy = rows(policy_lengths, rng.normal(0, 1, n))
    gamed = stage_metrics("ppo", "runs/ppo", policy, reference, "eojeol", judged_by="judge")
    sft = stage_metrics("sft", "runs/sft", reference, reference, "eojeol", judged_by="judge")
    assert gamed["proxy_score"] > sft["proxy_score"] + 5  # a big gain on the proxy
    assert gamed["judge_score_ci_low"] < sft["judge_score"] < gamed["judge_score_ci_high"]  # none on the judge
    assert gamed["win_rate_ci_low"] < 0.5 < gamed["win_rate_ci_high"]
    assert gamed["score_gain_ci_low"] < 0 < gamed["score_gain_ci_high"] and sft["score_gain"] == 0
    lifted = [{**r, "judge_score": r["judge_score"] + 0.5} for r in reference]  # every prompt gains exactly ½
    gain = stage_metrics("ppo", "runs/ppo", lifted, reference, "eojeol", judged_by="judge")
    assert (gain["score_gain"], gain["score_gain_ci_low"], gain["score_gain_ci_high"]) == pytest.approx((0.5, 0.5, 0.5))
    assert stage_metrics("ppo", "runs/ppo", policy, reference, "eojeol", judged_by="proxy")["win_rate"] == 1.0  # the proxy is fooled
