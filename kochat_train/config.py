"""Stage configs: typed dataclasses, read from a JSON/TOML file, overridden by flags, checked as a whole."""

from __future__ import annotations

import dataclasses
import importlib.util
import json
import math
import tomllib
import types
import typing
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar, TypeVar

from kochat_data.errors import UsageError

SAMPLING = ("group_by_length", "random", "sequential")
# Experiment trackers beside metrics.jsonl, and the package (an optional extra of the same name) each needs.
TRACKERS = {"none": None, "tensorboard": "tensorboard", "wandb": "wandb"}
DEVICES = ("auto", "cpu", "cuda", "mps")
PRECISIONS = ("auto", "fp32", "bf16")
WEIGHT_DTYPES = ("fp32", "bf16")
TEMPLATES = ("kochatgpt", "chat", "raw")
SHARDINGS = ("none", "fsdp")  # kochat_train.sharding

Config = TypeVar("Config", bound="TrainConfig")


def option(default: Any, doc: str, check: Callable[[str, Any], list[str]] | None = None, **metadata: Any) -> Any:
    """A config field with its one piece of documentation (also the CLI --help text) and, where the value has a
    range of its own, its one check (`check(name, value)` → problems), run by `TrainConfig.problems` for every
    config that has the field; a list default is copied per config."""
    metadata = {"doc": doc, **({"check": check} if check else {}), **metadata}
    if isinstance(default, list):
        return field(default_factory=lambda: list(default), metadata=metadata)
    return field(default=default, metadata=metadata)


def within_open(low: float, high: float) -> Callable[[str, Any], list[str]]:
    return lambda name, value: [] if low < value < high else [f"'{name}' must be in ({low:g}, {high:g}), got {value}"]


def one_of(*allowed: str) -> Callable[[str, Any], list[str]]:
    return lambda name, value: [] if value in allowed else [f"'{name}' must be one of {', '.join(allowed)}, got {value!r}"]


SEED_MAX = 2**32 - 1  # numpy's generator, which `transformers.set_seed` seeds too, takes no other seeds


def seed_problems(seed: int) -> list[str]:
    """The one check of a seed, for every command that takes one."""
    return [] if 0 <= seed <= SEED_MAX else [f"seed must be an integer in [0, 2**32 - 1], got {seed}"]


class ConfigError(UsageError):
    """Every problem with a config, reported together."""

    def __init__(self, problems: list[str], where: str):
        self.problems = problems
        super().__init__(f"{where}: {len(problems)} problem(s) in the config")

    def lines(self) -> list[str]:
        return [f"config: {problem}" for problem in self.problems] + [str(self)]


