"""`kochat data …`: argument parsing and rendering only; the work is in the library modules."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import datasets
from kochat_data.console import make_console
from rich.table import Table

from kochat_data.build import ON_INVALID, BuildConfig, build
from kochat_data.errors import EXIT_INVALID, EXIT_OK
from kochat_data.schema import Kind
from kochat_data.stats import collect_stats, render_stats
from kochat_data.tables import parse_columns
from kochat_data.validate import validate_file

console = make_console()


def register(data: argparse.ArgumentParser) -> None:
    """Add the `kochat data …` commands to its parser."""
    commands = data.add_subparsers(dest="command", required=True)

    validate = commands.add_parser("validate", help="check files against the KoChatGPT formats")
    validate.add_argument("paths", nargs="+", type=Path, metavar="PATH",
                          help="JSON array, JSON Lines, Parquet or CSV files, save_to_disk directories or hub names")
    validate.add_argument("--kind", choices=["auto", *[k.value for k in Kind]], default="auto",
                          help="the format to check against; auto tells it from the first record")
    validate.add_argument("--json", action="store_true", help="print the result as JSON")
    _add_columns_argument(validate)
    validate.set_defaults(run=run_validate)

    build_parser = commands.add_parser("build", help="write train/eval Arrow datasets and a manifest")
    build_parser.add_argument("--sft", action="append", type=Path, default=[], metavar="FILE",
                              help="SFT file: {prompt, completion} records or conversations (repeatable)")
    build_parser.add_argument("--rm", action="append", type=Path, default=[], metavar="FILE",
                              help="RM file: a prompt with ranked completions (repeatable)")
    build_parser.add_argument("--ppo", action="append", type=Path, default=[], metavar="FILE", help="PPO prompts file (repeatable)")
    _add_output_arguments(build_parser)
    build_parser.set_defaults(run=run_build)

    pairs = commands.add_parser("pairs", help="regenerate only the RM pair dataset (e.g. with another seed)")
    pairs.add_argument("--rm", action="append", type=Path, required=True, metavar="FILE", help="RM file (repeatable)")
    _add_output_arguments(pairs)
    pairs.set_defaults(run=run_build, sft=[], ppo=[])

    stats = commands.add_parser("stats", help="report on raw files or a built directory")
    stats.add_argument("paths", nargs="+", type=Path, metavar="PATH", help="raw files or `kochat data build` directories")
    stats.add_argument("--tokenizer", help="tokenizer name or directory, for token lengths")
    stats.add_argument("--json", action="store_true", help="print the report as JSON")
    _add_columns_argument(stats)
    stats.set_defaults(run=run_stats)


def _add_columns_argument(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--columns", type=parse_columns, default={}, metavar="FIELD=COLUMN,…",
                        help="read the source's columns as kochat's fields, e.g. prompt=Q,completion=A "
                             "(applies to every input that has those columns)")


def _add_output_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--out", type=Path, required=True, metavar="DIR", help="the directory to write")
    parser.add_argument("--seed", type=int, default=42, help="seed of the train/eval split (by prompt) and of the pair order")
    parser.add_argument("--eval-ratio", type=float, default=0.1, help="share of prompts held out for evaluation")
    parser.add_argument("--on-invalid", choices=ON_INVALID, default="fail",
                        help="fail: refuse the build if any record is invalid; skip: keep the valid ones and list the rest in rejects.jsonl")
    parser.add_argument("--overwrite", action="store_true", help="replace a non-empty --out")
    _add_columns_argument(parser)


def run_validate(args: argparse.Namespace) -> int:
    kind = None if args.kind == "auto" else Kind(args.kind)
    results = [validate_file(path, kind, columns=args.columns) for path in args.paths]
    for result in results:
        for problem in result.problems:
            print(problem, file=sys.stderr)
    if args.json:
        report = [
            {"path": str(r.path), "kind": r.kind.value, "format": r.file_format.value, "records": r.total,
             "valid": len(r.records), "invalid": len(r.rejects), "problems": [str(p) for p in r.problems]}
            for r in results
        ]
        print(json.dumps(report, ensure_ascii=False, indent=2))
    else:
        for r in results:
            mark = "[green]ok[/]" if not r.rejects else "[red]invalid[/]"
            console.print(f"{mark} {r.path}: {r.total} {r.kind.value} records ({r.file_format.value}), {len(r.rejects)} invalid")
    return EXIT_INVALID if any(r.rejects for r in results) else EXIT_OK


def run_build(args: argparse.Namespace) -> int:
    datasets.disable_progress_bars()
    config = BuildConfig(out=args.out, sft=args.sft, rm=args.rm, ppo=args.ppo, seed=args.seed,
                         eval_ratio=args.eval_ratio, on_invalid=args.on_invalid, overwrite=args.overwrite, columns=args.columns)
    manifest = build(config)
    table = Table(title=f"{args.out} (seed {manifest['seed']}, eval ratio {manifest['eval_ratio']})")
    for column in ("kind", "records", "kept", "rejected", "duplicates", "train rows", "eval rows"):
        table.add_column(column, justify="right" if column != "kind" else "left")
    for kind in Kind:
        if kind.value in manifest:
            s = manifest[kind.value]
            name = f"{kind.value} ({s['pairs']['written']} pairs, {s['pairs']['ties']} ties)" if kind is Kind.RM else kind.value
            table.add_row(name, *map(str, (s["records"], s["kept"], s["rejected"], s["duplicates"],
                                           s["rows"]["train"], s["rows"]["eval"])))
    console.print(table)
    prompts = manifest["prompts"]
    console.print(f"prompts: {prompts['unique']} unique, {prompts['train']} train, {prompts['eval']} eval")
    return EXIT_OK


def run_stats(args: argparse.Namespace) -> int:
    report = collect_stats(args.paths, tokenizer=args.tokenizer, columns=args.columns)
    if args.json:
        print(json.dumps(report, ensure_ascii=False, indent=2))
    else:
        render_stats(report, console)
    return EXIT_OK
