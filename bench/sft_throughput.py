"""SFT training throughput by batch layout, precision, attention kernel and torch.compile, against the matmul peaks.

    python bench/sft_throughput.py [--examples 1024] [--compile]

The `small` model (bench/run_all.py's) takes optimizer steps (forward, backward, AdamW) over
the shared SFT rows tokenised as kochat does; every variant sees the same examples. GFLOP/s
count real tokens only (training_workloads.training_flops), so padding is waste, and are
set against torch.matmul's peak in fp32 and in bf16 at the model's MLP shape.

Layouts: `random` (batches of 16 examples padded to their longest), `grouped` (kochat's
default: similar lengths batched together, as the Trainer's group_by_length does) and
`packed` (examples laid end to end in rows of max_length with positions restarting at each
example and no attention mask: transformers then builds a block-diagonal causal mask, so no
example attends to another; the same tokens per step as the padded batches).
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

import datasets
import numpy as np
import torch
import transformers
from rich.console import Console
from rich.table import Table
from transformers import AutoModelForCausalLM, DataCollatorForSeq2Seq

sys.path.insert(0, str(Path(__file__).parent))

import training_workloads
from kochat_train.sft import tokenize_sft
from kochat_train.sources import load_tokenizer
from kochat_train.template import IGNORE_INDEX

BATCH = 16


def layout_batches(rows: list[dict], layout: str, max_length: int, tokenizer, seed: int = 0) -> list[dict[str, torch.Tensor]]:
    order = np.random.default_rng(seed).permutation(len(rows))
    pad_id = tokenizer.pad_token_id
    # kochat's SFT collator: right-padded ids and mask, labels padded with −100.
    padded = DataCollatorForSeq2Seq(tokenizer, label_pad_token_id=IGNORE_INDEX)
    if layout == "random":
        return [padded([rows[i] for i in order[s : s + BATCH]]) for s in range(0, len(rows), BATCH)]
    if layout == "grouped":  # the Trainer's megabatches of 50 batches, each sorted by length
        mega = 50 * BATCH
        order = np.concatenate([sorted(order[s : s + mega], key=lambda i: -len(rows[i]["input_ids"])) for s in range(0, len(rows), mega)])
        return [padded([rows[i] for i in order[s : s + BATCH]]) for s in range(0, len(rows), BATCH)]
    # packed: first fit over the shuffled examples into rows of max_length
    packed_rows: list[list[dict]] = []
    room: list[int] = []
    for i in order:
        length = len(rows[i]["input_ids"])
        slot = next((n for n, free in enumerate(room) if free >= length), None)
        if slot is None:
            packed_rows.append([])
            room.append(max_length)
            slot = len(room) - 1
        packed_rows[slot].append(rows[i])
        room[slot] -= length
    tokens_per_step = sum(len(row["input_ids"]) for row in rows) / (len(rows) / BATCH)
    per_batch = max(1, round(tokens_per_step / max_length))
    batches = []
    for s in range(0, len(packed_rows), per_batch):
        chunk = packed_rows[s : s + per_batch]
        ids = torch.full((len(chunk), max_length), pad_id)
        labels = torch.full((len(chunk), max_length), IGNORE_INDEX)
        positions = torch.zeros((len(chunk), max_length), dtype=torch.long)
        for n, examples in enumerate(chunk):
            at = 0
            for example in examples:
                length = len(example["input_ids"])
                ids[n, at : at + length] = torch.tensor(example["input_ids"])
                labels[n, at : at + length] = torch.tensor(example["labels"])
                positions[n, at : at + length] = torch.arange(length)
                at += length
            # the row's tail: one more "example" of padding, ignored by the loss
            positions[n, at:] = torch.arange(max_length - at)
        batches.append({"input_ids": ids, "labels": labels, "position_ids": positions})
    return batches


def run_variant(base: Path, batches: list[dict], bf16: bool, attention: str, compiled: bool) -> float:
    """Seconds of one pass over `batches` (after two warm-up steps, which also compile)."""
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_pretrained(base, attn_implementation=attention).train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=5e-5)
    step_model = torch.compile(model, dynamic=True) if compiled else model

    def step(batch: dict) -> None:
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            loss = step_model(**batch).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    for batch in batches[:2]:
        step(batch)
    started = time.perf_counter()
    for batch in batches:
        step(batch)
    return time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shared", type=Path, default=Path(os.environ.get("KOCHAT_SHARED_DATA", "../shared/data")))
    parser.add_argument("--out", type=Path, default=Path("bench/out"))
    parser.add_argument("--examples", type=int, default=1024)
    parser.add_argument("--max-length", type=int, default=256)
    parser.add_argument("--compile", action="store_true", help="also time torch.compile (minutes of compiling on 2 cores)")
    args = parser.parse_args()
    datasets.disable_progress_bars()
    transformers.logging.set_verbosity_error()
    args.out.mkdir(parents=True, exist_ok=True)
    data, base = training_workloads.prepare(args.out, args.shared)
    tokenizer = load_tokenizer(str(base))
    rows = tokenize_sft(datasets.load_from_disk(str(data / "sft"))["train"].select(range(args.examples)), tokenizer, args.max_length).to_list()
    config = AutoModelForCausalLM.from_pretrained(base).config
    flops_per_example = training_workloads.training_flops([len(r["input_ids"]) for r in rows], config.n_layer, config.n_embd,
                                                          config.vocab_size) / len(rows)
    peaks = {dtype: training_workloads.matmul_peak(config.n_embd, dtype=dtype) for dtype in (torch.float32, torch.bfloat16)}
    variants = [(layout, bf16, "sdpa", False) for bf16 in (False, True) for layout in ("random", "grouped", "packed")]
    variants += [("grouped", False, "eager", False), ("grouped", True, "eager", False)]
    if args.compile:
        variants += [("grouped", False, "sdpa", True), ("grouped", True, "sdpa", True)]
    table = Table(title=f"SFT steps, small preset, {args.examples} examples · matmul peak fp32 {peaks[torch.float32]:.0f}, "
                        f"bf16 {peaks[torch.bfloat16]:.0f} GFLOP/s · torch {torch.__version__}, {torch.get_num_threads()} threads")
    for name in ("layout", "precision", "attention", "compile", "examples/s", "GFLOP/s", "of its dtype's peak", "of fp32 peak"):
        table.add_column(name, justify="left" if name in ("layout", "precision", "attention") else "right")
    for layout, bf16, attention, compiled in variants:
        batches = layout_batches(rows, layout, args.max_length, tokenizer)
        rate = len(rows) / run_variant(base, batches, bf16, attention, compiled)
        achieved = rate * flops_per_example / 1e9
        peak = peaks[torch.bfloat16 if bf16 else torch.float32]
        table.add_row(layout, "bf16" if bf16 else "fp32", attention, "yes" if compiled else "", f"{rate:.1f}", f"{achieved:.1f}",
                      f"{achieved / peak:.2f}", f"{achieved / peaks[torch.float32]:.2f}")
    Console(width=160).print(table)


if __name__ == "__main__":
    main()
