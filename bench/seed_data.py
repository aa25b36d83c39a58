"""The seed's data preparation (KoChatGPT notebooks), re-created as plain reference code for bench/run_all.py.

Nothing here is used by kochat; it is the baseline, written the way the seed wrote it: a
list of dicts and Python loops. No torch import, so that its peak RSS is the data's alone.
"""

from __future__ import annotations

import json
import random
from pathlib import Path

import datasets


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


if __name__ == "__main__":  # python bench/seed_style.py SOURCE OUT: the data build alone, for a clean RSS reading
    import sys

    build_rm_data(Path(sys.argv[1]), Path(sys.argv[2]))
