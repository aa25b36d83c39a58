"""GRPO stage tier: rewards, the first on-policy step, gradient accumulation, resume, the judge refused, and the
reward-hacking alarms on a gamed run against a clean one."""

import json

import pytest
import torch
from transformers import AutoModelForCausalLM, set_seed

from kochat_train.grpo import GRPOConfig, GRPOTrainer, train_grpo
from kochat_train.online import RewardHacking
from kochat_train.rm import RewardConfig, train_rm

PROMPTS = ["안녕", "오늘 저녁 메뉴로 뭐가 좋을까요? 추천해 주세요", "주말에 뭐 해?", "고마워"]


def short_answers(prompts, responses):
    """A gamed reward: pays for answers of few characters (a `module:function` reward)."""
    return [-len(response) / 10 for response in responses]


def grpo_config(sample_data, tiny_base, out, **overrides):
    settings = dict(data=sample_data, out=out, sft=str(tiny_base), reward=["eos"], batch_size=4, group_size=4, micro_batch_size=16,
                    max_new_tokens=12, max_length=64, learning_rate=1e-2, save_steps=100, precision="fp32")
    return GRPOConfig(**{**settings, **overrides})


def lines(out):
    return [json.loads(line) for line in (out / "metrics.jsonl").read_text("utf-8").splitlines()]


def test_cli_trains_grpo_logs_every_reward_and_checks_its_config(run_cli, tiny_base, tiny_rm, sample_data, tmp_path):
    code, out, err = run_cli("train", "grpo", "--data", sample_data, "--sft", tiny_base, "--reward", f"rm={tiny_rm}",
                             "--reward", "hangul:0.5", "--reward", "length=5:0.1", "--out", tmp_path / "grpo", "--max-steps", 2,
                             "--batch-size", 2, "--group-size", 3, "--max-new-tokens", 6, "--max-length", 64)
    assert code == 0, err
    logged = lines(tmp_path / "grpo")
    assert [line["step"] for line in logged] == [1, 2]
    assert {"reward", "reward/rm", "reward/hangul", "reward/length", "zero_std_groups", "kl", "clip_fraction"} <= set(logged[0])
    weighted = logged[0]["reward/rm"] + 0.5 * logged[0]["reward/hangul"] + 0.1 * logged[0]["reward/length"]
    assert logged[0]["reward"] == pytest.approx(weighted, abs=1e-5)
    AutoModelForCausalLM.from_pretrained(tmp_path / "grpo")  # a plain transformers model
    code, _, err = run_cli("train", "grpo", "--data", sample_data, "--sft", tiny_base, "--out", tmp_path / "other",
                           "--group-size", 1, "--advantage", "median", "--loss-agg", "sum")
    assert code == 2
    assert all(said in err for said in ("'reward' is required", "'group_size' must be ≥ 2", "'advantage' must be one of",
                                        "'loss_agg' must be one of"))


def test_rloo_is_the_same_stage_with_its_own_defaults(run_cli, tiny_base, sample_data, tmp_path):
    code, _, err = run_cli("train", "rloo", "--data", sample_data, "--sft", tiny_base, "--reward", "eos", "--out", tmp_path / "rloo",
                           "--max-steps", 1, "--batch-size", 2, "--group-size", 2, "--max-new-tokens", 4, "--max-length", 64)
    assert code == 0, err
    config = json.loads((tmp_path / "rloo" / "kochat_config.json").read_text("utf-8"))
    assert (config["stage"], config["advantage"], config["kl_in"]) == ("rloo", "loo", "reward")


def test_the_judge_can_never_be_a_reward(run_cli, tiny_base, tiny_rm, sample_data, tmp_path):
    code, _, err = run_cli("train", "grpo", "--data", sample_data, "--sft", tiny_base, "--reward", f"rm={tiny_rm}", "--judge", tiny_rm,
                           "--out", tmp_path / "grpo", "--max-steps", 1)
    assert code == 2 and "that is the judge" in err and len(err.strip().splitlines()) == 1
    judge = train_rm(RewardConfig(data=sample_data, out=tmp_path / "judge", model=str(tiny_base), pairs="judge", max_steps=1,
                                  max_length=64, batch_size=4))
    code, _, err = run_cli("train", "grpo", "--data", sample_data, "--sft", tiny_base, "--reward", f"rm={judge.out}",
                           "--out", tmp_path / "grpo2", "--max-steps", 1)
    assert code == 2 and "that is the judge" in err
    assert not (tmp_path / "grpo").exists() and not (tmp_path / "grpo2").exists()


def test_a_user_reward_that_breaks_its_contract_is_one_line(run_cli, tiny_base, sample_data, tmp_path):
    code, _, err = run_cli("train", "grpo", "--data", sample_data, "--sft", tiny_base, "--reward", "tests.test_grpo:no_such_function",
                           "--out", tmp_path / "grpo", "--max-steps", 1)
    assert code == 2 and "has no no_such_function" in err


def test_the_first_step_on_a_batch_is_on_policy(tiny_base, sample_data, tmp_path):
    """With ε = 0 any ratio other than exactly 1 would count as clipped."""
    set_seed(0)
    trainer = GRPOTrainer(grpo_config(sample_data, tiny_base, tmp_path / "g", reward=["tests.test_grpo:short_answers"],
                                      clip_low=0.0, clip_high=0.0, iterations=1, micro_batch_size=5))
    rollout, batch, _ = trainer.rollout(PROMPTS)
    assert trainer.update(rollout, batch)["clip_fraction"] == 0.0
    trainer.config.iterations = 2  # the second step's policy has moved: its ratios are not 1
    assert trainer.update(rollout, batch)["clip_fraction"] > 0.0


