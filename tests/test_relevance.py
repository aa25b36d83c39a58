"""`kochat eval relevance`: how much the question lifts the right answer against another question's."""

import json

import numpy as np
import pytest
import torch

from kochat_data.errors import UsageError
from kochat_eval.relevance import probe_relevance, relevance_accuracy
from kochat_train.sources import load_causal_lm, load_tokenizer
from kochat_train.template import encode_examples


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

    def lifts(pairs):  # (N, 2): how much the question lifts the right and the other answer
        rows = []
        for index in range(len(pairs)):
            row = []
            for side in ("chosen", "rejected"):
                (q_ids, q_start), = encode_examples(tokenizer, [pairs[index]["prompt"]], [pairs[index][side]], result["max_length"])
                (u_ids, u_start), = encode_examples(tokenizer, [""], [pairs[index][side]], result["max_length"])
                kept = min(len(q_ids) - q_start, len(u_ids) - u_start)  # the same answer tokens with and without
                row.append(answer_logprob(q_ids, q_start, kept) - answer_logprob(u_ids, u_start, kept))
            rows.append(row)
        return np.array(rows)

    def answer_logprob(ids, start, kept):
        logits = model(input_ids=torch.tensor([ids])).logits[0].float().log_softmax(-1)
        return sum(logits[position - 1, ids[position]].item() for position in range(start, start + kept))

    lift = lifts(relevance_pairs)
    assert result["relevance_accuracy"] == pytest.approx(float(np.mean(lift[:, 0] > lift[:, 1])))

    code, out, err = run_cli("eval", "relevance", "--model", tiny_base, "--data", sample_data, "--json")
    assert code == 0, err
    assert json.loads(out)["relevance_accuracy"] == result["relevance_accuracy"]

    train_pairs = datasets.load_from_disk(str(sample_data / "rm"))["train"].filter(lambda row: (row["chosen_rank"], row["rejected_rank"]) == (0, 1))
    code, out, err = run_cli("eval", "relevance", "--model", tiny_base, "--data", sample_data, "--split", "train", "--max-pairs", 6)
    lift = lifts(train_pairs.select(range(6)))
    assert code == 0 and f"on {float(np.mean(lift[:, 0] > lift[:, 1])):.3f} of 6 train pairs" in out, (out, err)


def test_the_probe_refuses_bad_numbers(tiny_base, sample_data):
    with pytest.raises(UsageError, match="--batch-size"):
        probe_relevance(tiny_base, sample_data, batch_size=0)
    with pytest.raises(UsageError, match="--split must be one of eval, train"):
        probe_relevance(tiny_base, sample_data, split="test")


def test_answers_longer_than_the_positions_are_compared_on_the_same_tokens(tmp_path, monkeypatch):
    """Cut to the positions, an answer keeps fewer tokens after its question than after none: both sums must
    still cover the same answer tokens."""
    import kochat_eval.relevance
    from conftest import make_kogpt2_shaped, write_array
    from kochat_data.build import BuildConfig, build

    long = "이 대답은 모델의 위치 수보다 훨씬 깁니다 " * 20
    records = [{"prompt": f"질문 {n}번은 무엇인가요?", "completion_0": f"{n}번 답: " + long, "completion_1": f"다른 답 {n}: " + long,
                "ranking": [0, 1]} for n in range(10)]
    build(BuildConfig(out=tmp_path / "data", rm=[write_array(tmp_path / "rm.json", records)], eval_ratio=0.5))
    model = make_kogpt2_shaped(tmp_path / "model", positions=48)
    counted = []
    real = kochat_eval.relevance.pair_sequence_logprobs

    def spy(features, *args, **kwargs):
        counted.append([[sum(label != -100 for label in row) for row in features[f"{side}_labels"]] for side in ("chosen", "rejected")])
        return real(features, *args, **kwargs)

    monkeypatch.setattr(kochat_eval.relevance, "pair_sequence_logprobs", spy)
    result = probe_relevance(model, tmp_path / "data", max_length=512, batch_size=4)
    with_question, without_question = counted
    assert result["max_length"] == 48 and result["pairs"] > 0
    assert with_question == without_question  # the same number of answer tokens, pair by pair
    assert 0 < max(max(side) for side in with_question) < 48
