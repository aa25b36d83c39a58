"""The model users bring: SFT → RM → PPO → eval stages on a KoGPT-2-shaped model (pad = eos = `</s>`,
float16 weights, more positions than the data needs), and the rollout math it relies on."""

import json

import datasets
import pytest
import torch
from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification, set_seed

from conftest import TINY, make_kogpt2_shaped
from kochat_eval.stages import StageEvalConfig, compare_stages
from kochat_train.dpo import DPOConfig, train_dpo
from kochat_train.grpo import GRPOConfig, GRPOTrainer, train_grpo
from kochat_train.ppo import PPOConfig, PPOTrainer, train_ppo
from kochat_train.rm import RewardConfig, ScalarRewardModel, train_rm
from kochat_train.rollout import decoding_config, encode_prompts, generate, response_logits, token_logprobs
from kochat_train.sft import SFTConfig, tokenize_sft, train_sft
from kochat_train.sources import load_causal_lm, load_reward_model, load_tokenizer

PROMPTS = ["안녕하세요", "오늘 저녁 메뉴로 뭐가 좋을까요? 추천해 주세요", "주말에 뭐 해?", "고마워"]


@pytest.fixture(scope="module")
def kogpt2_stages(kogpt2_shaped, sample_data, tmp_path_factory) -> dict:
    root = tmp_path_factory.mktemp("kogpt2-stages")
    sft = train_sft(SFTConfig(data=sample_data, out=root / "sft", model=str(kogpt2_shaped), max_steps=3, **TINY))
    rm = train_rm(RewardConfig(data=sample_data, out=root / "rm", model=str(sft.out), max_steps=3, **TINY))
    return {"sft": sft.out, "rm": rm.out, "root": root}


def test_fp16_checkpoints_load_for_training_in_fp32(kogpt2_shaped):
    assert json.loads((kogpt2_shaped / "config.json").read_text())["dtype"] == "float16"
    tokenizer = load_tokenizer(kogpt2_shaped)
    assert {p.dtype for p in load_causal_lm(kogpt2_shaped, tokenizer).parameters()} == {torch.float32}


def test_sft_learns_the_eos_as_a_label_with_pad_equal_to_eos(kogpt2_shaped, sample_data, kogpt2_stages):
    tokenizer = load_tokenizer(kogpt2_shaped)
    assert tokenizer.eos_token == tokenizer.pad_token == "</s>" and tokenizer.eos_token_id == tokenizer.pad_token_id
    rows = tokenize_sft(datasets.load_from_disk(str(sample_data / "sft"))["train"], tokenizer, max_length=256)
    whole = [row for row in rows if len(row["input_ids"]) < 256]  # a response cut by truncation did not end there
    assert len(whole) > len(rows) // 2
    assert all(row["labels"][-1] == tokenizer.eos_token_id and row["attention_mask"][-1] == 1 for row in whole)
    saved = AutoModelForCausalLM.from_pretrained(kogpt2_stages["sft"])
    assert {p.dtype for p in saved.parameters()} == {torch.float32}


def test_rewards_are_read_at_the_last_real_token_with_pad_equal_to_eos(kogpt2_stages):
    tokenizer = load_tokenizer(kogpt2_stages["rm"])
    reward_model = ScalarRewardModel(load_reward_model(kogpt2_stages["rm"], tokenizer)).eval()
    ids = tokenizer("### Instruction(명령어):\n안녕\n\n### Response(응답):반가워요", add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id]
    eos = tokenizer.eos_token_id
    with torch.no_grad():
        alone = reward_model(torch.tensor([ids]), torch.ones(1, len(ids), dtype=torch.long))
        right = reward_model(torch.tensor([ids + [eos] * 3]), torch.tensor([[1] * len(ids) + [0] * 3]))
        left = reward_model(torch.tensor([[eos] * 3 + ids]), torch.tensor([[0] * 3 + [1] * len(ids)]))
        without_eos = reward_model(torch.tensor([ids[:-1]]), torch.ones(1, len(ids) - 1, dtype=torch.long))
    assert right.item() == pytest.approx(alone.item(), abs=1e-5) and left.item() == pytest.approx(alone.item(), abs=1e-5)
    assert without_eos.item() != pytest.approx(alone.item(), abs=1e-6)  # the EOS itself is the token read


