"""The math of honest judging, as pure functions: shortcut baselines for reward models, the paired
bootstrap win rate, and the length-controlled win rate."""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import numpy as np
from sklearn.linear_model import LogisticRegression

from kochat_data.text import hangul_shares, prompt_overlap


# Rules that need no model: each gives every response a number; the pair goes to the higher one.
ShortcutRule = Callable[[Sequence[str], Sequence[str]], np.ndarray]


def overlap_rule(n: int) -> ShortcutRule:
    return lambda prompts, texts: np.array([prompt_overlap(p, t, n) for p, t in zip(prompts, texts, strict=True)])

SHORTCUTS: dict[str, ShortcutRule] = {
    "longer wins": lambda prompts, texts: np.array([len(text) for text in texts], dtype=float),
    "shorter wins": lambda prompts, texts: -np.array([len(text) for text in texts], dtype=float),
    "more Hangul wins": lambda prompts, texts: np.asarray(hangul_shares(texts)),
    "prompt bigram overlap wins": overlap_rule(2),
    # Bigrams tie on most short answers (70% of the shared data's rank-0-vs-1 pairs); single
    # syllables tell more of them apart, and make the stronger rule there.
    "prompt character overlap wins": overlap_rule(1),
}


def shortcut_margins(prompts: Sequence[str], chosen: Sequence[str], rejected: Sequence[str]) -> dict[str, np.ndarray]:
    """Per rule, chosen's number minus rejected's: > 0 is a pair ranked right, 0 a tie."""
    return {name: rule(prompts, chosen) - rule(prompts, rejected) for name, rule in SHORTCUTS.items()}


def win_indicators(scores: Sequence[float], reference: Sequence[float]) -> np.ndarray:
    """Per prompt 1 when the score beats the reference's, ½ for a draw, 0 otherwise."""
    scores, reference = np.asarray(scores, dtype=float), np.asarray(reference, dtype=float)
    return (scores > reference) + 0.5 * (scores == reference)


def paired_bootstrap_win_rate(scores: Sequence[float], reference: Sequence[float], confidence: float = 0.95,
                              resamples: int = 2000, seed: int = 0) -> tuple[float, float, float]:
    """Win rate against the reference on the same prompts, and its percentile CI from resampling
    prompts (each resample keeps a prompt's two responses together)."""
    wins = win_indicators(scores, reference)
    if len(wins) == 0:
        return math.nan, math.nan, math.nan
    rng = np.random.default_rng(seed)
    rates = wins[rng.integers(0, len(wins), size=(resamples, len(wins)))].mean(axis=1)
    tail = (1 - confidence) / 2
    low, high = np.quantile(rates, [tail, 1 - tail])
    return float(wins.mean()), float(low), float(high)


def length_controlled_win_rate(scores: Sequence[float], reference: Sequence[float], length_difference: Sequence[float]) -> float:
    """The win rate a response of the reference's length would get: a logistic regression of
    "the judge prefers this response" on its length minus the reference's, read at 0.

    A draw counts as half a win and half a loss (two rows of weight ½). Unpenalised, so with
    equal lengths it returns the raw win rate exactly; when every prompt is won (or lost) no
    regression can be fitted and the raw rate is returned.
    """
    wins = win_indicators(scores, reference)
    if len(wins) == 0:
        return math.nan
    if np.all(wins == wins[0]):
        return float(wins[0])
    x = np.asarray(length_difference, dtype=float).reshape(-1, 1)
    features, labels, weights = np.vstack([x, x]), np.r_[np.ones(len(wins)), np.zeros(len(wins))], np.r_[wins, 1 - wins]
    if np.all(x == 0):  # the regression has nothing but its intercept: the weighted mean
        return float(wins.mean())
    model = LogisticRegression(C=np.inf, max_iter=1000).fit(features, labels, sample_weight=weights)  # C=∞: unpenalised
    return float(model.predict_proba([[0.0]])[0, 1])
