"""The training workloads of bench/run_all.py: RM training, PPO rollouts and SFT FLOP/s (imported by it on demand).

Each returns rows of (workload, kochat figure, other figure, target text, ratio needed[, inverse, baseline name]).
The model is the `small` preset (4 layers, width 256, 8k BPE vocabulary) after one optimizer
step: speed does not depend on the weights.
"""

from __future__ import annotations

import time
from pathlib import Path

import datasets
import torch
from transformers import AutoModel, AutoModelForCausalLM

import seed_training
from kochat_data.build import BuildConfig, build
from kochat_train.base import BaseConfig, train_base
from kochat_train.rm import RewardConfig, train_rm
from kochat_train.rollout import decoding_config, generate as kochat_generate
from kochat_train.devices import uses_bf16
from kochat_train.sft import SFTConfig, tokenize_sft, train_sft
from kochat_train.sources import load_tokenizer
from kochat_train.template import render_prompt

QUIET = {"overwrite": True, "logging_steps": 1000, "save_steps": 10**6, "seed": 0}


def shared_inputs(shared: Path) -> dict[str, list[Path]]:
    """The build inputs the benchmarks use from the shared data: derived SFT and RM files, the real PPO prompts."""
    inputs = {"sft": [shared / "derived" / "kochat_1_SFT_chatbot.jsonl"], "rm": [shared / "derived" / "kochat_2_RM_chatbot.jsonl"],
              "ppo": [shared / "kochatgpt" / "kochatgpt_3_PPO.jsonl"]}
    missing = [str(path) for paths in inputs.values() for path in paths if not path.is_file()]
    if missing:  # checked even when a build is cached: a wrong path must not pass unnoticed
        raise SystemExit(f"no shared data at {shared} (--shared or KOCHAT_SHARED_DATA): {', '.join(missing)} missing")
    return inputs


def prepare(out: Path, shared: Path) -> tuple[Path, Path]:
    """The shared data built once, and a `small` model (one optimizer step: a tokenizer and 512 positions)."""
    inputs = shared_inputs(shared)
    data = out / "shared_built"
    if not (data / "manifest.json").exists():
        build(BuildConfig(out=data, overwrite=True, on_invalid="skip", **inputs))
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
    model = seed_training.MeanValueRewardModel(backbone, backbone.config.n_embd)
    seed_training.train_rm(model, seed_training.RewardDataset(records, tokenizer, 512), batch_size, learning_rate)
    seed = time.perf_counter() - started
    return [(f"RM training, {pairs} pairs, batch {batch_size} (pairs/s)", pairs / ours, pairs / seed, "≥ 4×", 4.0)]



def bench_rollout(data: Path, base: Path, batches: int, batch_size: int, new_tokens: int) -> list[dict]:
    tokenizer = load_tokenizer(str(base))
    model = AutoModelForCausalLM.from_pretrained(base).eval()
    prompts = [render_prompt(p) for p in datasets.load_from_disk(str(data / "ppo"))["eval"]["prompt"][: batches * batch_size]]
    chunks = [prompts[i : i + batch_size] for i in range(0, len(prompts), batch_size)]
    # Both sides generate exactly `new_tokens` per prompt (kochat: EOS suppressed until then).
    sampling = {"max_new_tokens": new_tokens, "min_new_tokens": new_tokens, "top_k": 50, "top_p": 1.0, "temperature": 1.0}

    def ours(chunk):
        kochat_generate(model, tokenizer, chunk, max_length=96, decoding=decoding_config(tokenizer, **sampling))

    def seed(chunk):
        seed_training.sample(model, tokenizer, chunk, new_tokens, top_k=50)

    rates = {}
    for name, run in (("kochat", ours), ("seed", seed)):
        torch.manual_seed(0)
        run(chunks[0][:2])  # warm-up
        started = time.perf_counter()
        for chunk in chunks:
            run(chunk)
        rates[name] = len(prompts) * new_tokens / (time.perf_counter() - started)
    return [(f"PPO rollout, batch {batch_size}, {new_tokens} new tokens (tokens/s)", rates["kochat"], rates["seed"], "≥ 2×", 2.0)]



def matmul_peak(width: int, rows: int = 2048, repeats: int = 30, dtype: torch.dtype = torch.float32) -> float:
    """GFLOP/s of torch.matmul in `dtype`, (rows × width) @ (width × 4·width): the MLP's shape."""
    left, right = torch.randn(rows, width, dtype=dtype), torch.randn(width, 4 * width, dtype=dtype)
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



def bench_sft(out: Path, data: Path, base: Path, examples: int, batch_size: int, precision: str = "auto") -> list[dict]:
    """kochat's SFT GFLOP/s against the matmul peak of the dtype it trains in (`--precision auto`: bf16 on a CPU with
    native bf16), and against the fp32 peak."""
    config = SFTConfig(data=subset(data, "sft", examples, out / "sft_subset"), out=out / "sft_kochat", model=str(base),
                       batch_size=batch_size, learning_rate=5e-5, max_length=256, precision=precision, **QUIET)
    result = train_sft(config)
    model_config = AutoModelForCausalLM.from_pretrained(base).config
    tokenizer = load_tokenizer(str(base))
    lengths = [len(ids) for ids in tokenize_sft(datasets.load_from_disk(str(out / "sft_subset" / "sft"))["train"], tokenizer, 256)["input_ids"]]
    achieved = training_flops(lengths, model_config.n_layer, model_config.n_embd, model_config.vocab_size) / result.metrics["train_runtime"] / 1e9
    bf16 = uses_bf16(config, "cpu")
    dtype = "bf16" if bf16 else "fp32"
    peak = matmul_peak(model_config.n_embd, dtype=torch.bfloat16 if bf16 else torch.float32)
    rows = [(f"SFT training, {examples} examples, batch {batch_size}, {dtype} (GFLOP/s)", achieved, peak, "≥ 0.70 of peak", 0.70,
             False, f"{dtype} matmul peak")]
    if bf16:
        rows.append(("SFT training as above (GFLOP/s)", achieved, matmul_peak(model_config.n_embd), "(reference)", None, False, "fp32 matmul peak"))
    return rows
