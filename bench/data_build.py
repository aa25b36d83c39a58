"""Build N synthetic RM records (KoChatGPT file style) and print records/s and peak RSS.

    python bench/data_build.py --records 1000000

The build runs in a child process (`python -m kochat data build`) so that its peak RSS is
measured alone; the input file is generated once and reused from --workdir.
"""

from __future__ import annotations

import argparse
import json
import random
import resource
import subprocess
import sys
import time
from pathlib import Path

WORDS = ("오늘 내일 친구 회사 여행 음식 공부 운동 날씨 영화 음악 책 커피 주말 가족 건강 시간 돈 사랑 고민 "
         "방법 추천 이유 어떻게 왜 언제 어디 좋은 나쁜 쉬운 빠른 조용한 맛있는 새로운").split()


def generate(path: Path, records: int, seed: int = 0) -> None:
    rng = random.Random(seed)
    with path.open("w", encoding="utf-8-sig") as handle:
        handle.write("[\n")
        for n in range(records):
            sentence = lambda k: " ".join(rng.choices(WORDS, k=k))  # noqa: E731
            ranking = [0, 1, 2]
            rng.shuffle(ranking)
            record = {"prompt": f"{sentence(6)} {n}?", **{f"completion_{i}": sentence(8 + 4 * r) for i, r in enumerate(ranking)},
                      "ranking": ranking}
            text = json.dumps(record, ensure_ascii=False, indent=4)
            handle.write("    " + text.replace("\n", "\n    ") + (",\n" if n + 1 < records else "\n"))
        handle.write("]\n")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--records", type=int, default=1_000_000)
    parser.add_argument("--workdir", type=Path, default=Path("bench/out"))
    args = parser.parse_args()
    args.workdir.mkdir(parents=True, exist_ok=True)
    source = args.workdir / f"rm_{args.records}.jsonl"
    if not source.exists():
        started = time.perf_counter()
        generate(source, args.records)
        print(f"generated {source} ({source.stat().st_size / 2**20:.0f} MiB) in {time.perf_counter() - started:.1f}s")
    started = time.perf_counter()
    subprocess.run([sys.executable, "-m", "kochat", "data", "build", "--rm", str(source),
                    "--out", str(args.workdir / "built"), "--overwrite"], check=True, stdout=subprocess.DEVNULL)
    seconds = time.perf_counter() - started
    peak_mib = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
    manifest = json.loads((args.workdir / "built" / "manifest.json").read_text("utf-8"))
    print(f"records {args.records:,} · pairs {manifest['rm']['pairs']['written']:,} · "
          f"{seconds:.1f}s · {args.records / seconds:,.0f} records/s · peak RSS {peak_mib:,.0f} MiB "
          f"(input {source.stat().st_size / 2**20:,.0f} MiB)")


if __name__ == "__main__":
    main()
