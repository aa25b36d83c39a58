"""Exhaustive pairwise expansion of ranked completions (polars: no Python loop over pairs)."""

from __future__ import annotations

import polars as pl

RECORD_COLUMNS = ["record", "completions", "ranking"]


def expand_pairs(records: pl.DataFrame) -> tuple[pl.DataFrame, int]:
    """Every unordered pair of a record's completions with different ranks, and the tie count.

    `records` has one row per RM record: `record` (a unique id), `completions` (list of str)
    and `ranking` (list of int, lower is better). The result has one row per pair,
    `record, chosen, rejected, chosen_rank, rejected_rank`, in (record, i, j) order, so that
    k completions give up to k(k-1)/2 rows; tied pairs give none and are counted.
    """
    long = (
        records.select(RECORD_COLUMNS)
        .with_columns(position=pl.int_ranges(pl.col("completions").list.len()))
        .explode(["completions", "ranking", "position"])
        .rename({"completions": "text", "ranking": "rank"})
    )
    joined = long.join(long, on="record", suffix="_b").filter(pl.col("position") < pl.col("position_b"))
    ties = joined.filter(pl.col("rank") == pl.col("rank_b")).height
    first_wins = pl.col("rank") < pl.col("rank_b")
    pairs = (
        joined.filter(pl.col("rank") != pl.col("rank_b"))
        .sort(["record", "position", "position_b"])
        .select(
            "record",
            chosen=pl.when(first_wins).then("text").otherwise("text_b"),
            rejected=pl.when(first_wins).then("text_b").otherwise("text"),
            chosen_rank=pl.min_horizontal("rank", "rank_b").cast(pl.Int32),
            rejected_rank=pl.max_horizontal("rank", "rank_b").cast(pl.Int32),
        )
    )
    return pairs, ties
