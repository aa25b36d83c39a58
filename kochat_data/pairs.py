"""Exhaustive pairwise expansion of ranked completions (polars: no Python loop over pairs)."""

from __future__ import annotations

import polars as pl


def _position_pairs(counts: list[int]) -> pl.DataFrame:
    """Every (first, second) position pair with first < second, for each completion count k."""
    rows = [(k, first, second) for k in counts for first in range(k) for second in range(first + 1, k)]
    return pl.DataFrame(rows, schema={"k": pl.UInt32, "first": pl.UInt32, "second": pl.UInt32}, orient="row")


def expand_pairs(records: pl.DataFrame, carry: tuple[str, ...] = ()) -> tuple[pl.DataFrame, int]:
    """Every unordered pair of a record's completions with different ranks, and the tie count; a record
    without a ranking (a preference pair: completion 0 preferred) gives its one pair, with null ranks.

    `records` has one row per RM record: `record` (a unique id), `completions` (list of str),
    `ranking` (list of int, lower is better) and the `carry` columns. The result has one row
    per pair, `record, *carry, chosen, rejected, chosen_rank, rejected_rank`, in
    (record, first, second) order: k completions give up to k(k-1)/2 rows; tied pairs give
    none and are counted. Joining on k with the position pairs builds exactly those
    candidates (a self-join on the record would build k² rows of texts first).
    """
    unranked = records.filter(pl.col("ranking").is_null()).select(
        "record", *carry, chosen=pl.col("completions").list.get(0), rejected=pl.col("completions").list.get(1),
        chosen_rank=pl.lit(None, pl.Int32), rejected_rank=pl.lit(None, pl.Int32),
    )
    records = records.filter(pl.col("ranking").is_not_null())
    counted = records.select("record", *carry, "completions", "ranking", k=pl.col("completions").list.len())
    counts = counted.get_column("k").unique().sort().to_list()
    candidates = counted.join(_position_pairs(counts), on="k").sort("record", "first", "second").with_columns(
        first_rank=pl.col("ranking").list.get(pl.col("first")),
        second_rank=pl.col("ranking").list.get(pl.col("second")),
    )
    ties = candidates.filter(pl.col("first_rank") == pl.col("second_rank")).height
    first_wins = pl.col("first_rank") < pl.col("second_rank")
    first_text = pl.col("completions").list.get(pl.col("first"))
    second_text = pl.col("completions").list.get(pl.col("second"))
    pairs = candidates.filter(pl.col("first_rank") != pl.col("second_rank")).select(
        "record",
        *carry,
        chosen=pl.when(first_wins).then(first_text).otherwise(second_text),
        rejected=pl.when(first_wins).then(second_text).otherwise(first_text),
        chosen_rank=pl.min_horizontal("first_rank", "second_rank").cast(pl.Int32),
        rejected_rank=pl.max_horizontal("first_rank", "second_rank").cast(pl.Int32),
    )
    if unranked.height:
        pairs = pl.concat([pairs, unranked]).sort("record", maintain_order=True)
    return pairs, ties
