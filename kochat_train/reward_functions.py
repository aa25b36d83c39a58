"""Composable rewards for online RL: `--reward NAME[=ARG][:WEIGHT]`, each a named component that is logged.

A component maps (prompts, responses, ended) to one float per response. Reward models and the
relevance referee score text through the shared scorers (`RewardScorer`, `RelevanceScorer`);
the rules need no model and are pure functions here; `module:function` is a user's function of
(prompts, responses) → floats, as TRL's reward functions are. The total is Σ weight × component.
"""

from __future__ import annotations

import importlib
import json
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from kochat_data.errors import UsageError
from kochat_data.repetition import has_loop, seq_rep_n
from kochat_data.text import hangul_shares, prompt_overlap
from kochat_train.template import CONFIG_FILE, Prompt, prompt_text

# prompts, responses, ended (stopped by EOS, not cut at max_new_tokens) → one reward per response
Component = Callable[[Sequence[str], Sequence[str], Sequence[bool]], list[float]]

RULES = ("length", "hangul", "eos", "repetition", "overlap")
MODELS = ("rm", "relevance")


def length_reward(responses: Sequence[str], target: float) -> list[float]:
    """−|eojeol − target| / target: 0 at the target length, −1 for an empty answer."""
    return [-abs(len(text.split()) - target) / target for text in responses]


def hangul_reward(responses: Sequence[str]) -> list[float]:
    """Hangul letters over all letters (0 for an answer without letters)."""
    return hangul_shares(list(responses))


def eos_reward(ended: Sequence[bool]) -> list[float]:
    """1 for an answer that ended by itself, 0 for one cut at the token limit."""
    return [float(done) for done in ended]


def repetition_reward(responses: Sequence[str]) -> list[float]:
    """−seq-rep-4 over eojeol (0 for an answer shorter than a 4-gram) − 1 for a loop (an n-gram 3× in a row)."""
    rewards = []
    for text in responses:
        words = text.split()
        rate = seq_rep_n([words], 4)
        rewards.append(-(0.0 if math.isnan(rate) else rate) - float(has_loop(words)))
    return rewards


def overlap_reward(prompts: Sequence[Prompt], responses: Sequence[str]) -> list[float]:
    """Share of the question's distinct characters (no spaces) that occur in the answer (0 for an empty question):
    the character-overlap rule of `eval rm`."""
    return [prompt_overlap(prompt_text(prompt), response, n=1) for prompt, response in zip(prompts, responses, strict=True)]


@dataclass(frozen=True)
class RewardSpec:
    name: str  # the metric name: reward/NAME
    kind: str  # a rule, rm, relevance or function
    argument: str | None
    weight: float


def parse_reward(text: str) -> RewardSpec:
    """`NAME[=ARG][:WEIGHT]` or `module:function[:WEIGHT]`; one line on anything else."""
    body, weight = text, 1.0
    head, sep, tail = text.rpartition(":")
    if sep and _is_number(tail):
        body, weight = head, float(tail)
    name, has_argument, argument = body.partition("=")
    if name in RULES + MODELS:
        if name == "length" and not (has_argument and _is_number(argument) and float(argument) > 0):
            raise UsageError(f"--reward {text}: length needs a target length in eojeol > 0, e.g. length=12")
        if name == "rm" and not argument:
            raise UsageError(f"--reward {text}: rm needs a reward model directory, e.g. rm=runs/sample/rm")
        if name in ("hangul", "eos", "repetition", "overlap") and has_argument:
            raise UsageError(f"--reward {text}: {name} takes no argument")
        return RewardSpec(name, name, argument or None, weight)
    module, colon, function = body.rpartition(":")
    if colon and module and function.isidentifier() and not has_argument:
        return RewardSpec(function, "function", body, weight)
    raise UsageError(f"--reward {text}: expected rm=DIR, one of {', '.join(RULES)}, relevance[=ENCODER] or module:function, "
                     "each optionally :WEIGHT")


def _is_number(text: str) -> bool:
    try:
        return math.isfinite(float(text))
    except ValueError:
        return False


