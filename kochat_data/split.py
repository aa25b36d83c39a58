"""The prompt-grouped train/eval split and the seeded row order."""

from __future__ import annotations

import hashlib

import numpy as np
import polars as pl

SPLITS = ("train", "eval")


def eval_score(prompt_id: str, seed: int) -> float:
    """A uniform number in [0, 1) fixed by the prompt and the seed alone.

    Hashing (rather than shuffling the prompt list) makes a prompt's split independent of
    which files and kinds are built together: the same seed puts it on the same side in
    `kochat data build` and in `kochat data pairs`, and in every kind.
    """
    digest = hashlib.blake2b(f"{seed}:{prompt_id}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big") / 2**64


def is_eval(prompt_id: str, seed: int, eval_ratio: float) -> bool:
    return eval_score(prompt_id, seed) < eval_ratio


def shuffled(frame: pl.DataFrame, seed: int, stream: int) -> pl.DataFrame:
    """The rows in a seeded order; `stream` keeps kinds and splits on independent orders."""
    order = np.random.default_rng([seed, stream]).permutation(frame.height)
    return frame[order]
