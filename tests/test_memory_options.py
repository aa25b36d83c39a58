"""Options for models that strain memory: the LoRA reference without a copy, --lora-targets, gradient checkpointing and
chunked log-probs."""

import pytest
import torch
from safetensors.torch import load_file

from conftest import TINY

STEPS = {**TINY, "max_steps": 2, "learning_rate": 1e-3}


def test_with_lora_the_reference_is_the_actor_without_its_branches(tiny_llama, sample_data, tmp_path):
    """Online RL with LoRA keeps no second copy of the policy (`online.frozen_reference`, PPO's and GRPO's): the
    reference is the actor with LoRA skipped, which scores tokens as the SFT model does after the actor has moved."""
    from kochat_train.grpo import GRPOConfig, GRPOTrainer
    from kochat_train.lora import WithoutLora
    from kochat_train.rollout import decoding_config, generate, response_logits, token_logprobs
    from kochat_train.sources import load_causal_lm

    trainer = GRPOTrainer(GRPOConfig(data=sample_data, out=tmp_path / "grpo", sft=str(tiny_llama), reward=["length=5"], lora_rank=2,
                                     **{**STEPS, "batch_size": 2}))
    assert isinstance(trainer.reference, WithoutLora) and trainer.reference.model is trainer.actor
    for parameter in trainer.actor.parameters():  # move every LoRA branch away from zero, as training would
        if parameter.requires_grad:
            parameter.data.normal_(0, 0.5)
    rollout = generate(trainer.actor, trainer.tokenizer, ["안녕하세요", "오늘 뭐 먹을까?"], 64,
                       decoding_config(trainer.tokenizer, max_new_tokens=6))
    sft = load_causal_lm(tiny_llama, trainer.tokenizer).eval()
    expected = token_logprobs(response_logits(sft, rollout), rollout.response_ids)
    actual = token_logprobs(response_logits(trainer.reference, rollout), rollout.response_ids)
    moved = token_logprobs(response_logits(trainer.actor, rollout), rollout.response_ids)
    assert torch.allclose(actual, expected, atol=1e-5) and not torch.allclose(moved.detach(), expected, atol=1e-3)


def test_lora_targets_choose_the_layers_and_a_wrong_name_is_refused(tiny_llama):
    from kochat_data.errors import UsageError
    from kochat_train.lora import apply_lora
    from kochat_train.sources import load_causal_lm, load_tokenizer

    tokenizer = load_tokenizer(tiny_llama)
    every = load_causal_lm(tiny_llama, tokenizer)
    assert apply_lora(every, 2, 4, 0.0) == 2 * 7  # q, k, v, o, gate, up, down in each of the 2 blocks; not embed_tokens, not lm_head
    some = load_causal_lm(tiny_llama, tokenizer)
    assert apply_lora(some, 2, 4, 0.0, targets=["q_proj", "v_proj"]) == 2 * 2
    with pytest.raises(UsageError, match="qkv name no Linear layer of LlamaForCausalLM; its layers are down_proj, gate_proj"):
        apply_lora(load_causal_lm(tiny_llama, tokenizer), 2, 4, 0.0, targets=["qkv"])


def test_gradient_checkpointing_trains_to_the_same_weights(tiny_llama, sample_data, tmp_path):
    from kochat_train.sft import SFTConfig, train_sft

    plain = train_sft(SFTConfig(data=sample_data, out=tmp_path / "plain", model=str(tiny_llama), precision="fp32", **STEPS)).out
    checkpointed = train_sft(SFTConfig(data=sample_data, out=tmp_path / "ckpt", model=str(tiny_llama), precision="fp32",
                                       gradient_checkpointing=True, **STEPS)).out
    one, two, start = (load_file(directory / "model.safetensors") for directory in (plain, checkpointed, tiny_llama))
    assert max((one[name] - start[name]).abs().max().item() for name in start) > 1e-4
    assert max((one[name] - two[name]).abs().max().item() for name in one) < 1e-5


def test_bf16_weights_train_where_the_device_has_bf16_and_are_refused_elsewhere(run_cli, tiny_base, sample_data, tmp_path):
    from kochat_train.devices import cpu_has_native_bf16

    code, _, err = run_cli("train", "sft", "--data", sample_data, "--model", tiny_base, "--weights", "bf16", "--device", "cpu",
                           "--max-steps", 1, "--max-length", 64, "--out", tmp_path / "sft")
    if cpu_has_native_bf16():
        assert code == 0, err
        assert {tensor.dtype for tensor in load_file(tmp_path / "sft" / "model.safetensors").values()} == {torch.bfloat16}
    else:
        assert code == 2 and "--weights bf16: the cpu here has no native bf16" in err


def test_a_wrong_lora_target_is_refused_before_the_output_is_touched(run_cli, tiny_base, sample_data, tmp_path):
    code, _, err = run_cli("train", "sft", "--data", sample_data, "--model", tiny_base, "--lora-rank", 2, "--lora-targets", "q_proj",
                           "--out", tmp_path / "out", "--max-steps", 1)
    assert code == 2 and "q_proj name no Linear layer of GPT2LMHeadModel; its layers are c_attn, c_fc, c_proj" in err
    assert not (tmp_path / "out").exists()
