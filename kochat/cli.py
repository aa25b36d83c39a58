"""Parse arguments, call one library function, render its result; user errors become exit codes."""

from __future__ import annotations

import argparse
import sys

import kochat_data.cli
import kochat_train.cli
from kochat_data.errors import KochatError


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="kochat",
        description="Reproducible Korean RLHF: validated data, SFT → reward model → PPO, honest metrics.",
    )
    packages = parser.add_subparsers(dest="package", required=True, metavar="{data,train}")
    kochat_data.cli.register(packages)
    kochat_train.cli.register(packages)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.run(args) or 0
    except KochatError as err:
        for line in err.lines():
            print(line, file=sys.stderr)
        return err.exit_code
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
