"""`kochat label …`: parse, call one function, render. torch is imported only by `label new` with stages."""

from __future__ import annotations

import argparse
import json
import math
from pathlib import Path

from rich.markup import escape
from rich.table import Table

from kochat_data.console import make_console
from kochat_data.errors import UsageError
from kochat_train.decoding_flags import add_decoding_flags, given_decoding

PAGE = "/label/{token}"


def register(label: argparse.ArgumentParser) -> None:
    """Add the `kochat label …` commands to its parser."""
    label.description = ("People rank answers in a browser; their rankings become RM data: "
                         "new → invite → serve → status → export → `kochat data build --rm`.")
    commands = label.add_subparsers(dest="command", required=True)

    new = commands.add_parser("new", help="a label project: k answers per prompt, from stages or given as candidates",
                              description="Answers from stages (one sampled --k times, or one per stage) to --prompts, or "
                                          "--candidates as they are. The same inputs and --seed give the same items in the same order.")
    new.add_argument("--out", type=Path, required=True, metavar="PROJECT", help="the project directory to write")
    new.add_argument("--stage", action="append", default=[], metavar="NAME=DIR", help="a stage that answers (repeatable, up to 4)")
    new.add_argument("--prompts", type=Path, metavar="SOURCE", help="prompts: a PPO file, a build directory (its eval split), "
                                                                    "text lines, TRL prompt-only")
    new.add_argument("--split", default="eval", choices=("eval", "train"),
                     help="with a build directory as --prompts: eval (no stage trained on them: to judge stages) or train "
                          "(a rebuild keeps their rankings in its train split: to train on)")
    new.add_argument("--candidates", type=Path, metavar="FILE", help="JSON Lines of {prompt, completions: [...]}, or KoChatGPT RM "
                                                                     "records (a ranking there is ignored)")
    new.add_argument("--on-invalid", default="fail", choices=("fail", "skip"),
                     help="candidates: stop at an invalid record, or label the others (rejects in PROJECT/rejects.jsonl)")
    new.add_argument("--k", type=int, metavar="K", help="answers per prompt, 2 … 4 (default: 2 from one stage, one per stage from several)")
    new.add_argument("--annotators-per-item", type=int, default=2, metavar="N", help="different people who rank each item")
    new.add_argument("--max-prompts", type=int, default=0, metavar="N", help="a seeded sample of N prompts (default: 0, all)")
    new.add_argument("--seed", type=int, default=0, help="the order of items and the sampling seed")
    add_decoding_flags(new, exclude=("num_return_sequences",))
    new.add_argument("--batch-size", type=int, default=16, help="prompts per generate call")
    new.add_argument("--max-length", type=int, default=512, help="prompt tokens kept, the newest")
    new.add_argument("--device", default="auto", help="auto, cpu, cuda or mps")
    new.add_argument("--overwrite", action="store_true", help="replace an existing project that holds no votes")
    new.set_defaults(run=run_new)

    invite = commands.add_parser("invite", help="one unguessable link per person")
    invite.add_argument("project", type=Path, metavar="PROJECT")
    invite.add_argument("names", nargs="+", metavar="NAME", help="people to invite (one already invited keeps their link)")
    invite.add_argument("--json", action="store_true", help="one line per person: {name, token, path}")
    invite.set_defaults(run=run_invite)

    serve = commands.add_parser("serve", help="serve the page; prints its address, every person's link and the admin token")
    serve.add_argument("project", type=Path, metavar="PROJECT")
    serve.add_argument("--host", default="127.0.0.1", help="address to listen on; any but loopback needs invites")
    serve.add_argument("--port", type=int, default=8000, help="port (0: any free one)")
    serve.set_defaults(run=run_serve)

    status = commands.add_parser("status", help="progress, per-person numbers, skips, flags and agreement")
    status.add_argument("project", type=Path, metavar="PROJECT")
    status.add_argument("--json", action="store_true", help="the same numbers as JSON")
    status.set_defaults(run=run_status)

    export = commands.add_parser("export", help="the rankings as KoChatGPT RM records (+ raw votes) or TRL preference pairs")
    export.add_argument("project", type=Path, metavar="PROJECT")
    export.add_argument("--out", type=Path, required=True, metavar="FILE", help="the file to write (kochatgpt: also FILE.votes.jsonl)")
    export.add_argument("--format", default="kochatgpt", choices=("kochatgpt", "trl"), help="kochatgpt records or trl pairs")
    export.add_argument("--min-annotators", type=int, default=1, metavar="N", help="export items ranked by at least N people")
    export.add_argument("--keep-flagged", action="store_true", help="export flagged items too (left out by default)")
    export.add_argument("--overwrite", action="store_true", help="replace existing output files")
    export.set_defaults(run=run_export)


def run_new(args: argparse.Namespace) -> int:
    from kochat_data.progress import progress_bar
    from kochat_eval.cli import parse_stages
    from kochat_human.project import LabelProjectConfig, new_project

    config = LabelProjectConfig(out=args.out, stages=parse_stages(args.stage), prompts=args.prompts, split=args.split,
                                candidates=args.candidates, on_invalid=args.on_invalid, k=args.k,
                                annotators_per_item=args.annotators_per_item, max_prompts=args.max_prompts, seed=args.seed,
                                decoding=given_decoding(args), batch_size=args.batch_size, max_length=args.max_length,
                                device=args.device, overwrite=args.overwrite)
    if config.stages:
        _quiet()
    with progress_bar() as progress:
        def advancer(description: str, total: int):
            task = progress.add_task(description, total=total)
            return lambda done: progress.advance(task, done)

        manifest = new_project(config, advancer)
    counts = manifest["counts"]
    folded = f", {counts['duplicates']} duplicates folded" if counts["duplicates"] else ""
    folded += f", {counts['rejected']} invalid in {args.out / 'rejects.jsonl'}" if counts["rejected"] else ""
    answers = "/".join(map(str, manifest["k"]))
    print(f"{args.out}: {counts['items']} items of {answers} answers from {counts['read']} records{folded}; "
          f"each to {manifest['annotators_per_item']} people")
    print(f"next: kochat label invite {args.out} NAME …   then   kochat label serve {args.out}")
    return 0


