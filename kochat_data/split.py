"""The prompt-grouped train/eval split and the seeded row order."""

from __future__ import annotations

import hashlib

import numpy as np
import polars as pl

SPLITS = ("train", "eval")


def eval_prompt_ids(prompt_ids: list[str], seed: int, eval_ratio: float) -> list[str]:
    """The prompts held out for eval: those whose seeded hash, as a number in [0, 1), is below `eval_ratio`.

    Hashing (rather than shuffling the prompt list) makes a prompt's split independent of
    which files and kinds are built together: the same seed puts it on the same side in
    every build and in every kind.
    """
    prefix, threshold, blake2b = f"{seed}:".encode(), eval_ratio * 2**64, hashlib.blake2b
    return [pid for pid in prompt_ids if int.from_bytes(blake2b(prefix + pid.encode(), digest_size=8).digest(), "big") < threshold]


JUDGE_SALT = b"judge:"


def judge_prompt_ids(prompt_ids: list[str], share: float) -> set[str]:
    """The train prompts whose RM pairs train the judge RM instead of the proxy: those whose
    salted hash, as a number in [0, 1), is below `share`.

    A fixed function of the prompt id, like the eval split but on its own hash: the proxy
    and the judge never share a prompt, and any two runs agree on the shares whatever their
    seeds, so a judge trained once can referee every later proxy built from the same data.
    """
    threshold, blake2b = share * 2**64, hashlib.blake2b
    return {pid for pid in prompt_ids if int.from_bytes(blake2b(JUDGE_SALT + pid.encode(), digest_size=8).digest(), "big") < threshold}


def shuffled(frame: pl.DataFrame, seed: int, stream: int) -> pl.DataFrame:
    """The rows in a seeded order; `stream` keeps kinds and splits on independent orders."""
    order = np.random.default_rng([seed, stream]).permutation(frame.height)
    return frame[order]
