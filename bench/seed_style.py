"""The seed's approach (KoChatGPT notebooks), re-created as plain reference code for the benchmarks.

Nothing here is used by kochat; it is the baseline `bench/run_all.py` measures against,
written the way the seed wrote it: a list of dicts, Python loops, fixed padding.
"""

from __future__ import annotations

import json
import random
from pathlib import Path

import datasets
import torch
from torch import nn


def build_rm_data(source: Path, out: Path, eval_share: float = 0.1, seed: int = 230319) -> int:
    """json.load, pairwise expansion in Python, shuffle and slice, Dataset.from_list, save_to_disk."""
    with open(source, encoding="utf-8-sig") as handle:
        records = json.load(handle)
    pairs = []
    for record in records:
        for first, second in ((0, 1), (0, 2), (1, 2)):
            pair = {"prompt": record["prompt"]}
            if record["ranking"][first] < record["ranking"][second]:
                pair["chosen"], pair["rejected"] = record[f"completion_{first}"], record[f"completion_{second}"]
            else:
                pair["chosen"], pair["rejected"] = record[f"completion_{second}"], record[f"completion_{first}"]
            pairs.append(pair)
    random.seed(seed)
    random.shuffle(pairs)
    cut = int(len(pairs) * (1 - eval_share))
    datasets.DatasetDict({
        "train": datasets.Dataset.from_list(pairs[:cut]),
        "eval": datasets.Dataset.from_list(pairs[cut:]),
    }).save_to_disk(str(out))
    return len(pairs)