def run_invite(args: argparse.Namespace) -> int:
    from kochat_human.project import open_project

    names = [name.strip() for name in args.names]
    bad = [name for name in names if not name or len(name) > 64]
    if bad:
        raise UsageError(f"NAME: expected 1 … 64 characters, got {bad[0]!r}")
    for person, is_new in open_project(args.project).invite(names):
        path = PAGE.format(token=person.token)
        if args.json:
            print(json.dumps({"name": person.name, "token": person.token, "path": path}, ensure_ascii=False))
        else:
            print(f"{person.name}\t{path}" + ("" if is_new else "\t(invited before: the same link)"))
    if not args.json:
        print(f"join each path to the address `kochat label serve {args.project}` prints", flush=True)
    return 0


def run_serve(args: argparse.Namespace) -> int:
    from kochat_human.server import serve

    def announce(store, address: str) -> None:
        print(f"kochat label: serving {args.project} at {address} (Ctrl-C stops)")
        people = store.annotators()
        for person in people:
            print(f"  {person.name}: {address}{PAGE.format(token=person.token)}")
        if not people:
            print(f"  nobody invited yet: kochat label invite {args.project} NAME …")
        print(f"  admin token (status and export over HTTP): {store.admin_token}", flush=True)

    serve(args.project, args.host, args.port, announce)
    print(f"kochat label: stopped; every vote acknowledged is in {args.project}")
    return 0


def run_status(args: argparse.Namespace) -> int:
    from kochat_human.project import open_project
    from kochat_human.status import json_safe, project_status

    status = project_status(open_project(args.project))
    if args.json:
        print(json.dumps(json_safe(status), ensure_ascii=False))
        return 0
    console = make_console(soft_wrap=False)
    console.print(f"[bold]{escape(str(args.project))}[/]: {status['items_done']} of {status['items']} items done "
                  f"(ranked by {status['annotators_per_item']} people each), {status['votes']} of {status['votes_needed']} votes; "
                  f"{status['skips']} skips, {status['flags']} flags on {status['flagged_items']} items")
    people = Table(title="people")
    for header in ("name", "ranked", "skips", "flags", "median s/item"):
        people.add_column(header, justify="left" if header == "name" else "right")
    for person in status["annotators"]:
        seconds = person["median_seconds"]
        people.add_row(escape(person["name"]), str(person["ranked"]), str(person["skips"]), str(person["flags"]),
                       "–" if seconds is None else f"{seconds:.1f}")
    console.print(people)
    shared = status["agreement"]
    if shared["items"] == 0:
        console.print("agreement: no item is ranked by two people yet")
    else:
        console.print(f"agreement over {shared['items']} items ranked by ≥ 2 people: "
                      f"pairwise {_with_ci(shared['pairwise'], shared['pairwise_ci'])}, "
                      f"Krippendorff's alpha (ordinal) {_with_ci(shared['alpha'], shared['alpha_ci'])}")
    if status["stage_first"]:
        stages = Table(title="whose answer people ranked first")
        for header in ("stage", "ranked first", "votes"):
            stages.add_column(header, justify="left" if header == "stage" else "right")
        for row in status["stage_first"]:
            stages.add_row(escape(row["stage"]), "–" if row["first_share"] is None else f"{row['first_share']:.3f}", str(row["votes"]))
        console.print(stages)
    return 0


def _with_ci(value: float, interval: list[float]) -> str:
    if math.isnan(value):
        return "– (every answer got the same rank)"
    low, high = interval
    return f"{value:.3f}" + ("" if math.isnan(low) else f" [{low:.3f}, {high:.3f}]")


def run_export(args: argparse.Namespace) -> int:
    from kochat_human.export import export_labels
    from kochat_human.project import open_project

    counts = export_labels(open_project(args.project), args.out, args.format, args.min_annotators, args.keep_flagged, args.overwrite)
    left = [f"{counts[key]} {text}" for key, text in (("unranked", "unranked"), ("too_few_votes", f"with fewer than {args.min_annotators} votes"),
                                                       ("flagged", "flagged"), ("too_few_answers", "with under 2 non-empty answers"))
            if counts[key]]
    print(f"{counts['records']} {'records' if args.format == 'kochatgpt' else 'pairs'} from {counts['items']} items "
          f"({counts['votes']} votes) → {args.out}" + (f"; left out: {', '.join(left)} items" if left else ""))
    if counts["empty_answers_left_out"]:
        print(f"{counts['empty_answers_left_out']} empty answers left out of their records (kochat data reads no empty text)")
    if counts["votes_file"]:
        print(f"raw votes → {counts['votes_file']}")
    print(f"next: kochat data build --rm {args.out} --out DIR")
    return 0


def _quiet() -> None:
    import datasets
    import transformers

    datasets.disable_progress_bars()
    transformers.logging.set_verbosity_error()
    transformers.logging.disable_progress_bar()
