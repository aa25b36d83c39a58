"""Peak memory of one SFT step and one PPO step on a KoGPT-2-shaped model (125M: 12 layers, width 768, 51,200 tokens),
each option alone, and, with `--before DIR` (a checkout of kochat from before issue 25), the same PPO runs on that code.

Every run is a fresh `kochat train …` process; its peak resident memory is the kernel's (getrusage of the child), so
it includes Python, torch and transformers themselves (printed first, as `imports only`). Under torchrun it is the
largest process's (each holds its own copy or shard).

    python bench/memory.py bench/out/memory [--before /tmp/kochat-before]      (~6 min on 2 CPU cores)
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
KOGPT2 = {"n_layer": 12, "n_embd": 768, "n_head": 12, "vocab_size": 51200, "n_positions": 1024}
SFT = ["--max-steps", "1", "--batch-size", "8", "--eval-batch-size", "8", "--max-length", "256", "--precision", "fp32"]
GRPO = ["--max-steps", "1", "--batch-size", "4", "--group-size", "4", "--max-new-tokens", "48", "--max-length", "128",
        "--precision", "fp32", "--reward", "eos", "--reward", "hangul"]
PPO = ["--max-steps", "1", "--batch-size", "8", "--mini-batch-size", "8", "--max-new-tokens", "48", "--max-length", "128",
       "--precision", "fp32"]


def kogpt2_shaped(out: Path) -> Path:
    """The test suite's KoGPT-2 stand-in (its tokenizer, pad = eos = </s>), at KoGPT-2's size, saved in fp16 as on the hub."""
    import torch
    from transformers import GPT2Config, GPT2LMHeadModel

    sys.path.insert(0, str(REPO / "tests"))
    from conftest import make_kogpt2_shaped

    make_kogpt2_shaped(out)
    torch.manual_seed(0)
    model = GPT2LMHeadModel(GPT2Config(**KOGPT2, bos_token_id=0, eos_token_id=1))
    model.to(torch.float16).save_pretrained(out)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("out", type=Path)
    parser.add_argument("--before", type=Path, help="a checkout of kochat before issue 25, for the PPO runs on the old code")
    parser.add_argument("--only", help="run only the rows whose name starts with this (e.g. grpo)")
    args = parser.parse_args()
    args.out = args.out.resolve()  # the runs start in the code's own directory
    shutil.rmtree(args.out, ignore_errors=True)
    args.out.mkdir(parents=True)
    python = sys.executable
    kochat = [python, "-m", "kochat"]
    base = kogpt2_shaped(args.out / "kogpt2")
    data = args.out / "data"
    subprocess.run([*kochat, "data", "build", "--sft", REPO / "data/sample/kochatgpt_1_SFT.jsonl", "--rm", REPO / "data/sample/kochatgpt_2_RM.jsonl",
                    "--ppo", REPO / "data/sample/kochatgpt_3_PPO.jsonl", "--out", data], check=True, capture_output=True)
    subprocess.run([*kochat, "train", "rm", "--data", data, "--model", base, "--out", args.out / "rm", "--max-steps", "1",
                    "--batch-size", "2", "--max-length", "128"], check=True, capture_output=True)
    ppo = [*kochat, "train", "ppo", "--data", data, "--sft", base, "--rm", args.out / "rm", *PPO]
    sft = [*kochat, "train", "sft", "--data", data, "--model", base, *SFT]
    torchrun = [python, "-m", "torch.distributed.run", "--nproc_per_node", "2", "-m", "kochat"]
    grpo = ["train", "grpo", "--data", data, "--sft", base, *GRPO]  # rule rewards: the policy's memory alone
    # name: (command, whether the code before issue 25 has the option too)
    runs = {
        "imports only": ([python, "-c", "import torch, transformers, kochat_train.ppo"], False),
        "sft": (sft, True),
        "sft --gradient-checkpointing": ([*sft, "--gradient-checkpointing"], False),
        "sft --weights bf16": ([*sft, "--weights", "bf16"], False),
        "sft --lora-rank 8": ([*sft, "--lora-rank", "8"], True),
        "ppo": (ppo, True),
        "ppo --lora-rank 8": ([*ppo, "--lora-rank", "8"], True),
        "ppo --gradient-checkpointing": ([*ppo, "--gradient-checkpointing"], False),
        "ppo --weights bf16": ([*ppo, "--weights", "bf16"], False),
        "grpo, 1 process": ([*kochat, *grpo], False),
        "grpo, 2 processes, replicated": ([*torchrun, *grpo, "--batch-size", "2"], False),
        "grpo, 2 processes, --sharding fsdp": ([*torchrun, *grpo, "--batch-size", "2", "--sharding", "fsdp"], False),
    }
    print(f"{'run':32} {'code':7} {'peak GiB':>9} {'wall s':>7}")
    for name, (command, old_code_has_it) in runs.items():
        if args.only and not name.startswith(args.only):
            continue
        for label, code in [("now", REPO)] + ([("before", args.before)] if args.before and old_code_has_it else []):
            out = ["--out", args.out / f"{name.replace(' ', '_').replace(',', '')}_{label}"] if "kochat" in command else []
            gib, wall = measure(command + out, code)
            print(f"{name:32} {label:7} {gib:9.2f} {wall:7.0f}", flush=True)


def measure(command: list, code: Path) -> tuple[float, float]:
    """Run in a fresh interpreter whose only child is the command, so RUSAGE_CHILDREN is that command's alone."""
    probe = ("import os, resource, subprocess, sys, time; started = time.perf_counter(); "
             "subprocess.run(sys.argv[1:], check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL); "
             "print(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss, time.perf_counter() - started)")
    # In `code`'s directory, since `python -m` puts the working directory first on the import path.
    env = {**os.environ, "PYTHONPATH": str(code)}
    done = subprocess.run([sys.executable, "-c", probe, *map(str, command)], env=env, capture_output=True, text=True, cwd=code)
    if done.returncode:
        raise SystemExit(f"{' '.join(map(str, command))} failed:\n{done.stderr[-2000:]}")
    kib, wall = done.stdout.split()
    return int(kib) / 2**20, float(wall)


if __name__ == "__main__":
    main()
