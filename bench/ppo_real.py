"""PPO on the shared build with the small-preset SFT and RM, then the RM score of SFT vs PPO on eval prompts.

    python bench/ppo_real.py --runs runs/clean --steps 40

Needs `bench/train_stages.py --out runs/clean` first. Prints per-policy RM score on the held-out
PPO prompts (same sampling settings and seed for both), KL to the SFT model, response length,
EOS rate, rollout tokens/s, and a few sample responses.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import datasets
import torch
import transformers
from rich.console import Console
from rich.table import Table

from kochat_train.ppo import PPOConfig, train_ppo
from kochat_train.rm import ScalarRewardModel
from kochat_train.rollout import decoding_config, generate, response_logits, token_logprobs
from kochat_train.sources import load_causal_lm, load_reward_model, load_tokenizer

SAMPLING = {"max_new_tokens": 48, "top_k": 0, "top_p": 1.0, "temperature": 1.0}


@torch.no_grad()
def score_policy(policy_dir: Path, reference_dir: Path, rm_dir: Path, prompts: list[str], seed: int) -> dict:
    tokenizer = load_tokenizer(policy_dir)
    policy, reference = load_causal_lm(policy_dir, tokenizer).eval(), load_causal_lm(reference_dir, tokenizer).eval()
    reward_model = ScalarRewardModel(load_reward_model(rm_dir, tokenizer)).eval()
    transformers.set_seed(seed)
    scores, kls, lengths, eos, samples = [], [], [], [], []
    for start in range(0, len(prompts), 32):
        batch = prompts[start : start + 32]
        rollout = generate(policy, tokenizer, batch, 128, decoding_config(tokenizer, **SAMPLING))
        mask = rollout.response_mask.float()
        logprobs = token_logprobs(response_logits(policy, rollout), rollout.response_ids)
        ref_logprobs = token_logprobs(response_logits(reference, rollout), rollout.response_ids)
        scores += reward_model(rollout.input_ids, rollout.attention_mask).tolist()
        kls += ((logprobs - ref_logprobs) * mask).sum(1).tolist()
        lengths += mask.sum(1).tolist()
        eos += rollout.ended.tolist()
        if not samples:
            samples = [(p, tokenizer.decode(r[m == 1], skip_special_tokens=True)) for p, r, m in
                       zip(batch[:4], rollout.response_ids, rollout.response_mask)]
    mean = lambda values: sum(values) / len(values)  # noqa: E731
    return {"rm_score": mean(scores), "kl": mean(kls), "length": mean(lengths), "eos_rate": mean(eos), "samples": samples}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=Path, default=Path("runs/clean"))
    parser.add_argument("--steps", type=int, default=40)
    parser.add_argument("--eval-prompts", type=int, default=256)
    args = parser.parse_args()
    datasets.disable_progress_bars()
    transformers.logging.set_verbosity_error()
    transformers.logging.disable_progress_bar()
    runs = args.runs
    result = train_ppo(PPOConfig(
        data=runs / "data", out=runs / "ppo", sft=str(runs / "sft"), rm=str(runs / "rm"), max_steps=args.steps,
        batch_size=16, mini_batch_size=8, learning_rate=5e-5, kl_coef=0.05, max_length=128, overwrite=True, save_steps=20,
        **SAMPLING,
    ))
    lines = [json.loads(line) for line in (result.out / "metrics.jsonl").read_text().splitlines()]
    prompts = list(datasets.load_from_disk(str(runs / "data" / "ppo"))["eval"]["prompt"])[: args.eval_prompts]
    table = Table(title=f"{len(prompts)} eval PPO prompts, sampling {SAMPLING}, seed 0; PPO {args.steps} steps in {result.metrics['wall_seconds']} s")
    for column in ("policy", "RM score", "KL to SFT", "length", "EOS rate"):
        table.add_column(column)
    samples = {}
    for name, directory in (("sft", runs / "sft"), ("ppo", result.out)):
        row = score_policy(directory, runs / "sft", runs / "rm", prompts, seed=0)
        samples[name] = row["samples"]
        table.add_row(name, f"{row['rm_score']:.3f}", f"{row['kl']:.3f}", f"{row['length']:.1f}", f"{row['eos_rate']:.2f}")
    console = Console()
    console.print(table)
    speeds = [line["generated_tokens_per_second"] for line in lines]
    console.print(f"generated tokens/s in rollouts (batch 16): mean {sum(speeds) / len(speeds):.0f}; training RM score first 5 steps "
                  f"{sum(line['rm_score'] for line in lines[:5]) / 5:.3f}, last 5 {sum(line['rm_score'] for line in lines[-5:]) / 5:.3f}")
    for name, rows in samples.items():
        for prompt, response in rows:
            console.print(f"[{name}] {prompt!r} → {response!r}", markup=False)


if __name__ == "__main__":
    main()
