"""Stage tier: the tiny preset on the embedded sample, seconds per test."""

import json

import datasets
import pytest
import torch
from conftest import TINY
from transformers import (
    AutoModelForCausalLM,
    AutoModelForSequenceClassification,
    EvalPrediction,
)

from kochat_data.errors import UsageError
from kochat_data.schema import Kind
from kochat_train.base import Corpus, pack_blocks
from kochat_train.rm import (
    PairCollator,
    RewardConfig,
    ScalarRewardModel,
    pair_metrics,
    tokenize_pairs,
    train_rm,
)
from kochat_train.sft import SFTConfig, train_sft
from kochat_train.sources import init_reward_model, load_reward_model, load_tokenizer
from kochat_train.template import PROMPT_TEMPLATE, encode_examples, render_prompt


def parameters(model) -> dict[str, torch.Tensor]:
    return {name: p.detach().clone() for name, p in model.named_parameters()}


def test_pack_blocks_joins_documents_and_cuts_full_blocks_of_ids_and_labels():
    documents = [([5, 6, 2], [-100, 6, 2]), ([7, 2], [7, 2]), ([8, 9, 10, 2], [8, 9, 10, 2])]
    ids, labels = pack_blocks(documents, block_size=3)
    assert ids.tolist() == [[5, 6, 2], [7, 2, 8], [9, 10, 2]]
    assert labels.tolist() == [[-100, 6, 2], [7, 2, 8], [9, 10, 2]]
    assert [block.tolist() for block in pack_blocks([([7, 2], [7, 2])], block_size=64)] == [[[7, 2]], [[7, 2]]]  # one short block


def test_the_corpus_puts_each_answer_after_its_question_in_the_template(tiny_base):
    sft = datasets.Dataset.from_dict({"prompt": ["질문 하나", "질문 하나"], "completion": ["답 하나", "답 하나"]})
    rm = datasets.Dataset.from_dict({"prompt": ["질문 둘", "질문 둘"], "chosen": ["좋은 답", "엉뚱한 답"],
                                     "chosen_rank": [0, 1]})
    ppo = datasets.Dataset.from_dict({"prompt": ["질문 셋", "질문 하나"]})
    data = {Kind.SFT: datasets.DatasetDict(train=sft), Kind.RM: datasets.DatasetDict(train=rm), Kind.PPO: datasets.DatasetDict(train=ppo)}
    corpus = Corpus.of(data, "train")
    # duplicates once; the rank-1 answer (best only against a worse one) is not a dialogue; a PPO prompt without answer is text
    assert corpus.dialogues == [("질문 하나", "답 하나"), ("질문 둘", "좋은 답")]
    assert corpus.texts == ["질문 셋"]
    tokenizer = load_tokenizer(tiny_base)
    documents = corpus.token_ids(tokenizer)
    [(ids, start)] = encode_examples(tokenizer, ["질문 하나"], ["답 하나"], 1000)
    assert documents[0][0] == ids  # what SFT trains on, EOS included
    # the labels leave out the template's markers and keep the question, the answer and the EOS
    prefix, suffix = (tokenizer(marker, add_special_tokens=False)["input_ids"] for marker in PROMPT_TEMPLATE.split("{prompt}"))
    question = tokenizer("질문 하나", add_special_tokens=False)["input_ids"]
    assert documents[0][1] == [-100] * len(prefix) + question + [-100] * len(suffix) + ids[start:]
    text = tokenizer("질문 셋", add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id]
    assert documents[2] == (text, text)
    assert corpus.strings()[0] == render_prompt("질문 하나") + "답 하나"
    assert Corpus.of(data, "train").without(corpus).dialogues == []