@dataclass
class TrainConfig:
    """Fields every training stage shares."""

    # Whether `--precision auto` autocasts to bf16 on a CPU with native bf16. Only where it was measured to
    # train as fp32 does, on the shared data: base and SFT gave the same eval losses (Δ ≤ 0.002 nats); DPO the
    # same eval accuracy and loss (Δ 0.00002), PPO the same judge score within its CI (5.508 vs 5.477); the RM
    # lost 0.07–0.11 on rank-0-vs-1 pairs over two seeds, so it stays fp32.
    cpu_bf16_by_default: ClassVar[bool] = True

    data: Path | None = option(None, "directory written by `kochat data build`")
    out: Path | None = option(None, "directory for the trained model, checkpoints and metrics.jsonl")
    seed: int = option(42, "seed for initialisation, data order and dropout")
    epochs: float = option(1.0, "passes over the train split")
    max_steps: int = option(-1, "stop after this many optimizer steps (-1: run all epochs)")
    min_steps: int = option(0, "train at least this many optimizer steps, repeating a small dataset for more epochs")
    batch_size: int = option(16, "examples per device per optimizer step (before accumulation)")
    grad_accum: int = option(1, "gradient accumulation steps")
    learning_rate: float = option(5e-5, "peak learning rate (linear decay after warmup)")
    warmup_ratio: float = option(0.0, "share of the optimizer steps spent warming the learning rate up linearly "
                                 "(a share, so a short run is not left in warmup)")
    weight_decay: float = option(0.0, "AdamW weight decay")
    max_grad_norm: float = option(1.0, "gradient clipping norm")
    max_length: int = option(256, "tokens per sequence; longer examples are truncated")
    eval_batch_size: int = option(32, "examples per device for evaluation")
    logging_steps: int = option(10, "optimizer steps between metrics.jsonl lines")
    save_steps: int = option(200, "optimizer steps between checkpoints (the last one is always saved)")
    save_total_limit: int = option(2, "checkpoints kept on disk")
    lora_rank: int = option(0, "LoRA rank through loralib (0: train every weight)")
    lora_alpha: int = option(16, "LoRA scaling numerator (scale = alpha / rank)")
    lora_dropout: float = option(0.0, "dropout on the LoRA branch")
    lora_targets: list[str] = option([], "names of the layers LoRA adapts, e.g. q_proj v_proj (repeatable or comma-separated; "
                                     "default: every Linear/Conv1D inside the transformer blocks, i.e. the attention and MLP "
                                     "projections; never the embeddings or the LM head)")
    weights: str = option("fp32", "dtype of the trained weights (and so of their gradients and AdamW state): fp32, or bf16 on a "
                          "device that computes bf16 natively (half the memory, coarser updates); the frozen reference follows it")
    gradient_checkpointing: bool = option(False, "recompute activations in the backward pass instead of keeping them: less "
                                          "memory, about a third more compute")
    sharding: str = option("none", "none, or fsdp: under torchrun, the trained model's weights, gradients and AdamW state split "
                           "over the processes (FSDP2, loaded sharded by transformers, each transformer block a unit; frozen "
                           "models stay whole; under bf16 precision each unit computes in bf16 and reduces gradients in fp32)")
    offload: bool = option(False, "with --sharding fsdp on CUDA: keep the shards of parameters and optimizer state in CPU memory")
    device: str = option("auto", "auto (cuda, then mps, then cpu), cpu, cuda or mps")
    precision: str = option("auto", "auto: bf16 autocast on a CUDA GPU that has bf16 (fp16 on one without), and in every stage but "
                            "the RM on a CPU with native bf16 (avx512_bf16 or AMX: 1.3–1.55× faster, same results), fp32 elsewhere; "
                            "bf16: bf16 autocast in any stage, also on a CPU (weights stay fp32); fp32")
    sampling: str = option("group_by_length", "batch order: group_by_length (similar lengths together: less padding), "
                           "random, or sequential (file order: the same global batches for any number of processes)")
    report_to: str = option("none", "experiment tracker beside metrics.jsonl: none, tensorboard (in --out/tensorboard) or wandb "
                            "(project from WANDB_PROJECT); each is an optional extra: pip install 'kochat[tensorboard]'")
    template: str | None = option(None, "prompt format: kochatgpt (### Instruction(명령어): … ### Response(응답):), chat (the "
                                  "tokenizer's own chat template) or raw (the prompt as it is); default: the one the model was "
                                  "trained with, else kochatgpt. Recorded, and inherited by every later stage and command")
    force_template: bool = option(False, "use --template although the model was trained with another")
    system_prompt: str | None = option(None, "with --template chat: a system message before every prompt that has none (kept in the "
                                       "saved chat template)")
    trust_remote_code: bool = option(False, "run the Python code a model ships with (its directory or the hub); read it first")
    resume: bool = option(False, "continue from the last checkpoint in --out")
    overwrite: bool = option(False, "replace a non-empty --out")

    def problems(self) -> list[str]:
        """Everything wrong with the values, all at once."""
        found = [f"'{item.name}' must be a finite number, got {getattr(self, item.name)}" for item in dataclasses.fields(self)
                 if isinstance(getattr(self, item.name), float) and not math.isfinite(getattr(self, item.name))]
        for item in dataclasses.fields(self):
            if "check" in item.metadata:
                found += item.metadata["check"](item.name, getattr(self, item.name))
        found += seed_problems(self.seed)
        if self.data is None:
            found.append("'data' is required (a `kochat data build` directory)")
        if self.out is None:
            found.append("'out' is required")
        for name in ("batch_size", "grad_accum", "max_length", "eval_batch_size", "logging_steps", "save_steps"):
            if getattr(self, name) < 1:
                found.append(f"'{name}' must be ≥ 1, got {getattr(self, name)}")
        if self.epochs <= 0 and self.max_steps <= 0:
            found.append("'epochs' must be > 0 (or set 'max_steps')")
        if not self.learning_rate > 0:
            found.append(f"'learning_rate' must be > 0, got {self.learning_rate}")
        if not 0 <= self.warmup_ratio < 1:
            found.append(f"'warmup_ratio' must be in [0, 1), got {self.warmup_ratio}")
        if self.weight_decay < 0 or not self.max_grad_norm > 0:
            found.append(f"'weight_decay' must be ≥ 0 and 'max_grad_norm' > 0, got {self.weight_decay} and {self.max_grad_norm}")
        if self.lora_rank < 0:
            found.append(f"'lora_rank' must be ≥ 0, got {self.lora_rank}")
        if not 0 <= self.lora_dropout < 1:
            found.append(f"'lora_dropout' must be in [0, 1), got {self.lora_dropout}")
        if self.sharding not in SHARDINGS:
            found.append(f"'sharding' must be one of {', '.join(SHARDINGS)}, got {self.sharding!r}")
        elif self.sharding == "fsdp" and self.lora_rank > 0:
            found.append("'sharding' fsdp with LoRA is not supported: LoRA already keeps the trained state small (drop one of them)")
        if self.offload and self.sharding != "fsdp":
            found.append("'offload' needs --sharding fsdp")
        if self.device not in DEVICES:
            found.append(f"'device' must be one of {', '.join(DEVICES)}, got {self.device!r}")
        if self.precision not in PRECISIONS:
            found.append(f"'precision' must be one of {', '.join(PRECISIONS)}, got {self.precision!r}")
        if self.weights not in WEIGHT_DTYPES:
            found.append(f"'weights' must be one of {', '.join(WEIGHT_DTYPES)}, got {self.weights!r}")
        if self.sampling not in SAMPLING:
            found.append(f"'sampling' must be one of {', '.join(SAMPLING)}, got {self.sampling!r}")
        if self.report_to not in TRACKERS:
            found.append(f"'report_to' must be one of {', '.join(TRACKERS)}, got {self.report_to!r}")
        elif TRACKERS[self.report_to] and importlib.util.find_spec(TRACKERS[self.report_to]) is None:
            found.append(f"'report_to' {self.report_to}: the {TRACKERS[self.report_to]} package is not installed "
                         f"(pip install 'kochat[{self.report_to}]')")
        if self.template is not None and self.template not in TEMPLATES:
            found.append(f"'template' must be one of {', '.join(TEMPLATES)}, got {self.template!r}")
        if self.system_prompt is not None and self.template not in (None, "chat"):
            found.append(f"'system_prompt' needs --template chat (the {self.template} template shows no system message)")
        if self.resume and self.overwrite:
            found.append("'resume' and 'overwrite' contradict each other")
        return found

    def to_json(self) -> dict[str, Any]:
        return {key: str(value) if isinstance(value, Path) else value for key, value in dataclasses.asdict(self).items()}