def test_ppo_first_update_is_on_policy_and_dpo_ppo_eval_stages_run(kogpt2_stages, sample_data):
    root = kogpt2_stages["root"]
    config = PPOConfig(data=sample_data, out=root / "ppo-probe", sft=str(kogpt2_stages["sft"]), rm=str(kogpt2_stages["rm"]),
                       batch_size=4, mini_batch_size=4, ppo_epochs=1, max_new_tokens=12, max_length=64, temperature=0.7)
    set_seed(0)
    trainer = PPOTrainer(config)
    rollout, batch, _ = trainer.rollout(PROMPTS)
    trainer.actor.train()
    with torch.no_grad(), trainer.autocast:  # as the update computes them
        again = token_logprobs(response_logits(trainer.actor, rollout, config.temperature), rollout.response_ids)
    mask = rollout.response_mask.bool()
    ratio = torch.exp(again - batch["logprobs"])[mask]
    torch.testing.assert_close(ratio, torch.ones_like(ratio), rtol=0, atol=1e-5)
    stats = trainer.update(rollout, batch, torch.Generator().manual_seed(0))  # one mini-batch: the only update is the first
    assert stats["clip_fraction"] == 0 and stats["approx_kl"] == pytest.approx(0, abs=1e-7)

    ppo = train_ppo(PPOConfig(data=sample_data, out=root / "ppo", sft=str(kogpt2_stages["sft"]), rm=str(kogpt2_stages["rm"]),
                              max_steps=2, batch_size=4, mini_batch_size=2, max_new_tokens=8, max_length=64))
    assert {p.dtype for p in AutoModelForSequenceClassification.from_pretrained(ppo.out / "critic").parameters()} == {torch.float32}
    dpo = train_dpo(DPOConfig(data=sample_data, out=root / "dpo", model=str(kogpt2_stages["sft"]), max_steps=2, **TINY))
    report, generations = compare_stages(StageEvalConfig(
        stages={"sft": kogpt2_stages["sft"], "dpo": dpo.out, "ppo": ppo.out}, reward_model=kogpt2_stages["rm"], data=sample_data,
        max_prompts=4, decoding={"max_new_tokens": 8}))
    assert [stage["stage"] for stage in report["stages"]] == ["sft", "dpo", "ppo"] and len(generations) == 12
    assert all(json.loads((directory / "kochat_config.json").read_text())["template"] == "kochatgpt"
               for directory in (kogpt2_stages["sft"], kogpt2_stages["rm"], dpo.out, ppo.out))


def test_grpo_trains_a_kogpt2_shaped_model_on_policy(kogpt2_stages, sample_data):
    """pad = eos = </s>: an answer ends at its first </s>, which counts in the loss; the padding after it does not."""
    root = kogpt2_stages["root"]
    config = GRPOConfig(data=sample_data, out=root / "grpo", sft=str(kogpt2_stages["sft"]), reward=[f"rm={kogpt2_stages['rm']}", "eos"],
                        max_steps=2, batch_size=2, group_size=3, max_new_tokens=8, max_length=64, temperature=0.7, eval_every=2,
                        eval_prompts=4, clip_low=0.0, clip_high=0.0)  # ε = 0: any ratio but exactly 1 counts as clipped
    set_seed(0)
    trainer = GRPOTrainer(config)
    rollout, batch, stats = trainer.rollout(PROMPTS[:2])
    eos = trainer.tokenizer.eos_token_id
    assert eos == trainer.tokenizer.pad_token_id
    for ids, counted in zip(rollout.response_ids, batch["loss_mask"], strict=True):
        ends = (ids == eos).nonzero()
        if len(ends):
            assert counted[: ends[0] + 1].all() and not counted[ends[0] + 1 :].any()
    assert trainer.update(rollout, batch)["clip_fraction"] == 0.0  # on-policy: the sampling and the update agree
    grpo = train_grpo(config)
    assert {"reward/rm", "reward/eos", "eval_median_eojeol"} <= set(grpo.metrics)
    AutoModelForCausalLM.from_pretrained(grpo.out)


