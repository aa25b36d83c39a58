"""Are the arena's Bradley–Terry CIs honest? Simulated people with known true strengths vote; over many seeds, how
often is the true order recovered and how often does each stage's 95% CI cover its true strength?

Each seed: 4 stages (true strengths, log-odds against the reference: 0, 0.3, −0.2, 0.8), PROMPTS prompts, every pair
of stages battles on every prompt (sides random), one vote each from P(a wins) = σ(s_a − s_b); a share of the votes
is a coin flip (a careless person), which pulls every fitted strength toward 0: coverage is measured against the
true strengths and against attenuated ones (each stage's odds against the reference with a coin-flipping share ε,
P' = ε/2 + (1−ε)P: close to, not exactly, what a Bradley–Terry fit over all pairs then converges to).

    python bench/arena_calibration.py [--seeds 50] [--prompts 100] [--random-share 0 0.1]
"""

from __future__ import annotations

import argparse
import itertools
import math

import numpy as np

from kochat_eval.battles import bradley_terry_with_ci

TRUE = {"ref": 0.0, "s1": 0.3, "s2": -0.2, "s3": 0.8}


def sigmoid(x: float) -> float:
    return 1 / (1 + math.exp(-x))


def simulate(seed: int, prompts: int, random_share: float) -> list[tuple[str, str, str, str]]:
    rng = np.random.default_rng(seed)
    battles = []
    for prompt in range(prompts):
        for first, second in itertools.combinations(TRUE, 2):
            a, b = (first, second) if rng.random() < 0.5 else (second, first)
            p_a = 0.5 if rng.random() < random_share else sigmoid(TRUE[a] - TRUE[b])
            battles.append((f"p{prompt}", a, b, "a" if rng.random() < p_a else "b"))
    return battles


def attenuated(random_share: float) -> dict[str, float]:
    """The strength against the reference that a coin-flipping share of votes leaves (pairwise against the reference)."""
    def target(stage):
        p = random_share / 2 + (1 - random_share) * sigmoid(TRUE[stage])
        return math.log(p / (1 - p))
    return {stage: target(stage) for stage in TRUE}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--seeds", type=int, default=50)
    parser.add_argument("--prompts", type=int, default=100)
    parser.add_argument("--resamples", type=int, default=200)
    parser.add_argument("--random-share", type=float, nargs="+", default=[0.0, 0.1])
    args = parser.parse_args()
    order = sorted(TRUE, key=TRUE.get)
    for share in args.random_share:
        shrunk = attenuated(share)
        covered = {stage: 0 for stage in TRUE if stage != "ref"}
        covered_shrunk = dict(covered)
        recovered = 0
        for seed in range(args.seeds):
            fit = bradley_terry_with_ci(simulate(seed, args.prompts, share), list(TRUE), "ref", resamples=args.resamples, seed=seed)
            recovered += sorted(TRUE, key=lambda stage: fit[stage]["bt"]) == order
            for stage in covered:
                low, high = fit[stage]["bt_ci"]
                covered[stage] += low <= TRUE[stage] <= high
                covered_shrunk[stage] += low <= shrunk[stage] <= high
        print(f"random share {share}: true order recovered in {recovered}/{args.seeds} seeds; 95% CI covers the true strength "
              + ", ".join(f"{stage} {count / args.seeds:.2f}" for stage, count in covered.items())
              + "; covers the attenuated strength " + ", ".join(f"{stage} {count / args.seeds:.2f}" for stage, count in covered_shrunk.items()))


if __name__ == "__main__":
    main()
