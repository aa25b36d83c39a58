"""`kochat eval relevance`: how much the question lifts the right answer against another question's."""

import json

import numpy as np
import pytest

from kochat_data.errors import UsageError
from kochat_eval.relevance import probe_relevance, relevance_accuracy
from kochat_train.dpo import PreferenceCollator, pair_sequence_logprobs, tokenize_preferences
from kochat_train.sources import load_causal_lm, load_tokenizer


def test_relevance_accuracy_by_hand():
    # [right, other] log-probs with and without the question, for three pairs
    conditional = np.array([[-10.0, -9.0], [-20.0, -12.0], [-5.0, -5.0]])
    unconditional = np.array([[-14.0, -10.0], [-21.0, -13.0], [-6.0, -6.0]])
    # lifts: right 4, 1, 1; other 1, 1, 1 → the right one lifted more on pair 1 only (pairs 2 and 3 tie: wrong)
    result = relevance_accuracy(conditional, unconditional)
    assert result["relevance_accuracy"] == pytest.approx(1 / 3)
    assert result["conditional_accuracy"] == 0.0  # log p(answer | question) alone prefers the other answer or ties
    assert result["mean_lift_right"] == pytest.approx(2.0) and result["mean_lift_other"] == pytest.approx(1.0)


def test_the_probe_compares_each_answer_with_and_without_its_question(tiny_base, sample_data, run_cli):
    import datasets

    result = probe_relevance(tiny_base, sample_data, batch_size=4)
    eval_pairs = datasets.load_from_disk(str(sample_data / "rm"))["eval"]
    relevance_pairs = eval_pairs.filter(lambda row: (row["chosen_rank"], row["rejected_rank"]) == (0, 1))
    assert result["pairs"] == len(relevance_pairs) > 0
    tokenizer = load_tokenizer(tiny_base)
    model = load_causal_lm(tiny_base, tokenizer).eval()

    def logprobs(pairs):  # (N, 2): right and other answer
        features = tokenize_preferences(pairs, tokenizer, result["max_length"])
        return np.stack(pair_sequence_logprobs(features, model, PreferenceCollator(tokenizer), batch_size=8), axis=1)

    lift = logprobs(relevance_pairs) - logprobs(relevance_pairs.map(lambda row: {"prompt": ""}))
    assert result["relevance_accuracy"] == pytest.approx(float(np.mean(lift[:, 0] > lift[:, 1])))

    code, out, err = run_cli("eval", "relevance", "--model", tiny_base, "--data", sample_data, "--json")
    assert code == 0, err
    assert json.loads(out)["relevance_accuracy"] == result["relevance_accuracy"]

    train_pairs = datasets.load_from_disk(str(sample_data / "rm"))["train"].filter(lambda row: (row["chosen_rank"], row["rejected_rank"]) == (0, 1))
    code, out, err = run_cli("eval", "relevance", "--model", tiny_base, "--data", sample_data, "--split", "train", "--max-pairs", 6)
    lift = logprobs(train_pairs.select(range(6))) - logprobs(train_pairs.select(range(6)).map(lambda row: {"prompt": ""}))
    assert code == 0 and f"on {float(np.mean(lift[:, 0] > lift[:, 1])):.3f} of 6 train pairs" in out, (out, err)


def test_the_probe_refuses_bad_numbers(tiny_base, sample_data):
    with pytest.raises(UsageError, match="--batch-size"):
        probe_relevance(tiny_base, sample_data, batch_size=0)
    with pytest.raises(UsageError, match="--split must be one of eval, train"):
        probe_relevance(tiny_base, sample_data, split="test")
