import polars as pl
import pytest

from kochat_data.pairs import expand_pairs


def records(*rows):
    return pl.DataFrame(
        {"record": list(range(len(rows))), "completions": [r[0] for r in rows], "ranking": [r[1] for r in rows]}
    )


def test_two_completions_give_one_pair_with_the_better_one_chosen():
    pairs, ties = expand_pairs(records((["worse", "better"], [1, 0])))
    assert ties == 0
    assert pairs.select("chosen", "rejected", "chosen_rank", "rejected_rank").rows() == [("better", "worse", 0, 1)]


def test_three_completions_give_three_pairs_in_position_order():
    pairs, _ = expand_pairs(records((["b", "c", "a"], [1, 2, 0])))
    assert pairs.select("chosen", "rejected").rows() == [("b", "c"), ("a", "b"), ("a", "c")]


@pytest.mark.parametrize(("ranking", "expected_pairs", "expected_ties"),
                         [([0, 1, 2, 3], 6, 0), ([0, 0, 1, 1], 4, 2), ([0, 0, 0, 0], 0, 6), ([3, 1, 1, 0], 5, 1)])
def test_four_completions_with_ties(ranking, expected_pairs, expected_ties):
    pairs, ties = expand_pairs(records((["w", "x", "y", "z"], ranking)))
    assert (pairs.height, ties) == (expected_pairs, expected_ties)
    assert pairs.height + ties == 4 * 3 // 2
    assert (pairs.get_column("chosen_rank") < pairs.get_column("rejected_rank")).all()


def test_records_of_different_k_expand_independently():
    pairs, ties = expand_pairs(records((["a", "b"], [0, 1]), (["c", "d", "e"], [0, 0, 1])))
    assert pairs.get_column("record").to_list() == [0, 1, 1]
    assert ties == 1
