"""kochat against TRL (SFTTrainer, RewardTrainer, DPOTrainer, GRPOTrainer): same model, data, hyperparameters, steps and seed, one run.

    pip install -e '.[bench]'     # TRL: only for the benchmarks, never a kochat dependency
    python bench/peers.py [--precision fp32] [--base runs/real/base] [--grpo-from runs/real] [--only grpo]

GRPO (`grpo_peers.py`) needs a pipeline run's SFT model and reward models (`--grpo-from`).

Per workload, each side trains one epoch over the same train rows from the same starting
weights with the same batch size, learning rate and schedule (linear, no warmup), weight
decay, clipping, seed and precision (kochat's `--precision`, as each of its stages resolves it). TRL gets kochat's token ids where it accepts them (SFT,
RM); DPOTrainer always tokenises, so it gets kochat's rendered prompt and the answers as text.
Everything else is each library's default, as a user would get it: kochat groups batches
by length and precomputes DPO's reference log-probs; TRL samples at random, runs the
reference at every step and drops dropout in the RM. Speed is training examples per second
of the Trainer's train loop (for kochat's DPO, plus its reference pre-pass). Both sides are
then scored by the same code on the same held-out rows: SFT eval loss (nats per response
token), RM pairwise accuracy overall and rank 0 vs 1, DPO reward accuracy (the implicit
reward β·log π/π_ref ranks the chosen answer higher).
"""

from __future__ import annotations

import argparse
import importlib.util
import math
import os
import sys
import time
from pathlib import Path

import datasets
import numpy as np
import torch
import transformers
from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification

sys.path.insert(0, str(Path(__file__).parent))  # training_workloads sits beside this file

import training_workloads
from bench_table import print_rows, row
from kochat_data.schema import Kind
from kochat_train import devices, stage_data
from kochat_train.dpo import PreferenceCollator, pair_sequence_logprobs, tokenize_preferences, train_dpo
from kochat_train.objectives import pair_accuracies, sequence_logprobs
from kochat_train.rm import PAIR_COLUMNS, PairCollator, ScalarRewardModel, tokenize_pairs, train_rm
from kochat_train.sft import tokenize_sft, train_sft
from kochat_train.sources import load_tokenizer
from kochat_train.stage_configs import DPOConfig, RewardConfig, SFTConfig
from kochat_train.template import render_prompt

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
PRECISION = {True: "bf16", False: "fp32"}
# "Equal or better" for the eval loss, in nats per token (accuracies: accuracy_tolerance).
LOSS_TOLERANCE = 0.01


def hyperparameters(batch_size: int, learning_rate: float, seed: int, bf16: bool) -> dict:
    """The TrainingArguments both sides share (kochat sets the same through its stage config)."""
    return {"per_device_train_batch_size": batch_size, "learning_rate": learning_rate, "num_train_epochs": 1,
            "lr_scheduler_type": "linear", "warmup_steps": 0, "weight_decay": 0.0, "max_grad_norm": 1.0, "seed": seed,
            "data_seed": seed, "bf16": bf16, "use_cpu": DEVICE == "cpu", "report_to": "none",
            "save_strategy": "no", "eval_strategy": "no", "logging_steps": 10**6, "disable_tqdm": True}


def kochat_common(args: argparse.Namespace, batch_size: int, learning_rate: float) -> dict:
    return {"batch_size": batch_size, "learning_rate": learning_rate, "epochs": 1.0, "seed": args.seed, "precision": args.precision,
            "max_length": args.max_length, "overwrite": True, "logging_steps": 10**6, "save_steps": 10**6}


def accuracy_tolerance(pairs: int) -> float:
    """Two standard errors of the difference of two accuracies near ½ on `pairs` pairs."""
    return 2 * math.sqrt(2 * 0.25 / pairs)


@torch.no_grad()
def response_nll(model, features: datasets.Dataset, tokenizer, batch_size: int = 32) -> float:
    """Mean negative log-likelihood per response token (EOS included) over the tokenised SFT rows."""
    model.eval()
    collate = transformers.DataCollatorForSeq2Seq(tokenizer, label_pad_token_id=-100)
    total, tokens = 0.0, 0
    for start in range(0, len(features), batch_size):
        batch = collate(list(features.select(range(start, min(start + batch_size, len(features))))))
        logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
        total -= sequence_logprobs(logits, batch["labels"]).sum().item()
        tokens += int((batch["labels"][:, 1:] != -100).sum())
    return total / tokens


@torch.no_grad()
def reward_accuracies(model, features: datasets.Dataset, tokenizer, batch_size: int = 32) -> dict[str, float]:
    scorer, collate = ScalarRewardModel(model).eval(), PairCollator(tokenizer)
    margins, ranks = [], []
    for start in range(0, len(features), batch_size):
        batch = collate(list(features.select(range(start, min(start + batch_size, len(features))))))
        chosen, rejected = scorer(batch["input_ids"], batch["attention_mask"]).chunk(2)
        margins.append((chosen - rejected).numpy())
        ranks.append(batch["ranks"].numpy())
    return pair_accuracies(np.concatenate(margins), np.concatenate(ranks))