@pytest.mark.parametrize("temperature", [1.0, 0.7])
def test_generate_scores_match_the_tempered_response_logits(kogpt2_shaped, temperature):
    tokenizer = load_tokenizer(kogpt2_shaped)
    model = load_causal_lm(kogpt2_shaped, tokenizer).eval()
    decoding = decoding_config(tokenizer, max_new_tokens=6, temperature=temperature)
    set_seed(3)
    rollout = generate(model, tokenizer, PROMPTS, max_length=64, decoding=decoding)
    set_seed(3)
    encoded = encode_prompts(tokenizer, PROMPTS, max_length=64)
    with torch.no_grad():
        output = model.generate(**encoded, generation_config=decoding, output_scores=True, return_dict_in_generate=True)
        ours = token_logprobs(response_logits(model, rollout, temperature), rollout.response_ids)
    width = rollout.response_ids.shape[1]
    assert torch.equal(output.sequences[:, -width:][rollout.response_mask == 1], rollout.response_ids[rollout.response_mask == 1])
    theirs = torch.log_softmax(torch.stack(output.scores, dim=1).float(), dim=-1).gather(-1, rollout.response_ids.unsqueeze(-1)).squeeze(-1)
    mask = rollout.response_mask == 1
    torch.testing.assert_close(ours[mask], theirs[mask], rtol=0, atol=1e-4)


def test_a_hub_generation_config_does_not_leak_into_sampling(tmp_path):
    plain = make_kogpt2_shaped(tmp_path / "plain", dtype="float32")
    steered = make_kogpt2_shaped(tmp_path / "steered", dtype="float32",
                                 generation={"repetition_penalty": 5.0, "no_repeat_ngram_size": 1, "bad_words_ids": [[5]], "min_length": 40})
    responses = []
    for directory in (plain, steered):
        tokenizer = load_tokenizer(directory)
        model = load_causal_lm(directory, tokenizer).eval()
        set_seed(0)
        responses.append(generate(model, tokenizer, PROMPTS, 64, decoding_config(tokenizer, max_new_tokens=16)).response_ids)
    assert torch.equal(*responses)


def test_a_saved_reward_model_scores_the_same_in_plain_transformers_as_in_kochat(kogpt2_stages):
    """pad = eos = </s> in the policy: the RM is saved with `<pad>` as its pad, so plain transformers reads the
    reward at the EOS, where kochat reads it, in a padded batch too (with pad = eos it read one token early)."""
    from transformers import AutoTokenizer

    from kochat_train.rewards import RewardScorer
    from kochat_train.template import reward_inputs

    rm = kogpt2_stages["rm"]
    prompts, responses = ["안녕하세요", "오늘 저녁 메뉴로 뭐가 좋을까요? 추천해 주세요"], ["반가워요.", "김치찌개 어때요? 따뜻하고 맛있어요."]
    ours = RewardScorer(rm, "cpu").score(prompts, responses)
    tokenizer = AutoTokenizer.from_pretrained(rm)
    model = AutoModelForSequenceClassification.from_pretrained(rm).eval()
    assert tokenizer.pad_token == "<pad>" and model.config.pad_token_id != model.config.eos_token_id
    # the ids kochat scores (template, response, EOS), right-padded as any batch is
    batch = tokenizer.pad({"input_ids": reward_inputs(tokenizer, prompts, responses, 64)}, return_tensors="pt")
    with torch.no_grad():
        plain = model(**batch).logits[:, 0].tolist()
    assert plain == pytest.approx(ours, abs=1e-5)
