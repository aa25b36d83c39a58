"""`kochat generate`, `kochat chat`, `kochat score`: talk to trained models from the command line.

Parsing, the chat loop and rendering live here; generation is `kochat_train.rollout.generate` (the
path PPO and the evaluations use) and scoring is `kochat_train.rewards`. torch is imported only
when a command runs, so `--help` is instant.
"""

from __future__ import annotations

import argparse
import io
import itertools
import json
import sys
from dataclasses import dataclass, field
from pathlib import Path

from kochat_data.errors import InvalidDataError, Problem, UsageError
from kochat_data.reading import BOT, HUMAN
from kochat_train.cli import add_reading_flags
from kochat_train.config import seed_problems
from kochat_train.decoding_flags import add_decoding_flags, decoding_problems, given_decoding, with_defaults


def register_generate(parser: argparse.ArgumentParser) -> None:
    parser.description = "Responses of any stage (or hub model) to prompts given as arguments or in a file."
    parser.add_argument("prompts", nargs="*", metavar="PROMPT", help="prompts to answer (also read from --file)")
    parser.add_argument("--file", type=Path, metavar="F", help="prompts: text lines, JSON Lines / a JSON array of {\"prompt\": …}, "
                                                               "or a table (CSV, Parquet) with a prompt column")
    parser.add_argument("--raw", action="store_true", help="feed the prompts as they are, without the KoChatGPT template")
    parser.add_argument("--json", action="store_true", help="one JSON line per response: prompt, response, tokens, eos")
    parser.add_argument("--batch-size", type=int, default=16, help="prompts per generate call (default: 16)")
    _add_model_flags(parser)
    parser.set_defaults(run=run_generate)


def register_chat(parser: argparse.ArgumentParser) -> None:
    parser.description = ("A terminal chat: each turn the dialogue so far is the prompt, as messages in the model's template "
                          "(kochatgpt: `<사람>: …` / `<챗봇>: …` lines, the KoChatGPT conversation form; chat: the tokenizer's own). "
                          "/reset forgets the dialogue, /exit or Ctrl-D quits, Ctrl-C stops an answer.")
    _add_model_flags(parser)
    parser.set_defaults(run=run_chat)


def register_score(parser: argparse.ArgumentParser) -> None:
    parser.description = "The reward of each response, as the reward model reads it: template(prompt) + response + </s>."
    parser.add_argument("--model", required=True, metavar="RM_DIR", help="reward model directory (`kochat train rm`)")
    parser.add_argument("responses", nargs="*", metavar="RESPONSE", help="responses to score (also read from --file)")
    parser.add_argument("--prompt", default="", help="the prompt the responses answer (default: empty)")
    parser.add_argument("--file", type=Path, metavar="F", help="JSON Lines or a JSON array of {\"prompt\": …, \"response\": …}")
    parser.add_argument("--json", action="store_true", help="one JSON line per response: prompt, response, reward")
    parser.add_argument("--batch-size", type=int, default=32, help="texts per forward (default: 32)")
    parser.add_argument("--max-length", type=int, help="tokens per text (default: the model's training max_length)")
    parser.add_argument("--device", default="auto", help="auto, cpu, cuda or mps (default: auto)")
    add_reading_flags(parser)
    parser.set_defaults(run=run_score)