def read_config_file(path: Path) -> dict[str, Any]:
    """A JSON or TOML file whose top level is an object of settings."""
    try:
        text = path.read_bytes().decode("utf-8")
    except OSError as err:
        raise UsageError(f"{path}: cannot read config ({err.strerror})") from None
    except UnicodeDecodeError as err:
        raise UsageError(f"{path}: not UTF-8 text (byte {err.start}); save the config as UTF-8") from None
    try:
        values = tomllib.loads(text) if path.suffix == ".toml" else json.loads(text)
    except (tomllib.TOMLDecodeError, json.JSONDecodeError) as err:
        raise UsageError(f"{path}: not valid {'TOML' if path.suffix == '.toml' else 'JSON'} ({err})") from None
    if not isinstance(values, dict):
        raise UsageError(f"{path}: the top level must be an object of settings (name: value), got {shown(values)}")
    return values


def shown(value: Any) -> str:
    """A config value as the user wrote it, for messages (JSON's names for null, lists and objects)."""
    if value is None:
        return "null"
    if isinstance(value, list | dict):
        return f"a {'list' if isinstance(value, list) else 'table'} ({json.dumps(value, ensure_ascii=False, default=str)[:60]})"
    return repr(value)


def converted_fields(cls: type, values: dict[str, Any]) -> tuple[dict[str, Any], list[str]]:
    """`values` converted to the types of the dataclass `cls`'s fields, and what could not be (unknown names,
    wrong types, null for a field that takes none)."""
    known = {f.name for f in dataclasses.fields(cls)}
    problems = [f"unknown field '{name}' (known: {', '.join(known)})" for name in values if name not in known]
    converted = {}
    for name, value in values.items():
        if name in known:
            try:
                if value is None and not takes_none(cls, name):
                    raise TypeError(value)
                converted[name] = _convert(value, field_type(cls, name))
            except (TypeError, ValueError):
                problems.append(f"'{name}': expected {_type_name(field_type(cls, name))}, got {shown(value)}")
    return converted, problems


