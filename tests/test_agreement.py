"""The statistics of human rankings against values worked out by hand."""

from fractions import Fraction

import math

import pytest

from kochat_eval.agreement import (
    agreement,
    aggregate_ranking,
    competition_ranks,
    first_shares,
    fractional_ranks,
    mean_ranks,
    ordinal_alpha,
    pairwise_agreement,
    preference_pairs,
)


def test_a_ranking_is_read_one_way_whatever_values_it_was_sent_with():
    assert competition_ranks([5, 9, 9]) == [0, 1, 1]
    assert competition_ranks([1, 1, 0]) == [1, 1, 0]
    assert competition_ranks([0, 2, 1, 2]) == [0, 2, 1, 2]
    assert fractional_ranks([0, 1, 1]) == [0, Fraction(3, 2), Fraction(3, 2)]
    assert fractional_ranks([1, 1, 0]) == [Fraction(3, 2), Fraction(3, 2), 0]
    assert sum(fractional_ranks([0, 0, 0, 0])) == 6  # k(k−1)/2 for every ranking of 4


def test_mean_rank_aggregation_keeps_ties_as_ties():
    # (0, 3/2, 3/2) + (1, 0, 2) = (1, 3/2, 7/2): a strict order
    assert mean_ranks([[0, 1, 1], [1, 0, 2]]) == [0.5, 0.75, 1.75]
    assert aggregate_ranking([[0, 1, 1], [1, 0, 2]]) == [0, 1, 2]
    # (0, 1, 2) + (1, 0, 2) = (1, 1, 4): the first two tie, exactly
    assert aggregate_ranking([[0, 1, 2], [1, 0, 2]]) == [0, 0, 2]
    # thirds do not add up to a false tie: (0,1,2)+(2,0,1)+(1,2,0) all sum to 3
    assert aggregate_ranking([[0, 1, 2], [2, 0, 1], [1, 2, 0]]) == [0, 0, 0]
    assert aggregate_ranking([[2, 0, 1]]) == [2, 0, 1]
    with pytest.raises(ValueError):
        aggregate_ranking([])


def test_preference_pairs_and_first_place_credit():
    assert preference_pairs([2, 0, 1]) == [(1, 0), (2, 0), (1, 2)]
    assert preference_pairs([0, 0, 2]) == [(0, 2), (1, 2)]
    assert first_shares([0, 0, 2]) == [0.5, 0.5, 0.0]
    assert first_shares([1, 0, 2]) == [0.0, 1.0, 0.0]


def test_pairwise_agreement_by_hand():
    # Item A: both people order the two answers alike (1 of 1); item B: opposite (0 of 1) → 1/2.
    assert pairwise_agreement([[[0, 1], [0, 1]], [[0, 1], [1, 0]]]) == 0.5
    # Three answers, pairs (0,1), (0,2), (1,2): the people agree on the first two → 2/3; a lone ranking counts for nothing.
    assert pairwise_agreement([[[0, 1, 2], [0, 2, 1]], [[0, 1, 2]]]) == pytest.approx(2 / 3)
    # A tie agrees only with a tie: three people, pairs of people (1,2) agree, (1,3) and (2,3) do not → 1/3.
    assert pairwise_agreement([[[0, 0], [0, 0], [0, 1]]]) == pytest.approx(1 / 3)
    assert math.isnan(pairwise_agreement([[[0, 1]]]))


def test_ordinal_alpha_by_hand():
    # Units A0 {0,0}, A1 {1,1}, B0 {0,1}, B1 {1,0}: n0 = n1 = 4, n = 8, δ²(0,1) = (8 − 4)² = 16;
    # observed Σ o δ² = (o01 + o10)·16 = 64, expected Σ n_c n_k δ² = 2·4·4·16 = 512: α = 1 − 7·64/512 = 0.125.
    assert ordinal_alpha([[[0, 1], [0, 1]], [[0, 1], [1, 0]]]) == pytest.approx(0.125)
    # Units {0,0}, {1,2}, {2,1}: n = 6, δ²(0,1) = δ²(1,2) = (4 − 2)² = 4, δ²(0,2) = (6 − 2)² = 16;
    # observed (o12 + o21)·4 = 16, expected 2·(4·4 + 4·16 + 4·4) = 192: α = 1 − 5·16/192 = 7/12.
    assert ordinal_alpha([[[0, 1, 2], [0, 2, 1]]]) == pytest.approx(7 / 12)
    assert ordinal_alpha([[[0, 1], [0, 1]], [[1, 0], [1, 0]]]) == pytest.approx(1.0)
    assert math.isnan(ordinal_alpha([[[0, 1]]]))  # nobody to agree with
    assert math.isnan(ordinal_alpha([[[0, 0], [0, 0]]]))  # one value everywhere: no expected disagreement


def test_agreement_has_bootstrap_intervals_over_items_that_cover_the_estimate():
    items = [[[0, 1, 2], [0, 1, 2]], [[0, 1, 2], [0, 2, 1]], [[2, 1, 0], [2, 0, 1]], [[0, 1, 2], [2, 1, 0]], [[1, 0, 2]]]
    result = agreement(items, resamples=400)
    assert result["items"] == 4  # the single-ranked item is left out
    assert result["pairwise"] == pytest.approx((3 + 2 + 2 + 0) / 12)
    low, high = result["pairwise_ci"]
    assert low <= result["pairwise"] <= high and low < high
    low, high = result["alpha_ci"]
    assert low <= result["alpha"] <= high and low < high
    assert agreement(items, resamples=400) == result  # seeded
    alone = agreement([[[0, 1], [0, 1]]])
    assert alone["items"] == 1 and all(math.isnan(bound) for bound in alone["alpha_ci"])