def _add_model_flags(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", required=True, metavar="DIR", help="any stage directory (base, sft, ppo, dpo) or a hub name")
    add_decoding_flags(parser)
    parser.add_argument("--seed", type=int, default=0, help="sampling seed (default: 0)")
    parser.add_argument("--max-length", type=int, default=512, help="prompt tokens kept, the newest (default: 512, at most "
                                                                     "the model's positions less --max-new-tokens)")
    parser.add_argument("--device", default="auto", help="auto, cpu, cuda or mps (default: auto)")
    add_reading_flags(parser, system=True)


def decoding_settings(args: argparse.Namespace) -> dict:
    """The decoding flags as GenerationConfig settings (the defaults where not given); every problem reported at once."""
    given = given_decoding(args)
    problems = decoding_problems(given) + seed_problems(args.seed)
    if args.max_length < 1:
        problems.append(f"max_length must be ≥ 1, got {args.max_length}")
    if problems:
        raise UsageError("; ".join(problems))
    return with_defaults(given)


def read_prompts(path: Path) -> list[str]:
    """Prompts of a file: validated PPO-style records when it is JSON, else its non-blank lines."""
    from kochat_data.validate import read_prompt_records

    return [record["prompt"] for record in read_prompt_records(path)[0]]


def read_scoring_pairs(path: Path) -> tuple[list[str], list[str]]:
    """(prompts, responses) of a JSON Lines / JSON array file; `completion` is accepted for `response`."""
    from kochat_data.reading import read_records

    _, _, records = read_records(path)
    prompts, responses, problems = [], [], []
    for source in records:
        data = source.data if isinstance(source.data, dict) else {}
        response = data.get("response", data.get("completion"))
        if source.error or not isinstance(data.get("prompt"), str) or not isinstance(response, str):
            problems.append(Problem(str(path), source.line, source.index, None,
                                    source.error or "expected an object with text fields 'prompt' and 'response'"))
            continue
        prompts.append(data["prompt"])
        responses.append(response)
    if problems:
        raise InvalidDataError(problems, f"{path}: {len(problems)} of {len(problems) + len(prompts)} records invalid")
    return prompts, responses


def _load_model(args: argparse.Namespace):
    from transformers import set_seed

    from kochat_train.devices import resolve_device
    from kochat_train.sources import inference_dtype, load_causal_lm, load_tokenizer, trust_remote_code

    _quiet()
    device = resolve_device(args.device)
    trust_remote_code(args.trust_remote_code)
    tokenizer = load_tokenizer(args.model, args.template, args.force_template, args.system_prompt)
    model = load_causal_lm(args.model, tokenizer, dtype=inference_dtype(device)).to(device).eval()
    set_seed(args.seed)
    return tokenizer, model


def run_generate(args: argparse.Namespace) -> int:
    settings = decoding_settings(args)
    prompts = list(args.prompts) + (read_prompts(args.file) if args.file else [])
    if not prompts:
        raise UsageError("no prompt: give PROMPT arguments or --file")
    empty = [number for number, prompt in enumerate(prompts, start=1) if not prompt.strip()]
    if args.raw and empty:  # the template gives an empty prompt words to continue; --raw gives none
        raise UsageError(f"prompt {empty[0]} is empty: with --raw there is no text for the model to continue")
    if args.batch_size < 1:
        raise UsageError(f"--batch-size: expected an integer ≥ 1, got {args.batch_size}")
    from kochat_train.rollout import decoding_config, generate, response_texts

    tokenizer, model = _load_model(args)
    decoding = decoding_config(tokenizer, **settings)
    copies = settings["num_return_sequences"]
    for start in range(0, len(prompts), args.batch_size):
        batch = prompts[start : start + args.batch_size]
        rollout = generate(model, tokenizer, batch, args.max_length, decoding, template=not args.raw)
        ended = rollout.ended.tolist()
        tokens = rollout.response_mask.sum(dim=1).tolist()
        for row, response in enumerate(response_texts(tokenizer, rollout)):
            prompt, sequence = batch[row // copies], row % copies
            if args.json:
                line = {"prompt": prompt, "response": response, "tokens": tokens[row], "eos": ended[row]}
                print(json.dumps({**line, "sequence": sequence} if copies > 1 else line, ensure_ascii=False), flush=True)
            else:
                if sequence == 0:
                    print(f"{'' if start + row == 0 else chr(10)}> {prompt}")
                print(f"[{sequence + 1}] {response}" if copies > 1 else response, flush=True)
    return 0


@dataclass
class Dialogue:
    """The conversation so far, as messages: the template renders it (kochatgpt writes it as the conversation
    file's records are written)."""

    turns: list[dict[str, str]] = field(default_factory=list)

    def prompt(self, message: str) -> list[dict[str, str]]:
        return [*self.turns, {"role": "user", "content": message}]

    def add(self, message: str, reply: str) -> None:
        self.turns += [{"role": "user", "content": message}, {"role": "assistant", "content": reply}]

    def reset(self) -> None:
        self.turns.clear()


def run_chat(args: argparse.Namespace) -> int:
    settings = decoding_settings(args)
    if settings["num_return_sequences"] != 1:
        raise UsageError("--num-return-sequences: a chat answers once per turn")
    from transformers import TextStreamer

    from kochat_train.rollout import decoding_config, generate, response_texts

    tokenizer, model = _load_model(args)
    decoding = decoding_config(tokenizer, **settings)
    interactive = sys.stdin.isatty()
    # Bytes that are not UTF-8 arrive as lone surrogates (the same on every locale), so that the line can be skipped.
    if isinstance(sys.stdin, io.TextIOWrapper):  # not a StringIO put in its place
        sys.stdin.reconfigure(encoding="utf-8", errors="surrogateescape")
    print(f"kochat chat with {args.model}: /reset forgets the dialogue, /exit or Ctrl-D quits", file=sys.stderr)
    dialogue = Dialogue()
    for number in itertools.count(1):
        try:
            message = input(f"<{HUMAN}> " if interactive else "").strip()
        except EOFError:
            break
        except KeyboardInterrupt:
            print("\n(/exit or Ctrl-D quits)", file=sys.stderr)
            continue
        if not message:
            continue
        if any("\udc80" <= char <= "\udcff" for char in message):
            print(f"(line {number} is not UTF-8 text: skipped; set the terminal to UTF-8)", file=sys.stderr)
            continue
        if message in ("/exit", "/quit"):
            break
        if message == "/reset":
            dialogue.reset()
            print("(dialogue cleared)", file=sys.stderr)
            continue
        if message.startswith("/"):
            print(f"unknown command {message}; /reset or /exit", file=sys.stderr)
            continue
        print(f"<{BOT}> ", end="", flush=True)
        # Tokens appear as they come; beam search decides only at the end, so it prints then.
        streamer = TextStreamer(tokenizer, skip_prompt=True, skip_special_tokens=True) if settings["num_beams"] == 1 else None
        try:
            rollout = generate(model, tokenizer, [dialogue.prompt(message)], args.max_length, decoding, streamer=streamer)
        except KeyboardInterrupt:
            print("\n(answer stopped; not kept in the dialogue)", file=sys.stderr)
            continue
        reply = response_texts(tokenizer, rollout)[0]
        if streamer is None:
            print(reply, flush=True)
        dialogue.add(message, reply)
    return 0


def run_score(args: argparse.Namespace) -> int:
    prompts, responses = [args.prompt] * len(args.responses), list(args.responses)
    if args.file:
        more_prompts, more_responses = read_scoring_pairs(args.file)
        prompts, responses = prompts + more_prompts, responses + more_responses
    if not responses:
        raise UsageError("no response: give RESPONSE arguments or --file")
    from kochat_train.rewards import RewardScorer
    from kochat_train.sources import trust_remote_code

    _quiet()
    trust_remote_code(args.trust_remote_code)
    scorer = RewardScorer(Path(args.model), args.device, args.max_length, args.template, args.force_template)
    rewards = scorer.score(prompts, responses, args.batch_size)
    if args.json:
        for prompt, response, reward in zip(prompts, responses, rewards, strict=True):
            print(json.dumps({"prompt": prompt, "response": response, "reward": reward}, ensure_ascii=False))
        return 0
    from rich.table import Table

    from kochat_data.console import make_console

    table = Table(title=f"rewards from {args.model}")
    for header in ("#", "prompt", "response", "reward"):
        numeric = header in ("#", "reward")  # numbers never wrap; texts fold whole rather than lose words to "…"
        table.add_column(header, justify="right" if numeric else "left", no_wrap=numeric, overflow="ellipsis" if numeric else "fold")
    for number, (prompt, response, reward) in enumerate(zip(prompts, responses, rewards, strict=True), start=1):
        table.add_row(str(number), prompt, response, f"{reward:.4f}")
    make_console(soft_wrap=False).print(table)
    return 0


def _quiet() -> None:
    import datasets
    import transformers

    datasets.disable_progress_bars()
    transformers.logging.set_verbosity_error()
    transformers.logging.disable_progress_bar()
