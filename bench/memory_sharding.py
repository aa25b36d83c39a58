"""Peak memory per process of one SFT step and one PPO step on a KoGPT-2-shaped model (125M: 12 layers, width 768,
51,200 tokens): one process, two replicated processes (DDP), and two sharded ones (`--sharding fsdp`).

Each process reports two peaks of its resident memory (VmHWM): while loading (everything before the first step:
imports, the models, sharding them) and during the step itself (the peak is reset just before it, so it counts what
stays resident, weights and all, plus what the step adds: activations, gradients, AdamW state; the heap that the C
allocator kept after loading is handed back first); and what the process keeps after the step, counted from its
live tensors (weights, gradients, AdamW state, frozen models: what sharding divides). Each row shows the largest
process's. `--offload` keeps shards in CPU memory, so it saves GPU memory only: it cannot be measured here.

    python bench/memory_sharding.py bench/out/memory_sharding      (~5 min on 2 CPU cores)
"""

from __future__ import annotations

import argparse
import ctypes
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from bench.memory import kogpt2_shaped  # noqa: E402

GIB = 2**30


def peak_bytes() -> int:
    """This process's peak resident memory so far (VmHWM)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024
    raise RuntimeError("no VmHWM in /proc/self/status")


def live_tensor_bytes() -> int:
    """Bytes of every tensor storage alive in this process (a DTensor's local shard): the weights, gradients and
    AdamW state that stay between steps, without the allocator's buffers and the step's passing activations."""
    import gc

    import torch
    from torch.distributed.tensor import DTensor

    storages = {}
    for candidate in gc.get_objects():
        if isinstance(candidate, torch.Tensor):
            tensor = candidate.to_local() if isinstance(candidate, DTensor) else candidate
            storage = tensor.untyped_storage()
            storages[storage.data_ptr()] = storage.nbytes()
    return sum(storages.values())


def reset_peak() -> None:
    """Let VmHWM start again from the memory in use now. The C allocator first hands back the heap it keeps after
    frees (malloc_trim): otherwise what loading freed would count as the step's (seen: sharded loading reads the whole
    checkpoint, so without the trim the sharded step looked larger than the replicated one)."""
    ctypes.CDLL("libc.so.6").malloc_trim(0)
    Path("/proc/self/clear_refs").write_text("5")  # Linux: VmHWM := VmRSS


def worker(stage: str, data: str, model: str, rm: str, out: str, sharding: str, batch: int) -> None:
    """One `stage` step in this process (under torchrun: its share of the batch); prints its peaks as JSON."""
    peaks = {}

    def step_begins() -> None:
        if "load" not in peaks:
            peaks["load"] = peak_bytes()
            reset_peak()

    if stage == "sft":
        from transformers import TrainerCallback

        from kochat_train.sft import SFTConfig, train_sft

        class StepPeak(TrainerCallback):
            def on_step_begin(self, args, state, control, **kwargs):
                step_begins()

            def on_step_end(self, args, state, control, **kwargs):
                peaks["step"] = peak_bytes()
                peaks["state"] = live_tensor_bytes()

        train_sft(SFTConfig(data=data, out=out, model=model, max_steps=1, batch_size=batch, eval_batch_size=batch, max_length=256,
                            precision="fp32", sharding=sharding), callbacks=[StepPeak()])
    else:
        from kochat_train import ppo

        rollout, update = ppo.PPOTrainer.rollout, ppo.PPOTrainer.update

        def measured_rollout(self, prompts):
            step_begins()
            return rollout(self, prompts)

        def measured_update(self, *args):
            stats = update(self, *args)
            if "step" not in peaks:
                peaks["step"], peaks["state"] = peak_bytes(), live_tensor_bytes()
            return stats

        ppo.PPOTrainer.rollout, ppo.PPOTrainer.update = measured_rollout, measured_update
        ppo.train_ppo(ppo.PPOConfig(data=data, out=out, sft=model, rm=rm, max_steps=1, batch_size=batch, mini_batch_size=batch,
                                    max_new_tokens=48, max_length=128, precision="fp32", eval_every=0, sharding=sharding))
    print("PEAKS " + json.dumps({"rank": int(os.environ.get("RANK", 0)), **peaks}), flush=True)


def run(stage: str, processes: int, sharding: str, args: argparse.Namespace) -> dict[str, float]:
    global_batch = 8
    launcher = [sys.executable] if processes == 1 else [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node",
                                                        str(processes)]
    out = args.out / f"{stage}_{processes}_{sharding}"
    command = [*launcher, __file__, "--worker", stage, str(args.out / "data"), str(args.out / "kogpt2"), str(args.out / "rm"),
               str(out), sharding, str(global_batch // processes)]
    done = subprocess.run(command, capture_output=True, text=True, cwd=REPO, env={**os.environ, "PYTHONPATH": str(REPO)})
    if done.returncode:
        raise SystemExit(f"{' '.join(command)} failed:\n{done.stderr[-3000:]}")
    reports = [json.loads(line.split(" ", 1)[1]) for line in done.stdout.splitlines() if line.startswith("PEAKS ")]
    return {key: max(report[key] for report in reports) / GIB for key in ("load", "step", "state")}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("out", type=Path, nargs="?")
    parser.add_argument("--worker", nargs=7, metavar=("STAGE", "DATA", "MODEL", "RM", "OUT", "SHARDING", "BATCH"))
    args = parser.parse_args()
    if args.worker:
        stage, data, model, rm, out, sharding, batch = args.worker
        return worker(stage, data, model, rm, out, sharding, int(batch))
    args.out = args.out.resolve()
    shutil.rmtree(args.out, ignore_errors=True)
    args.out.mkdir(parents=True)
    kogpt2_shaped(args.out / "kogpt2")
    kochat = [sys.executable, "-m", "kochat"]
    subprocess.run([*kochat, "data", "build", "--sft", REPO / "data/sample/kochatgpt_1_SFT.jsonl", "--rm", REPO / "data/sample/kochatgpt_2_RM.jsonl",
                    "--ppo", REPO / "data/sample/kochatgpt_3_PPO.jsonl", "--out", args.out / "data"], check=True, capture_output=True, cwd=REPO)
    subprocess.run([*kochat, "train", "rm", "--data", args.out / "data", "--model", args.out / "kogpt2", "--out", args.out / "rm",
                    "--max-steps", "1", "--batch-size", "2", "--max-length", "128"], check=True, capture_output=True, cwd=REPO)
    print("global batch 8, fp32; GiB per process (the largest)")
    print(f"{'run':34} {'loading':>8} {'step':>8} {'kept':>8}")
    for stage in ("sft", "ppo"):
        for processes, sharding, label in ((1, "none", "1 process"), (2, "none", "2 processes, replicated (DDP)"),
                                           (2, "fsdp", "2 processes, --sharding fsdp")):
            peaks = run(stage, processes, sharding, args)
            print(f"{stage + ', ' + label:34} {peaks['load']:8.2f} {peaks['step']:8.2f} {peaks['state']:8.2f}", flush=True)


if __name__ == "__main__":
    main()
