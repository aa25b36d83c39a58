"""Human rankings as pure functions: the one reading of a person's ranking, its aggregation over people, the
preference pairs it implies, and how much people agree (pairwise agreement, Krippendorff's ordinal alpha, with
bootstrap CIs over items).

A ranking is KoChatGPT's: `ranking[i]` is the rank of answer i, lower is better, equal values are ties.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Sequence
from fractions import Fraction

import numpy as np

Ranking = Sequence[float]


def competition_ranks(ranking: Ranking) -> list[int]:
    """Each answer's rank as the number of answers ranked strictly better ("1224" ranking, from 0): the one form
    a stored ranking takes, whatever values the person's client sent. [0, 2, 2] and [5, 9, 9] → [0, 1, 1]."""
    return [sum(other < rank for other in ranking) for rank in ranking]


def fractional_ranks(ranking: Ranking) -> list[Fraction]:
    """Each answer's mean position (from 0) among the answers tied with it: [0, 1, 1] → [0, 3/2, 3/2]. The ranks
    of every ranking of k answers sum to k(k−1)/2, so averaging them over people weighs a tie as half of each order."""
    return [Fraction(2 * sum(other < rank for other in ranking) + sum(other == rank for other in ranking) - 1, 2) for rank in ranking]


def aggregate_ranking(rankings: Sequence[Ranking]) -> list[int]:
    """People's rankings of the same answers as one: the competition ranks of each answer's mean fractional rank
    (exact fractions, so equal means stay a tie)."""
    if not rankings:
        raise ValueError("no ranking to aggregate")
    totals = [sum(ranks) for ranks in zip(*(fractional_ranks(ranking) for ranking in rankings), strict=True)]
    return competition_ranks(totals)


def mean_ranks(rankings: Sequence[Ranking]) -> list[float]:
    """Each answer's mean fractional rank over people (what `aggregate_ranking` orders)."""
    return [float(sum(ranks) / len(rankings)) for ranks in zip(*(fractional_ranks(ranking) for ranking in rankings), strict=True)]


def preference_pairs(ranking: Ranking) -> list[tuple[int, int]]:
    """(better, worse) for every pair of answers with different ranks, in answer order: what `kochat data build`
    expands a ranked record into (a tie gives no pair)."""
    return [(i, j) if ranking[i] < ranking[j] else (j, i)
            for i, j in itertools.combinations(range(len(ranking)), 2) if ranking[i] != ranking[j]]


def first_shares(ranking: Ranking) -> list[float]:
    """How much of "ranked first" each answer gets: 1 for a lone winner, 1/n to each of n tied for first."""
    best = min(ranking)
    tied = sum(rank == best for rank in ranking)
    return [1 / tied if rank == best else 0.0 for rank in ranking]


def _relations(ranking: Ranking) -> list[int]:
    """For every pair of answers (i < j): −1 when i is better, 0 for a tie, 1 when j is better."""
    return [int(np.sign(ranking[i] - ranking[j])) for i, j in itertools.combinations(range(len(ranking)), 2)]


def _agreement_counts(item: Sequence[Ranking]) -> tuple[int, int]:
    """(agreeing, all) comparisons of one item: every pair of people × every pair of answers."""
    relations = [_relations(ranking) for ranking in item]
    agreeing = compared = 0
    for first, second in itertools.combinations(relations, 2):
        agreeing += sum(a == b for a, b in zip(first, second, strict=True))
        compared += len(first)
    return agreeing, compared


def pairwise_agreement(items: Sequence[Sequence[Ranking]]) -> float:
    """The share of (two people, two answers) comparisons in which both people order the two answers the same way
    (better, tie, worse), pooled over the items ranked by two or more people; NaN when there is none."""
    counts = [_agreement_counts(item) for item in items if len(item) >= 2]
    compared = sum(total for _, total in counts)
    return sum(agreeing for agreeing, _ in counts) / compared if compared else math.nan


def _reliability_matrix(items: Sequence[Sequence[Ranking]]) -> tuple[np.ndarray, list[int]]:
    """Krippendorff's coders × units table, and the number of units of each item: a unit is one answer of one item,
    its values the fractional ranks the item's people gave it. Alpha pairs values only within a unit, so a row is
    "the item's n-th person", not a named annotator, and the table is as tall as the most people on one item."""
    rows = max((len(item) for item in items), default=0)
    columns, widths = [], []
    for item in items:
        ranks = [[float(rank) for rank in fractional_ranks(ranking)] for ranking in item]
        widths.append(len(ranks[0]))
        for answer in range(len(ranks[0])):
            columns.append([ranks[person][answer] if person < len(ranks) else math.nan for person in range(rows)])
    return np.array(columns, dtype=float).T.reshape(rows, len(columns)), widths


def _alpha(matrix: np.ndarray) -> float:
    import krippendorff

    if matrix.size == 0 or len(np.unique(matrix[~np.isnan(matrix)])) < 2:  # no expected disagreement to divide by
        return math.nan
    return float(krippendorff.alpha(reliability_data=matrix, level_of_measurement="ordinal"))


def ordinal_alpha(items: Sequence[Sequence[Ranking]]) -> float:
    """Krippendorff's alpha, ordinal metric (the `krippendorff` package), over the answers of the items ranked by
    two or more people; NaN when there is nothing to compare or every value is the same."""
    return _alpha(_reliability_matrix([item for item in items if len(item) >= 2])[0])


def agreement(items: Sequence[Sequence[Ranking]], confidence: float = 0.95, resamples: int = 1000, seed: int = 0) -> dict:
    """Pairwise agreement and ordinal alpha over the items ranked by two or more people, each with a percentile
    bootstrap CI from resampling those items (an item's rankings stay together)."""
    rated = [item for item in items if len(item) >= 2]
    result = {"items": len(rated), "pairwise": pairwise_agreement(rated), "alpha": ordinal_alpha(rated)}
    if len(rated) < 2:
        return result | {"pairwise_ci": [math.nan, math.nan], "alpha_ci": [math.nan, math.nan]}
    counts = np.array([_agreement_counts(item) for item in rated], dtype=float)  # (items, 2): agreeing, compared
    matrix, widths = _reliability_matrix(rated)
    starts = np.r_[0, np.cumsum(widths)[:-1]]
    draws = np.random.default_rng(seed).integers(0, len(rated), size=(resamples, len(rated)))
    drawn = counts[draws].sum(axis=1)
    pairwise = drawn[:, 0] / drawn[:, 1]
    alphas = [_alpha(matrix[:, np.concatenate([np.arange(starts[i], starts[i] + widths[i]) for i in draw])]) for draw in draws]
    tail = (1 - confidence) / 2

    def interval(values) -> list[float]:
        finite = np.asarray([value for value in values if not math.isnan(value)])
        return [float(bound) for bound in np.quantile(finite, [tail, 1 - tail])] if len(finite) else [math.nan, math.nan]

    return result | {"pairwise_ci": interval(pairwise), "alpha_ci": interval(alphas)}