@torch.no_grad()
def dpo_reward_accuracy(policy, reference_logprobs: tuple[np.ndarray, np.ndarray], features: datasets.Dataset, tokenizer) -> float:
    """Share of pairs where β·log π/π_ref is higher for the chosen answer (β > 0 does not change the sign)."""
    chosen, rejected = pair_sequence_logprobs(features, policy.eval(), PreferenceCollator(tokenizer), 32)
    return float(np.mean((chosen - reference_logprobs[0]) - (rejected - reference_logprobs[1]) > 0))


def bench_sft(args, data: Path, held_out: datasets.Dataset, base: Path, tokenizer) -> list[tuple]:
    import trl

    batch_size, learning_rate = 16, 5e-5
    config = SFTConfig(data=data, out=args.out / "peers_sft_kochat", model=str(base), **kochat_common(args, batch_size, learning_rate))
    ours, bf16 = train_sft(config), devices.uses_bf16(config, DEVICE)
    train = tokenize_sft(datasets.load_from_disk(str(data / "sft"))["train"], tokenizer, args.max_length).remove_columns("attention_mask")
    eval_features = tokenize_sft(held_out, tokenizer, args.max_length)
    transformers.set_seed(args.seed)
    model = AutoModelForCausalLM.from_pretrained(base)
    trainer = trl.SFTTrainer(model=model, processing_class=tokenizer, train_dataset=train,
                             args=trl.SFTConfig(output_dir=str(args.out / "peers_sft_trl"), max_length=args.max_length,
                                                **hyperparameters(batch_size, learning_rate, args.seed, bf16)))
    theirs = trainer.train().metrics["train_runtime"]
    ours_model = AutoModelForCausalLM.from_pretrained(ours.out)
    losses = response_nll(ours_model, eval_features, tokenizer), response_nll(model, eval_features, tokenizer)
    rows = len(train)
    return [
        (f"SFT, {rows} examples, batch {batch_size}, {PRECISION[bf16]} (examples/s)", rows / ours.metrics["train_runtime"], rows / theirs, "≥ 1.0×", 1.0),
        ("SFT eval loss (nats/response token)", *losses, f"≤ TRL + {LOSS_TOLERANCE}", losses[0] <= losses[1] + LOSS_TOLERANCE),
    ]


def bench_rm(args, data: Path, held_out: datasets.Dataset, base: Path, tokenizer) -> list[tuple]:
    import trl

    batch_size, learning_rate = 8, 5e-5
    config = RewardConfig(data=data, out=args.out / "peers_rm_kochat", model=str(base), **kochat_common(args, batch_size, learning_rate))
    ours, bf16 = train_rm(config), devices.uses_bf16(config, DEVICE)
    train = tokenize_pairs(datasets.load_from_disk(str(data / "rm"))["train"], tokenizer, args.max_length).rename_columns(
        {"input_ids_chosen": "chosen_ids", "input_ids_rejected": "rejected_ids"}).select_columns(["chosen_ids", "rejected_ids"])
    eval_features = tokenize_pairs(held_out, tokenizer, args.max_length)
    zero_one = sum(ranks == [0, 1] for ranks in eval_features["ranks"])
    transformers.set_seed(args.seed)  # before the score head is initialised, as kochat does
    model = AutoModelForSequenceClassification.from_pretrained(base, num_labels=1, pad_token_id=tokenizer.pad_token_id)
    trainer = trl.RewardTrainer(model=model, processing_class=tokenizer, train_dataset=train,
                                args=trl.RewardConfig(output_dir=str(args.out / "peers_rm_trl"), max_length=args.max_length,
                                                      **hyperparameters(batch_size, learning_rate, args.seed, bf16)))
    theirs = trainer.train().metrics["train_runtime"]
    mine = reward_accuracies(AutoModelForSequenceClassification.from_pretrained(ours.out), eval_features, tokenizer)
    other = reward_accuracies(model, eval_features, tokenizer)
    rows = len(train)
    return [
        (f"RM, {rows} pairs, batch {batch_size}, {PRECISION[bf16]} (pairs/s)", rows / ours.metrics["train_runtime"], rows / theirs, "≥ 1.0×", 1.0),
        at_least(f"RM eval accuracy, overall ({len(eval_features)} pairs)", mine["accuracy"], other["accuracy"], len(eval_features)),
        at_least(f"RM eval accuracy, rank 0 vs 1 ({zero_one} pairs)", mine["accuracy_0v1"], other["accuracy_0v1"], zero_one),
    ]


