"""Repetition metrics as pure functions over lists of units (eojeol, tokens or chars): read by the stage table
and, during online RL, by the `repetition` reward and the reward-hacking alarms.

Definitions follow the spec: distinct-n is corpus level; seq-rep-4 (Welleck et al. 2019) is
averaged over responses that have at least one 4-gram; rep-w (Fu et al. 2021) is the share of
all units that already occurred among the previous w units of the same response; a loop is
one n-gram repeated 3+ times in a row. A metric with nothing to measure is NaN, not 0.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

Units = Sequence[str]
UNITS = ("eojeol", "token", "char")


def split_units(text: str, unit: str, tokenize=None) -> list[str]:
    """Eojeol = whitespace-separated words (comparable across tokenizers); token needs `tokenize`."""
    if unit == "eojeol":
        return text.split()
    if unit == "char":
        return [c for c in text if not c.isspace()]
    if unit == "token":
        return [str(t) for t in tokenize(text)]
    raise ValueError(f"unit must be one of {UNITS}, got {unit!r}")


def ngrams(units: Units, n: int) -> list[tuple[str, ...]]:
    return [tuple(units[i : i + n]) for i in range(len(units) - n + 1)]


def distinct_n(responses: Sequence[Units], n: int) -> float:
    """Unique n-grams over all responses / all n-grams."""
    grams = [gram for units in responses for gram in ngrams(units, n)]
    return len(set(grams)) / len(grams) if grams else math.nan


def seq_rep_n(responses: Sequence[Units], n: int = 4) -> float:
    """Mean over responses of 1 − unique n-grams / n-grams."""
    rates = [1 - len(set(grams)) / len(grams) for grams in (ngrams(units, n) for units in responses) if grams]
    return float(np.mean(rates)) if rates else math.nan


def rep_w(responses: Sequence[Units], w: int = 16) -> float:
    """Share of units equal to one of the previous `w` units of their response."""
    repeated = total = 0
    for units in responses:
        for i, unit in enumerate(units):
            repeated += unit in units[max(0, i - w) : i]
        total += len(units)
    return repeated / total if total else math.nan


def has_loop(units: Units, times: int = 3) -> bool:
    """True when some n-gram occurs `times` times back to back."""
    for n in range(1, len(units) // times + 1):
        for i in range(len(units) - times * n + 1):
            if all(units[i + k * n : i + (k + 1) * n] == units[i : i + n] for k in range(1, times)):
                return True
    return False


def loop_share(responses: Sequence[Units]) -> float:
    return sum(has_loop(list(units)) for units in responses) / len(responses) if responses else math.nan


def repetition_metrics(responses: Sequence[Units]) -> dict[str, float]:
    return {
        "distinct_1": distinct_n(responses, 1),
        "distinct_2": distinct_n(responses, 2),
        "seq_rep_4": seq_rep_n(responses, 4),
        "rep_w16": rep_w(responses, 16),
        "loop_share": loop_share(responses),
    }
