"""Blind pairwise battles between stages, as pure functions: the human win rate against a reference (a tie is half
a win, "both bad" is counted apart), its paired bootstrap CI over prompts, Bradley–Terry strengths with bootstrap
CIs (a logistic regression, as Chatbot Arena's notebooks fit it), and Cohen's kappa between two people.

A battle is `(prompt, a, b, outcome)`: stages `a` and `b` answered `prompt`, and one person said `outcome`, one of
"a", "b", "tie", "both_bad".
"""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Sequence

import numpy as np
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import cohen_kappa_score

OUTCOMES = ("a", "b", "tie", "both_bad")
Battle = tuple[str, str, str, str]


def _points(battle: Battle, stage: str) -> float | None:
    """What one battle gives `stage`: 1 a win, ½ a tie, 0 a loss, None for "both bad" (no preference to count)."""
    _, a, b, outcome = battle
    if outcome == "both_bad":
        return None
    if outcome == "tie":
        return 0.5
    return 1.0 if (outcome == "a") == (stage == a) else 0.0


def human_win_rate(battles: Sequence[Battle], stage: str, reference: str, confidence: float = 0.95, resamples: int = 2000,
                   seed: int = 0) -> dict:
    """`stage` against `reference` on the battles between the two: the win rate (tie = ½) over the votes that chose,
    its percentile CI from resampling prompts (a prompt's votes stay together), the number of votes, and the share
    of votes that found both answers bad."""
    between = [battle for battle in battles if {battle[1], battle[2]} == {stage, reference}]
    by_prompt = defaultdict(list)
    for battle in between:
        points = _points(battle, stage)
        if points is not None:
            by_prompt[battle[0]].append(points)
    both_bad = sum(battle[3] == "both_bad" for battle in between)
    result = {"votes": len(between), "both_bad_share": both_bad / len(between) if between else math.nan}
    if not by_prompt:
        return result | {"win_rate": math.nan, "ci": [math.nan, math.nan]}
    sums = np.array([sum(points) for points in by_prompt.values()])
    counts = np.array([len(points) for points in by_prompt.values()])
    draws = np.random.default_rng(seed).integers(0, len(sums), size=(resamples, len(sums)))
    rates = sums[draws].sum(axis=1) / counts[draws].sum(axis=1)
    tail = (1 - confidence) / 2
    return result | {"win_rate": float(sums.sum() / counts.sum()), "ci": [float(bound) for bound in np.quantile(rates, [tail, 1 - tail])]}


def bradley_terry(battles: Sequence[Battle], stages: Sequence[str], reference: str) -> dict[str, float]:
    """Each stage's Bradley–Terry strength, P(i beats j) = σ(s_i − s_j), with the reference at 0: a logistic
    regression without intercept on +1/−1 columns of the two stages of each battle; a tie is half a win and half a
    loss (two rows of weight ½), "both bad" says nothing. Barely penalised (C = 1e6): with every pair's share
    of wins in (0, 1) it is the maximum-likelihood fit."""
    index = {stage: column for column, stage in enumerate(stages)}
    rows, labels, weights = [], [], []
    for battle in battles:
        points = _points(battle, battle[1])
        if points is None:
            continue
        row = np.zeros(len(stages))
        row[index[battle[1]]], row[index[battle[2]]] = 1.0, -1.0
        for label, weight in ((1, points), (0, 1 - points)):
            if weight:
                rows.append(row)
                labels.append(label)
                weights.append(weight)
    if len(set(labels)) < 2:
        return dict.fromkeys(stages, math.nan)
    model = LogisticRegression(fit_intercept=False, C=1e6, max_iter=10_000, tol=1e-10)
    model.fit(np.array(rows), np.array(labels), sample_weight=np.array(weights))
    strengths = model.coef_[0]
    return {stage: float(strengths[index[stage]] - strengths[index[reference]]) for stage in stages}


def bradley_terry_with_ci(battles: Sequence[Battle], stages: Sequence[str], reference: str, confidence: float = 0.95,
                          resamples: int = 200, seed: int = 0) -> dict[str, dict]:
    """`bradley_terry` and each strength's percentile CI from resampling prompts (a prompt's battles together)."""
    point = bradley_terry(battles, stages, reference)
    by_prompt = defaultdict(list)
    for battle in battles:
        by_prompt[battle[0]].append(battle)
    groups = list(by_prompt.values())
    rng = np.random.default_rng(seed)
    fits = [bradley_terry([battle for i in rng.integers(0, len(groups), len(groups)) for battle in groups[i]], stages, reference)
            for _ in range(resamples)]
    tail = (1 - confidence) / 2
    result = {}
    for stage in stages:
        values = np.array([fit[stage] for fit in fits if not math.isnan(fit[stage])])
        interval = [float(bound) for bound in np.quantile(values, [tail, 1 - tail])] if len(values) else [math.nan, math.nan]
        result[stage] = {"bt": point[stage], "bt_ci": interval}
    return result


def cohen_kappa(first: Sequence[str], second: Sequence[str]) -> float:
    """Cohen's kappa of two people's outcomes on the same battles (scikit-learn's); NaN with fewer than two battles
    or when both always said the same one thing (no chance agreement to correct for)."""
    if len(first) < 2 or len(set(first) | set(second)) < 2:
        return math.nan
    return float(cohen_kappa_score(list(first), list(second)))
