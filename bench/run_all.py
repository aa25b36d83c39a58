"""kochat against the seed-style implementation (bench/seed_style.py): same data, model and machine, one run.

    python bench/run_all.py                      # every workload (~10 min on 2 CPU cores)
    python bench/run_all.py --only rm rollout    # some of them

Workloads: the data build of 1M synthetic RM records (each side in its own process, for its
peak RSS); reward-model training and PPO rollouts on the shared KoChatGPT data with the
`small` model (4 layers, width 256, 8k BPE vocabulary, random weights: speed does not depend
on them); SFT training FLOP/s against a plain torch.matmul at the same width. Prints a table
(workload, kochat, seed-style, ratio, target, met) and writes it to OUT/results.json.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import datasets
import torch
import transformers
from rich.console import Console
from rich.table import Table
from transformers import AutoModel, AutoModelForCausalLM

sys.path.insert(0, str(Path(__file__).parent))
import seed_style  # noqa: E402
from data_build import generate  # noqa: E402

from kochat_data.build import BuildConfig, build  # noqa: E402
from kochat_train.base import BaseConfig, train_base  # noqa: E402
from kochat_train.rm import RewardConfig, train_rm  # noqa: E402
from kochat_train.rollout import generate as kochat_generate  # noqa: E402
from kochat_train.sft import SFTConfig, tokenize_sft, train_sft  # noqa: E402
from kochat_train.sources import load_tokenizer  # noqa: E402
from kochat_train.template import render_prompt  # noqa: E402

WORKLOADS = ("data", "rm", "rollout", "sft")
QUIET = {"overwrite": True, "logging_steps": 1000, "save_steps": 10**6, "seed": 0}


def run_measured(command: list[str]) -> tuple[float, float]:
    """Wall seconds and peak RSS (MiB) of one child process."""
    started = time.perf_counter()
    child = subprocess.Popen(command, stdout=subprocess.DEVNULL)
    _, status, usage = os.wait4(child.pid, 0)
    if status != 0:
        raise SystemExit(f"{' '.join(command)} failed ({status})")
    return time.perf_counter() - started, usage.ru_maxrss / 1024


def bench_data(out: Path, records: int) -> list[dict]:
    source = out / f"rm_{records}.jsonl"
    if not source.exists():
        generate(source, records)
    ours = run_measured([sys.executable, "-m", "kochat", "data", "build", "--rm", str(source), "--out", str(out / "kochat_built"), "--overwrite"])
    seed = run_measured([sys.executable, str(Path(__file__).parent / "seed_style.py"), str(source), str(out / "seed_built")])
    return [
        row(f"data build, {records:,} RM records (records/s)", records / ours[0], records / seed[0], "≥ 10×", 10.0),
        row("data build, peak RSS (MiB; ratio = seed-style / kochat)", ours[1], seed[1], "≥ 2× (≤ ½ the RSS)", 2.0, inverse=True),
    ]


def prepare(out: Path, shared: Path) -> tuple[Path, Path]:
    """The shared data built once, and a `small` model (one optimizer step: a tokenizer and 512 positions)."""
    data = out / "shared_built"
    if not (data / "manifest.json").exists():
        build(BuildConfig(out=data, overwrite=True, on_invalid="skip",
                          sft=[shared / "derived" / "kochat_1_SFT_chatbot.jsonl"],
                          rm=[shared / "derived" / "kochat_2_RM_chatbot.jsonl"],
                          ppo=[shared / "kochatgpt" / "kochatgpt_3_PPO.jsonl"]))
    base = out / "base"
    if not (base / "kochat_stage.json").exists():
        train_base(BaseConfig(data=data, out=base, preset="small", max_length=512, max_steps=1, **QUIET))
    return data, base


def subset(data: Path, kind: str, rows: int, out: Path) -> Path:
    """A build directory holding the first `rows` train rows of one kind and 32 eval rows (kochat evaluates
    at the end of the epoch and the seed does not: that time counts against kochat)."""
    dataset = datasets.load_from_disk(str(data / kind))
    datasets.DatasetDict({"train": dataset["train"].select(range(rows)), "eval": dataset["eval"].select(range(32))}).save_to_disk(str(out / kind))
    return out


def bench_rm(out: Path, data: Path, base: Path, pairs: int, batch_size: int) -> list[dict]:
    learning_rate = 5e-5
    started = time.perf_counter()
    train_rm(RewardConfig(data=subset(data, "rm", pairs, out / "rm_subset"), out=out / "rm_kochat", model=str(base),
                          batch_size=batch_size, learning_rate=learning_rate, **QUIET))
    ours = time.perf_counter() - started

    tokenizer = load_tokenizer(str(base))
    records = datasets.load_from_disk(str(data / "rm"))["train"].select(range(pairs)).to_list()
    started = time.perf_counter()
    backbone = AutoModel.from_pretrained(base)
    model = seed_style.MeanValueRewardModel(backbone, backbone.config.n_embd)
    seed_style.train_rm(model, seed_style.RewardDataset(records, tokenizer, 512), batch_size, learning_rate)
    seed = time.perf_counter() - started
    return [row(f"RM training, {pairs} pairs, batch {batch_size} (pairs/s)", pairs / ours, pairs / seed, "≥ 4×", 4.0)]


def bench_rollout(data: Path, base: Path, batches: int, batch_size: int, new_tokens: int) -> list[dict]:
    tokenizer = load_tokenizer(str(base))
    model = AutoModelForCausalLM.from_pretrained(base).eval()
    prompts = [render_prompt(p) for p in datasets.load_from_disk(str(data / "ppo"))["eval"]["prompt"][: batches * batch_size]]
    chunks = [prompts[i : i + batch_size] for i in range(0, len(prompts), batch_size)]
    # Both sides generate exactly `new_tokens` per prompt (kochat: EOS suppressed until then).
    sampling = {"max_new_tokens": new_tokens, "min_new_tokens": new_tokens, "top_k": 50, "top_p": 1.0, "temperature": 1.0}

    def ours(chunk):
        kochat_generate(model, tokenizer, [p for p in chunk], max_length=96, sampling=sampling)

    def seed(chunk):
        seed_style.sample(model, tokenizer, chunk, new_tokens, top_k=50)

    rates = {}
    for name, run in (("kochat", ours), ("seed", seed)):
        torch.manual_seed(0)
        run(chunks[0][:2])  # warm-up
        started = time.perf_counter()
        for chunk in chunks:
            run(chunk)
        rates[name] = len(prompts) * new_tokens / (time.perf_counter() - started)
    return [row(f"PPO rollout, batch {batch_size}, {new_tokens} new tokens (tokens/s)", rates["kochat"], rates["seed"], "≥ 2×", 2.0)]


def matmul_peak(width: int, rows: int = 2048, repeats: int = 30) -> float:
    """GFLOP/s of torch.matmul, fp32, (rows × width) @ (width × 4·width): the MLP's shape."""
    left, right = torch.randn(rows, width), torch.randn(width, 4 * width)
    best = 0.0
    for _ in range(3):
        torch.matmul(left, right)
        started = time.perf_counter()
        for _ in range(repeats):
            torch.matmul(left, right)
        best = max(best, 2 * rows * width * 4 * width * repeats / (time.perf_counter() - started) / 1e9)
    return best


