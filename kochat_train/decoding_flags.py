"""The decoding settings a user may set (`kochat generate`, `chat`, `eval decoding`): names, types, defaults, checks.

Kept free of torch and transformers so that `--help` and argument errors are instant.
"""

from __future__ import annotations

import math

from kochat_data.errors import UsageError

# The decoding flags of `kochat generate`, `chat` and `eval decoding`: GenerationConfig fields
# with transformers' own defaults (greedy unless do_sample; top-k 50 when sampling).
DECODING_OPTIONS: dict[str, tuple[type, object, str]] = {
    "max_new_tokens": (int, 64, "tokens to generate at most"),
    "do_sample": (bool, False, "sample (else greedy, or beam search with num_beams > 1)"),
    "temperature": (float, 1.0, "sampling temperature"),
    "top_k": (int, 50, "sample from the k most likely tokens (0: all)"),
    "top_p": (float, 1.0, "sample from the smallest set of tokens with this probability mass"),
    "num_beams": (int, 1, "beam search width (1: no beam search)"),
    "no_repeat_ngram_size": (int, 0, "never repeat an n-gram of this size (0: off)"),
    "repetition_penalty": (float, 1.0, "divide the logits of tokens already present by this (1: off)"),
    "num_return_sequences": (int, 1, "responses per prompt"),
}


def add_decoding_flags(parser, exclude: tuple[str, ...] = ()) -> None:
    """One flag per decoding setting (`--max-new-tokens`, `--do-sample`, …) but those in `exclude`; each is None until
    given, so that a sampling setting given without --do-sample can be refused."""
    for name, (kind, default, doc) in DECODING_OPTIONS.items():
        if name in exclude:
            continue
        flag = "--" + name.replace("_", "-")
        if kind is bool:
            parser.add_argument(flag, action="store_true", default=None, help=doc)
        else:
            parser.add_argument(flag, type=kind, help=f"{doc} (default: {default})")


def given_decoding(args) -> dict:
    """The decoding settings a command line gave (`add_decoding_flags`), by name."""
    return {name: value for name in DECODING_OPTIONS if (value := getattr(args, name, None)) is not None}


def with_defaults(settings: dict) -> dict:
    """Every decoding setting: the defaults of DECODING_OPTIONS, then `settings`."""
    return {**{name: default for name, (_, default, _) in DECODING_OPTIONS.items()}, **settings}


# Settings that only shape sampling: given without do_sample, greedy and beam search ignore them.
SAMPLING_ONLY = ("temperature", "top_k", "top_p")


def decoding_problems(settings: dict) -> list[str]:
    """What is wrong with the decoding settings given (names as in DECODING_OPTIONS; the others keep their
    defaults), all at once: out-of-range values and settings that cannot work together."""
    found = [f"unknown decoding setting '{name}' (known: {', '.join(DECODING_OPTIONS)})" for name in settings if name not in DECODING_OPTIONS]
    value = with_defaults(settings)
    ignored = [name for name in SAMPLING_ONLY if name in settings and not value["do_sample"]]
    if ignored:
        found.append(f"{', '.join(ignored)} {'has' if len(ignored) == 1 else 'have'} no effect without do_sample "
                     "(greedy and beam search pick the likeliest tokens): add --do-sample, or do_sample=true in --decoding")
    for name in ("max_new_tokens", "num_beams", "num_return_sequences"):
        if value[name] < 1:
            found.append(f"{name} must be ≥ 1, got {value[name]}")
    for name in ("top_k", "no_repeat_ngram_size"):
        if value[name] < 0:
            found.append(f"{name} must be ≥ 0, got {value[name]}")
    if not (math.isfinite(value["temperature"]) and value["temperature"] > 0):
        found.append(f"temperature must be a finite number > 0, got {value['temperature']}")
    if not 0 < value["top_p"] <= 1:
        found.append(f"top_p must be in (0, 1], got {value['top_p']}")
    if not (math.isfinite(value["repetition_penalty"]) and value["repetition_penalty"] > 0):
        found.append(f"repetition_penalty must be a finite number > 0, got {value['repetition_penalty']}")
    if value["num_beams"] > 1 and value["num_return_sequences"] > value["num_beams"]:
        found.append(f"num_return_sequences {value['num_return_sequences']} needs num_beams ≥ it (beam search returns "
                     f"at most its {value['num_beams']} beams)")
    elif value["num_beams"] <= 1 and value["num_return_sequences"] > 1 and not value["do_sample"]:
        found.append(f"num_return_sequences {value['num_return_sequences']} needs do_sample or num_beams ≥ it "
                     "(greedy decoding has one answer)")
    return found


def parse_decoding(spec: str) -> tuple[str, dict]:
    """`NAME=key=value,key=value` (e.g. `beam4=num_beams=4,no_repeat_ngram_size=2`) → (NAME, settings)."""
    name, _, rest = spec.partition("=")
    if not name or not rest:
        raise UsageError(f"--decoding {spec!r}: expected NAME=key=value,…, e.g. beam4=num_beams=4,no_repeat_ngram_size=2")
    settings = {}
    for item in rest.split(","):
        key, sep, text = item.partition("=")
        key = key.strip().replace("-", "_")
        if not sep or key not in DECODING_OPTIONS:
            raise UsageError(f"--decoding {spec!r}: {item!r} is not key=value with a key among {', '.join(DECODING_OPTIONS)}")
        if key in settings:
            raise UsageError(f"--decoding {spec!r}: {key} given twice")
        kind = DECODING_OPTIONS[key][0]
        try:
            settings[key] = {"true": True, "false": False}[text.strip().lower()] if kind is bool else kind(text)
        except (KeyError, ValueError):
            raise UsageError(f"--decoding {spec!r}: {key} expects {kind.__name__}, got {text!r}") from None
    return name, settings


# The decodings of the KoChatGPT notebook, in its order; unnamed settings keep transformers' defaults.
NOTEBOOK_DECODINGS: dict[str, dict] = {
    "greedy": {},
    "beam10-norepeat2": {"num_beams": 10, "no_repeat_ngram_size": 2},
    "beam7-sample-t2-k50-norepeat2": {"num_beams": 7, "do_sample": True, "temperature": 2.0, "top_k": 50, "no_repeat_ngram_size": 2},
    "beam7-top-p0.9-norepeat2": {"num_beams": 7, "do_sample": True, "top_k": 0, "top_p": 0.9, "no_repeat_ngram_size": 2},
    "sft-notebook": {"num_beams": 4, "repetition_penalty": 2.0, "no_repeat_ngram_size": 4, "max_new_tokens": 64,
                     "do_sample": True, "top_k": 50},
    "sampling": {"do_sample": True},
}
