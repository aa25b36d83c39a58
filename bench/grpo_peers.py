"""kochat's GRPO against TRL's GRPOTrainer (called by peers.py with --grpo-from RUN): the same SFT model, proxy
reward model, train prompts, group size, steps, learning rate, β, loss aggregation and precision.

Both sides sample `prompts × group` answers a step from the KoChatGPT template (TRL gets kochat's rendered
prompt as text), score them with the same reward path (kochat's `RewardScorer` of the proxy RM, wrapped as
TRL's reward function), take one on-policy optimizer step per batch (μ = 1), subtract the group's mean without
scaling by its std (Dr. GRPO: kochat `group-nostd`, TRL `scale_rewards="none"`), aggregate over all tokens (kochat
`token-mean`, TRL `dapo`), and put β·k3 in the loss, with no missing-EOS penalty (TRL has none).
Speed: generated answer tokens and optimizer steps per second of each training loop. Quality: both results
answer the same held-out prompts through kochat's generation path with one seed, scored by the judge RM.
"""

from __future__ import annotations

import json
import statistics
from pathlib import Path

import datasets
import torch
import transformers
from transformers import AutoModelForCausalLM

from kochat_data.schema import Kind
from kochat_eval.metrics import bootstrap_ci
from kochat_train import devices, outputs, stage_data
from kochat_train.grpo import GRPOConfig, train_grpo
from kochat_train.rewards import RewardScorer
from kochat_train.rollout import decoding_config, generate, response_texts
from kochat_train.sources import load_tokenizer
from kochat_train.template import render_prompt

PROMPTS, GROUP, STEPS, LEARNING_RATE, BETA, MAX_NEW_TOKENS = 4, 4, 60, 5e-5, 0.04, 48


def judge_scores(model_dir: Path, tokenizer, prompts: list[str], judge: RewardScorer, seed: int) -> list[float]:
    model = AutoModelForCausalLM.from_pretrained(model_dir).eval()
    transformers.set_seed(seed)
    decoding = decoding_config(tokenizer, max_new_tokens=MAX_NEW_TOKENS)
    scores = []
    for start in range(0, len(prompts), 32):
        batch = prompts[start : start + 32]
        scores += judge.score(batch, response_texts(tokenizer, generate(model, tokenizer, batch, 128, decoding)))
    return scores


def bench_grpo(out: Path, run: Path, precision: str, seed: int, held_out_prompts: int = 256) -> list[tuple]:
    import trl

    data, sft, rm = run / "data", run / "sft", run / "rm"
    config = GRPOConfig(data=data, out=out / "peers_grpo_kochat", sft=str(sft), reward=[f"rm={rm}"], batch_size=PROMPTS,
                        group_size=GROUP, micro_batch_size=PROMPTS * GROUP, max_steps=STEPS, learning_rate=LEARNING_RATE, beta=BETA,
                        loss_agg="token-mean", advantage="group-nostd", missing_eos_penalty=0.0, max_new_tokens=MAX_NEW_TOKENS,
                        max_length=128, seed=seed, precision=precision, overwrite=True, logging_steps=10**6, save_steps=10**6)
    ours = train_grpo(config)
    logged = [line for line in map(json.loads, (ours.out / outputs.METRICS_FILE).read_text("utf-8").splitlines()) if "reward" in line]
    ours_tokens = sum(line["response_length"] * PROMPTS * GROUP for line in logged)
    bf16 = devices.uses_bf16(config, "cpu" if not torch.cuda.is_available() else "cuda")

    tokenizer = load_tokenizer(sft)
    scorer = RewardScorer(rm)
    generated = []

    def proxy_reward(prompts, completions, question, completion_ids, **_):
        generated.append(sum(len(ids) for ids in completion_ids))
        return scorer.score(question, completions)

    train = stage_data.load_stage_data(data, Kind.PPO, ["prompt"], "bench")["train"]
    prompts = datasets.Dataset.from_dict({"prompt": [render_prompt(p) for p in train["prompt"]], "question": train["prompt"]})
    transformers.set_seed(seed)
    trainer = trl.GRPOTrainer(
        model=AutoModelForCausalLM.from_pretrained(sft), reward_funcs=[proxy_reward], processing_class=tokenizer, train_dataset=prompts,
        args=trl.GRPOConfig(output_dir=str(out / "peers_grpo_trl"), per_device_train_batch_size=PROMPTS * GROUP, num_generations=GROUP,
                            gradient_accumulation_steps=1, max_steps=STEPS, learning_rate=LEARNING_RATE, beta=BETA, loss_type="dapo",
                            scale_rewards="none", num_iterations=1, max_completion_length=MAX_NEW_TOKENS, temperature=1.0,
                            top_p=1.0, top_k=0, lr_scheduler_type="constant", warmup_steps=0, weight_decay=0.0, max_grad_norm=1.0,
                            seed=seed, bf16=bf16, use_cpu=not torch.cuda.is_available(), report_to="none", save_strategy="no",
                            logging_steps=10**6, disable_tqdm=True))
    theirs_seconds = trainer.train().metrics["train_runtime"]
    trainer.save_model(str(out / "peers_grpo_trl"))

    judge = RewardScorer(run / "judge")
    held_out = list(stage_data.load_stage_data(data, Kind.PPO, ["prompt"], "bench")["eval"]["prompt"])[:held_out_prompts]
    mine = judge_scores(ours.out, tokenizer, held_out, judge, seed)
    other = judge_scores(out / "peers_grpo_trl", tokenizer, held_out, judge, seed)
    low, high = bootstrap_ci([a - b for a, b in zip(mine, other, strict=True)])
    ours_seconds = ours.metrics["wall_seconds"]
    label = f"GRPO, {STEPS} steps × {PROMPTS}×{GROUP} answers, {'bf16' if bf16 else 'fp32'}"
    return [
        (f"{label} (generated tokens/s)", ours_tokens / ours_seconds, sum(generated) / theirs_seconds, "≥ 1.5×", 1.5),
        (f"{label} (optimizer steps/s)", STEPS / ours_seconds, STEPS / theirs_seconds, "≥ 1.5×", 1.5),
        (f"GRPO judge score, {len(held_out)} held-out prompts (kochat − TRL: [{low:+.3f}, {high:+.3f}])",
         statistics.fmean(mine), statistics.fmean(other), "≥ TRL (CI of the gain above −0.05)", low > -0.05),
    ]