def resolve_config(cls: type[Config], file: Path | None = None, **overrides: Any) -> Config:
    """Defaults, then the config file, then explicit overrides; every problem reported at once."""
    values: dict[str, Any] = read_config_file(file) if file is not None else {}
    values.update(overrides)
    where = str(file) if file is not None else cls.__name__
    converted, problems = converted_fields(cls, values)
    if problems:
        raise ConfigError(problems, where)
    config = cls(**converted)
    problems = config.problems()
    if problems:
        raise ConfigError(problems, where)
    return config


def _hint(cls: type, name: str) -> tuple[type, bool]:
    """A field's concrete type and whether it takes None (`Path | None` → Path, True)."""
    hint = typing.get_type_hints(cls)[name]
    if isinstance(hint, types.UnionType) or typing.get_origin(hint) is typing.Union:
        arguments = typing.get_args(hint)
        return next(arg for arg in arguments if arg is not type(None)), type(None) in arguments
    return hint, False


def field_type(cls: type, name: str) -> type:
    return _hint(cls, name)[0]


def takes_none(cls: type, name: str) -> bool:
    return _hint(cls, name)[1]


def _convert(value: Any, kind: type) -> Any:
    if value is None:
        return None
    if typing.get_origin(kind) is list:  # a repeatable flag: one value or a list of them
        item = typing.get_args(kind)[0]
        return [_convert(v, item) for v in value] if isinstance(value, list) else [_convert(value, item)]
    if kind is bool:
        if isinstance(value, bool):
            return value
        raise TypeError(value)
    if kind is int and (isinstance(value, bool) or (isinstance(value, float) and not value.is_integer())):
        raise TypeError(value)
    if kind is float and isinstance(value, bool):
        raise TypeError(value)
    if isinstance(value, list | dict) and not (kind is dict or typing.get_origin(kind) is dict):
        raise TypeError(value)  # str() or Path() of a table would pass as a name
    return kind(value)


def _type_name(kind: type) -> str:
    if typing.get_origin(kind) is list:
        return f"a list of {_type_name(typing.get_args(kind)[0]).removeprefix('a ').removeprefix('an ')}s"
    return {bool: "true/false", int: "an integer", float: "a number", str: "a string", Path: "a path"}.get(kind, str(kind))