@pytest.mark.parametrize("loss_agg", ["token-mean", "seq-mean-token-mean", "seq-mean-token-sum-norm"])
def test_gradient_accumulation_ends_where_one_batch_ends(loss_agg, tiny_base, sample_data, tmp_path):
    settings = dict(reward=["tests.test_grpo:short_answers"], loss_agg=loss_agg, iterations=2, beta=0.1, mask_truncated=True)
    set_seed(0)
    whole = GRPOTrainer(grpo_config(sample_data, tiny_base, tmp_path / "a", micro_batch_size=16, **settings))
    parts = GRPOTrainer(grpo_config(sample_data, tiny_base, tmp_path / "b", micro_batch_size=3, **settings))
    rollout, batch, _ = whole.rollout(PROMPTS)
    assert batch["loss_mask"].sum() < rollout.response_mask.sum()  # some answers were cut and are left out of the loss
    whole.update(rollout, batch)
    parts.update(rollout, batch)
    start = dict(AutoModelForCausalLM.from_pretrained(tiny_base).named_parameters())
    moved = max((p - start[n]).abs().max().item() for n, p in whole.actor.named_parameters())
    assert moved > 1e-3
    for (name, one), (_, other) in zip(whole.actor.named_parameters(), parts.actor.named_parameters(), strict=True):
        torch.testing.assert_close(one, other, rtol=0, atol=1e-5, msg=name)


def test_grpo_resumes_to_the_same_weights(tiny_base, sample_data, tmp_path):
    straight = train_grpo(grpo_config(sample_data, tiny_base, tmp_path / "straight", max_steps=3, iterations=2))
    train_grpo(grpo_config(sample_data, tiny_base, tmp_path / "cut", max_steps=2, iterations=2, save_steps=1))
    resumed = train_grpo(grpo_config(sample_data, tiny_base, tmp_path / "cut", max_steps=3, iterations=2, resume=True))
    assert [line["step"] for line in lines(resumed.out)] == [1, 2, 3]
    first = dict(AutoModelForCausalLM.from_pretrained(straight.out).named_parameters())
    second = dict(AutoModelForCausalLM.from_pretrained(resumed.out).named_parameters())
    for name in first:
        torch.testing.assert_close(first[name], second[name], rtol=0, atol=1e-6)


def test_beta_zero_loads_no_reference_and_says_so(run_cli, tiny_base, sample_data, tmp_path):
    code, _, err = run_cli("train", "grpo", "--data", sample_data, "--sft", tiny_base, "--reward", "eos", "--beta", 0,
                           "--out", tmp_path / "grpo", "--max-steps", 1, "--batch-size", 2, "--group-size", 2, "--max-length", 64)
    assert code == 0 and "beta 0: no reference model loaded" in err
    assert "kl" not in lines(tmp_path / "grpo")[0]


def test_a_gamed_reward_raises_the_alarm_and_a_clean_run_does_not(tiny_base, tiny_rm, sample_data, tmp_path):
    """Paying for short answers collapses their length: the alarm fires (and stops the run when asked);
    a run that barely moves stays quiet."""
    watch = dict(eval_every=10, eval_prompts=8, judge=str(tiny_rm), max_new_tokens=24, iterations=2)
    gamed = train_grpo(grpo_config(sample_data, tiny_base, tmp_path / "gamed", reward=["tests.test_grpo:short_answers"], max_steps=20,
                                   beta=0.0, **watch))
    assert any("answers collapsed" in alarm for alarm in gamed.metrics["alarms"]), gamed.metrics
    assert any("alarms" in line for line in lines(gamed.out))
    clean = train_grpo(grpo_config(sample_data, tiny_base, tmp_path / "clean", reward=["eos"], max_steps=20, learning_rate=1e-6, **watch))
    assert "alarms" not in clean.metrics and clean.metrics["eval_median_eojeol"] > 0
    with pytest.raises(RewardHacking, match=r"stopped at step 10 \(--stop-on-hacking\): answers .*checkpoint-10"):
        train_grpo(grpo_config(sample_data, tiny_base, tmp_path / "stopped", reward=["tests.test_grpo:short_answers"], max_steps=20,
                               beta=0.0, stop_on_hacking=True, **watch))
    assert not (tmp_path / "stopped" / "kochat_stage.json").exists()
    resumed = train_grpo(grpo_config(sample_data, tiny_base, tmp_path / "stopped", reward=["tests.test_grpo:short_answers"], max_steps=20,
                                     beta=0.0, resume=True, **watch))
    assert resumed.metrics["alarms"] == gamed.metrics["alarms"]  # the step-10 alarm of the first run is kept


def test_rewards_come_from_a_config_file_as_a_list_or_one_string(tmp_path):
    from kochat_train.config import resolve_config

    listed, single = tmp_path / "listed.toml", tmp_path / "single.json"
    listed.write_text('sft = "s"\ndata = "d"\nout = "o"\nreward = ["eos", "hangul:0.5"]\n')
    single.write_text(json.dumps({"sft": "s", "data": "d", "out": "o", "reward": "eos"}))
    assert resolve_config(GRPOConfig, listed).reward == ["eos", "hangul:0.5"]
    assert resolve_config(GRPOConfig, single).reward == ["eos"]