def training_flops(lengths: list[int], layers: int, width: int, vocab: int) -> float:
    """Forward + backward (3× forward) FLOPs over real tokens: weight matmuls 2·(12·L·d² + d·V) per
    token and attention 4·L·d·t for a token in a sequence of t tokens (QKᵀ and AV)."""
    weights = 12 * layers * width**2 + width * vocab
    return 3 * sum(2 * weights * t + 4 * layers * width * t * t for t in lengths)


def bench_sft(out: Path, data: Path, base: Path, examples: int, batch_size: int) -> list[dict]:
    result = train_sft(SFTConfig(data=subset(data, "sft", examples, out / "sft_subset"), out=out / "sft_kochat", model=str(base),
                                 batch_size=batch_size, learning_rate=5e-5, max_length=256, **QUIET))
    config = AutoModelForCausalLM.from_pretrained(base).config
    tokenizer = load_tokenizer(str(base))
    lengths = [len(ids) for ids in tokenize_sft(datasets.load_from_disk(str(out / "sft_subset" / "sft"))["train"], tokenizer, 256)["input_ids"]]
    achieved = training_flops(lengths, config.n_layer, config.n_embd, config.vocab_size) / result.metrics["train_runtime"] / 1e9
    peak = matmul_peak(config.n_embd)
    return [row(f"SFT training, {examples} examples, batch {batch_size} (GFLOP/s; seed-style column: matmul peak)",
                achieved, peak, "≥ 0.5 of peak", 0.5)]


def row(workload: str, ours: float, seed: float, target: str, needed: float, inverse: bool = False) -> dict:
    ratio = seed / ours if inverse else ours / seed
    return {"workload": workload, "kochat": ours, "seed_style": seed, "ratio": ratio, "target": target, "met": ratio >= needed}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", nargs="+", choices=WORKLOADS, default=list(WORKLOADS))
    parser.add_argument("--shared", type=Path, default=Path(os.environ.get("KOCHAT_SHARED_DATA", "../shared/data")))
    parser.add_argument("--out", type=Path, default=Path("bench/out"))
    parser.add_argument("--records", type=int, default=1_000_000, help="RM records of the data build")
    parser.add_argument("--rm-pairs", type=int, default=256)
    parser.add_argument("--sft-examples", type=int, default=2048)
    parser.add_argument("--rollout-batches", type=int, default=4)
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    datasets.disable_progress_bars()
    transformers.logging.set_verbosity_error()
    transformers.logging.disable_progress_bar()
    rows = []
    if "data" in args.only:
        rows += bench_data(args.out, args.records)
    if set(args.only) - {"data"}:
        data, base = prepare(args.out, args.shared)
        if "rm" in args.only:
            rows += bench_rm(args.out, data, base, args.rm_pairs, batch_size=8)
        if "rollout" in args.only:
            rows += bench_rollout(data, base, args.rollout_batches, batch_size=16, new_tokens=48)
        if "sft" in args.only:
            rows += bench_sft(args.out, data, base, args.sft_examples, batch_size=16)
    table = Table(title=f"kochat vs seed-style · torch {torch.__version__}, {torch.get_num_threads()} threads")
    for name in ("workload", "kochat", "seed-style", "ratio", "target", "met"):
        table.add_column(name, justify="left" if name == "workload" else "right")
    for item in rows:
        table.add_row(item["workload"], f"{item['kochat']:,.1f}", f"{item['seed_style']:,.1f}", f"{item['ratio']:.2f}×",
                      item["target"], "yes" if item["met"] else "[red]no[/]")
    Console(width=160).print(table)
    (args.out / "results.json").write_text(json.dumps(rows, indent=2, ensure_ascii=False) + "\n", "utf-8")


if __name__ == "__main__":
    main()
