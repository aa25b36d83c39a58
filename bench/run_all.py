"""kochat against the seed-style implementation (bench/seed_data.py, bench/seed_training.py) and against TRL: one run.

    python bench/run_all.py                      # every workload (~12 min on 2 CPU cores; TRL: pip install -e '.[bench]')
    python bench/run_all.py --only rm rollout    # some of them

Workloads: the data build of 1M synthetic RM records (each side in its own process, for its
peak RSS); reward-model training and PPO rollouts on the shared KoChatGPT data with the
`small` model (4 layers, width 256, 8k BPE vocabulary, random weights: speed does not depend
on them); SFT training FLOP/s against a plain torch.matmul at the same width, in the dtype SFT
trains in; and `peers`: SFT, RM and DPO through kochat and through TRL's trainers
(bench/peers.py; `--base` gives both a trained starting model, so the eval metrics mean more).
Prints a table (workload, kochat, baseline, ratio, target, met) and writes it to OUT/results.json.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from bench_table import print_rows, row

sys.path.insert(0, str(Path(__file__).parent))  # seed_training and training_workloads sit beside this file

WORKLOADS = ("data", "rm", "rollout", "sft", "peers")
WORDS = ("오늘 내일 친구 회사 여행 음식 공부 운동 날씨 영화 음악 책 커피 주말 가족 건강 시간 돈 사랑 고민 "
         "방법 추천 이유 어떻게 왜 언제 어디 좋은 나쁜 쉬운 빠른 조용한 맛있는 새로운").split()


def generate_rm_file(path: Path, records: int, seed: int = 0) -> None:
    """Synthetic RM records in the KoChatGPT file style: one JSON array, indent 4, UTF-8 with BOM."""
    rng = random.Random(seed)
    with path.open("w", encoding="utf-8-sig") as handle:
        handle.write("[\n")
        for n in range(records):
            ranking = [0, 1, 2]
            rng.shuffle(ranking)
            record = {"prompt": " ".join(rng.choices(WORDS, k=6)) + f" {n}?",
                      **{f"completion_{i}": " ".join(rng.choices(WORDS, k=8 + 4 * rank)) for i, rank in enumerate(ranking)},
                      "ranking": ranking}
            text = json.dumps(record, ensure_ascii=False, indent=4)
            handle.write("    " + text.replace("\n", "\n    ") + (",\n" if n + 1 < records else "\n"))
        handle.write("]\n")


def run_measured(command: list[str]) -> tuple[float, float]:
    """Wall seconds and peak RSS (MiB) of one child process (its stderr is shown only if it fails)."""
    with tempfile.TemporaryFile() as stderr:
        started = time.perf_counter()
        child = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=stderr)
        _, status, usage = os.wait4(child.pid, 0)  # the rusage of this child alone
        seconds = time.perf_counter() - started
        if status != 0:
            stderr.seek(0)
            raise SystemExit(f"{' '.join(command)} failed ({status}):\n{stderr.read().decode(errors='replace')}")
    return seconds, usage.ru_maxrss / 1024


def bench_data(out: Path, records: int) -> list[dict]:
    source = out / f"rm_{records}.jsonl"
    if not source.exists():
        generate_rm_file(source, records)
    ours = run_measured([sys.executable, "-m", "kochat", "data", "build", "--rm", str(source), "--out", str(out / "kochat_built"), "--overwrite"])
    seed = run_measured([sys.executable, str(Path(__file__).parent / "seed_data.py"), str(source), str(out / "seed_built")])
    return [
        row(f"data build, {records:,} RM records (records/s)", records / ours[0], records / seed[0], "≥ 10×", 10.0),
        row("data build, peak RSS (MiB; ratio = seed-style / kochat)", ours[1], seed[1], "≥ 2× (≤ ½ the RSS)", 2.0, inverse=True),
    ]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", nargs="+", choices=WORKLOADS, default=list(WORKLOADS))
    parser.add_argument("--shared", type=Path, default=Path(os.environ.get("KOCHAT_SHARED_DATA", "../shared/data")))
    parser.add_argument("--out", type=Path, default=Path("bench/out"))
    parser.add_argument("--base", type=Path, help="peers: starting model of SFT and RM (default: the small preset after one step)")
    parser.add_argument("--records", type=int, default=1_000_000, help="RM records of the data build")
    parser.add_argument("--rm-pairs", type=int, default=256)
    parser.add_argument("--sft-examples", type=int, default=2048)
    parser.add_argument("--rollout-batches", type=int, default=4)
    parser.add_argument("--precision", default="auto", choices=("auto", "fp32", "bf16"),
                        help="of SFT FLOP/s and the TRL comparison (auto: kochat's default; TRL gets what kochat's SFT uses)")
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    rows = []
    title = f"kochat vs seed-style and TRL · {os.cpu_count()} CPUs"
    if "data" in args.only:  # first, while this process is small: a child's peak RSS counts the parent's pages at fork
        rows += bench_data(args.out, args.records)
    if set(args.only) - {"data"}:
        import datasets
        import transformers

        import training_workloads as workloads

        datasets.disable_progress_bars()
        transformers.logging.set_verbosity_error()
        transformers.logging.disable_progress_bar()
        title += f" · torch {workloads.torch.__version__}, {workloads.torch.get_num_threads()} threads"
        data, base = workloads.prepare(args.out, args.shared)
        measured = []
        if "rm" in args.only:
            measured += workloads.bench_rm(args.out, data, base, args.rm_pairs, batch_size=8)
        if "rollout" in args.only:
            measured += workloads.bench_rollout(data, base, args.rollout_batches, batch_size=16, new_tokens=48)
        if "sft" in args.only:
            measured += workloads.bench_sft(args.out, data, base, args.sft_examples, batch_size=16, precision=args.precision)
        rows += [row(*item) for item in measured]
        if "peers" in args.only:
            import peers

            rows += [row(*item, baseline="TRL") for item in peers.run_peers(args.out, args.shared, args.sft_examples // 2,
                                                                             args.rm_pairs * 2, args.rm_pairs, args.precision, args.base)]
    print_rows(rows, title)
    (args.out / "results.json").write_text(json.dumps(rows, indent=2, ensure_ascii=False) + "\n", "utf-8")


if __name__ == "__main__":
    main()
