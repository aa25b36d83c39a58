"""The stages on tiny random models of the families Korean models come in (Llama, Qwen2, GPT-NeoX, Gemma2, EXAONE-4;
GPT-2 is every other test's), each with a tokenizer shaped as its own: SFT with LoRA, the RM, DPO and PPO run, and
the reward is read at the answer's last token, in kochat and in plain transformers alike."""

import json

import pytest
import torch
from transformers import AutoModelForSequenceClassification, AutoTokenizer

from conftest import FAMILIES, TINY, make_tiny_family

STEPS = {**TINY, "max_steps": 1, "learning_rate": 1e-3}
PROMPTS = ["안녕하세요", "오늘 저녁 메뉴로 뭐가 좋을까요? 추천해 주세요"]
RESPONSES = ["반가워요.", "김치찌개 어때요? 따뜻하고 맛있어요."]


@pytest.mark.parametrize("family", FAMILIES)
def test_every_stage_runs_and_the_reward_is_read_at_the_last_token(family, sample_data, tmp_path):
    from kochat_train.dpo import DPOConfig, train_dpo
    from kochat_train.ppo import PPOConfig, train_ppo
    from kochat_train.rewards import RewardScorer
    from kochat_train.rm import RewardConfig, train_rm
    from kochat_train.sft import SFTConfig, train_sft
    from kochat_train.template import reward_inputs

    base = make_tiny_family(tmp_path / "base", family)
    sft = train_sft(SFTConfig(data=sample_data, out=tmp_path / "sft", model=str(base), lora_rank=2, **STEPS)).out
    rm = train_rm(RewardConfig(data=sample_data, out=tmp_path / "rm", model=str(sft), **STEPS)).out
    train_dpo(DPOConfig(data=sample_data, out=tmp_path / "dpo", model=str(sft), lora_rank=2, **STEPS))
    ppo = train_ppo(PPOConfig(data=sample_data, out=tmp_path / "ppo", sft=str(sft), rm=str(rm), max_new_tokens=6,
                              **{**STEPS, "batch_size": 2}))
    assert [json.loads(line)["step"] for line in (ppo.out / "metrics.jsonl").read_text().splitlines()] == [1]

    ours = RewardScorer(rm, "cpu").score(PROMPTS, RESPONSES)
    tokenizer = AutoTokenizer.from_pretrained(rm)
    model = AutoModelForSequenceClassification.from_pretrained(rm).eval()
    assert model.config.pad_token_id != tokenizer.eos_token_id  # the saved RM pads with a token of its own
    ids = reward_inputs(RewardScorer(rm, "cpu").tokenizer, PROMPTS, RESPONSES, 64)
    assert all(row[-1] == tokenizer.eos_token_id for row in ids)
    for side in ("right", "left"):  # plain transformers reads the last token that is not padding, either way round
        tokenizer.padding_side = side
        batch = tokenizer.pad({"input_ids": ids}, return_tensors="pt")
        with torch.no_grad():
            assert model(**batch).logits[:, 0].tolist() == pytest.approx(ours, abs=1e-5), side