def test_the_offline_tokenizer_is_the_same_in_every_run(sample_data):
    """Its alphabet is cut by frequency with ties by code point: the trainer's own cut followed hash order, and
    two torchrun processes trained on different token ids."""
    from kochat_train.base import character_alphabet, train_tokenizer

    assert character_alphabet(["aab c", "b"], 2) == ["a", "b"] and character_alphabet(["ba c"], 3) == ["a", "b", "c"]
    assert character_alphabet(["a b"], 1) == ["a"] and "▁" in character_alphabet(["a b c"], 4)
    sft = datasets.load_from_disk(str(sample_data / "sft"))["train"]
    texts = list(sft["prompt"]) + list(sft["completion"])
    vocabularies = {json.dumps(train_tokenizer(texts, 400, 2).get_vocab(), sort_keys=True) for _ in range(4)}
    assert len(vocabularies) == 1


def test_answers_sampled_from_the_offline_base_hold_no_broken_character(tiny_base, sample_data):
    """What a new user sees first: no U+FFFD in sampled answers, however wild the sampling."""
    from kochat_train.rollout import decoding_config, generate, response_texts

    tokenizer = load_tokenizer(tiny_base)
    model = AutoModelForCausalLM.from_pretrained(tiny_base).eval()
    prompts = datasets.load_from_disk(str(sample_data / "ppo"))["train"]["prompt"][:16]
    torch.manual_seed(0)
    decoding = decoding_config(tokenizer, do_sample=True, temperature=1.5, top_k=0, max_new_tokens=24, num_return_sequences=4)
    answers = response_texts(tokenizer, generate(model, tokenizer, prompts, 64, decoding))
    assert len(answers) == 64 and sum(len(answer) for answer in answers) > 64 * 5
    assert [answer for answer in answers if "\ufffd" in answer] == []


def test_base_writes_a_loadable_model_and_tokenizer(tiny_base):
    files = {path.name for path in tiny_base.iterdir()}
    assert {"config.json", "model.safetensors", "tokenizer.json", "kochat_config.json", "metrics.jsonl", "kochat_stage.json"} <= files
    tokenizer = load_tokenizer(tiny_base)
    assert tokenizer.pad_token_id != tokenizer.eos_token_id
    # Characters, not bytes: every token decodes to whole characters; a character outside the alphabet is <unk>.
    assert not [token for token in range(len(tokenizer)) if "\ufffd" in tokenizer.decode([token])]
    assert tokenizer.decode(tokenizer("질문 답 하나", add_special_tokens=False)["input_ids"]) == "질문 답 하나"
    assert tokenizer("質", add_special_tokens=False)["input_ids"] == [tokenizer.unk_token_id]
    model = AutoModelForCausalLM.from_pretrained(tiny_base)
    assert (model.config.n_layer, model.config.n_embd) == (1, 32)
    assert model.config.pad_token_id == tokenizer.pad_token_id
    stage = json.loads((tiny_base / "kochat_stage.json").read_text())
    assert stage["metrics"]["eval_perplexity"] > 1 and stage["metrics"]["unigram_perplexity"] > 1
    assert 0 <= stage["metrics"]["unknown_token_share"] < 0.05  # the tiny preset's 346 characters cover the sample
    assert json.loads((tiny_base / "kochat_config.json").read_text())["n_embd"] == 32  # resolved from the preset


def test_sft_step_changes_every_parameter(tiny_base, sample_data, tmp_path):
    result = train_sft(SFTConfig(data=sample_data, out=tmp_path / "sft", model=str(tiny_base), max_steps=1, **TINY))
    before = parameters(AutoModelForCausalLM.from_pretrained(tiny_base))
    after = parameters(AutoModelForCausalLM.from_pretrained(result.out))
    unchanged = [name for name in before if torch.equal(before[name], after[name])]
    assert unchanged == []
    assert result.metrics["eval_loss"] > 0
    lines = [json.loads(line) for line in (result.out / "metrics.jsonl").read_text().splitlines()]
    assert [line["step"] for line in lines if "loss" in line] == [1]


