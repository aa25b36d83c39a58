"""Train base → SFT → proxy RM with the `small` preset on the shared KoChatGPT-style data and print the numbers.

    python bench/train_stages.py --shared ../shared/data --out runs/real [--seed 42] [--precision fp32] [--relevance-negatives 2] [--base-epochs 6]
        [--pipeline]

Builds the derived SFT + RM files and the real PPO prompts, then runs each stage in this
process with the pipeline's settings; prints wall time per stage, base perplexity against the
unigram baseline, SFT eval loss against its starting model's, the relevance probe of base and
SFT (`kochat eval relevance`; SFT's on its train pairs too), and the proxy RM's eval accuracy
(overall and per rank pair).
With --pipeline, the rest of `kochat pipeline` follows in the same directory, reusing those
stages: the judge RM, PPO, DPO and the stage comparison with its table and warnings.
The options are the ablations of issue 16; the numbers before the dialogue-shaped corpus come
from this script at commit 27ea6a8.
"""

from __future__ import annotations

import argparse
import os
import shutil
import time
from pathlib import Path

import datasets
import transformers
from rich.console import Console
from rich.table import Table

from kochat.pipeline import SHARED, STAGE_DEFAULTS, PipelineConfig, run_pipeline
from kochat_data.build import BuildConfig, build
from kochat_eval.relevance import probe_relevance, split_name
from kochat_train.base import BaseConfig, train_base
from kochat_train.rm import RewardConfig, train_rm
from kochat_train.sft import SFTConfig, train_sft
from training_workloads import shared_inputs

# The pipeline's stage settings, sized for the shared data on 2 CPU cores.
BASE = {"preset": "small", **STAGE_DEFAULTS["train_base"]}
SFT, RM = STAGE_DEFAULTS["train_sft"], STAGE_DEFAULTS["train_rm"]
COMMON = {**SHARED, "overwrite": True}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shared", type=Path, default=Path(os.environ.get("KOCHAT_SHARED_DATA", "../shared/data")))
    parser.add_argument("--out", type=Path, default=Path("runs/real"))
    parser.add_argument("--seed", type=int, default=42)
    parser.add_argument("--precision", default="auto", help="auto (kochat's default), fp32 or bf16 (autocast, also on a CPU)")
    parser.add_argument("--base-epochs", type=float, default=BASE["epochs"], help="passes of the base stage over its corpus")
    parser.add_argument("--relevance-negatives", type=int, default=0, help="extra relevance pairs per RM train prompt")
    parser.add_argument("--pipeline", action="store_true", help="then the judge RM, PPO, DPO and the stage comparison")
    args = parser.parse_args()
    common = {**COMMON, "seed": args.seed, "precision": args.precision}
    datasets.disable_progress_bars()
    transformers.logging.set_verbosity_error()
    transformers.logging.disable_progress_bar()

    inputs = shared_inputs(args.shared)
    # Base, SFT and RM are about to be replaced: a pipeline's later stages in this directory are stale.
    for stale in ("judge", "ppo", "dpo", "eval"):
        shutil.rmtree(args.out / stale, ignore_errors=True)
    (args.out / "pipeline.json").unlink(missing_ok=True)
    data = args.out / "data"
    build(BuildConfig(out=data, overwrite=True, on_invalid="skip", seed=args.seed, **inputs))
    seconds = {}
    started = time.perf_counter()
    base = train_base(BaseConfig(data=data, out=args.out / "base", **{**BASE, "epochs": args.base_epochs}, **common))
    seconds["base"] = time.perf_counter() - started
    started = time.perf_counter()
    sft = train_sft(SFTConfig(data=data, out=args.out / "sft", model=str(base.out), **SFT, **common))
    seconds["sft"] = time.perf_counter() - started
    started = time.perf_counter()
    rm = train_rm(RewardConfig(data=data, out=args.out / "rm", model=str(sft.out), pairs="proxy",
                               relevance_negatives=args.relevance_negatives, **RM, **common))
    seconds["rm"] = time.perf_counter() - started
    relevance = {stage.out.name: probe_relevance(stage.out, data) for stage in (base, sft)}
    # As many of its train pairs: did SFT learn which answer goes with the questions it saw, or nothing of the kind?
    relevance["sft (train pairs)"] = probe_relevance(sft.out, data, max_pairs=relevance["sft"]["pairs"], split="train")

    table = Table(title=f"{args.out}: small preset, {sum(seconds.values()) / 60:.1f} min in total")
    table.add_column("stage")
    table.add_column("wall", justify="right")
    table.add_column("result")
    table.add_row("base", f"{seconds['base']:.0f} s", f"eval perplexity {base.metrics['eval_perplexity']:.1f} "
                  f"(unigram {base.metrics['unigram_perplexity']:.1f}), {base.metrics['train_tokens']:,} train tokens")
    table.add_row("sft", f"{seconds['sft']:.0f} s", f"eval loss {sft.metrics['eval_loss']:.3f} (response tokens + EOS; "
                  f"{sft.metrics['start_eval_loss']:.3f} before SFT)")
    for name, probe in relevance.items():
        table.add_row(f"{name} relevance", "", f"the question lifts the right answer more on {probe['relevance_accuracy']:.3f} "
                      f"of {probe['pairs']} {split_name(probe['split'])} rank-0-vs-1 pairs (½: ignored)")
    pairs = ", ".join(f"{key.removeprefix('eval_accuracy_')} {value:.3f}" for key, value in rm.metrics.items() if key.startswith("eval_accuracy_"))
    table.add_row("rm", f"{seconds['rm']:.0f} s", f"eval accuracy {rm.metrics['eval_accuracy']:.3f} ({pairs}), "
                  f"mean margin {rm.metrics['eval_mean_margin']:.2f}")
    Console().print(table)
    if args.pipeline:
        # The same settings as the stages above, so the pipeline reuses them instead of refusing the directory.
        ablated = {"precision": args.precision}
        stages = {"train_base": {**ablated, "epochs": args.base_epochs}, "train_sft": ablated,
                  "train_rm": {**ablated, "relevance_negatives": args.relevance_negatives}, "train_ppo": ablated, "train_dpo": ablated}
        report = run_pipeline(PipelineConfig(out=args.out, seed=args.seed, stages=stages, **inputs))
        print((args.out / "eval" / "table.md").read_text(encoding="utf-8"))
        print(f"{len(report['warnings'])} warning(s) above")


if __name__ == "__main__":
    main()