def bench_dpo(args, data: Path, held_out: datasets.Dataset, sft: Path, tokenizer) -> list[tuple]:
    import trl

    batch_size, learning_rate, beta = 8, 5e-5, 0.1
    config = DPOConfig(data=data, out=args.out / "peers_dpo_kochat", model=str(sft), beta=beta, **kochat_common(args, batch_size, learning_rate))
    ours, bf16 = train_dpo(config), devices.uses_bf16(config, DEVICE)
    train = stage_data.load_stage_data(data, Kind.RM, PAIR_COLUMNS, "bench")["train"]
    text = train.map(lambda row: {"prompt": render_prompt(row["prompt"])}).select_columns(["prompt", "chosen", "rejected"])
    eval_features = tokenize_preferences(held_out, tokenizer, args.max_length)
    transformers.set_seed(args.seed)
    model = AutoModelForCausalLM.from_pretrained(sft)
    trainer = trl.DPOTrainer(model=model, ref_model=AutoModelForCausalLM.from_pretrained(sft), processing_class=tokenizer, train_dataset=text,
                             args=trl.DPOConfig(output_dir=str(args.out / "peers_dpo_trl"), beta=beta, loss_type=["sigmoid"],
                                                max_length=args.max_length, **hyperparameters(batch_size, learning_rate, args.seed, bf16)))
    theirs = trainer.train().metrics["train_runtime"]
    with torch.no_grad():
        reference = pair_sequence_logprobs(eval_features, AutoModelForCausalLM.from_pretrained(sft).eval(), PreferenceCollator(tokenizer), 32)
    mine = dpo_reward_accuracy(AutoModelForCausalLM.from_pretrained(ours.out), reference, eval_features, tokenizer)
    other = dpo_reward_accuracy(model, reference, eval_features, tokenizer)
    rows = len(text)
    seconds = ours.metrics["train_runtime"] + ours.metrics["reference_seconds"]
    return [
        (f"DPO, {rows} pairs, batch {batch_size}, {PRECISION[bf16]} (pairs/s)", rows / seconds, rows / theirs, "≥ 1.0×", 1.0),
        at_least(f"DPO eval reward accuracy ({len(eval_features)} pairs)", mine, other, len(eval_features)),
    ]


def at_least(name: str, mine: float, other: float, pairs: int) -> tuple:
    tolerance = accuracy_tolerance(pairs)
    return name, mine, other, f"≥ TRL − {tolerance:.3f}", mine >= other - tolerance


def run_peers(out: Path, shared: Path, sft_examples: int, rm_pairs: int, dpo_pairs: int, precision: str = "auto",
              base: Path | None = None, seed: int = 0, max_length: int = 256) -> list[tuple]:
    """Every workload; rows of (workload, kochat, TRL, target, needed ratio or met)."""
    if importlib.util.find_spec("trl") is None:
        raise SystemExit("TRL is not installed: pip install -e '.[bench]'")
    args = argparse.Namespace(out=out, precision=precision, seed=seed, max_length=max_length)
    data, prepared = training_workloads.prepare(out, shared)
    base = base or prepared
    tokenizer = load_tokenizer(str(base))
    args.max_length = min(max_length, AutoModelForCausalLM.from_pretrained(base).config.n_positions)  # as kochat caps it
    held_out = {kind: datasets.load_from_disk(str(data / kind))["eval"] for kind in ("sft", "rm")}
    rows = bench_sft(args, training_workloads.subset(data, "sft", sft_examples, out / "peers_sft_data"), held_out["sft"], base, tokenizer)
    rows += bench_rm(args, training_workloads.subset(data, "rm", rm_pairs, out / "peers_rm_data"), held_out["rm"], base, tokenizer)
    # DPO starts from an SFT model: kochat's of the SFT workload, for both sides.
    rows += bench_dpo(args, training_workloads.subset(data, "rm", dpo_pairs, out / "peers_dpo_data"), held_out["rm"], out / "peers_sft_kochat", tokenizer)
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shared", type=Path, default=Path(os.environ.get("KOCHAT_SHARED_DATA", "../shared/data")))
    parser.add_argument("--out", type=Path, default=Path("bench/out"))
    parser.add_argument("--base", type=Path, help="starting model (default: the `small` preset after one step)")
    parser.add_argument("--precision", default="auto", choices=("auto", "fp32", "bf16"),
                        help="kochat's --precision; TRL gets whatever each kochat stage resolves it to")
    parser.add_argument("--sft-examples", type=int, default=1024)
    parser.add_argument("--rm-pairs", type=int, default=512)
    parser.add_argument("--dpo-pairs", type=int, default=256)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--grpo-from", type=Path, metavar="RUN", help="a pipeline's --out (data, sft, rm, judge): adds GRPO")
    parser.add_argument("--only", choices=("all", "grpo"), default="all", help="grpo: only the GRPO comparison")
    args = parser.parse_args()
    datasets.disable_progress_bars()
    transformers.logging.set_verbosity_error()
    started = time.perf_counter()
    if args.only == "grpo" and args.grpo_from is None:
        parser.error("--only grpo needs --grpo-from RUN")
    rows = [] if args.only == "grpo" else run_peers(args.out, args.shared, args.sft_examples, args.rm_pairs, args.dpo_pairs,
                                                    args.precision, args.base, args.seed)
    if args.grpo_from is not None:
        from grpo_peers import bench_grpo

        rows += bench_grpo(args.out, args.grpo_from, args.precision, args.seed)
    print_rows([row(*item, baseline="TRL") for item in rows], f"kochat vs TRL · {args.precision} · {time.perf_counter() - started:.0f} s")


if __name__ == "__main__":
    main()