def test_same_seed_same_weights(tiny_base, sample_data, tmp_path):
    outs = [train_sft(SFTConfig(data=sample_data, out=tmp_path / name, model=str(tiny_base), max_steps=2, **TINY)).out for name in "ab"]
    first, second = (parameters(AutoModelForCausalLM.from_pretrained(out)) for out in outs)
    assert all(torch.equal(first[name], second[name]) for name in first)


def test_reward_ignores_padding(tiny_base):
    tokenizer = load_tokenizer(tiny_base)
    reward_model = ScalarRewardModel(init_reward_model(tiny_base, tokenizer)).eval()
    short, long = tokenizer(["좋아요", "정말 길고 긴 문장이 여기에 있습니다"])["input_ids"]
    alone = reward_model(torch.tensor([short]), torch.ones(1, len(short), dtype=torch.long))
    for side in ("right", "left"):
        tokenizer.padding_side = side
        batch = tokenizer.pad({"input_ids": [short, long]}, return_tensors="pt")
        assert batch["attention_mask"][0].sum() < batch["attention_mask"].shape[1]
        rewards = reward_model(batch["input_ids"], batch["attention_mask"])
        assert rewards[0].item() == pytest.approx(alone.item(), abs=1e-5), side


def test_rm_trains_every_parameter_and_its_directory_reproduces_the_metrics(tiny_base, sample_data, tmp_path):
    result = train_rm(RewardConfig(data=sample_data, out=tmp_path / "rm", model=str(tiny_base), max_steps=3, **TINY))
    assert {"eval_accuracy", "eval_mean_margin", "eval_accuracy_0v1", "eval_accuracy_0v2", "eval_accuracy_1v2"} <= set(result.metrics)
    before = parameters(AutoModelForCausalLM.from_pretrained(tiny_base).transformer)
    saved = AutoModelForSequenceClassification.from_pretrained(result.out)
    after = parameters(saved.transformer)
    # The final layer-norm bias adds score·bias to every reward alike; the pairwise loss cancels it.
    assert [name for name in before if torch.equal(before[name], after[name])] == ["ln_f.bias"]
    assert saved.score.weight.shape == (1, 32)

    # From the directory alone: the same rewards, hence the same eval metrics as during training.
    tokenizer = load_tokenizer(result.out)
    reward_model = ScalarRewardModel(load_reward_model(result.out, tokenizer)).eval()
    pairs = tokenize_pairs(datasets.load_from_disk(str(sample_data / "rm"))["eval"], tokenizer, TINY["max_length"])
    batch = PairCollator(tokenizer)(list(pairs))
    with torch.no_grad():
        chosen, rejected = reward_model(batch["input_ids"], batch["attention_mask"]).chunk(2)
    metrics = pair_metrics(EvalPrediction(predictions=torch.stack([chosen, rejected], 1).numpy(), label_ids=batch["ranks"].numpy()))
    assert metrics["accuracy"] == pytest.approx(result.metrics["eval_accuracy"])
    assert metrics["mean_margin"] == pytest.approx(result.metrics["eval_mean_margin"], abs=1e-5)


def test_trainer_names_missing_columns(tmp_path, tiny_base):
    datasets.DatasetDict({"train": datasets.Dataset.from_dict({"prompt": ["질문"]}), "eval": datasets.Dataset.from_dict({"prompt": ["질문"]})}).save_to_disk(str(tmp_path / "data" / "sft"))
    with pytest.raises(UsageError, match="lacks column\\(s\\) completion"):
        train_sft(SFTConfig(data=tmp_path / "data", out=tmp_path / "out", model=str(tiny_base), **TINY))
    with pytest.raises(UsageError, match="no rm dataset here"):
        train_rm(RewardConfig(data=tmp_path / "data", out=tmp_path / "out", model=str(tiny_base), **TINY))


