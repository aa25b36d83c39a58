"""PPO stage tier: rollouts, a learning test with a reward defined here, outputs and resume."""

import json
from types import SimpleNamespace

import pytest
import torch
from transformers import (
    AutoModelForCausalLM,
    AutoModelForSequenceClassification,
    set_seed,
)

from kochat_train.online import online_steps, prompt_batch
from kochat_train.ppo import PPOConfig, PPOTrainer, train_ppo
from kochat_train.rollout import (
    Rollout,
    decoding_config,
    generate,
    response_logits,
    token_logprobs,
)
from kochat_train.sources import load_causal_lm, load_tokenizer
from kochat_train.training import TrainingDiverged

PROMPTS = ["안녕", "오늘 저녁 메뉴로 뭐가 좋을까요? 추천해 주세요", "주말에 뭐 해?"]


def test_left_padding_gives_the_same_log_probs_as_each_prompt_alone(tiny_base):
    tokenizer = load_tokenizer(tiny_base)
    model = load_causal_lm(tiny_base, tokenizer).eval()
    set_seed(0)
    batch = generate(model, tokenizer, PROMPTS, max_length=64, decoding=decoding_config(tokenizer, max_new_tokens=10))
    assert (batch.prompt_mask == 0).any(dim=1).tolist() == [True, False, True]  # left padding happened
    with torch.no_grad():
        batched = token_logprobs(response_logits(model, batch), batch.response_ids)
        for row in range(len(PROMPTS)):
            keep = batch.prompt_mask[row] == 1
            length = int(batch.response_mask[row].sum())
            alone = Rollout(batch.prompt_ids[row, keep][None], batch.prompt_mask[row, keep][None],
                            batch.response_ids[row, :length][None], batch.response_mask[row, :length][None])
            single = token_logprobs(response_logits(model, alone), alone.response_ids)
            torch.testing.assert_close(batched[row, :length], single[0], rtol=0, atol=1e-5)


def ppo_config(sample_data, tiny_base, tiny_rm, out, **overrides):
    settings = dict(data=sample_data, out=out, sft=str(tiny_base), rm=str(tiny_rm), batch_size=16, mini_batch_size=8,
                    max_new_tokens=12, max_length=64, kl_coef=0.01, learning_rate=1e-2, save_steps=100)
    return PPOConfig(**{**settings, **overrides})


def test_ppo_raises_a_reward_defined_here(tiny_base, tiny_rm, sample_data, tmp_path):
    target = 100  # one character of the tiny vocabulary; the untrained policy samples it ~1 time in 200 (seen: 0.005)

    def share_of_target(response_ids, response_mask):
        return ((response_ids == target) & (response_mask == 1)).sum(dim=1) / response_mask.sum(dim=1)

    # The reward (at most 1) is all this test measures: no missing-EOS penalty, which a policy at
    # this learning rate dodges by stopping at once.
    # Seen: rm_score 0.25 over steps 26–30, 0.48 over steps 36–40.
    result = train_ppo(ppo_config(sample_data, tiny_base, tiny_rm, tmp_path / "ppo", max_steps=40, missing_eos_penalty=0.0),
                       score_fn=share_of_target)
    lines = [json.loads(line) for line in (result.out / "metrics.jsonl").read_text().splitlines()]
    first, last = [line["rm_score"] for line in lines[:3]], [line["rm_score"] for line in lines[-5:]]
    assert max(first) < 0.05 and sum(last) / len(last) > 0.3, (first, last)
    assert all(torch.isfinite(torch.tensor(line["kl"])) for line in lines)


def test_ppo_writes_its_outputs_and_resumes_to_the_same_weights(tiny_base, tiny_rm, sample_data, tmp_path):
    straight = train_ppo(ppo_config(sample_data, tiny_base, tiny_rm, tmp_path / "straight", max_steps=3, batch_size=4, mini_batch_size=2))
    keys = {"rm_score", "kl", "total_reward", "entropy", "response_length", "eos_rate", "clip_fraction", "value_loss",
            "approx_kl", "policy_loss", "kl_coef", "generated_tokens_per_second"}
    lines = [json.loads(line) for line in (straight.out / "metrics.jsonl").read_text().splitlines()]
    assert [line["step"] for line in lines] == [1, 2, 3] and keys <= set(lines[0])
    assert (straight.out / "kochat_stage.json").exists()
    AutoModelForSequenceClassification.from_pretrained(straight.out / "critic")

    cut = ppo_config(sample_data, tiny_base, tiny_rm, tmp_path / "cut", max_steps=2, batch_size=4, mini_batch_size=2, save_steps=1)
    train_ppo(cut)
    resumed = train_ppo(ppo_config(sample_data, tiny_base, tiny_rm, tmp_path / "cut", max_steps=3, batch_size=4, mini_batch_size=2, resume=True))
    assert [json.loads(line)["step"] for line in (resumed.out / "metrics.jsonl").read_text().splitlines()] == [1, 2, 3]
    first = dict(AutoModelForCausalLM.from_pretrained(straight.out).named_parameters())
    second = dict(AutoModelForCausalLM.from_pretrained(resumed.out).named_parameters())
    for name in first:
        torch.testing.assert_close(first[name], second[name], rtol=0, atol=1e-6)


