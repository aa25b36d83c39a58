"""Repetition metrics and bootstrap CI against values worked out by hand."""

import math

import numpy as np
import pytest

from kochat_data.repetition import distinct_n, has_loop, loop_share, rep_w, seq_rep_n, split_units
from kochat_eval.metrics import bootstrap_ci

A = "나는 오늘 밥을 먹었다 나는 오늘".split()  # 6 eojeol, 4 distinct
B = "좋아요".split()  # one word
EMPTY: list[str] = []


def test_units():
    assert split_units("좋은 아침 이에요", "eojeol") == ["좋은", "아침", "이에요"]
    assert split_units("좋은 아침", "char") == ["좋", "은", "아", "침"]
    assert split_units("ab", "token", tokenize=lambda text: [7, 8]) == ["7", "8"]
    with pytest.raises(ValueError):
        split_units("x", "byte")


def test_distinct_n_is_corpus_level():
    # unigrams: A has 6 (4 unique) + B 1 (new) → 5 / 7
    assert distinct_n([A, B, EMPTY], 1) == pytest.approx(5 / 7)
    # bigrams: A has 5: (나는 오늘) twice → 4 unique / 5; B and EMPTY have none
    assert distinct_n([A, B, EMPTY], 2) == pytest.approx(4 / 5)
    assert math.isnan(distinct_n([B, EMPTY], 2))


def test_seq_rep_4_averages_over_responses_with_4grams():
    # A's 4-grams: 3, all distinct → 0; "가 나 가 나 가 나" has 3 4-grams, 2 unique → 1/3
    assert seq_rep_n([A, "가 나 가 나 가 나".split(), B, EMPTY], 4) == pytest.approx((0 + 1 / 3) / 2)
    assert math.isnan(seq_rep_n([B, EMPTY], 4))


def test_rep_w_counts_repeats_within_the_window():
    # A: the 5th and 6th words repeat words 4 and 4 positions back → 2 of 6; B: 0 of 1
    assert rep_w([A, B, EMPTY], w=16) == pytest.approx(2 / 7)
    # with w = 3 the repeats are out of reach
    assert rep_w([A], w=3) == 0.0
    assert math.isnan(rep_w([EMPTY], w=16))


def test_loops_need_three_in_a_row():
    assert has_loop("네 네 네".split())
    assert has_loop("저도 좋아요 저도 좋아요 저도 좋아요 끝".split())
    assert not has_loop("저도 좋아요 저도 좋아요".split())
    assert not has_loop(A) and not has_loop(B) and not has_loop(EMPTY)
    assert loop_share([A, "네 네 네".split(), B, EMPTY]) == 0.25


def test_bootstrap_ci_contains_the_mean_and_narrows_with_more_samples():
    rng = np.random.default_rng(1)
    small, large = rng.normal(2.0, 1.0, 50), rng.normal(2.0, 1.0, 2000)
    low, high = bootstrap_ci(small)
    assert low < small.mean() < high
    big_low, big_high = bootstrap_ci(large)
    assert big_low < large.mean() < big_high
    assert big_high - big_low < (high - low) / 3  # ~√40 narrower
    assert bootstrap_ci(small) == bootstrap_ci(small)  # seeded
    assert all(math.isnan(x) for x in bootstrap_ci([]))