def is_judge(model_dir: Path, judge: Path | None) -> bool:
    """The judge of the run (--judge), or any RM trained on the judge's pairs (`kochat train rm --pairs judge`)."""
    if judge is not None and Path(model_dir).resolve() == Path(judge).resolve():
        return True
    try:
        return json.loads((Path(model_dir) / CONFIG_FILE).read_text(encoding="utf-8")).get("pairs") == "judge"
    except (OSError, ValueError, AttributeError):
        return False


class CompositeReward:
    """The weighted sum of the rewards named by `--reward`; each component's mean is logged as reward/NAME."""

    def __init__(self, specs: Sequence[str], device: str, judge: Path | None = None):
        parsed = [parse_reward(spec) for spec in specs]
        if not parsed:
            raise UsageError("--reward: name at least one reward (e.g. --reward rm=runs/sample/rm)")
        names = [spec.name for spec in parsed]
        self.specs = [RewardSpec(f"{spec.name}{names[:i].count(spec.name) + 1}" if names.count(spec.name) > 1 else spec.name,
                                 spec.kind, spec.argument, spec.weight) for i, spec in enumerate(parsed)]
        for spec in self.specs:
            if spec.kind == "rm" and is_judge(Path(spec.argument), judge):
                raise UsageError(f"--reward rm={spec.argument}: that is the judge; it referees the policy and can never be its reward")
        self.components = {spec.name: self._loaded(spec, device) for spec in self.specs}

    @classmethod
    def _loaded(cls, spec: RewardSpec, device: str) -> Component:
        try:
            return cls._component(spec, device)
        except UsageError as err:
            if str(err).startswith("--reward"):
                raise
            raise UsageError(f"--reward {spec.kind}={spec.argument}: {err}") from None

    @staticmethod
    def _component(spec: RewardSpec, device: str) -> Component:
        if spec.kind == "rm":
            from kochat_train.rewards import RewardScorer

            scorer = RewardScorer(Path(spec.argument), device)
            return lambda prompts, responses, ended: scorer.score(prompts, responses)
        if spec.kind == "relevance":
            from kochat_train.relevance_scorer import BUNDLED, RelevanceScorer

            referee = RelevanceScorer(spec.argument or BUNDLED, device)
            return lambda prompts, responses, ended: referee.score(prompts, responses).tolist()
        if spec.kind == "function":
            return _user_function(spec.argument)
        return {
            "length": lambda prompts, responses, ended: length_reward(responses, float(spec.argument)),
            "hangul": lambda prompts, responses, ended: hangul_reward(responses),
            "eos": lambda prompts, responses, ended: eos_reward(ended),
            "repetition": lambda prompts, responses, ended: repetition_reward(responses),
            "overlap": lambda prompts, responses, ended: overlap_reward(prompts, responses),
        }[spec.kind]

    def score(self, prompts: Sequence[Prompt], responses: Sequence[str], ended: Sequence[bool]) -> tuple[list[float], dict[str, float]]:
        """The total reward of each response, and the mean of each component (unweighted) over them."""
        totals = [0.0] * len(responses)
        means = {}
        for spec in self.specs:
            values = self.components[spec.name](prompts, responses, ended)
            means[f"reward/{spec.name}"] = sum(values) / max(len(values), 1)
            totals = [total + spec.weight * value for total, value in zip(totals, values, strict=True)]
        return totals, means


def _user_function(path: str) -> Component:
    module_name, _, function_name = path.rpartition(":")
    try:
        function = getattr(importlib.import_module(module_name), function_name)
    except ImportError as err:
        raise UsageError(f"--reward {path}: cannot import {module_name} ({err})") from None
    except AttributeError:
        raise UsageError(f"--reward {path}: {module_name} has no {function_name}") from None

    def component(prompts: Sequence[Prompt], responses: Sequence[str], ended: Sequence[bool]) -> list[float]:
        values = function([prompt_text(prompt) for prompt in prompts], list(responses))
        try:
            floats = [float(value) for value in values]
        except (TypeError, ValueError):
            raise UsageError(f"--reward {path}: must return a list of numbers, returned {type(values).__name__}") from None
        if len(floats) != len(responses) or not all(math.isfinite(value) for value in floats):
            raise UsageError(f"--reward {path}: must return one finite number per response ({len(responses)}), "
                             f"returned {len(floats)}{'' if all(map(math.isfinite, floats)) else ' with NaN or inf'}")
        return floats

    return component