def test_cli_runs_ppo_and_checks_its_config(run_cli, tiny_base, tiny_rm, sample_data, tmp_path):
    code, out, err = run_cli("train", "ppo", "--data", sample_data, "--sft", tiny_base, "--rm", tiny_rm, "--out", tmp_path / "ppo",
                             "--max-steps", "1", "--batch-size", "4", "--mini-batch-size", "2", "--max-new-tokens", "4", "--max-length", "64")
    assert code == 0, err
    assert "rm_score" in out
    code, _, err = run_cli("train", "ppo", "--data", sample_data, "--out", tmp_path / "other", "--batch-size", "4", "--mini-batch-size", "3")
    assert code == 2
    assert "'sft' is required" in err and "'rm' is required" in err and "'mini_batch_size' (3) must divide 'batch_size' (4)" in err


def test_nan_reward_stops_ppo_before_the_update(tiny_base, tiny_rm, sample_data, tmp_path):
    calls = []

    def breaks_at_step_3(response_ids, response_mask):
        calls.append(1)
        return torch.full((len(response_ids),), float("nan") if len(calls) == 3 else 1.0)

    config = ppo_config(sample_data, tiny_base, tiny_rm, tmp_path / "ppo", max_steps=5, batch_size=4, mini_batch_size=2, save_steps=2)
    with pytest.raises(TrainingDiverged, match=r"PPO loss is nan; stopped before that update at step 3; last good checkpoint: .*checkpoint-2"):
        train_ppo(config, score_fn=breaks_at_step_3)
    assert not (tmp_path / "ppo" / "kochat_stage.json").exists()


def test_prompt_batches_cover_every_prompt_once_per_epoch():
    prompts = [f"질문 {n}" for n in range(10)]
    first_epoch = [p for step in range(5) for p in prompt_batch(prompts, step, batch_size=2, seed=7)]
    assert sorted(first_epoch) == sorted(prompts)
    second_epoch = [p for step in range(5, 10) for p in prompt_batch(prompts, step, batch_size=2, seed=7)]
    assert sorted(second_epoch) == sorted(prompts) and second_epoch != first_epoch
    assert prompt_batch(prompts, 3, 2, seed=7) == prompt_batch(prompts, 3, 2, seed=7)


def test_torchrun_steps_and_the_adaptive_kl_use_the_global_batch(tiny_base, tiny_rm, sample_data, tmp_path):
    assert online_steps(prompts=54, epochs=1.0, global_batch=16) == 4  # one process, batch 16
    assert online_steps(prompts=54, epochs=1.0, global_batch=2 * 16) == 2  # two processes of 16: one epoch is half the steps
    trainer = SimpleNamespace(config=SimpleNamespace(target_kl=1.0, kl_horizon=100), kl_coef=0.1)
    PPOTrainer.adapt_kl(trainer, observed_kl=2.0, rollouts=2 * 16)
    assert trainer.kl_coef == pytest.approx(0.1 * (1 + 0.2 * 32 / 100))


def test_checkpoints_keep_every_rng_and_load_onto_the_cpu(tiny_base, tiny_rm, sample_data, tmp_path):
    train_ppo(ppo_config(sample_data, tiny_base, tiny_rm, tmp_path / "ppo", max_steps=1, batch_size=4, mini_batch_size=2))
    state = torch.load(tmp_path / "ppo" / "checkpoints" / "checkpoint-1" / "ppo_state.pt", map_location="cpu", weights_only=False)
    assert len(state["torch_rng"]) == len(state["cuda_rng"]) == 1  # one entry per process (None without CUDA)


def test_truncated_sampling_in_ppo_is_flagged(run_cli, tiny_base, tiny_rm, sample_data, tmp_path):
    code, _, err = run_cli("train", "ppo", "--data", sample_data, "--sft", tiny_base, "--rm", tiny_rm, "--out", tmp_path / "ppo",
                           "--max-steps", "1", "--batch-size", "4", "--mini-batch-size", "2", "--max-new-tokens", "4", "--top-k", "5")
    assert code == 0 and "warning: top_k=5, top_p=1.0" in err and "off-policy" in err


def test_held_out_proxy_and_judge_are_logged_without_changing_the_run(tiny_base, tiny_rm, sample_data, tmp_path):
    settings = dict(max_steps=3, batch_size=4, mini_batch_size=2)
    plain = train_ppo(ppo_config(sample_data, tiny_base, tiny_rm, tmp_path / "plain", **settings))
    watched = train_ppo(ppo_config(sample_data, tiny_base, tiny_rm, tmp_path / "watched", judge=str(tiny_rm), eval_every=2, eval_prompts=3,
                                   **settings))
    lines = [json.loads(line) for line in (watched.out / "metrics.jsonl").read_text().splitlines()]
    evaluations = [line for line in lines if "eval_proxy_score" in line]
    assert [line["step"] for line in evaluations] == [0, 2, 3]  # before training, every 2 steps, and at the end
    assert {"eval_judge_score", "eval_kl", "eval_response_length"} <= set(evaluations[0]) and evaluations[0]["eval_kl"] == pytest.approx(0, abs=1e-5)
    assert watched.metrics["eval_proxy_score"] == evaluations[-1]["eval_proxy_score"]
    first = dict(AutoModelForCausalLM.from_pretrained(plain.out).named_parameters())
    second = dict(AutoModelForCausalLM.from_pretrained(watched.out).named_parameters())
    assert all(torch.equal(first[name], second[name]) for name in first)  # evaluating left the training RNG alone