def test_cli_refuses_to_overwrite(run_cli, tiny_base, sample_data):
    code, _, err = run_cli("train", "sft", "--data", sample_data, "--out", tiny_base, "--model", tiny_base)
    assert code == 2 and "pass --overwrite" in err
    code, _, err = run_cli("train", "sft", "--data", sample_data, "--out", tiny_base.parent / "fresh", "--model", tiny_base, "--resume")
    assert code == 2 and "nothing to resume" in err


def test_cli_trains_from_a_config_file_with_flag_overrides(run_cli, tiny_base, sample_data, tmp_path):
    config = tmp_path / "rm.toml"
    config.write_text(f'data = "{sample_data}"\nmodel = "{tiny_base}"\nmax_steps = 5\nmax_length = 64\nbatch_size = 4\n')
    code, out, err = run_cli("train", "rm", "--config", config, "--out", tmp_path / "rm", "--max-steps", "1", "--lora-rank", "2")
    assert code == 0, err
    assert "eval_accuracy" in out
    saved = json.loads((tmp_path / "rm" / "kochat_config.json").read_text())
    assert (saved["stage"], saved["max_steps"], saved["batch_size"], saved["lora_rank"]) == ("rm", 1, 4, 2)
    assert AutoModelForSequenceClassification.from_pretrained(tmp_path / "rm").num_labels == 1


def test_relevance_negatives_pair_each_best_answer_with_other_prompts_best_answers():
    from kochat_train.rm import relevance_negatives

    pairs = datasets.Dataset.from_dict({
        "prompt": ["A", "A", "B", "C", "C"], "chosen": ["a", "a2", "b", "c", "c"], "rejected": ["x", "y", "z", "w", "v"],
        "chosen_rank": [0, 1, 0, 0, 0], "rejected_rank": [1, 2, 2, 1, 2]})
    one = relevance_negatives(pairs, per_prompt=1, seed=0)
    assert sorted(one["prompt"]) == ["A", "B", "C"] and set(one["chosen_rank"]) == {0} and set(one["rejected_rank"]) == {1}
    best = {"A": "a", "B": "b", "C": "c"}
    assert all(chosen == best[p] and rejected in {"a", "b", "c"} - {chosen} for p, chosen, rejected in zip(one["prompt"], one["chosen"], one["rejected"]))
    every = relevance_negatives(pairs, per_prompt=5, seed=0)  # only 2 other prompts: 2 rounds, each other answer once
    assert sorted(zip(every["prompt"], every["rejected"])) == [("A", "b"), ("A", "c"), ("B", "a"), ("B", "c"), ("C", "a"), ("C", "b")]
    assert relevance_negatives(pairs, per_prompt=1, seed=0)["rejected"] == one["rejected"]  # seeded


def test_sft_records_where_the_starting_model_stood_as_its_trainer_measures_it(tiny_base, sample_data, tmp_path):
    from transformers import DataCollatorForSeq2Seq, Trainer

    from kochat_train.sft import IGNORE_INDEX, tokenize_sft
    from kochat_train.training import training_arguments

    config = SFTConfig(data=sample_data, out=tmp_path / "sft", model=str(tiny_base), max_steps=2, **{**TINY, "eval_batch_size": 4})
    result = train_sft(config)
    tokenizer = load_tokenizer(tiny_base)
    data = datasets.load_from_disk(str(sample_data / "sft"))
    # The eval batches of the stage's own arguments (length-grouped): a loss averaged over other batches differs.
    trainer = Trainer(model=AutoModelForCausalLM.from_pretrained(tiny_base), processing_class=tokenizer,
                      args=training_arguments(config, len(data["train"])), eval_dataset=tokenize_sft(data["eval"], tokenizer, TINY["max_length"]),
                      data_collator=DataCollatorForSeq2Seq(tokenizer, label_pad_token_id=IGNORE_INDEX))
    expected = trainer.evaluate()["eval_loss"]
    assert result.metrics["start_eval_loss"] == pytest.approx(expected, rel=1e-6)
    assert result.metrics["eval_loss"] < result.metrics["start_eval_loss"]
